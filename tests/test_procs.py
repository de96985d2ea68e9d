"""server.procs: children die with their parent (even a SIGKILLed one), stop_tree reaches a
whole tree, and `qscale serve` (emulated, and the vLLM launcher's tree) never outlives its parent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from server.procs import spawn, stop_tree, stop_tree_async
from tests.servers import ROOT, free_port, wait_http

GONE_WITHIN_S = 5.0


def _state(pid: int) -> str | None:
    """The process state letter from /proc, or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # a zombie re-parented to pytest (conftest makes it a subreaper)
    return _state(pid) not in (None, "Z", "X")


def _wait_gone(pids: list[int], timeout_s: float = GONE_WITHIN_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _python(code: str, **kwargs) -> subprocess.Popen:
    """A small Python program (repository on its path) whose stdout we read line by line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return spawn([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True,
                 **kwargs)


def _read_pids(proc: subprocess.Popen, n: int) -> list[int]:
    assert proc.stdout is not None
    pids = [int(proc.stdout.readline()) for _ in range(n)]
    assert all(pids), pids
    return pids


@contextlib.contextmanager
def _cleanup(proc: subprocess.Popen, pids: list[int]):
    try:
        yield
    finally:
        stop_tree(proc, 0.0)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(pids, 2.0)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_spawned_child_dies_when_its_parent_is_sigkilled():
    parent = _python("""
        import time
        from server.procs import spawn
        child = spawn(["sleep", "60"])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    child_pid = _read_pids(parent, 1)[0]
    with _cleanup(parent, [child_pid]):
        assert _alive(child_pid)
        os.kill(parent.pid, signal.SIGKILL)  # no chance to clean up: only the kernel can tell the child
        parent.wait(5)
        assert _wait_gone([child_pid]) == []


def test_die_with_parent_kills_the_whole_tree_below_it():
    # parent -> child (calls die_with_parent, ignores SIGTERM) -> grandchildren: one plain
    # subprocess in the child's group, one spawned into its own group; neither knows the parent.
    parent = _python("""
        import subprocess, sys, time
        from server.procs import spawn
        child = spawn([sys.executable, "-c", '''
        import signal, subprocess, sys, time
        from server.procs import die_with_parent, spawn
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only die_with_parent may end it
        die_with_parent()
        stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
        plain = subprocess.Popen(stubborn)
        own_group = spawn(stubborn)
        print(plain.pid, own_group.pid, flush=True)
        time.sleep(60)
        '''], stdout=subprocess.PIPE, text=True)
        print(child.pid, flush=True)
        print(child.stdout.readline().strip().replace(" ", chr(10)), flush=True)
        time.sleep(60)
    """)
    pids = _read_pids(parent, 3)
    with _cleanup(parent, pids):
        assert all(_alive(p) for p in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        assert _wait_gone(pids) == []


TREE = """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a leader that ignores SIGTERM
    kids = [subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "time.sleep(60)"]), subprocess.Popen(["sleep", "60"])]
    grandkid = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    print(kids[0].pid, kids[1].pid, grandkid.pid, grandkid.stdout.readline().strip(), sep=chr(10), flush=True)
    time.sleep(60)
"""


def test_stop_tree_kills_a_whole_tree_within_the_grace():
    proc = _python(TREE)
    pids = _read_pids(proc, 4)
    with _cleanup(proc, pids):
        t0 = time.monotonic()
        stop_tree(proc, grace_s=0.5)
        took = time.monotonic() - t0
        assert proc.returncode == -signal.SIGKILL
        assert 0.5 <= took < 3.0
        assert _wait_gone(pids, 1.0) == []
        stop_tree(proc, grace_s=0.5)  # already dead: nothing to do, no error


def test_stop_tree_lets_a_leader_that_exits_on_sigterm_go_early():
    proc = spawn(["sleep", "60"])
    t0 = time.monotonic()
    stop_tree(proc, grace_s=10)
    assert proc.returncode == -signal.SIGTERM and time.monotonic() - t0 < 2.0


def test_stop_tree_async_keeps_the_event_loop_running():
    proc = _python(TREE)
    pids = _read_pids(proc, 4)

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.05)

        task = asyncio.create_task(ticker())
        await stop_tree_async(proc, grace_s=1.0)
        task.cancel()
        return ticks

    with _cleanup(proc, pids):
        assert asyncio.run(main()) >= 10  # ~20 ticks in 1 s; a blocking wait gives 1
        assert proc.returncode == -signal.SIGKILL
        assert _wait_gone(pids, 1.0) == []


def _stream(base: str, out: list) -> None:
    body = json.dumps({"prompt": "x", "max_tokens": 5000, "stream": True}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            out.append(resp.read())
    except Exception as exc:  # noqa: BLE001 - the server dies under it: any error is expected
        out.append(exc)


def test_serve_dies_at_once_with_its_parent_even_mid_request():
    # `qscale serve` gets SIGTERM (PDEATHSIG) when its parent dies; with a 60-s drain grace and a
    # long request in flight it must still go at once, not drain with nobody to answer to.
    port = free_port()
    parent = _python(f"""
        import subprocess, sys, time
        from server.procs import spawn
        serve = spawn([sys.executable, "-m", "qscale.cli", "serve", "--port", "{port}", "--drain-grace", "60"],
                      cwd={str(ROOT)!r})
        print(serve.pid, flush=True)
        time.sleep(120)
    """)
    serve_pid = _read_pids(parent, 1)[0]
    with _cleanup(parent, [serve_pid]):
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 20)
        out: list = []
        client = threading.Thread(target=_stream, args=(base, out))
        client.start()
        time.sleep(0.5)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        assert _wait_gone([serve_pid], 3.0) == []
        client.join(20)


FAKE_VLLM = '''
import multiprocessing, os, sys, time
def engine_core(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)
if __name__ == "__main__":
    out = sys.argv[sys.argv.index("--port") + 1] + ".pids"
    with open(os.environ["FAKE_VLLM_DIR"] + "/" + out, "a") as f:
        f.write(f"{os.getpid()}\\n")
    ctx = multiprocessing.get_context("spawn")  # as the CPU build forces: also starts a resource tracker
    proc = ctx.Process(target=engine_core, args=(os.environ["FAKE_VLLM_DIR"] + "/" + out,), name="EngineCore")
    proc.start()
    time.sleep(120)
'''


@pytest.fixture
def fake_vllm(tmp_path: Path) -> dict[str, str]:
    """A `vllm` package whose api server starts an 'EngineCore' the way vLLM does (multiprocessing)."""
    pkg = tmp_path / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (tmp_path / "vllm", tmp_path / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_VLLM)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "FAKE_VLLM_DIR": str(tmp_path)}


def _vllm_tree(tmp: str, port: int, n: int = 2, timeout_s: float = 20.0) -> list[int]:
    path = Path(tmp) / f"{port}.pids"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(pids := path.read_text().split()) >= n:
            return [int(p) for p in pids]
        time.sleep(0.1)
    raise TimeoutError(f"the fake vLLM did not start in {timeout_s}s")


def _descendants_of(pid: int) -> list[int]:
    from server.procs import descendants

    return descendants(pid)


@pytest.mark.parametrize("how", ["sigterm", "sigkill-serve"])
def test_the_vllm_launcher_takes_its_whole_tree_down(fake_vllm, how):
    port = free_port()
    serve = spawn([sys.executable, "-m", "qscale.cli", "serve", "--engine", "vllm", "--model", "m", "--port",
                   str(port), "--python", sys.executable, "--drain-grace", "1"], cwd=ROOT, env=fake_vllm)
    pids: list[int] = []
    with _cleanup(serve, pids):
        pids += _vllm_tree(fake_vllm["FAKE_VLLM_DIR"], port)  # api server, EngineCore
        time.sleep(0.3)
        pids += [p for p in _descendants_of(serve.pid) if p not in pids]  # + resource tracker, wrappers
        assert len(pids) >= 3, pids
        if how == "sigterm":
            serve.send_signal(signal.SIGTERM)  # forwarded as stop_tree: the fake ignores nothing
            assert serve.wait(10) in (0, 128 + signal.SIGTERM, 128 + signal.SIGKILL)
        else:
            os.kill(serve.pid, signal.SIGKILL)  # api server's die_with_parent takes its group down
            serve.wait(5)
        assert _wait_gone(pids, 3.0) == [], [(p, _state(p)) for p in pids]


@pytest.mark.skipif(os.environ.get("QSCALE_LEAK_PROBE") != "1", reason="run by the test below only")
def test_leak_probe():
    # An orphan (the shell exits, its `sleep` lives on): only a subreaper keeps it in view.
    subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $! > \"$QSCALE_LEAK_PROBE_PID\""], check=True)


def test_the_session_fails_when_a_test_leaves_a_process_behind(tmp_path):
    pid_file = tmp_path / "pid"
    env = {**os.environ, "QSCALE_LEAK_PROBE": "1", "QSCALE_LEAK_PROBE_PID": str(pid_file),
           "QSCALE_LEFTOVER_GRACE_S": "0.3"}
    run = spawn([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_procs.py::test_leak_probe"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = run.communicate(timeout=60)
    finally:
        stop_tree(run, 0.0)
    leaked = int(pid_file.read_text())
    assert run.returncode != 0, out
    assert "left running after the tests" in out and f"{leaked} sleep 30" in out, out
    assert _wait_gone([leaked], 1.0) == []  # and the check killed it
