"""`qscale simulate`: the JSON it writes, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from qscale.cli import main


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
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--rate-scale", "-2"], "--rate-scale: must be positive"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--set", "hpa.tolerance=lots"], "hpa: tolerance"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--set", "kpa.target=3"], "not among --policy"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--profile", "tpu-v9"], "unknown profile"),
        (["--trace", "synthetic:poisson", "--policy", "hpa", "--rate-scale", "abc"], "expected a number, got 'abc'"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--rate-scale", "inf"],
         "--rate-scale: must be a finite number"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--cold-start", "nan"],
         "--cold-start: must be a finite number"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--slo-target", "2"], "--slo-target: must be at most 1"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--gpu-hour-price", "-1"],
         "--gpu-hour-price: must not be negative"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--seed", "-1"], "--seed: must not be negative"),
        (["--trace", "synthetic:poisson?duration=60", "--policy", "hpa", "--plot", "x.txt"], "--plot: expected a .png path"),
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


SHORT = "synthetic:poisson?rate=2&duration=60"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # Numbers: NaN, infinities (also as `-inf`, once read as an unknown option), absurd sizes.
        (["--rate-scale", "-inf"], "--rate-scale: must be a finite number, got '-inf'"),
        (["--rate-scale", "-1e5"], "--rate-scale: must be positive, got -100000"),
        (["--start", "nan"], "--start: must be a finite number"),
        (["--start", "1e11"], "--start: must be at most 1e+08"),
        (["--duration", "1e400"], "--duration: must be a finite number"),
        (["--duration", "1e11"], "--duration: must be at most 1e+08"),
        (["--cold-start", "1e11"], "--cold-start: must be at most 86400"),
        (["--slo-ttft", "1e11"], "--slo-ttft: must be at most 86400"),
        (["--scrape-lag", "1e11"], "--scrape-lag: must be at most 86400"),
        (["--scrape-lag", "-inf"], "--scrape-lag: must be a finite number"),
        (["--gpu-hour-price", "1e11"], "--gpu-hour-price: must be at most 1e+06"),
        (["--max-replicas", "100000000000"], "--max-replicas: must be at most 10000, got 100000000000"),
        (["--seed", "99999999999999999999"], "--seed: must be at most"),
        # A slice past the trace's end, or with no request in it.
        (["--start", "100"], "the trace ends at"),
        (["--duration", "1e-9"], "no requests in the slice [0, 1e-09) s"),
        # Synthetic specs: unknown or repeated keys, values out of range.
        (["--trace", "synthetic:poisson?rat=2"], "unknown parameter 'rat' (known: duration,"),
        (["--trace", "synthetic:poisson?rate=2&rate=3"], "rate given twice"),
        (["--trace", "synthetic:poisson?rate=1e11&duration=60"], "rate must be in [0, 10000]"),
        (["--trace", "synthetic:poisson?rate=0&duration=60"], "no requests"),
        # Output paths: checked for writing before the run, never the same file twice.
        (["--json", "{tmp}"], "--json: {tmp} is a folder"),
        (["--json", ""], "--json: expected a file path"),
        (["--json", "/proc/qscale.json"], "--json: cannot write /proc/qscale.json"),
        (["--json", "{tmp}/file/x.json"], "--json: cannot write {tmp}/file/x.json"),
        (["--requests-out", "{tmp}"], "--requests-out: {tmp} is a folder"),
        (["--plot", "{tmp}/dir.png"], "--plot: {tmp}/dir.png is a folder"),
        (["--json", "{tmp}/o.json", "--requests-out", "{tmp}/o.json"], "--requests-out {tmp}/o.json is also given to --json"),
        (["--trace", "{tmp}/file", "--json", "{tmp}/file"], "--json {tmp}/file is also given to --trace"),
        # Profiles and settings files that are not what they claim.
        (["--profile", "{tmp}/latin1.yaml"], "invalid profile {tmp}/latin1.yaml: not UTF-8 text"),
        (["--profile", "{tmp}/list.yaml"], "expected a mapping of fields, got list"),
        (["--profile", "{tmp}/slow.yaml"], "base_s: Input should be less than or equal to 10"),
        (["--config", "{tmp}/list.yaml"], "expected a mapping of settings, got list"),
        (["--config", "{tmp}/latin1.yaml"], "is not UTF-8 text"),
        (["--config", "{tmp}/inf_tick.yaml"], "simulation.tick_s: Input should be a finite number"),
        (["--config", "{tmp}/tiny_tick.yaml"], "simulation.tick_s: Input should be greater than or equal to 0.1"),
    ],
)
def test_bad_input_fails_before_any_run(tmp_path, capsys, flags, message):
    files = {"file": "timestamp_s,input_tokens,output_tokens\n0,10,5\n", "list.yaml": "- 1\n",
             "inf_tick.yaml": "simulation:\n  tick_s: .inf\n", "tiny_tick.yaml": "simulation:\n  tick_s: 1e-300\n",
             "slow.yaml": "name: x\nbase_s: 1e11\nprefill_token_s: 0\ndecode_seq_s: 0\ncontext_token_s: 0\n"
                          "num_gpu_blocks: 1000\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.yaml").write_bytes(b"name: \xff\n")
    (tmp_path / "dir.png").mkdir()
    argv = ["simulate", "--trace", SHORT, "--policy", "hpa", *(f.format(tmp=tmp_path) for f in flags)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err


def test_settings_from_the_environment_are_checked(monkeypatch, capsys):
    monkeypatch.setenv("QSCALE_SIMULATION__GPU_HOUR_PRICE", "inf")
    assert main(["simulate", "--trace", SHORT, "--policy", "hpa"]) == 2
    assert "simulation.gpu_hour_price: Input should be a finite number" in capsys.readouterr().err


def test_outputs_are_tried_not_left_behind(tmp_path, capsys):
    """The write check creates nothing a failed run would leave: only the folder it needs."""
    out = tmp_path / "new" / "o.json"
    assert main(["simulate", "--trace", SHORT, "--policy", "hpa", "--json", str(out), "--start", "100"]) == 2
    assert "the trace ends at" in capsys.readouterr().err
    assert not out.exists() and out.parent.is_dir()


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
