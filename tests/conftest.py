import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path

import pytest

from server.procs import descendants

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
PR_SET_CHILD_SUBREAPER = 36
# Processes still stopping at session end get this long (tests of this check shorten it).
LEFTOVER_GRACE_S = float(os.environ.get("QSCALE_LEFTOVER_GRACE_S", "5"))


@pytest.fixture(scope="session")
def traces() -> Path:
    """The shared public traces (../shared/traces beside the checkout, as in CI)."""
    assert TRACES.is_dir(), f"shared traces not found at {TRACES}"
    return TRACES


def _become_subreaper() -> None:
    """Orphans of our descendants are re-parented to pytest (not init), so a leak stays visible."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _living_descendants() -> list[int]:
    try:
        import psutil
    except ImportError:
        return descendants(os.getpid())
    return [p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def _reap_zombies() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fail the run if any process the tests started (or its descendants) outlives the session."""
    _become_subreaper()
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := _living_descendants()) and time.monotonic() < deadline:
        _reap_zombies()
        time.sleep(0.1)
    found = [f"{pid} {_cmdline(pid)}" for pid in left]
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    _reap_zombies()
    if found:
        pytest.fail(f"{len(found)} process(es) left running after the tests (killed now): " + "; ".join(found),
                    pytrace=False)
