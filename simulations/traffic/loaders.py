"""Trace loaders: recorded request logs streamed from disk as column chunks.

Each loader yields `TraceChunk`s (numpy columns; arrival seconds from the
trace's start), never one Python object per row, so a week-long trace streams
in flat memory. The format is detected from the header (CSV) or the first
record (JSONL); `LOADERS` maps a format name to its reader.

Formats:
* `azure`: Azure LLM inference 2023 and 2024 (`TIMESTAMP,ContextTokens,GeneratedTokens`;
  2024 timestamps may carry a `+00:00` suffix);
* `mooncake`: JSONL with `timestamp` (ms), `input_length`, `output_length`, `hash_ids`;
* `burstgpt`: BurstGPT CSV (`Timestamp`, ..., `Request tokens`, `Response tokens`, ...),
  with or without the v2 `Session ID`/`Elapsed time` columns; failed requests
  (`Response tokens` = 0) are kept as 1-token responses;
* `generic`: `timestamp_s,input_tokens,output_tokens`;
* `openai`: request logs from gateways and APIs, CSV or JSON lines (`logs.py`): a time
  column (`timestamp`, `time`, `created`, `created_at`, `start_time`, ...; ISO-8601 or epoch
  numbers) and `prompt_tokens`/`completion_tokens` or `input_tokens`/`output_tokens`, also in
  a nested OpenAI `usage` object; a `ColumnMap` (`--columns`) names any other columns, and
  with one any file is read this way.

Every row is checked as it streams: timestamps finite and, across chunks, in order; token
counts whole, in [0, 10M]. A bad row is a one-line error naming its line.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from policies.errors import UserError
from simulations.traffic.columns import ColumnMap, json_fields, match_columns
from simulations.traffic.limits import MAX_SPAN_S, MAX_TOKENS

CHUNK_ROWS = 65_536


@dataclass(slots=True)
class TraceChunk:
    arrival: np.ndarray  # float64 seconds since the trace start, non-decreasing
    prompt: np.ndarray  # int32 input tokens
    output: np.ndarray  # int32 output tokens
    hashes: list[tuple[int, ...]] | None = None  # prefix-block ids per row (Mooncake)

    def __len__(self) -> int:
        return len(self.arrival)


class _Clock:
    """Arrival seconds from a trace's first arrival, checked chunk by chunk: finite, in
    order across chunks (rows within one chunk are sorted), spanning at most `MAX_SPAN_S`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0: float | None = None
        self.last = -np.inf

    def arrivals(self, times: np.ndarray, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(arrival seconds, sorted), and the order that sorts the chunk's rows."""
        _first_bad(self.path, lines, ~np.isfinite(times), "timestamp is not a finite number")
        _first_bad(self.path, lines, times < self.last,
                   "timestamp earlier than an earlier chunk's (rows must be in time order)")
        order = np.argsort(times, kind="stable")
        times = times[order]
        if self.t0 is None:
            self.t0 = float(times[0])
        _first_bad(self.path, lines[order], times - self.t0 > MAX_SPAN_S,
                   f"timestamp more than {MAX_SPAN_S:g} s after the first")
        self.last = float(times[-1])
        return times - self.t0, order


def _first_bad(path: Path, lines: np.ndarray, bad: np.ndarray, what: str) -> None:
    if bad.any():
        raise UserError(f"{path}:{int(lines[int(np.argmax(bad))])}: {what}")


def _tokens(path: Path, lines: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
    """Token counts as int32, or a one-line error naming the first bad row."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0) | (values > MAX_TOKENS) | (values != np.floor(values))
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"{path}:{int(lines[i])}: {name} must be a whole number of tokens "
                        f"in [0, {MAX_TOKENS}], got {values[i]:g}")
    return values.astype(np.int32)


def _azure_times(col: list[str]) -> np.ndarray:
    cleaned = [s[:-6] if s.endswith("+00:00") else s.rstrip("Z") for s in col]
    stamps = np.array(cleaned, dtype="datetime64[us]")
    seconds = stamps.astype(np.int64) / 1e6
    seconds[np.isnat(stamps)] = np.nan  # NaT would read as year -292277
    return seconds


def _parse(path: Path, lines: np.ndarray, col: list[str], parse: Callable[[list[str]], np.ndarray],
           name: str) -> np.ndarray:
    """Parse a column at once; on failure, find and name the first unreadable row."""
    try:
        return parse(col)
    except ValueError:
        for line, value in zip(lines, col, strict=True):
            try:
                parse([value])
            except ValueError:
                raise UserError(f"{path}:{int(line)}: unreadable {name} {value!r}") from None
        raise


def _floats(col: list[str]) -> np.ndarray:
    return np.array(col, dtype=np.float64)


class _Rows(Protocol):  # what `csv.reader` gives
    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...


def _csv_rows(path: Path, reader: _Rows, width: int) -> Iterator[tuple[list[list[str]], np.ndarray]]:
    """Batches of `CHUNK_ROWS` rows with their line numbers; blank rows skipped, every other
    row must have the header's number of fields."""
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not row:
            continue
        line = reader.line_num
        if len(row) != width:
            raise UserError(f"{path}:{line}: {len(row)} fields, the header has {width}")
        rows.append(row)
        lines.append(line)
        if len(rows) == CHUNK_ROWS:
            yield rows, np.array(lines)
            rows, lines = [], []
    if rows:
        yield rows, np.array(lines)


def _csv_chunks(
    path: Path, columns: dict[str, int], time_parser: Callable[[list[str]], np.ndarray]
) -> Iterator[TraceChunk]:
    """Stream a CSV in chunks of `CHUNK_ROWS`, picking `columns` (role -> index)."""
    clock = _Clock(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        width = len(next(reader))
        for rows, lines in _csv_rows(path, reader, width):
            cols = list(zip(*rows, strict=True))
            times = _parse(path, lines, list(cols[columns["time"]]), time_parser, "timestamp")
            prompt = _tokens(path, lines, _parse(path, lines, list(cols[columns["prompt"]]), _floats,
                                                 "input tokens"), "input tokens")
            output = _tokens(path, lines, _parse(path, lines, list(cols[columns["output"]]), _floats,
                                                 "output tokens"), "output tokens")
            arrival, order = clock.arrivals(times, lines)
            yield TraceChunk(arrival, prompt[order], np.maximum(output[order], 1))


def _header_index(header: list[str], *names: str) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for n in names:
        if n.lower() in lowered:
            return lowered.index(n.lower())
    return None


def read_azure(path: Path) -> Iterator[TraceChunk]:
    header = _read_header(path)
    cols = {
        "time": _header_index(header, "TIMESTAMP"),
        "prompt": _header_index(header, "ContextTokens"),
        "output": _header_index(header, "GeneratedTokens"),
    }
    return _csv_chunks(path, _require(path, cols), _azure_times)


def read_burstgpt(path: Path) -> Iterator[TraceChunk]:
    header = _read_header(path)
    cols = {
        "time": _header_index(header, "Timestamp"),
        "prompt": _header_index(header, "Request tokens"),
        "output": _header_index(header, "Response tokens"),
    }
    return _csv_chunks(path, _require(path, cols), _floats)


def read_generic(path: Path) -> Iterator[TraceChunk]:
    header = _read_header(path)
    cols = {
        "time": _header_index(header, "timestamp_s"),
        "prompt": _header_index(header, "input_tokens"),
        "output": _header_index(header, "output_tokens"),
    }
    return _csv_chunks(path, _require(path, cols), _floats)


def _number(rec: dict, key: str) -> float:
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def _hash_ids(rec: dict) -> tuple[int, ...]:
    ids = rec.get("hash_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError("hash_ids must be a list of integers")
    return tuple(ids)


def _mooncake_record(text: str) -> tuple[float, float, float, tuple[int, ...]]:
    rec = json.loads(text)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    return (_number(rec, "timestamp") / 1000.0, _number(rec, "input_length"), _number(rec, "output_length"),
            _hash_ids(rec))


def _mooncake_batch(path: Path, lines: list[str], first_line: int) -> tuple[list[tuple], list[int]]:
    records, numbers = [], []
    for line_no, text in enumerate(lines, first_line):
        if not text.strip():
            continue
        try:
            records.append(_mooncake_record(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{line_no}: not a Mooncake record: {exc}") from None
        numbers.append(line_no)
    return records, numbers


def read_mooncake(path: Path) -> Iterator[TraceChunk]:
    clock = _Clock(path)
    with path.open() as f:
        line_no = 1
        while lines := list(itertools.islice(f, CHUNK_ROWS)):
            records, numbers = _mooncake_batch(path, lines, line_no)
            line_no += len(lines)
            if not records:
                continue
            times, prompts, outputs, hashes = zip(*records, strict=True)
            at = np.array(numbers)
            prompt = _tokens(path, at, np.array(prompts, dtype=np.float64), "input_length")
            output = _tokens(path, at, np.array(outputs, dtype=np.float64), "output_length")
            arrival, order = clock.arrivals(np.array(times, dtype=np.float64), at)
            yield TraceChunk(arrival, prompt[order], np.maximum(output[order], 1), [hashes[i] for i in order])


def read_log(path: Path, columns: ColumnMap | None = None) -> Iterator[TraceChunk]:
    """A gateway or API request log (`logs.py`, imported when called: it builds on this module)."""
    from simulations.traffic import logs

    return logs.read_log(path, columns)


LOADERS: dict[str, Callable[[Path], Iterator[TraceChunk]]] = {
    "azure": read_azure,
    "mooncake": read_mooncake,
    "burstgpt": read_burstgpt,
    "generic": read_generic,
    "openai": read_log,
}

# CSV layouts known by their header (lower-cased names), tried in this order before the
# request-log columns (a `generic` header would also read as a log, in the same seconds).
CSV_HEADERS: dict[str, set[str]] = {
    "azure": {"timestamp", "contexttokens", "generatedtokens"},
    "burstgpt": {"timestamp", "request tokens", "response tokens"},
    "generic": {"timestamp_s", "input_tokens", "output_tokens"},
}


def _read_header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        try:
            return next(csv.reader(f))
        except StopIteration:
            raise UserError(f"{path}: empty file") from None


def _require(path: Path, cols: dict[str, int | None]) -> dict[str, int]:
    missing = [k for k, v in cols.items() if v is None]
    if missing:
        raise UserError(f"{path}: missing columns for {', '.join(missing)}")
    return {k: v for k, v in cols.items() if v is not None}


def detect_format(path: Path) -> str:
    """Name the trace format from the first line, or raise a one-line error."""
    first = _first_line(path)
    return _json_format(path, first) if first.startswith("{") else _csv_format(path, first)


def _first_line(path: Path) -> str:
    """The file's first line: the file found, readable, not empty."""
    if not path.is_file():
        raise UserError(f"trace file not found: {path}")
    try:
        with path.open(errors="replace") as f:
            first = f.readline().strip()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not first:
        raise UserError(f"{path}: empty file")
    return first


def _json_format(path: Path, first: str) -> str:
    try:
        rec = json.loads(first)
    except ValueError:
        raise UserError(f"{path}: first line is not JSON") from None
    if {"timestamp", "input_length", "output_length"} <= rec.keys():
        return "mooncake"
    if not match_columns([".".join(f) for f in json_fields(rec)], None)[1]:
        return "openai"
    raise UserError(f"{path}: unknown JSONL layout (keys: {', '.join(sorted(rec))}); "
                    "name the time and token fields with --columns")


def _csv_format(path: Path, first: str) -> str:
    names = next(csv.reader([first]))
    header = {h.strip().lower() for h in names}
    known = next((fmt for fmt, needed in CSV_HEADERS.items() if needed <= header), None)
    if known is not None:
        return known
    if not match_columns(names, None)[1]:
        return "openai"
    raise UserError(
        f"{path}: unknown column layout ({first[:80]}); expected Azure, BurstGPT, Mooncake JSONL, "
        "timestamp_s,input_tokens,output_tokens, or a request log (a time column and "
        "prompt_tokens/completion_tokens or input_tokens/output_tokens); or name the columns "
        "with --columns"
    )


def open_trace(path: str | Path, columns: ColumnMap | None = None) -> Iterator[TraceChunk]:
    """A trace file's chunks, its format detected; with `columns`, read as a request log with
    those columns whatever its header."""
    p = Path(path)
    if columns is None:
        return _readable(p, LOADERS[detect_format(p)])
    _first_line(p)
    return _readable(p, functools.partial(read_log, columns=columns))


def _readable(path: Path, read: Callable[[Path], Iterator[TraceChunk]]) -> Iterator[TraceChunk]:
    """The loader's chunks; undecodable text or a read failure is a one-line error."""
    try:
        yield from read(path)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
