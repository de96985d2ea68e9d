"""The vLLM exposition parser: real output, engine sums, model filter, old names, garbage."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.metrics.parse import MetricsParseError, parse_vllm_metrics

REAL = (Path(__file__).parent / "data" / "vllm-0.32.0-cpu-metrics.txt").read_text()


def test_real_vllm_exposition():
    s = parse_vllm_metrics(REAL, "tiny-llama")
    assert s.requests_finished == 11 and s.generation_tokens == 4008
    assert s.ttft_count == 11 and s.itl_count == 3997 and s.queue_count == 11
    assert s.kv_usage == 0 and s.legacy_names == []


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
    assert s.kv_usage == pytest.approx(0.3)
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
    s = parse_vllm_metrics(old, "m")
    assert s.kv_usage == 0.5 and s.prefix_hits == 4.0 and s.itl_count == 100.0
    assert set(s.legacy_names) == {"kv_usage", "prefix_queries", "prefix_hits", "itl_sum", "itl_count"}


def test_waiting_by_reason_is_not_mistaken_for_waiting():
    text = """vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0
vllm:num_requests_waiting 2.0
vllm:num_requests_running 1.0
"""
    assert parse_vllm_metrics(text).waiting == 2.0


def test_escaped_model_names():
    text = 'vllm:num_requests_running{model_name="a\\"b",engine="0"} 4.0\nvllm:num_requests_waiting{engine="0",model_name="x"} 1.0\n'
    assert parse_vllm_metrics(text, 'a"b').running == 4.0


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
