"""`qscale record`: a trace rebuilt from vLLM's metrics in a real Prometheus.

The pure steps (bucket sampling, whole counts, window arrivals, the guards) against
hand-computed expectations; the command's one-line errors; and the whole path: emulated
replicas serve a known trace sent by the load generator, Debian's Prometheus scrapes them
every second, `qscale record` rebuilds the trace in 10 s windows, and the two traces are
compared window by window, by length quantiles, and by what the simulator makes of them.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from policies.errors import UserError
from qscale.cli import main
from qscale.commands.record_cmd import instant
from server.loadgen import replay
from simulations.traffic import load_traffic
from simulations.traffic.record import (
    TimeRange,
    WindowReading,
    histogram,
    record,
    sample_lengths,
    whole_counts,
    window_arrivals,
)
from tests.prometheus import prometheus_server
from tests.servers import free_port, free_port_run, http_get, qscale, qscale_process, wait_http

STEP_S = 10
RATES = (3, 8, 12, 5, 10)  # known trace: requests/s in each 10 s window (a Poisson process)
SCRAPE_S = 1.0
RATE_SCALE = 22  # for the simulator: a fleet of 4 replicas, mid-way between 3 and 5
# vLLM's 1-2-5 length buckets (wire-formats.md 1.2), up to the emulated max_model_len (8192).
BOUNDS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# --- pure steps -------------------------------------------------------------------------------


def test_log_uniform_inside_a_bucket():
    """Bucket (2, 5]: P(3) = ln(3/2)/ln(5/2) = 0.4425, P(4) = ln(4/3)/ln 2.5 = 0.3140,
    P(5) = ln(5/4)/ln 2.5 = 0.2435. 100,000 draws: 3 sigma is under 0.005."""
    hist = histogram({1.0: 0.0, 2.0: 0.0, 5.0: 7.0, math.inf: 7.0})
    draws = sample_lengths(hist, 100_000, np.random.default_rng(1))
    shares = np.bincount(draws, minlength=6)[3:6] / len(draws)
    assert np.allclose(shares, [0.4425, 0.3140, 0.2435], atol=0.005)


def test_buckets_drawn_by_their_share_first_uniform_inf_at_the_last_bound():
    """Cumulative {10: 25, 20: 100, 50: 100, +Inf: 120}: 25/120 in (0, 10] (uniform on 1..10,
    mean 5.5), 75/120 in (10, 20], none in (20, 50], 20/120 above 50 (drawn as 50)."""
    hist = histogram({10.0: 25.0, 20.0: 100.0, 50.0: 100.0, math.inf: 120.0})
    draws = sample_lengths(hist, 120_000, np.random.default_rng(2))
    first, second, last = draws[draws <= 10], draws[(draws > 10) & (draws <= 20)], draws[draws > 20]
    assert len(first) / len(draws) == pytest.approx(25 / 120, abs=0.005)
    assert len(second) / len(draws) == pytest.approx(75 / 120, abs=0.005)
    assert set(last.tolist()) == {50} and len(last) / len(draws) == pytest.approx(20 / 120, abs=0.005)
    assert first.min() == 1 and first.mean() == pytest.approx(5.5, abs=0.05)


def test_lengths_bent_to_the_exact_mean_stay_in_their_buckets():
    """All in (100, 200]: a mean of 150 is met (to the token: whole lengths, 30 halvings);
    120 bends toward 101; beyond reach, 500 gives all 200 and 50 all 101."""
    hist = histogram({100.0: 0.0, 200.0: 10.0, math.inf: 10.0})
    for mean in (150.0, 120.0):
        draws = sample_lengths(hist, 1000, np.random.default_rng(4), mean)
        assert draws.min() >= 101 and draws.max() <= 200 and abs(draws.mean() - mean) < 0.01
    assert set(sample_lengths(hist, 100, np.random.default_rng(4), 500.0).tolist()) == {200}
    assert set(sample_lengths(hist, 100, np.random.default_rng(4), 50.0).tolist()) == {101}
    plain = sample_lengths(hist, 100_000, np.random.default_rng(4))  # log-uniform: mean 100/ln 2 + 0.5
    assert plain.mean() == pytest.approx(100 / math.log(2) + 0.5, abs=0.5)


def test_histogram_guards():
    """Per-bucket increases from cumulative ones; float noise that dips is flattened; NaN,
    Inf and negative bucket increases count nothing."""
    hist = histogram({1.0: 2.0, 2.0: 1.9999999, 5.0: 6.0, 10.0: math.nan, math.inf: 6.0})
    assert hist.upper.tolist() == [1.0, 2.0, 5.0, 10.0, math.inf]
    assert hist.mass.tolist() == [2.0, 0.0, 4.0, 0.0, 0.0]
    assert histogram({}) is None


def test_whole_counts_follow_the_running_total():
    """0.4, 0.4, 0.4, 1.6, 2.2: running 0.4, 0.8, 1.2, 2.8, 5.0 rounds to 0, 1, 1, 3, 5."""
    counts, total = whole_counts([0.4, 0.4, 0.4, 1.6, 2.2])
    assert counts == [0, 1, 0, 2, 2] and total == pytest.approx(5.0)
    # A second piece goes on from the first one's running total: 0.6 then 0.6 is 1 in all.
    first, carried = whole_counts([0.6])
    second, _ = whole_counts([0.6], carried)
    assert first + second == [1, 0]


def test_window_arrivals_are_uniform_order_statistics_shifted():
    """n points in [offset - shift, offset + step - shift), sorted; their mean over many
    windows is the window's middle (offset + step/2 - shift = 100 + 5 - 2 = 103)."""
    rng = np.random.default_rng(3)
    arrivals = window_arrivals(100.0, 10.0, 50_000, 2.0, rng)
    assert len(arrivals) == 50_000 and np.all(np.diff(arrivals) >= 0)
    assert arrivals.min() >= 98.0 and arrivals.max() < 108.0
    assert arrivals.mean() == pytest.approx(103.0, abs=0.05)  # 3 sigma = 3 * 10/sqrt(12)/sqrt(n) = 0.04


def _reading(start: float, requests: float, e2e: tuple[float, float] | None = (0.0, 0.0),
             lengths: bool = True) -> WindowReading:
    prompt = histogram({100.0: 0.0, 200.0: 4.0, math.inf: 4.0}) if lengths else None
    output = histogram({10.0: 2.0, 20.0: 4.0, math.inf: 4.0}) if lengths else None
    return WindowReading(start, requests, *(e2e or (None, None)), prompt, output, 600.0, 50.0)


def test_record_skips_bad_windows_borrows_histograms_and_writes_a_loadable_trace(tmp_path):
    """Windows of 10 s from t=1000: increases 2.4, NaN, 3.3, -5, 0.3, none, 1.2. The NaN,
    negative and missing ones are skipped (3); the rest run 2.4, 5.7, 6.0, 7.2, rounding to
    2, 6, 6, 7: counts 2, 4, 0, 1. Window 2 has a mean e2e of 30/10 = 3 s: its arrivals are
    in [17, 27). The last window has no histogram: it takes the piece's. Each window's
    prompt histogram sums to 600 over 4 requests: the rebuilt prompts average 150, except
    the borrowing window's (no exact mean of its own: plain log-uniform)."""
    readings = [_reading(1000, 2.4), _reading(1010, math.nan), _reading(1020, 3.3, (30.0, 10.0)),
                _reading(1030, -5.0), _reading(1040, 0.3), _reading(1050, None),
                _reading(1060, 1.2, lengths=False)]
    out = tmp_path / "trace.csv"
    summary = record(lambda start, n: readings[:n], TimeRange(1000.0, 10, 7), seed=5, out=out)
    rows = list(csv.DictReader(out.open()))
    times = [float(r["timestamp_s"]) for r in rows]
    assert [r for r in rows[0]] == ["timestamp_s", "input_tokens", "output_tokens"]
    assert len(rows) == summary.requests == 7 and times == sorted(times)
    assert sum(0 <= t < 10 for t in times) == 2 and sum(17 <= t < 27 for t in times) == 4
    assert sum(60 <= t < 70 for t in times) == 1
    assert all(101 <= int(r["input_tokens"]) <= 200 for r in rows)
    own = [int(r["input_tokens"]) for r in rows if float(r["timestamp_s"]) < 60]
    assert len(own) == 6 and sum(own) / 6 == pytest.approx(150, abs=0.5)
    assert all(1 <= int(r["output_tokens"]) <= 20 for r in rows)
    assert (summary.windows, summary.skipped_windows, summary.borrowed_windows) == (7, 3, 1)
    chunks = list(load_traffic(str(out)))  # what `qscale simulate --trace` reads
    assert sum(len(c) for c in chunks) == 7


def test_record_without_any_data_says_so_and_leaves_no_file(tmp_path):
    out = tmp_path / "trace.csv"
    with pytest.raises(UserError, match="no vllm:request_success_total data"):
        record(lambda start, n: [_reading(start + 10 * i, None) for i in range(n)], TimeRange(0.0, 10, 3), 0, out)
    assert not out.exists()


def test_time_forms():
    now = 1_714_000_000.5
    assert instant("now", "--end", now) == now
    assert instant("now-1h", "--start", now) == now - 3600
    assert instant("-90m", "--start", now) == now - 5400
    assert instant("1704067200", "--start", now) == 1_704_067_200
    assert instant("2024-01-01T00:00:00Z", "--start", now) == 1_704_067_200
    assert instant("2024-01-01T00:00:00", "--start", now) == 1_704_067_200  # no zone: UTC
    assert instant("2024-01-01T01:00:00+01:00", "--start", now) == 1_704_067_200


# --- one-line errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--start", "now-1h", "--end", "now-2h"], "must be after --start"),
    (["--start", "now-5s", "--step", "60"], "shorter than one --step (60 s)"),
    (["--start", "yesterday"], "--start must be ISO-8601"),
    (["--start", "2999-01-01T00:00:00Z"], "is in the future"),
    (["--start", "now-1h", "--end", "2999-01-01T00:00:00Z"], "--end '2999-01-01T00:00:00Z' is in the future"),
    (["--start", "now-1h", "--step", "0"], "--step: must be at least 1"),
    (["--start", "now-1h", "--selector", 'job="vllm"'], "--selector must be label matchers in braces"),
])
def test_bad_ranges_and_flags_are_one_line_exit_2(args, message, capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["record", "--prometheus", url, "--out", str(tmp_path / "t.csv"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("qscale: error:") and "\n" not in err
    assert not (tmp_path / "t.csv").exists()


def test_unreachable_prometheus_is_one_line_exit_2(tmp_path):
    out = tmp_path / "t.csv"
    proc = qscale("record", "--prometheus", f"http://127.0.0.1:{free_port()}", "--start", "now-10m",
                  "--out", str(out), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("qscale: error: cannot reach Prometheus at http://127.0.0.1:")
    assert proc.stderr.count("\n") == 1 and not out.exists()


# --- against a real Prometheus ------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas():
    port = free_port_run(2)
    with qscale_process("serve", "--port", str(port), "--replicas", "2", "--model-name", "m") as proc:
        wait_http(f"http://127.0.0.1:{port + 1}/health", 30, proc)
        yield [port, port + 1]


@pytest.fixture(scope="module")
def prometheus(replicas, tmp_path_factory):
    """Debian's Prometheus scraping both replicas every second (job "vllm")."""
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in replicas)
    with prometheus_server(tmp_path_factory.mktemp("prom"), textwrap.dedent(f"""
        global: {{scrape_interval: {SCRAPE_S:g}s, evaluation_interval: {SCRAPE_S:g}s}}
        scrape_configs:
          - job_name: vllm
            static_configs:
              - targets: [{targets}]
    """)) as url:
        _wait_until_scraped(url, len(replicas))
        yield url


def _wait_until_scraped(url: str, targets: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = http_get(f"{url}/api/v1/query?query=up%7Bjob%3D%22vllm%22%7D%3D%3D1")
        if status == 200 and len(json.loads(body)["data"]["result"]) == targets:
            return
        time.sleep(0.2)
    raise TimeoutError(f"Prometheus did not scrape {targets} targets in {timeout_s}s")


def _known_trace(path: Path) -> np.ndarray:
    """The trace the load generator sends: Poisson at RATES per window, log-normal lengths
    (prompt median 300, output median 40), seeded. Rows: (arrival s, prompt, output)."""
    rng = np.random.default_rng(11)
    rows = []
    for k, rate in enumerate(RATES):
        n = rng.poisson(rate * STEP_S)
        arrival = np.sort(k * STEP_S + STEP_S * rng.random(n))
        prompt = np.clip(np.round(rng.lognormal(np.log(300), 0.8, n)), 8, 3000)
        output = np.clip(np.round(rng.lognormal(np.log(40), 0.7, n)), 2, 300)
        rows.append(np.column_stack([arrival, prompt, output]))
    trace = np.concatenate(rows)
    _write_generic(path, trace)
    return trace


def _write_generic(path: Path, trace: np.ndarray) -> None:
    with path.open("w") as f:
        f.write("timestamp_s,input_tokens,output_tokens\n")
        f.writelines(f"{t:.3f},{int(p)},{int(o)}\n" for t, p, o in trace)


def _read_generic(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


@pytest.fixture(scope="module")
def recorded(replicas, prometheus, tmp_path_factory):
    """(known trace, rebuilt trace with times from the known trace's start, record's stdout)."""
    tmp = tmp_path_factory.mktemp("record")
    status, body = http_get(f"http://127.0.0.1:{replicas[0]}/metrics")
    assert b"vllm:request_prompt_tokens_bucket" in body, "the emulator has no per-request length histograms"
    known = _known_trace(tmp / "known.csv")
    t0 = math.ceil(time.time()) + 1  # the known trace's time 0, on a whole second (record's windows)
    time.sleep(t0 - time.time())
    summary = asyncio.run(replay(load_traffic(str(tmp / "known.csv")), [
        f"http://127.0.0.1:{p}/v1/completions" for p in replicas], tmp / "load.csv", stream=False))
    assert summary.ok == summary.sent == len(known), summary
    end = t0 + len(RATES) * STEP_S + STEP_S  # one more window: the last requests finish in it
    time.sleep(max(0.0, end + 2 * SCRAPE_S - time.time()))
    out = tmp / "rebuilt.csv"
    proc = qscale("record", "--prometheus", prometheus, "--selector", '{job="vllm"}', "--start",
                  str(t0 - STEP_S), "--end", str(end), "--step", str(STEP_S), "--seed", "7", "--out", str(out),
                  timeout=60)
    assert proc.returncode == 0, proc.stderr
    (tmp / "record.out").write_text(proc.stdout + proc.stderr)  # kept for a look after a failure
    rebuilt = _read_generic(out)
    rebuilt[:, 0] -= STEP_S  # the range started one window before the traffic
    return known, rebuilt, proc.stdout


def test_arrivals_per_window_match_the_known_trace(recorded):
    """The total within 5%, each 10 s window within 10% of the known count (at least 5).

    Total: increase() sees a window through its samples, about 9 s apart at a 1 s scrape,
    and scales their difference by ~10/9; the requests that finish in the ~1 s gaps between
    windows are estimated, not counted: a spread of about sqrt(N/10) requests, 6 of ~380
    here; 5% is 3 of those. Per window: a request can change window only when its recorded
    time (its finish, seen at the next scrape, moved back by the window's mean e2e, ~0.4 s
    here) crosses an edge its arrival did not: the requests within about 1 s of an edge,
    10% of a window at an even rate; the gap estimate adds about sqrt(n/10) (5 covers
    the small windows)."""
    known, rebuilt, stdout = recorded
    assert abs(len(rebuilt) - len(known)) <= 0.05 * len(known), (len(known), len(rebuilt))
    edges = np.arange(-STEP_S, (len(RATES) + 2) * STEP_S, STEP_S)
    known_counts = np.histogram(known[:, 0], edges)[0]
    rebuilt_counts = np.histogram(rebuilt[:, 0], edges)[0]
    tolerance = np.maximum(5, 0.1 * known_counts)
    assert np.all(np.abs(rebuilt_counts - known_counts) <= tolerance), (known_counts, rebuilt_counts)
    assert f"recorded {len(rebuilt)} requests" in stdout


def _bucket(value: float) -> tuple[int, int]:
    """The 1-2-5 bucket (lo, hi] that holds `value`."""
    i = int(np.searchsorted(BOUNDS, value, side="left"))
    return BOUNDS[i - 1], BOUNDS[i]


@pytest.mark.parametrize(("column", "name"), [(1, "prompt"), (2, "output")])
@pytest.mark.parametrize("q", [0.5, 0.9])
def test_length_quantiles_match_within_a_bucket(recorded, column, name, q):
    """The rebuilt q-quantile lies in the bucket of the known one, widened by sampling noise:
    between the bucket of the known (q - d)-quantile and that of the (q + d)-quantile, with
    d = 3 sqrt(q (1 - q) / n) (both samples have about n draws)."""
    known, rebuilt, _ = recorded
    d = 3 * math.sqrt(q * (1 - q) / len(known))
    low = _bucket(np.quantile(known[:, column], max(0.0, q - d)))[0]
    high = _bucket(np.quantile(known[:, column], min(1.0, q + d)))[1]
    got = np.quantile(rebuilt[:, column], q)
    assert low < got <= high, f"{name} p{q * 100:.0f}: rebuilt {got}, known in ({low}, {high}]"


def _simulate(trace: Path, out: Path, rate_scale: float = RATE_SCALE) -> dict:
    proc = qscale("simulate", "--trace", str(trace), "--policy", "static-best", "--policy", "oracle",
                  "--policy", "bound", "--rate-scale", str(rate_scale), "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    return {"replicas": data["static_best_replicas"],
            **{name: row["gpu_hours"] for name, row in data["policies"].items()}}


def test_the_simulator_sizes_both_traces_alike(recorded, tmp_path):
    """At 22x the rate (a fleet of several replicas), over the traffic's own span: the same
    static-best fleet, its (and the oracle's) GPU-hours within 5%, the work bound (GPU-hours
    of the tokens alone) within 8%.

    The rebuilt trace is cut to the traffic's span: a window's requests are spread over the
    whole window, so the last window's few late finishers land up to a step after the
    traffic ended, which a static fleet would pay for. Then a static fleet's GPU-hours differ
    by the spans' ends only (a second or two of 50 s). The work bound follows the token
    totals: the lengths are bent to the histograms' exact sums, but, as with the count, the
    requests that finish in the ~1 s gaps between a window's samples are estimated, not
    seen: a relative spread of sqrt(0.1 (1 + cv^2) / N), 2.2% for N = 380 log-normal
    lengths (cv^2 = e^0.64 - 1 = 0.9); 8% is over 3 of those. The known trace's fleet is
    first checked to stay the same with 8% less or more traffic, so equal sizes are not
    luck at an edge."""
    known, rebuilt, _ = recorded
    span = len(RATES) * STEP_S
    _write_generic(tmp_path / "known.csv", known)
    _write_generic(tmp_path / "rebuilt.csv", rebuilt[(rebuilt[:, 0] >= 0) & (rebuilt[:, 0] < span)])
    a = _simulate(tmp_path / "known.csv", tmp_path / "known.json")
    margin = [_simulate(tmp_path / "known.csv", tmp_path / "m.json", RATE_SCALE * f)["replicas"] for f in (0.92, 1.08)]
    assert margin == [a["replicas"]] * 2, (margin, a)
    b = _simulate(tmp_path / "rebuilt.csv", tmp_path / "rebuilt.json")
    assert a["replicas"] == b["replicas"] > 1, (a, b)
    for name, tolerance in (("static-best", 0.05), ("oracle", 0.05), ("bound", 0.08)):
        assert b[name] == pytest.approx(a[name], rel=tolerance), (name, a, b)


def test_prometheus_refuses_a_bad_selector_in_one_line(prometheus, tmp_path):
    proc = qscale("record", "--prometheus", prometheus, "--selector", '{job=~"("}', "--start", "now-1m",
                  "--step", "10", "--out", str(tmp_path / "t.csv"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"qscale: error: Prometheus at {prometheus} refused the query: ")
    assert proc.stderr.count("\n") == 1


def test_a_selector_without_series_is_no_data(prometheus, tmp_path):
    proc = qscale("record", "--prometheus", prometheus, "--selector", '{job="nope"}', "--start", "now-1m",
                  "--step", "10", "--out", str(tmp_path / "t.csv"), timeout=60)
    assert proc.returncode == 2
    assert "no vllm:request_success_total data for the selector between" in proc.stderr
    assert not (tmp_path / "t.csv").exists()
