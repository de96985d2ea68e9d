"""The vLLM exposition parser: real output, engine sums, model filter, old names, garbage."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.metrics.parse import MetricsParseError, parse_exposition, parse_vllm_metrics

REAL = (Path(__file__).parent / "data" / "vllm-0.32.0-cpu-metrics.txt").read_text()


def test_real_vllm_exposition():
    s = parse_vllm_metrics(REAL, "tiny-llama")
    assert s.requests_finished == 11 and s.generation_tokens == 4008
    assert s.ttft_count == 11 and s.itl_count == 3997 and s.queue_count == 11
    assert s.kv_cache_usage == 0 and parse_exposition(REAL, "tiny-llama").legacy_names == ()


def test_without_type_comments_gives_the_same():
    bare = "\n".join(line for line in REAL.splitlines() if not line.startswith("#"))
    assert parse_vllm_metrics(bare, "tiny-llama") == parse_vllm_metrics(REAL, "tiny-llama")


TWO_ENGINES = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
vllm:num_requests_running{engine="0",model_name="other"} 50.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.4
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 5.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 2.0
vllm:request_success_total{engine="1",finished_reason="abort",model_name="m"} 1.0
"""


def test_sums_engines_filters_model_averages_kv():
    s = parse_vllm_metrics(TWO_ENGINES, "m")
    assert (s.running, s.waiting) == (7.0, 3.0)
    assert s.kv_cache_usage == pytest.approx(0.3)
    assert s.requests_finished == 8.0
    # Without a filter every model counts.
    assert parse_vllm_metrics(TWO_ENGINES).running == 57.0


def test_old_names_fall_back():
    old = """vllm:num_requests_running{model_name="m"} 1.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:gpu_prefix_cache_queries_total{model_name="m"} 10.0
vllm:gpu_prefix_cache_hits_total{model_name="m"} 4.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 2.0
vllm:time_per_output_token_seconds_count{model_name="m"} 100.0
"""
    parsed = parse_exposition(old, "m")
    s = parsed.figures
    assert s.kv_cache_usage == 0.5 and s.prefix_hits == 4.0 and s.itl_count == 100.0
    assert set(parsed.legacy_names) == {"kv_cache_usage", "prefix_queries", "prefix_hits", "itl_sum", "itl_count"}


def test_waiting_by_reason_is_not_mistaken_for_waiting():
    text = """vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0
vllm:num_requests_waiting 2.0
vllm:num_requests_running 1.0
"""
    assert parse_vllm_metrics(text).waiting == 2.0


def test_escaped_model_names():
    text = ('vllm:num_requests_running{model_name="a\\"b",engine="0"} 4.0\nvllm:num_requests_waiting{engine="0",model_name="x"} 1.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="a\\"b"} 2.0\n')
    s = parse_vllm_metrics(text, 'a"b')
    assert s.running == 4.0 and s.waiting == 2.0


def test_a_missing_gauge_makes_the_replica_unreadable():
    """vLLM always exposes both gauges: one missing (or only under another model) would read as 0."""
    for text in ('vllm:num_requests_running{model_name="m"} 4\n',
                 'vllm:num_requests_running{model_name="m"} 4\nvllm:num_requests_waiting{model_name="x"} 9\n'):
        with pytest.raises(MetricsParseError, match="num_requests_waiting"):
            parse_vllm_metrics(text, "m")


@pytest.mark.parametrize("body", ["", "<html>502 Bad Gateway</html>", "vllm:num_requests_running{engine=\"0\"",
                                  "vllm:num_requests_running{engine=\"0\"} abc\n"])
def test_garbage_is_an_error(body):
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics(body)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_crashes_otherwise(body):
    with contextlib.suppress(MetricsParseError):
        parse_vllm_metrics(body)


@pytest.mark.parametrize("value", ["+Inf", "-Inf", "NaN", "-3", "1_000", "Infinity"])
@pytest.mark.parametrize("name", ["vllm:num_requests_waiting", "vllm:num_requests_running",
                                  "vllm:kv_cache_usage_perc", "vllm:request_success_total"])
def test_a_value_that_is_not_a_finite_count_makes_the_replica_unreadable(name, value):
    """A replica reporting +Inf waiting, NaN running or a negative gauge is unreadable this tick:
    the number never reaches the policy (NaN running used to read as 0, +Inf passed through)."""
    ok = {"vllm:num_requests_waiting": "2", "vllm:num_requests_running": "1",
          "vllm:kv_cache_usage_perc": "0.5", "vllm:request_success_total": "7"}
    body = "".join(f'{n}{{engine="0"}} {value if n == name else v}\n' for n, v in ok.items())
    with pytest.raises(MetricsParseError, match=name.split("{")[0]):
        parse_vllm_metrics(body)


def test_histogram_inf_buckets_are_not_values():
    """`le="+Inf"` is a label, not a value: a real histogram still parses."""
    body = ('# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 1\n'
            '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n'
            '# TYPE vllm:request_queue_time_seconds histogram\n'
            'vllm:request_queue_time_seconds_bucket{le="+Inf"} 4\nvllm:request_queue_time_seconds_sum 2.5\n'
            'vllm:request_queue_time_seconds_count 4\n')
    s = parse_vllm_metrics(body)
    assert s.queue_count == 4 and s.queue_sum == 2.5
