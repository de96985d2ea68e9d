"""The command line and settings: one-line errors, exit code 2, env over YAML."""

import json
import subprocess
import sys

import pytest

from policies.errors import UserError
from qscale.cli import main
from qscale.settings import load_settings


def test_policies_lists_all_with_defaults(capsys):
    assert main(["policies", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["hpa"]["params"]["target_average_value"] == 5.0
    assert table["kpa"]["params"]["stable_window_s"] == 60.0


def test_unknown_policy_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "qscale.cli", "policies", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown policy 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_env_overrides_yaml(tmp_path, monkeypatch):
    cfg = tmp_path / "qscale.yaml"
    cfg.write_text("log_level: warning\nsimulation:\n  slo_ttft_s: 1.5\n")
    monkeypatch.setenv("QSCALE_LOG_LEVEL", "debug")
    s = load_settings(cfg)
    assert s.log_level == "debug"
    assert s.simulation.slo_ttft_s == 1.5


def test_bad_settings_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("QSCALE_CONFIG_FILE", raising=False)
    with pytest.raises(UserError, match="config file not found"):
        load_settings(tmp_path / "missing.yaml")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("simulation:\n  slo_ttft_s: -1\n")
    with pytest.raises(UserError, match="simulation.slo_ttft_s"):
        load_settings(cfg)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n", "expected a mapping of settings, got list"),
        ("simulation:\n  tick_s: .inf\n", "simulation.tick_s: Input should be a finite number"),
        ("simulation:\n  tick_s: 1e-300\n", "simulation.tick_s: Input should be greater than or equal to 0.1"),
        ("simulation:\n  slo_ttft_s: .inf\n", "simulation.slo_ttft_s: Input should be a finite number"),
        ("simulation:\n  gpu_hour_price: .nan\n", "simulation.gpu_hour_price: Input should be a finite number"),
        (b"log_level: \xff\n", "is not UTF-8 text"),
    ],
)
def test_bad_settings_files(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("QSCALE_CONFIG_FILE", raising=False)
    cfg = tmp_path / "s.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as exc:
        load_settings(cfg)
    assert message in str(exc.value)


def error_of(argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must fail with one line and exit code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scoreboard", "--traces", ""], "--traces: traces folder not found: ''"),
        (["scoreboard", "--traces", "{tmp}", "--only", "azure-conv/small/cs60"],
         "trace file not found: {tmp}/AzureLLMInferenceTrace_conv.csv"),
        (["scoreboard", "--workers", "100000000000"], "--workers: must be at most 1024, got 100000000000"),
        (["scoreboard", "--workers", "0"], "--workers: must be at least 1, got 0"),
        (["scoreboard", "--json", "{tmp}"], "--json: {tmp} is a folder"),
        (["scoreboard", "--json", ""], "--json: expected a file path"),
        (["scoreboard", "--plot", "/proc/qscale.png"], "--plot: cannot write /proc/qscale.png"),
        (["scoreboard", "--json", "{tmp}/o.png", "--plot", "{tmp}/o.png"], "--plot {tmp}/o.png is also given to --json"),
        (["run", "--config", "", "--check"], "--config: file not found: ''"),
        (["run", "--config", "{tmp}", "--check"], "--config: is a folder"),
        (["run", "--config", "{tmp}/latin1.yaml", "--check"], "--config: {tmp}/latin1.yaml is not UTF-8 text"),
        (["simulate", "--config", "{tmp}/latin1.yaml", "--trace", "synthetic:poisson", "--policy", "hpa"],
         "config file {tmp}/latin1.yaml is not UTF-8 text"),
    ],
)
def test_bad_arguments_of_other_commands(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("QSCALE_CONFIG_FILE", raising=False)
    (tmp_path / "latin1.yaml").write_bytes(b"targets: \xff\n")
    err = error_of([a.format(tmp=tmp_path) for a in argv], capsys)
    assert message.format(tmp=tmp_path) in err


def test_env_config_file_that_is_not_a_mapping(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("[1, 2]\n")
    monkeypatch.setenv("QSCALE_CONFIG_FILE", str(cfg))
    assert "expected a mapping of settings, got list" in error_of(["policies"], capsys)
