"""Request logs as gateways and APIs write them: the `openai` trace format.

One row per request, CSV (with a header) or JSON lines, holding a time column and the two
token counts under their usual names (`columns.CANDIDATES`: `prompt_tokens`/`completion_tokens`
or `input_tokens`/`output_tokens`, and in JSON lines also inside a nested `usage` object as an
OpenAI response has it: `{"created": 1700000000, "usage": {"prompt_tokens": 12, ...}}`), or
under the names a `ColumnMap` gives.

Timestamps, read the way the file's first row reads (every later row must read alike):
* ISO-8601 text (`2024-05-10T12:00:00Z`, `2024-05-10 12:00:00.25+02:00`): the offset is
  honoured, text without one is UTC;
* numbers: seconds (epoch or from any origin), unless the mapping names a unit (`time=ts:ms`)
  or the first value can only be a finer epoch unit: at least 1e11 is milliseconds, 1e14
  microseconds, 1e17 nanoseconds (1e11 s would be the year 5138; 1e11 ms is 1973).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from policies.errors import UserError
from simulations.traffic import loaders
from simulations.traffic.columns import UNIT_SECONDS, ColumnMap, json_fields, pick_columns
from simulations.traffic.loaders import (
    TraceChunk,
    _Clock,
    _csv_chunks,
    _first_line,
    _parse,
    _read_header,
    _tokens,
)

# The finest epoch unit a first timestamp this large can only be in, largest first.
IMPLIED_UNITS = ((1e17, "ns"), (1e14, "us"), (1e11, "ms"))


def read_log(path: Path, columns: ColumnMap | None = None) -> Iterator[TraceChunk]:
    """A request log's chunks: JSON lines if its first line is an object, else CSV."""
    mapping = columns or ColumnMap()
    if _first_line(path).startswith("{"):
        return _JsonLog(path, mapping).chunks()
    fields = pick_columns(str(path), _read_header(path), mapping)
    return _csv_chunks(path, fields, TimeColumn(mapping.time_unit))


class TimeColumn:
    """Timestamp texts -> epoch seconds. The first value read fixes how all are read: ISO-8601
    if it is not a number; else numbers in the given unit, or the one its size implies."""

    def __init__(self, unit: str | None) -> None:
        self.unit = unit
        self.read: Callable[[list[str]], np.ndarray] | None = None

    def __call__(self, col: list[str]) -> np.ndarray:
        if self.read is None:
            self.read = self._choose(col[0])
        return self.read(col)

    def _choose(self, first: str) -> Callable[[list[str]], np.ndarray]:
        try:
            value = abs(float(first))
        except ValueError:
            if self.unit is not None:  # the mapping said numbers: reading ISO text would hide that
                return _numbers(UNIT_SECONDS[self.unit])
            return _iso_seconds
        unit = self.unit or next((u for least, u in IMPLIED_UNITS if value >= least), "s")
        return _numbers(UNIT_SECONDS[unit])


def _numbers(seconds_per_unit: float) -> Callable[[list[str]], np.ndarray]:
    def read(col: list[str]) -> np.ndarray:
        return np.array(col, dtype=np.float64) * seconds_per_unit

    return read


def _iso_seconds(col: list[str]) -> np.ndarray:
    return np.array([_iso(text) for text in col], dtype=np.float64)


def _iso(text: str) -> float:
    """Epoch seconds of an ISO-8601 time; no offset: UTC."""
    try:
        stamp = datetime.fromisoformat(text.strip())
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
    except OverflowError:  # an offset pushing year 1 or 9999 out of range
        raise ValueError(text) from None


class _JsonLog:
    """JSON lines, one request per object; the fields' places are fixed by the first object."""

    def __init__(self, path: Path, mapping: ColumnMap) -> None:
        self.path = path
        self.mapping = mapping
        self.clock = _Clock(path)
        self.times = TimeColumn(mapping.time_unit)
        self.places: dict[str, tuple[str, ...]] | None = None

    def chunks(self) -> Iterator[TraceChunk]:
        with self.path.open() as f:
            line_no = 1
            while lines := list(itertools.islice(f, loaders.CHUNK_ROWS)):
                rows, numbers = self._batch(lines, line_no)
                line_no += len(lines)
                if rows:
                    yield self._chunk(rows, np.array(numbers))

    def _batch(self, lines: list[str], first_line: int) -> tuple[list[tuple], list[int]]:
        rows, numbers = [], []
        for line_no, text in enumerate(lines, first_line):
            if not text.strip():
                continue
            try:
                rows.append(self._row(json.loads(text), line_no))
            except (ValueError, OverflowError) as exc:
                raise UserError(f"{self.path}:{line_no}: {_reason(exc)}") from None
            numbers.append(line_no)
        return rows, numbers

    def _row(self, rec: object, line_no: int) -> tuple[str, float, float]:
        if not isinstance(rec, dict):
            raise ValueError("not a JSON object")
        if self.places is None:
            self.places = _places(f"{self.path}:{line_no}", rec, self.mapping)
        return (_time_text(rec, self.places["time"]), _count(rec, self.places["prompt"]),
                _count(rec, self.places["output"]))

    def _chunk(self, rows: list[tuple], at: np.ndarray) -> TraceChunk:
        assert self.places is not None
        texts, prompts, outputs = zip(*rows, strict=True)
        times = _parse(self.path, at, list(texts), self.times, "timestamp")
        prompt = _tokens(self.path, at, np.array(prompts), ".".join(self.places["prompt"]))
        output = _tokens(self.path, at, np.array(outputs), ".".join(self.places["output"]))
        arrival, order = self.clock.arrivals(times, at)
        return TraceChunk(arrival, prompt[order], np.maximum(output[order], 1))


def _reason(exc: Exception) -> str:
    """Why a line is unreadable, in a few words."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg}"
    return str(exc)


def _places(where: str, rec: dict, mapping: ColumnMap) -> dict[str, tuple[str, ...]]:
    """Per role, the keys leading to its value: top-level, or one level down (`usage.x`)."""
    fields = json_fields(rec)
    index = pick_columns(where, [".".join(f) for f in fields], mapping)
    return {role: fields[i] for role, i in index.items()}


def _value(rec: dict, keys: Sequence[str]) -> object:
    value: object = rec
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"no {'.'.join(keys)} (the first record has it)")
        value = value[key]
    return value


def _time_text(rec: dict, keys: Sequence[str]) -> str:
    value = _value(rec, keys)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    raise ValueError(f"{'.'.join(keys)} must be a number or ISO-8601 text, got {value!r}")


def _count(rec: dict, keys: Sequence[str]) -> float:
    value = _value(rec, keys)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{'.'.join(keys)} must be a number, got {value!r}")
    return float(value)
