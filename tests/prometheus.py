"""A real Prometheus (Debian's package) for the tests: started on loopback with the given
config, stopped with its whole tree afterwards."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.procs import spawn, stop_tree
from tests.servers import free_port, wait_http


@contextmanager
def prometheus_server(folder: Path, config: str) -> Iterator[str]:
    """Yield the base URL of a Prometheus running `config` (YAML text) from `folder`."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is not installed: scripts/test installs it"
    (folder / "prometheus.yml").write_text(config)
    port = free_port()
    proc = spawn([binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}"])
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", 60, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_tree(proc, 20)
