"""Replica processes on this machine, kept like a ReplicaSet keeps pods.

* `spec` is the count asked for; `reconcile` starts replicas (one per free loopback port)
  or removes them (unhealthy ones first, `policies/victims.py`) until the non-draining
  ones match it. A replica that exits on its own is replaced, as a ReplicaSet replaces a
  pod, so a crash never shrinks the fleet; replicas that exit before ever being ready back
  off (1, 2, 4 ... 60 s) and the log says why (their stderr's last line).
* Health: every non-draining replica is probed (`GET /health`). STARTING becomes READY on
  its first 200 (readiness); a READY replica failing `failure_threshold` probes in a row
  (or that the Service saw fail) leaves the rotation; one unhealthy for `restart_after_s`
  is killed and replaced (liveness).
* Every replica is its own process group and gets SIGTERM when this process dies, even by
  SIGKILL (`server/procs.py`); a stopped replica's whole tree is stopped.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from policies import ReplicaState
from policies.victims import removal_order
from server.procs import spawn, stop_tree_async

log = structlog.get_logger("qscale.local")


@dataclass
class LocalReplica:
    name: str
    port: int
    proc: subprocess.Popen
    started_at: float
    state: ReplicaState = ReplicaState.STARTING
    ready_at: float | None = None
    failed_probes: int = 0
    unhealthy_since: float | None = None  # monotonic; None while healthy
    stderr: Path | None = None  # where its stderr goes (its last line says why it exited)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def serving(self) -> bool:
        """In the Service's rotation: ready and healthy."""
        return self.state is ReplicaState.READY and self.unhealthy_since is None

    def alive(self) -> bool:
        return self.proc.poll() is None


def port_is_free(port: int) -> bool:
    """True when nothing listens on the loopback port (an orphan from an earlier run would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalReplicas:
    def __init__(self, command, base_port: int, probe_timeout_s: float = 1.0, failure_threshold: int = 2,
                 restart_after_s: float = 20.0, stop_grace_s: float = 30.0,
                 env: Mapping[str, str] | None = None) -> None:
        """`command(port)`: the argv of one replica listening on `port`; `env`: added to its environment."""
        self.command = command
        self.env = dict(env or {})
        self.base_port = base_port
        self.probe_timeout_s = probe_timeout_s
        self.failure_threshold = failure_threshold
        self.restart_after_s = restart_after_s
        self.stop_grace_s = stop_grace_s
        self.spec = 0
        self.replicas: list[LocalReplica] = []
        self.crashes = 0  # replicas in a row that exited before they were ever ready
        self.next_start = 0.0  # monotonic: no replacement starts before this (crash-loop back-off)
        self._logs = Path(tempfile.mkdtemp(prefix="qscale-replicas-"))
        self.became_ready = asyncio.Event()
        self._ids = itertools.count(1)
        self._stopping: set[asyncio.Task] = set()

    # --- the count --------------------------------------------------------------------

    def live(self) -> list[LocalReplica]:
        return [r for r in self.replicas if r.state is not ReplicaState.DRAINING]

    def scale_to(self, n: int, remove_first: Collection[str] = ()) -> None:
        self.spec = max(0, n)
        self.reconcile(remove_first)

    def reconcile(self, remove_first: Collection[str] = ()) -> None:
        live = self.live()
        if time.monotonic() >= self.next_start:
            for _ in range(self.spec - len(live)):
                self._start_one()
        unhealthy = set(remove_first) | {r.name for r in live if r.unhealthy_since is not None}
        order = removal_order(live, lambda r: r.started_at, lambda r: r.name, unhealthy)
        for rep in order[: max(0, len(live) - self.spec)]:
            self._drain(rep)

    def _free_port(self) -> int:
        used = {r.port for r in self.replicas}
        port = self.base_port
        while port in used or not port_is_free(port):
            port += 1
        return port

    def _start_one(self) -> LocalReplica:
        port = self._free_port()
        name = f"replica-{next(self._ids)}"
        stderr = self._logs / f"{name}.stderr"
        with stderr.open("wb") as err:
            proc = spawn(self.command(port), env={**os.environ, **self.env, "QSCALE_LOG_FORMAT": "json"},
                         stderr=err)
        rep = LocalReplica(name, port, proc, time.time(), stderr=stderr)
        self.replicas.append(rep)
        log.info("replica started", replica=name, port=port, pid=proc.pid)
        return rep

    def _drain(self, rep: LocalReplica) -> None:
        """SIGTERM: the replica finishes what it has, then exits; killed after the grace."""
        rep.state = ReplicaState.DRAINING
        grace = 0.0 if rep.ready_at is None or rep.unhealthy_since is not None else self.stop_grace_s
        task = asyncio.ensure_future(stop_tree_async(rep.proc, grace))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        log.info("replica draining", replica=rep.name, port=rep.port, grace_s=grace)

    # --- health -----------------------------------------------------------------------

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        """Reap exited replicas (and replace them), probe the rest, restart hung ones."""
        for rep in list(self.replicas):
            if not rep.alive():
                if rep.state is not ReplicaState.DRAINING:
                    self._crashed(rep)
                self.replicas.remove(rep)
        await asyncio.gather(*(self._probe(session, r) for r in self.live()))
        for rep in self.live():
            if rep.unhealthy_since is not None and time.monotonic() - rep.unhealthy_since >= self.restart_after_s:
                log.warning("replica hung, restarting", replica=rep.name,
                            unhealthy_s=round(time.monotonic() - rep.unhealthy_since, 1))
                self._drain(rep)  # unhealthy: no grace, its group is killed
        self.reconcile()

    def _crashed(self, rep: LocalReplica) -> None:
        """A replica that exited on its own is replaced; one that never got ready backs off
        (1, 2, 4 ... 60 s, like a kubelet's CrashLoopBackOff) and says why it exited."""
        if rep.ready_at is None:
            self.crashes += 1
            backoff = min(60.0, 2.0 ** (self.crashes - 1))
            self.next_start = time.monotonic() + backoff
        else:
            self.crashes, backoff = 0, 0.0
        log.warning("replica exited", replica=rep.name, code=rep.proc.returncode, why=last_line(rep.stderr),
                    restart_in_s=backoff)

    async def _probe(self, session: aiohttp.ClientSession, rep: LocalReplica) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=self.probe_timeout_s)
            async with session.get(f"{rep.url}/health", timeout=timeout) as r:
                ok = r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        if ok:
            self._healthy(rep)
        elif rep.state is ReplicaState.READY:
            self.failed(rep)

    def _healthy(self, rep: LocalReplica) -> None:
        rep.failed_probes = 0
        self.crashes = 0
        if rep.unhealthy_since is not None:
            log.info("replica healthy again", replica=rep.name)
            rep.unhealthy_since = None
        if rep.state is ReplicaState.STARTING:
            rep.state = ReplicaState.READY
            rep.ready_at = time.time()
            self.became_ready.set()
            log.info("replica ready", replica=rep.name, cold_start_s=round(rep.ready_at - rep.started_at, 1))

    def failed(self, rep: LocalReplica, at_once: bool = False) -> None:
        """A failed probe, or (`at_once`) a failure the Service saw: out of rotation."""
        rep.failed_probes = self.failure_threshold if at_once else rep.failed_probes + 1
        if rep.failed_probes >= self.failure_threshold and rep.unhealthy_since is None:
            rep.unhealthy_since = time.monotonic()
            log.warning("replica unhealthy, out of rotation", replica=rep.name)

    def serving(self) -> list[LocalReplica]:
        return [r for r in self.replicas if r.serving]

    # --- the end ----------------------------------------------------------------------

    async def close(self, grace_s: float) -> None:
        """SIGTERM every replica (they finish in-flight work), kill what is left after `grace_s`."""
        for rep in self.replicas:
            rep.state = ReplicaState.DRAINING
        await asyncio.gather(*(stop_tree_async(r.proc, grace_s) for r in self.replicas), *self._stopping,
                             return_exceptions=True)
        self.replicas.clear()
        shutil.rmtree(self._logs, ignore_errors=True)


def last_line(path: Path | None) -> str:
    """The last non-empty line of a replica's stderr (its one-line error), or ''."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()] if path else []
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
