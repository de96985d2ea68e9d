"""Which columns of a request log hold the arrival time and the token counts.

A log names them its own way; `CANDIDATES` lists the usual names per role (first match wins,
case-insensitive), and a `ColumnMap` (the `--columns` flag) names them outright:
`time=ts,prompt=in_tok,output=out_tok`, with an optional unit on the time column
(`time=ts:ms`) for epoch or relative numbers not in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.errors import UserError

ROLES = ("time", "prompt", "output")

# Usual names per role, in order of preference. `usage.*`: the nested usage object of an
# OpenAI (or Anthropic) response in JSON lines, or its flattened column in a CSV export.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "time": ("timestamp", "timestamp_s", "time", "created", "created_at", "start_time",
             "request_time", "arrival_time", "datetime", "date"),
    "prompt": ("prompt_tokens", "input_tokens", "usage.prompt_tokens", "usage.input_tokens"),
    "output": ("completion_tokens", "output_tokens", "usage.completion_tokens",
               "usage.output_tokens"),
}

# How `--columns` may spell a role.
ROLE_NAMES = {"time": "time", "prompt": "prompt", "input": "prompt", "output": "output",
              "completion": "output"}

# Seconds per unit of a numeric timestamp.
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """Column names given for some roles (None: found among `CANDIDATES`), and the unit of a
    numeric time column (None: seconds, unless the first value can only be ms, us or ns)."""

    time: str | None = None
    prompt: str | None = None
    output: str | None = None
    time_unit: str | None = None

    @classmethod
    def parse(cls, text: str) -> ColumnMap:
        """`role=column[,role=column...]`, roles time, prompt (or input), output (or
        completion); `time=column:unit` with unit s, ms, us or ns. Bad text: a one-line error."""
        names: dict[str, str] = {}
        for item in text.split(","):
            role, name = _item(text, item)
            if role in names:
                raise UserError(f"column mapping {text!r}: {role} given twice")
            names[role] = name
        time, unit = _time_unit(text, names.get("time"))
        return cls(time=time, prompt=names.get("prompt"), output=names.get("output"), time_unit=unit)

    def name(self, role: str) -> str | None:
        return getattr(self, role)


def _item(text: str, item: str) -> tuple[str, str]:
    """One `role=column` of the mapping: the role's canonical name and the column."""
    key, sep, name = item.partition("=")
    role = ROLE_NAMES.get(key.strip().lower())
    if not sep:
        raise UserError(f"column mapping {text!r}: expected role=column, got {item.strip()!r}")
    if role is None:
        raise UserError(f"column mapping {text!r}: unknown role {key.strip()!r} "
                        f"(known: {', '.join(ROLE_NAMES)})")
    if not name.strip():
        raise UserError(f"column mapping {text!r}: no column named for {key.strip()}")
    return role, name.strip()


def _time_unit(text: str, name: str | None) -> tuple[str | None, str | None]:
    """The time column and its unit, from `column` or `column:unit`."""
    if name is None or ":" not in name:
        return name, None
    column, _, unit = name.rpartition(":")
    if unit.strip() not in UNIT_SECONDS:
        raise UserError(f"column mapping {text!r}: unknown time unit {unit.strip()!r} "
                        f"(known: {', '.join(UNIT_SECONDS)})")
    if not column.strip():
        raise UserError(f"column mapping {text!r}: no column named for time")
    return column.strip(), unit.strip()


def match_columns(fields: Sequence[str], mapping: ColumnMap | None) -> tuple[dict[str, int], list[str]]:
    """Per role, the index of its field among `fields` (case-insensitive): the mapped name, or
    the first of `CANDIDATES` present. Also the roles found nowhere."""
    lowered = [f.strip().lower() for f in fields]
    found: dict[str, int] = {}
    for role in ROLES:
        given = mapping.name(role) if mapping is not None else None
        names = (given,) if given is not None else CANDIDATES[role]
        index = next((lowered.index(n.lower()) for n in names if n.lower() in lowered), None)
        if index is not None:
            found[role] = index
    return found, [r for r in ROLES if r not in found]


def json_fields(rec: dict) -> list[tuple[str, ...]]:
    """A JSON object's fields as key paths: its keys, and those of objects one level down
    (`("usage", "prompt_tokens")`), to match as `usage.prompt_tokens`."""
    fields: list[tuple[str, ...]] = [(key,) for key in rec]
    return fields + [(key, sub) for key, value in rec.items() if isinstance(value, dict) for sub in value]


def pick_columns(where: str, fields: Sequence[str], mapping: ColumnMap | None) -> dict[str, int]:
    """`match_columns`, every role found, or a one-line error naming what is missing."""
    found, missing = match_columns(fields, mapping)
    if not missing:
        return found
    wanted = "; ".join(_wanted(role, mapping) for role in missing)
    raise UserError(f"{where}: no column for {wanted} (columns: {', '.join(fields)[:200]}); "
                    "name them with --columns role=column")


def _wanted(role: str, mapping: ColumnMap | None) -> str:
    given = mapping.name(role) if mapping is not None else None
    if given is not None:
        return f"{role} ({given!r}, as mapped)"
    return f"{role} (none of {', '.join(CANDIDATES[role])})"
