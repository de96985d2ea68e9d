"""The local backend's replica processes: replaced when they die, backed off when they never start,
unhealthy ones removed first, ports held by something else skipped."""

from __future__ import annotations

import asyncio
import socket
import sys

import aiohttp

from autoscaler.local.replicas import LocalReplicas, last_line
from policies import ReplicaState
from tests.servers import free_port


def _failing(port: int) -> list[str]:
    return [sys.executable, "-c", "import sys; sys.stderr.write('qscale: error: --max-num-seqs: must be > 0\\n');"
            " sys.exit(2)"]


def _sleeper(port: int) -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)"]


async def _crash_loop(seconds: float) -> tuple[int, str]:
    fleet = LocalReplicas(_failing, free_port(), stop_grace_s=0)
    fleet.scale_to(1)
    started, why = 1, ""
    async with aiohttp.ClientSession() as session:
        t = 0.0
        while t < seconds:
            await asyncio.sleep(0.25)
            t += 0.25
            gone = [r for r in fleet.replicas if not r.alive()]
            if gone:
                why = last_line(gone[0].stderr)
            before = len(fleet.replicas)
            await fleet.refresh(session)
            started += max(0, len(fleet.replicas) - before + len(gone))
    await fleet.close(0)
    return started, why


def test_a_replica_that_never_starts_backs_off_and_says_why():
    """It was restarted every second, for ever, and the log never said why (stderr went nowhere)."""
    started, why = asyncio.run(_crash_loop(6.0))
    assert started <= 4, started  # 1, then back-offs of 1, 2, 4 s: not one a second
    assert why == "qscale: error: --max-num-seqs: must be > 0"


def test_a_port_held_by_another_process_is_skipped():
    """An orphan (or anything) listening on the base port is never taken for our replica."""
    base = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", base))
        held.listen()

        async def go():
            fleet = LocalReplicas(_sleeper, base, stop_grace_s=0)
            fleet.scale_to(2)
            ports = sorted(r.port for r in fleet.replicas)
            await fleet.close(0)
            return ports

        ports = asyncio.run(go())
    assert base not in ports and len(ports) == 2


def test_unhealthy_replicas_are_removed_first():
    async def go():
        fleet = LocalReplicas(_sleeper, free_port(), stop_grace_s=0)
        fleet.scale_to(3)
        for r in fleet.replicas:
            r.state, r.ready_at = ReplicaState.READY, r.started_at
        hung = fleet.replicas[0]
        fleet.failed(hung, at_once=True)
        assert hung not in fleet.serving()  # out of the rotation at once
        fleet.scale_to(2)
        draining = [r.name for r in fleet.replicas if r.state is ReplicaState.DRAINING]
        await fleet.close(0)
        return hung.name, draining

    hung, draining = asyncio.run(go())
    assert draining == [hung]
