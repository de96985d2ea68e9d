"""Fault runs against the local fleet: each fault injected under a step burst, and what users lost.

One run per fault: `qscale run` with the local backend (hybrid policy, emulated replicas,
cold starts of 1 s), a step burst replayed through the Service by the load generator
(which counts a request ok only when its whole response arrived), and the fault injected
into one READY replica (or the autoscaler) at `fault_at_s`. Measured per run:

* lost: requests not ok, and how many of them the fault allows (those in flight on a
  killed or hung replica, read from its /metrics just before the fault);
* refused after exit: requests sent once the autoscaler was told to stop (or was killed)
  and turned away whole: connection refused, closed before any answer, or the stopping
  Service's 503 (the local Service lives in the autoscaler process);
* the fleet (replicas asked for) before the fault, and its least while the burst lasts;
* ticks completed and failed after the fault; processes left once the run ended.

Run: python bench/faults.py [--only NAME ...] [--out out/faults.json]   (about 40 s per fault)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.loadgen import replay  # noqa: E402
from server.procs import descendants, spawn, stop_tree  # noqa: E402
from simulations.traffic import load_traffic  # noqa: E402
from tests.servers import free_port as _free_port  # noqa: E402

STUCK_TTFT_S = 8.0


@dataclass(frozen=True)
class Burst:
    """A compressed step burst: `low` req/s, `high` from `at_s` to `until_s`, the fault at `fault_at_s`."""

    low: float = 2.0
    high: float = 10.0
    at_s: float = 2.0
    until_s: float = 30.0
    duration_s: float = 32.0
    fault_at_s: float = 14.0
    fault_for_s: float = 12.0  # metric faults last this long
    output_mean: int = 100
    seed: int = 7

    @property
    def trace(self) -> str:
        return (f"synthetic:step?low={self.low}&high={self.high}&at={self.at_s}&until={self.until_s}"
                f"&duration={self.duration_s}&seed={self.seed}&output_mean={self.output_mean}")


@dataclass
class FaultResult:
    fault: str
    sent: int = 0
    ok: int = 0
    lost: int = 0
    allowed_loss: int = 0  # in flight on the killed or hung replica
    refused_after_exit: int = 0
    fleet_before: int = 0
    fleet_min_in_burst: int = 0
    ticks_after: int = 0
    failed_ticks: int = 0
    healthy_after: bool = False
    leftover: list[int] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    stuck: int = 0  # sent 5 s after the fault or later, and no first token within STUCK_TTFT_S
    drain_s: float | None = None  # SIGTERM to exit, when the autoscaler was stopped
    exit_code: int | None = None
    note: str = ""


# --- the fleet under test ------------------------------------------------------------------


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class Fleet:
    """One `qscale run` with the local backend, its ports and its fault folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.api, self.svc, self.base = _free_port(), _free_port(), 20000 + os.getpid() % 20000
        self.fault_dir = workdir / "faults"
        self.fault_dir.mkdir(exist_ok=True)
        self.config = workdir / "qscale.yaml"
        self.config.write_text(textwrap.dedent(f"""
            listen: 127.0.0.1:{self.api}
            tick_s: 1
            unhealthy_after_ticks: 5
            targets:
              - name: demo
                backend: local
                policy: hybrid
                params: {{min_replicas: 2, max_replicas: 6, default_cold_start_s: 2, demand_halflife_s: 2}}
                limits: {{min_replicas: 2, max_replicas: 6}}
                outage: {{fallback_after_s: 10, fallback_replicas: 2}}
                local:
                  model_name: demo-model
                  profile: llama3-8b-a100
                  max_num_seqs: 2
                  cold_start_s: 1
                  drain_grace_s: 20
                  service_port: {self.svc}
                  base_port: {self.base}
                  idle_timeout_s: 60
                  restart_after_s: 20
                  extra_args: [--fault-dir, {self.fault_dir}]
        """))
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "autoscaler.log"
        self.seen_pids: set[int] = set()

    def start(self) -> None:
        out = self.log.open("a")
        self.proc = spawn([sys.executable, "-m", "qscale.cli", "run", "--config", str(self.config)], cwd=ROOT,
                          env={**os.environ, "QSCALE_LOG_FORMAT": "json"}, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qscale run exited with {self.proc.returncode}: {self.log.read_text()[-800:]}")
            if _get(f"http://127.0.0.1:{self.api}/readyz")[0] == 200 and self.state()["current"] >= 2 \
                    and self.state()["signals"]["ready"] >= 2:
                return
            time.sleep(0.3)
        raise RuntimeError("the fleet did not become ready in 60 s")

    def state(self) -> dict:
        code, body = _get(f"http://127.0.0.1:{self.api}/api/v1/targets")
        return json.loads(body)["targets"]["demo"] if code == 200 else {}

    def replicas(self) -> dict[int, int]:
        """port -> pid of every replica process running now."""
        out = {}
        for pid in descendants(self.proc.pid) if self.proc else []:
            with contextlib.suppress(OSError):
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"serve" in args and b"--port" in args:
                    out[int(args[args.index(b"--port") + 1])] = pid
                    self.seen_pids.add(pid)
        return out

    def in_flight(self, port: int) -> int:
        code, body = _get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)
        total = 0.0
        for line in body.decode(errors="replace").splitlines() if code == 200 else []:
            if line.startswith(("vllm:num_requests_waiting{", "vllm:num_requests_running{")):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is not None:
            self.replicas()
            self.seen_pids.update(descendants(self.proc.pid))
            stop_tree(self.proc, grace_s)

    def leftover(self) -> list[int]:
        time.sleep(1.0)
        return [pid for pid in sorted(self.seen_pids) if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


# --- the faults -----------------------------------------------------------------------------


@dataclass
class Context:
    fleet: Fleet
    burst: Burst
    result: FaultResult
    victim_port: int = 0
    stopped_at: float | None = None  # monotonic, when the autoscaler was stopped (or killed)
    restarted_at: float | None = None  # monotonic, when a restarted one was ready again


def _victim(ctx: Context) -> tuple[int, int]:
    ports = ctx.fleet.replicas()
    port = min(ports)  # the oldest replica: READY since the start
    ctx.victim_port = port
    return port, ports[port]


def _metric_fault(mode: str) -> Callable[[Context], None]:
    def inject(ctx: Context) -> None:
        port, _ = _victim(ctx)
        path = ctx.fleet.fault_dir / str(port)
        path.write_text(mode)
        clear = ctx.burst.fault_for_s
        asyncio.get_running_loop().call_later(clear, lambda: path.unlink(missing_ok=True))

    return inject


def _kill_replica(ctx: Context) -> None:
    port, pid = _victim(ctx)
    ctx.result.allowed_loss = ctx.fleet.in_flight(port)
    os.kill(pid, signal.SIGKILL)


def _hang_replica(ctx: Context) -> None:
    port, pid = _victim(ctx)
    ctx.result.allowed_loss = ctx.fleet.in_flight(port)
    os.kill(pid, signal.SIGSTOP)


def _stop_autoscaler(ctx: Context) -> None:
    """SIGTERM, as a rollout would: requests in flight must finish (none lost)."""
    assert ctx.fleet.proc is not None
    ctx.fleet.replicas()
    ctx.fleet.proc.send_signal(signal.SIGTERM)
    ctx.stopped_at = time.monotonic()
    threading.Thread(target=_note_exit, args=(ctx, ctx.fleet.proc), daemon=True).start()


def _note_exit(ctx: Context, proc: subprocess.Popen) -> None:
    ctx.result.exit_code = proc.wait()
    assert ctx.stopped_at is not None
    ctx.result.drain_s = round(time.monotonic() - ctx.stopped_at, 1)


def _kill_and_restart(ctx: Context) -> None:
    """SIGKILL: every replica dies with it (their requests in flight are lost); a restart must
    start its own replicas, never adopt an orphan."""
    assert ctx.fleet.proc is not None
    ports = ctx.fleet.replicas()
    ctx.result.allowed_loss = sum(ctx.fleet.in_flight(p) for p in ports)
    old = set(ports.values())
    ctx.fleet.proc.send_signal(signal.SIGKILL)
    ctx.stopped_at = time.monotonic()
    ctx.fleet.proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in old):
        time.sleep(0.1)
    orphans = [p for p in old if _alive(p)]
    ctx.result.note = f"orphans 5 s after the kill: {len(orphans)}"
    ctx.fleet.start()
    ctx.restarted_at = time.monotonic()


FAULTS: dict[str, tuple[str, Callable[[Context], None] | None]] = {
    "none": ("no fault", None),
    "kill-replica": ("SIGKILL one replica", _kill_replica),
    "garbled-metrics": ("one replica's /metrics garbled", _metric_fault("garbled")),
    "inf-waiting": ("one replica reports +Inf waiting", _metric_fault("inf-waiting")),
    "nan-running": ("one replica reports NaN running", _metric_fault("nan-running")),
    "negative-gauge": ("one replica reports a negative gauge", _metric_fault("negative")),
    "truncated-metrics": ("one replica's /metrics cut short", _metric_fault("truncated")),
    "hang-replica": ("SIGSTOP one replica (hung pod)", _hang_replica),
    "sigterm-autoscaler": ("SIGTERM the autoscaler", _stop_autoscaler),
    "sigkill-autoscaler": ("SIGKILL the autoscaler, restart", _kill_and_restart),
}


# --- one run --------------------------------------------------------------------------------


async def _watch(ctx: Context, start: float, samples: list[tuple[float, dict]], done: asyncio.Event) -> None:
    while not done.is_set():
        state = await asyncio.to_thread(ctx.fleet.state)
        if state:
            samples.append((time.monotonic() - start, state))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=0.5)


async def _run(ctx: Context, inject: Callable[[Context], None] | None, csv: Path) -> tuple[list, list]:
    b = ctx.burst
    traffic = load_traffic(b.trace)
    samples: list[tuple[float, dict]] = []
    done = asyncio.Event()
    start = time.monotonic()
    watcher = asyncio.ensure_future(_watch(ctx, start, samples, done))
    load = asyncio.ensure_future(replay(traffic, f"http://127.0.0.1:{ctx.fleet.svc}/v1/completions", csv,
                                        max_output_tokens=200, max_prompt_tokens=400, timeout_s=30))
    if inject is not None:
        await asyncio.sleep(b.fault_at_s)
        await asyncio.to_thread(inject, ctx) if inject is _kill_and_restart else inject(ctx)
    summary = await load
    done.set()
    await watcher
    return samples, [summary, start]


def _records(csv: Path) -> list[dict]:
    import csv as csvlib

    with csv.open() as f:
        return list(csvlib.DictReader(f))


def _refused(x: dict) -> bool:
    """Turned away whole: connection refused, closed before any answer, or the stopping Service's 503."""
    return x.get("outcome") == "refused" or (x["status"] in ("0", "503") and not x.get("ttft_s"))


def _judge(ctx: Context, samples: list[tuple[float, dict]], records: list[dict], start: float) -> None:
    r, b = ctx.result, ctx.burst
    r.sent = len(records)
    ok = [x for x in records if x.get("outcome", "ok" if x["status"] == "200" else "error") == "ok"]
    r.ok = len(ok)
    for x in records:
        key = x.get("outcome") or x["status"]
        r.outcomes[key] = r.outcomes.get(key, 0) + 1
    down = (ctx.stopped_at - start if ctx.stopped_at is not None else float("inf"),
            ctx.restarted_at - start if ctx.restarted_at is not None else float("inf"))
    r.refused_after_exit = sum(1 for x in records if _refused(x) and down[0] <= float(x["sent_s"]) < down[1])
    # Sent once the fault had been seen (5 s on), yet waiting long for a first token: traffic
    # still going to a replica that cannot serve it.
    r.stuck = sum(1 for x in records if float(x["sent_s"]) >= b.fault_at_s + 5
                  and (x.get("ttft_s") in ("", None) or float(x["ttft_s"]) > STUCK_TTFT_S)
                  and not _refused(x))
    r.lost = r.sent - r.ok - r.refused_after_exit
    before = [s for t, s in samples if t <= b.fault_at_s]
    during = [s for t, s in samples if b.fault_at_s <= t <= b.until_s]
    r.fleet_before = before[-1]["current"] if before else 0
    r.fleet_min_in_burst = min((s["current"] for s in during), default=0)
    last = samples[-1][1] if samples else {}
    at_fault = next((s for t, s in samples if t >= b.fault_at_s), {})
    r.ticks_after = last.get("ticks", 0) - at_fault.get("ticks", 0)
    r.failed_ticks = last.get("failed_ticks", 0)


def run_fault(name: str, burst: Burst | None = None, workdir: Path | None = None) -> FaultResult:
    burst = burst or Burst()
    title, inject = FAULTS[name]
    with tempfile.TemporaryDirectory(prefix=f"qscale-fault-{name}-") as tmp:
        work = workdir or Path(tmp)
        fleet = Fleet(work)
        ctx = Context(fleet, burst, FaultResult(title))
        try:
            fleet.start()
            samples, (_, start) = asyncio.run(_run(ctx, inject, work / "load.csv"))
            ctx.result.healthy_after = _get(f"http://127.0.0.1:{fleet.api}/healthz")[0] == 200
            _judge(ctx, samples, _records(work / "load.csv"), start)
        finally:
            for path in fleet.fault_dir.iterdir():
                path.unlink()
            if fleet.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(fleet.proc.pid, signal.SIGCONT)
                for pid in list(fleet.seen_pids):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            fleet.stop()
            ctx.result.leftover = fleet.leftover()
    return ctx.result


# --- the table ------------------------------------------------------------------------------


def table(results: list[FaultResult]) -> str:
    rows = ["| fault | sent | lost | allowed (in flight on the victim) | stuck (no token in 8 s, sent 5 s after) "
            "| refused after exit | fleet before -> least in burst | ticks after / failed | healthy after | left over |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.fault} | {r.sent} | {r.lost} | {r.allowed_loss} | {r.stuck} | {r.refused_after_exit} | "
                    f"{r.fleet_before} -> {r.fleet_min_in_burst} | {r.ticks_after} / {r.failed_ticks} | "
                    f"{_health(r)} | {len(r.leftover)} |")
    return "\n".join(rows)


def _health(r: FaultResult) -> str:
    if r.drain_s is not None:
        return f"exited 0 after a {r.drain_s:.1f} s drain" if r.exit_code == 0 else f"exit {r.exit_code}"
    return "yes" if r.healthy_after else "no"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(FAULTS), help="faults to run (default: all)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    results = []
    for name in args.only or list(FAULTS):
        t0 = time.monotonic()
        results.append(run_fault(name))
        print(f"{name}: done in {time.monotonic() - t0:.0f} s ({results[-1].outcomes})", file=sys.stderr, flush=True)
    print(f"step burst {Burst().trace}, fault at {Burst().fault_at_s:.0f} s\n")
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
