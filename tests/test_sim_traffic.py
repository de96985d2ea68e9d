"""Trace loaders on the shared traces, synthetic generators, transforms, and bad input."""

import numpy as np
import pytest

from policies.errors import UserError
from simulations.traffic import detect_format, load_traffic


def collect(chunks):
    chunks = list(chunks)
    arrival = np.concatenate([c.arrival for c in chunks])
    prompt = np.concatenate([c.prompt for c in chunks])
    output = np.concatenate([c.output for c in chunks])
    return chunks, arrival, prompt, output


@pytest.mark.parametrize(
    ("name", "fmt", "rows", "duration", "mean_in"),
    [
        ("AzureLLMInferenceTrace_conv.csv", "azure", 19366, 3502, 1155),
        ("AzureLLMInferenceTrace_code.csv", "azure", 8819, 3436, 2048),
        ("mooncake_synthetic_trace.jsonl", "mooncake", 3993, 1022, 15325),
    ],
)
def test_shared_traces_load_with_their_documented_figures(traces, name, fmt, rows, duration, mean_in):
    path = traces / name
    assert detect_format(path) == fmt
    chunks, arrival, prompt, output = collect(load_traffic(str(path)))
    assert len(arrival) == rows
    assert arrival[0] == 0 and abs(arrival[-1] - duration) < 1.5
    assert np.all(np.diff(arrival) >= 0)
    assert abs(prompt.mean() - mean_in) < 1
    assert output.min() >= 1


def test_mooncake_carries_prefix_hashes(traces):
    chunks = list(load_traffic(str(traces / "mooncake_synthetic_trace.jsonl")))
    assert chunks[0].hashes is not None and chunks[0].hashes[0][:3] == (0, 1, 2)


def test_generic_and_burstgpt_csv(tmp_path):
    g = tmp_path / "g.csv"
    g.write_text("timestamp_s,input_tokens,output_tokens\n0.5,10,5\n1.5,20,0\n")
    _, arrival, prompt, output = collect(load_traffic(str(g)))
    assert list(arrival) == [0.0, 1.0] and list(prompt) == [10, 20] and list(output) == [5, 1]
    b = tmp_path / "b.csv"
    b.write_text(
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,1,0.3,ChatGPT,100,50,150,Conversation log\n7,2,0.1,GPT-4,30,0,30,API log\n"
    )
    assert detect_format(b) == "burstgpt"
    _, arrival, prompt, output = collect(load_traffic(str(b)))
    assert list(arrival) == [0.0, 2.0] and list(prompt) == [100, 30]


def test_azure_2024_timestamps_with_timezone(tmp_path):
    p = tmp_path / "a24.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2024-05-10 00:00:00.009930+00:00,100,10\n2024-05-10 00:00:02.509930+00:00,50,5\n")
    _, arrival, _, _ = collect(load_traffic(str(p)))
    assert arrival[1] == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b,c\n1,2,3\n", "unknown column layout"),
        ("", "empty file"),
        ('{"foo": 1}\n', "unknown JSONL layout"),
        ("timestamp_s,input_tokens,output_tokens\n1,x,3\n", "unreadable row"),
    ],
)
def test_bad_traces_are_one_line_errors(tmp_path, content, message):
    p = tmp_path / "t.csv"
    p.write_text(content)
    with pytest.raises(UserError, match=message) as exc:
        list(load_traffic(str(p)))
    assert "\n" not in str(exc.value)


def test_missing_file_and_bad_rates():
    with pytest.raises(UserError, match="not found"):
        load_traffic("/no/such/trace.csv")
    with pytest.raises(UserError, match="rate scale"):
        load_traffic("synthetic:poisson", rate_scale=-1)
    with pytest.raises(UserError, match="unknown synthetic"):
        load_traffic("synthetic:nope")
    with pytest.raises(UserError, match="must be a number"):
        load_traffic("synthetic:poisson?rate=fast")


@pytest.mark.parametrize("name", ["poisson", "mmpp", "diurnal", "ramp", "step"])
def test_synthetic_processes_are_seeded_and_sorted(name):
    a = collect(load_traffic(f"synthetic:{name}?duration=1200&seed=3"))[1]
    b = collect(load_traffic(f"synthetic:{name}?duration=1200&seed=3"))[1]
    c = collect(load_traffic(f"synthetic:{name}?duration=1200&seed=4"))[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) >= 0) and a[-1] < 1200


def test_step_process_has_its_step():
    arrival = collect(load_traffic("synthetic:step?low=2&high=20&duration=900&at=300&until=600"))[1]
    before = np.sum(arrival < 300) / 300
    during = np.sum((arrival >= 300) & (arrival < 600)) / 300
    assert 1 < before < 3 and 17 < during < 23


def test_rate_scale_keeps_duration_and_scales_count(traces):
    path = str(traces / "AzureLLMInferenceTrace_conv.csv")
    _, a1, _, _ = collect(load_traffic(path))
    _, a3, _, _ = collect(load_traffic(path, rate_scale=3.5))
    assert abs(len(a3) / len(a1) - 3.5) < 0.05
    assert np.all(np.diff(a3) >= 0)
    assert a3[-1] - a1[-1] < 11  # copies are shifted by at most the 10-s jitter
    _, ahalf, _, _ = collect(load_traffic(path, rate_scale=0.5))
    assert abs(len(ahalf) / len(a1) - 0.5) < 0.03


def test_time_slice(traces):
    path = str(traces / "AzureLLMInferenceTrace_conv.csv")
    _, a, _, _ = collect(load_traffic(path, start_s=600, duration_s=300))
    assert a[0] >= 0 and a[-1] < 300
