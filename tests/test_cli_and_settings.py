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
