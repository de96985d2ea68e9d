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
* `generic`: `timestamp_s,input_tokens,output_tokens`.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.errors import UserError

CHUNK_ROWS = 65_536


@dataclass(slots=True)
class TraceChunk:
    arrival: np.ndarray  # float64 seconds since the trace start, non-decreasing
    prompt: np.ndarray  # int32 input tokens
    output: np.ndarray  # int32 output tokens
    hashes: list[tuple[int, ...]] | None = None  # prefix-block ids per row (Mooncake)

    def __len__(self) -> int:
        return len(self.arrival)


def _azure_times(col: list[str]) -> np.ndarray:
    cleaned = [s[:-6] if s.endswith("+00:00") else s.rstrip("Z") for s in col]
    return np.array(cleaned, dtype="datetime64[us]").astype(np.int64) / 1e6


def _csv_chunks(
    path: Path, columns: dict[str, int], time_parser: Callable[[list[str]], np.ndarray]
) -> Iterator[TraceChunk]:
    """Stream a CSV in chunks of `CHUNK_ROWS`, picking `columns` (role -> index)."""
    t0: float | None = None
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        line = 1
        while True:
            rows = list(itertools.islice(reader, CHUNK_ROWS))
            if not rows:
                return
            try:
                cols = list(zip(*rows, strict=False))
                times = time_parser(list(cols[columns["time"]]))
                prompt = np.array(cols[columns["prompt"]], dtype=np.float64).astype(np.int32)
                output = np.array(cols[columns["output"]], dtype=np.float64).astype(np.int32)
            except (ValueError, IndexError) as exc:
                raise UserError(
                    f"{path}: unreadable row between lines {line + 1} and {line + len(rows)}: {exc}"
                ) from None
            line += len(rows)
            if t0 is None:
                t0 = float(times[0])
            order = np.argsort(times, kind="stable")
            yield TraceChunk(times[order] - t0, prompt[order], np.maximum(output[order], 1))


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
    return _csv_chunks(path, _require(path, cols), lambda c: np.array(c, dtype=np.float64))


def read_generic(path: Path) -> Iterator[TraceChunk]:
    header = _read_header(path)
    cols = {
        "time": _header_index(header, "timestamp_s"),
        "prompt": _header_index(header, "input_tokens"),
        "output": _header_index(header, "output_tokens"),
    }
    return _csv_chunks(path, _require(path, cols), lambda c: np.array(c, dtype=np.float64))


def read_mooncake(path: Path) -> Iterator[TraceChunk]:
    t0: float | None = None
    with path.open() as f:
        line_no = 0
        while True:
            lines = list(itertools.islice(f, CHUNK_ROWS))
            if not lines:
                return
            times, prompts, outputs, hashes = [], [], [], []
            for text in lines:
                line_no += 1
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                    times.append(float(rec["timestamp"]) / 1000.0)
                    prompts.append(int(rec["input_length"]))
                    outputs.append(int(rec["output_length"]))
                    hashes.append(tuple(rec.get("hash_ids") or ()))
                except (ValueError, KeyError, TypeError) as exc:
                    raise UserError(f"{path}:{line_no}: not a Mooncake record: {exc}") from None
            if not times:
                continue
            arr = np.array(times)
            if t0 is None:
                t0 = float(arr[0])
            order = np.argsort(arr, kind="stable")
            yield TraceChunk(
                arr[order] - t0,
                np.array(prompts, dtype=np.int32)[order],
                np.maximum(np.array(outputs, dtype=np.int32)[order], 1),
                [hashes[i] for i in order],
            )


LOADERS: dict[str, Callable[[Path], Iterator[TraceChunk]]] = {
    "azure": read_azure,
    "mooncake": read_mooncake,
    "burstgpt": read_burstgpt,
    "generic": read_generic,
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
    if not path.is_file():
        raise UserError(f"trace file not found: {path}")
    with path.open(errors="replace") as f:
        first = f.readline().strip()
    if not first:
        raise UserError(f"{path}: empty file")
    if first.startswith("{"):
        try:
            rec = json.loads(first)
        except ValueError:
            raise UserError(f"{path}: first line is not JSON") from None
        if {"timestamp", "input_length", "output_length"} <= rec.keys():
            return "mooncake"
        raise UserError(f"{path}: unknown JSONL layout (keys: {', '.join(sorted(rec))})")
    header = {h.strip().lower() for h in next(csv.reader([first]))}
    if {"timestamp", "contexttokens", "generatedtokens"} <= header:
        return "azure"
    if {"timestamp", "request tokens", "response tokens"} <= header:
        return "burstgpt"
    if {"timestamp_s", "input_tokens", "output_tokens"} <= header:
        return "generic"
    raise UserError(
        f"{path}: unknown column layout ({first[:80]}); expected Azure, BurstGPT, Mooncake JSONL "
        "or timestamp_s,input_tokens,output_tokens"
    )


def open_trace(path: str | Path) -> Iterator[TraceChunk]:
    p = Path(path)
    return LOADERS[detect_format(p)](p)
