"""The policy registry: built-ins, parameters, errors and third-party entry points."""

import sys
import textwrap

import pytest

from policies import PolicyConfigError, registry
from policies.registry import PolicyRegistry


def test_builtin_names():
    assert {"static", "hpa", "keda", "kpa", "hybrid"} <= set(registry.names())


@pytest.mark.parametrize("name", ["static", "hpa", "keda", "kpa", "hybrid"])
def test_each_builds_from_defaults(name):
    policy = registry.create(name)
    assert policy.name == name


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("hpa", {"target_average_value": 0}, "target_average_value"),
        ("hpa", {"tolerance": "lots"}, "tolerance"),
        ("kpa", {"max_scale_down_rate": 0.5}, "max_scale_down_rate"),
        ("keda", {"polling_interval_s": -1}, "polling_interval_s"),
        ("static", {"replicas": -2}, "replicas"),
        ("hybrid", {"burst_quantile": 2}, "burst_quantile"),
        ("hybrid", {"no_such_knob": 1}, "no_such_knob"),
        ("hpa", {"scale_up": {"policies": [{"type": "Pods", "value": 0, "period_s": 15}],
                              "stabilization_window_s": 0}}, "scale_up.policies.0.value"),
    ],
)
def test_bad_parameter_message_is_one_line_naming_the_field(name, params, field):
    with pytest.raises(PolicyConfigError) as exc:
        registry.create(name, **params)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: {field}:")


def test_min_above_max_is_rejected():
    with pytest.raises(PolicyConfigError, match="max_replicas"):
        registry.create("hybrid", min_replicas=5, max_replicas=2)


def test_unknown_policy_lists_known_ones():
    with pytest.raises(PolicyConfigError, match="unknown policy 'nope'.*hybrid"):
        registry.create("nope")


def test_third_party_policy_loads_from_entry_point(tmp_path, monkeypatch):
    (tmp_path / "qscale_demo_plugin.py").write_text(textwrap.dedent("""
        from policies import Decision, Policy, PolicyParams

        class DoubleParams(PolicyParams):
            factor: int = 2

        class Double(Policy):
            name = "double"
            Params = DoubleParams

            def decide(self, signals):
                return Decision(self.bounded(signals.current_replicas * self.params.factor), "doubled")
    """))
    dist = tmp_path / "qscale_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qscale-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qscale.policies]\ndouble = qscale_demo_plugin:Double\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    reg = PolicyRegistry()
    assert "double" in reg.names()
    policy = reg.create("double", factor=3)
    from tests.helpers import ready, signals

    assert policy.decide(signals(0, [ready("a")])).desired_replicas == 3
    with pytest.raises(PolicyConfigError, match="double: factor"):
        reg.create("double", factor="x")
    sys.modules.pop("qscale_demo_plugin", None)


def test_broken_plugin_gives_a_clear_error(tmp_path, monkeypatch):
    dist = tmp_path / "qscale_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qscale-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qscale.policies]\nbroken = no_such_module:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PolicyConfigError, match="policy plugin 'broken'"):
        PolicyRegistry().names()
