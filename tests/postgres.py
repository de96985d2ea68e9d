"""A real PostgreSQL (Debian's package) for the tests that need a shared database: a fresh
cluster in a temporary folder, on loopback, stopped with its whole tree afterwards."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.procs import spawn, stop_tree
from tests.servers import free_port

USER = "qscale"


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name) else [])
    assert found, f"PostgreSQL's {name} is not installed: scripts/test installs Debian's postgresql"
    return found[-1]


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user."""
    return "postgres" if os.geteuid() == 0 else None


@contextmanager
def postgres() -> Iterator[str]:
    """Yield the URL of a fresh database served on 127.0.0.1. Its folder is under /tmp itself:
    the `postgres` user cannot enter pytest's root-only temporary folders."""
    with tempfile.TemporaryDirectory(prefix="qscale-pg-") as name:
        yield from _serve(Path(name))


def _serve(folder: Path) -> Iterator[str]:
    data, sock = folder / "data", folder / "sock"
    data.mkdir(parents=True)
    sock.mkdir()
    user = _run_as()
    if user is not None:
        shutil.chown(folder, user, user)
        for p in (data, sock):
            shutil.chown(p, user, user)
    init = spawn([_binary("initdb"), "-D", str(data), "-U", USER, "--auth=trust", "--no-sync"],
                 user=user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = init.communicate(timeout=120)
    assert init.returncode == 0, f"initdb failed: {out[-2000:]}"
    port = free_port()
    server = spawn([_binary("postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
                    "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"],
                   user=user, stderr=subprocess.DEVNULL)
    try:
        url = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        _wait_ready(url, server)
        yield url
    finally:
        stop_tree(server, grace_s=10)


def _wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 60.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            assert server.poll() is None, "postgres exited at start"
            assert time.monotonic() < deadline, "postgres did not accept connections within 60 s"
            time.sleep(0.2)
