"""`qscale simulate`: the JSON it writes, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest


def qscale(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qscale.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_simulate_writes_the_promised_json(traces, tmp_path):
    out = tmp_path / "out.json"
    plot = tmp_path / "out.png"
    proc = qscale("simulate", "--trace", str(traces / "AzureLLMInferenceTrace_conv.csv"), "--policy", "hpa",
                  "--policy", "hybrid", "--duration", "900", "--json", str(out), "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for name in ("hpa", "hybrid"):
        row = data["policies"][name]
        for key in ("slo_attainment", "ttft_p99_s", "gpu_hours", "dropped", "scale_events", "oracle_gpu_hours"):
            assert key in row, key
        assert 0 <= row["slo_attainment"] <= 1
        assert row["gpu_hours"] > 0 and row["oracle_gpu_hours"] > 0
        assert row["timeline"]
    assert "hybrid" in proc.stdout and "x oracle" in proc.stdout
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_set_reaches_the_policy(tmp_path):
    out = tmp_path / "o.json"
    proc = qscale("simulate", "--trace", "synthetic:poisson?rate=5&duration=300", "--policy", "static",
                  "--set", "static.replicas=3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    timeline = json.loads(out.read_text())["policies"]["static"]["timeline"]
    assert max(row["ready"] + row["starting"] for row in timeline) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "/no/such.csv", "--policy", "hpa"], "trace file not found"),
        (["--trace", "synthetic:poisson", "--policy", "nope"], "unknown policy 'nope'"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--rate-scale", "-2"], "--rate-scale must be positive"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--set", "hpa.tolerance=lots"], "hpa: tolerance"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--set", "kpa.target=3"], "not among --policy"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--profile", "tpu-v9"], "unknown profile"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--rate-scale", "abc"], "invalid float value"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--rate-scale", "inf"], "--rate-scale must be a finite number"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--cold-start", "nan"], "--cold-start must be a finite number"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--slo-target", "2"], "--slo-target must be in (0, 1]"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--gpu-hour-price", "-1"], "--gpu-hour-price must not be negative"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--seed", "-1"], "--seed must not be negative"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--plot", "x.txt"], "--plot writes a PNG"),
        (["--trace", "synthetic:poisson?rate=nan", "--policy", "hpa"], "rate must be a finite number"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--set", "hpa.tolerance=.nan"], "hpa: tolerance"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "bound", "--plot", "/tmp/qscale-b.png"],
         "nothing to draw"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = qscale("simulate", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_column_layout(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("when,what\n1,2\n")
    proc = qscale("simulate", "--trace", str(bad), "--policy", "hpa")
    assert proc.returncode == 2 and "unknown column layout" in proc.stderr


def test_requests_out_has_one_row_per_request(tmp_path):
    import csv

    out, rows_json = tmp_path / "req.csv", tmp_path / "o.json"
    proc = qscale("simulate", "--trace", "synthetic:poisson?rate=5&duration=120", "--policy", "hybrid",
                  "--policy", "static", "--requests-out", str(out), "--json", str(rows_json))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    summary = json.loads(rows_json.read_text())["policies"]
    for policy in ("hybrid", "static"):
        mine = [r for r in rows if r["policy"] == policy]
        assert len(mine) == summary[policy]["requests"]
        assert len({r["rid"] for r in mine}) == len(mine)
        done = [r for r in mine if r["outcome"] == "completed"]
        assert len(done) == summary[policy]["completed"]
        assert all(float(r["ttft_s"]) <= float(r["e2e_s"]) for r in done)
