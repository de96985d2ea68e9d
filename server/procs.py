"""The one way this project starts and stops child processes.

* `spawn(cmd)`: the child leads its own session and process group (so `stop_tree` reaches
  everything it starts that stays in its group, e.g. vLLM's EngineCore and the
  multiprocessing resource tracker), and on Linux it gets PR_SET_PDEATHSIG=SIGTERM: the
  kernel sends it SIGTERM when the parent dies, even by SIGKILL. (The kernel tracks the
  parent *thread*: spawn from a thread that outlives the child, e.g. the main thread.)
* `stop_tree(proc, grace_s)` / `stop_tree_async`: SIGTERM to the group, up to `grace_s` for
  the leader to exit, then SIGKILL to the group; already-dead processes are fine.
* `die_with_parent()`: at the start of a child's main. A daemon thread checks every 0.5 s
  whether the parent changed (it died); then it SIGKILLs the groups this process spawned
  and its own group (when it leads it; else only its own descendants and itself). It turns
  this process's PDEATHSIG off: a SIGTERM whose default action killed this process at once
  would orphan the rest of its group (vLLM's EngineCore) before the thread could act.
  `parent_gone()` tells a SIGTERM handler not to drain for long.

Standard library only: the vLLM launcher loads this file into vLLM's own Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
POLL_S = 0.02  # how often stop_tree checks whether the leader exited
REAP_S = 5.0  # how long stop_tree waits for the leader after SIGKILL
PARENT_POLL_S = 0.5  # how often die_with_parent checks the parent


def _load_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_prctl = _load_prctl()  # resolved here: the forked child must only call it
_spawned: set[subprocess.Popen] = set()
_spawned_lock = threading.Lock()
_watched_parent: int | None = None


def _preexec(parent_pid: int) -> Callable[[], None]:
    def run() -> None:  # in the child, between fork and exec: no allocation-heavy work
        armed = _prctl is not None and _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        if armed and os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return run


def spawn(cmd: list[str], *, env: dict[str, str] | None = None, stdout: Any = subprocess.DEVNULL,
          stderr: Any = subprocess.DEVNULL, cwd: Any = None, text: bool = False,
          user: str | None = None) -> subprocess.Popen:
    """Start `cmd` in its own session and process group; it gets SIGTERM if this process dies.
    `user`: run it as this user (from root; e.g. PostgreSQL refuses to run as root). The
    death signal is armed after the user change, which would otherwise clear it."""
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, cwd=cwd, text=text, start_new_session=True,
                            preexec_fn=_preexec(os.getpid()) if _prctl is not None else None,
                            user=user, group=user, extra_groups=[] if user else None)
    with _spawned_lock:
        for old in [p for p in _spawned if p.returncode is not None]:
            _spawned.discard(old)
        _spawned.add(proc)
    return proc


def _exited(proc: subprocess.Popen) -> bool:
    """Has the leader exited? Does not reap it, so its pid (the group id) stays reserved."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped elsewhere
        return proc.poll() is not None
    except AttributeError:  # no waitid on this platform
        return proc.poll() is not None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the group `proc` leads (spawn: pgid == pid); just `proc` if it leads none.

    Once the leader is reaped its group, if any member is left, still has the id `proc.pid`.
    """
    pgid = proc.pid
    if proc.returncode is None:  # not reaped: the pid is still this process's
        with contextlib.suppress(ProcessLookupError):
            pgid = os.getpgid(proc.pid)
    try:
        if pgid == os.getpgrp():  # never our own group: signal the process alone
            if proc.returncode is None:
                os.kill(proc.pid, sig)
        else:
            os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _finish(proc: subprocess.Popen) -> None:
    _signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=REAP_S)
    with _spawned_lock:
        _spawned.discard(proc)


def stop_tree(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group, wait up to `grace_s` for the leader, then SIGKILL the group."""
    _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace_s)
    while not _exited(proc) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    _finish(proc)


async def stop_tree_async(proc: subprocess.Popen, grace_s: float) -> None:
    """`stop_tree` that waits with asyncio.sleep, so the event loop keeps running."""
    _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace_s)
    while not _exited(proc) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    _signal_group(proc, signal.SIGKILL)
    deadline = time.monotonic() + REAP_S
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    with _spawned_lock:
        _spawned.discard(proc)


def parent_gone() -> bool:
    """True once the parent `die_with_parent` remembered has died."""
    return _watched_parent is not None and os.getppid() != _watched_parent


def die_with_parent() -> None:
    """Kill this process and everything it started as soon as its parent dies."""
    global _watched_parent
    parent = os.getppid()
    if parent == 1 or _watched_parent is not None:
        return  # already orphaned (or started by init): nothing to watch; or watching already
    _watched_parent = parent
    threading.Thread(target=_watch_parent, name="die-with-parent", daemon=True).start()
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)  # the thread takes the whole group down instead


def _watch_parent() -> None:
    while not parent_gone():
        time.sleep(PARENT_POLL_S)
    _kill_everything()


def _kill_everything() -> None:
    with _spawned_lock:
        children = [p for p in _spawned if p.returncode is None]
    for proc in children:  # not reaped, so the pid (their group id) is still theirs
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    for pid in descendants(os.getpid()):  # not our group to kill: only what is ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def descendants(root: int) -> list[int]:
    """Living descendants of `root`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[0] not in "ZX":
            children.setdefault(stat[1], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of `pid` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1])
    except (OSError, IndexError, ValueError):
        return None
