"""Argument checks shared by the subcommands, run while the command line is parsed (before any
work): argparse `type=` functions for bounded numbers, and output paths tried for writing.

A bad value becomes argparse's one-line `argument --flag: ...` error (exit 2 via the CLI).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from policies.errors import UserError

if TYPE_CHECKING:
    from simulations.traffic.columns import ColumnMap

DAY_S = 86_400.0


def number(low: float | None = None, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] (`above`: low itself excluded); None: no bound."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        _in_range(value, low, high, above)
        return value

    return parse


def whole(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high]; None: no bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        _in_range(value, low, high, above=False)
        return value

    return parse


def _in_range(value: float, low: float | None, high: float | None, above: bool) -> None:
    if low is not None and (value < low or (above and value == low)):
        if above:
            bound = "be positive" if low == 0 else f"be above {_shown(low)}"
        else:
            bound = "not be negative" if low == 0 else f"be at least {_shown(low)}"
        raise argparse.ArgumentTypeError(f"must {bound}, got {_shown(value)}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {_shown(high)}, got {_shown(value)}")


def _shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def output_file(suffix: str | tuple[str, ...] | None = None) -> Callable[[str], Path]:
    """A file the command can write: not a folder, its folder created, opened once for
    appending (so an unwritable place fails now, not after the run; nothing is truncated)."""

    def parse(text: str) -> Path:
        if not text:
            raise argparse.ArgumentTypeError("expected a file path, got ''")
        path = Path(text)
        allowed = (suffix,) if isinstance(suffix, str) else suffix
        if allowed is not None and path.suffix.lower() not in allowed:
            raise argparse.ArgumentTypeError(f"expected a {' or '.join(allowed)} path, got {text}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder, expected a file")
        _try_writing(path)
        return path

    return parse


def _try_writing(path: Path) -> None:
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()


def text_file(text: str) -> str:
    """An existing file of UTF-8 text (read once here, so it fails now, in one line)."""
    path = Path(text)
    if not text or not path.is_file():
        raise argparse.ArgumentTypeError(f"{'is a folder' if text and path.is_dir() else 'file not found'}: {text!r}")
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{text} is not UTF-8 text") from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}") from None
    return text


def folder(what: str = "folder") -> Callable[[str], Path]:
    """An existing folder; `what` names it in the error."""

    def parse(text: str) -> Path:
        if not text or not Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"{what} not found: {text!r}")
        return Path(text)

    return parse


def distinct(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """No two outputs are the same file, and no output overwrites an input."""
    named: dict[Path, str] = {}
    for flag, path in inputs.items():
        if path is not None:
            named.setdefault(path.resolve(), flag)
    for flag, path in outputs.items():
        if path is None:
            continue
        if path.resolve() in named:
            raise UserError(f"{flag} {path} is also given to {named[path.resolve()]}")
        named[path.resolve()] = flag


def check_http_url(url: str, flag: str = "--url") -> str:
    """`http(s)://host[:port]` with a port in 1-65535, or a one-line UserError naming `flag`."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port in (-1, 0):
        raise UserError(f"{flag} must be http(s)://host[:port] with a port in 1-65535, got {url!r}")
    return url.rstrip("/")


def add_columns_argument(parser: argparse.ArgumentParser) -> None:
    """`--columns`, for the commands that read a trace (simulate, tune): which columns of a
    request log hold the time and the token counts."""
    parser.add_argument(
        "--columns", type=_column_map, default=None, metavar="time=COL[:UNIT],prompt=COL,output=COL",
        help="read --trace as a request log with these columns (CSV header names or JSON keys, "
             "usage.x for nested ones; UNIT of numeric times: s, ms, us, ns); roles left out are "
             "found by their usual names")


def _column_map(text: str) -> ColumnMap:
    from simulations.traffic.columns import ColumnMap

    try:
        return ColumnMap.parse(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
