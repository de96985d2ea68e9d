"""Trace loaders on the shared traces, synthetic generators, transforms, and bad input."""

import numpy as np
import pytest

from policies.errors import UserError
from simulations.traffic import detect_format, load_traffic, loaders, transforms


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
        ("timestamp_s,input_tokens,output_tokens\n1,x,3\n", "t.csv:2: unreadable input tokens"),
    ],
)
def test_bad_traces_are_one_line_errors(tmp_path, content, message):
    p = tmp_path / "t.csv"
    p.write_text(content)
    with pytest.raises(UserError, match=message) as exc:
        list(load_traffic(str(p)))
    assert "\n" not in str(exc.value)


G = "timestamp_s,input_tokens,output_tokens\n"
AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
MC = '{{"timestamp": {}, "input_length": {}, "output_length": {}{}}}\n'


def mooncake(*rows):
    return "".join(MC.format(*row, "") if len(row) == 3 else MC.format(*row) for row in rows)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (G, "no requests"),
        (G + "\n\n", "no requests"),
        (G + "0,10,5\n1,20\n", "t.csv:3: 2 fields, the header has 3"),
        (G + "0,10,5,9\n", "t.csv:2: 4 fields, the header has 3"),
        (G + "0,10,5\nnan,20,5\n", "t.csv:3: timestamp is not a finite number"),
        (G + "0,10,5\ninf,20,5\n", "t.csv:3: timestamp is not a finite number"),
        (G + "0,10,5\n1e300,20,5\n", "t.csv:3: timestamp more than 1e+08 s after the first"),
        (G + "0,nan,5\n", "t.csv:2: input tokens must be a whole number of tokens in [0, 10000000], got nan"),
        (G + "0,inf,5\n", "input tokens must be a whole number"),
        (G + "0,10,5\n1,-10,5\n", "t.csv:3: input tokens must be a whole number of tokens in [0, 10000000], got -10"),
        (G + "0,1e11,5\n", "input tokens must be a whole number of tokens in [0, 10000000], got 1e+11"),
        (G + "0,10,1e11\n", "output tokens must be a whole number"),
        (G + "0,10.7,5\n", "got 10.7"),
        (G + "0,,5\n", "t.csv:2: unreadable input tokens ''"),
        (AZ + "NaT,10,5\n2023-11-16 18:15:46.6805900,10,5\n", "t.csv:2: timestamp is not a finite number"),
        (AZ + "2023-11-16 18:15:46.6805900,10,5\nyesterday,1,1\n", "t.csv:3: unreadable timestamp 'yesterday'"),
        ("Timestamp,Model,Request tokens,Response tokens\nnan,x,10,5\n", "t.csv:2: timestamp is not a finite"),
        (mooncake((0, 10, 5), ("NaN", 10, 5)), "t.csv:2: timestamp is not a finite number"),
        (mooncake((0, 10, 5), ("Infinity", 10, 5)), "t.csv:2: timestamp is not a finite number"),
        (mooncake((0, -10, 5)), "t.csv:1: input_length must be a whole number"),
        (mooncake((0, 100000000000, 5)), "input_length must be a whole number of tokens in [0, 10000000]"),
        (mooncake((0, 10.5, 5)), "got 10.5"),
        (mooncake((0, "true", 5)), "t.csv:1: not a Mooncake record: input_length must be a number, got True"),
        (mooncake((0, '"12"', 5)), "input_length must be a number, got '12'"),
        (mooncake((0, 10, 5, ', "hash_ids": "abc"')), "hash_ids must be a list of integers"),
        (mooncake((0, 10, 5), (1, 10, 5, ', "hash_ids": ["a"]')), "t.csv:2: not a Mooncake record: hash_ids"),
    ],
)
def test_bad_trace_rows_are_one_line_errors_naming_the_line(tmp_path, content, message):
    p = tmp_path / "t.csv"
    p.write_text(content)
    with pytest.raises(UserError) as exc:
        list(load_traffic(str(p)))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_undecodable_trace_is_a_one_line_error(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(G.encode() + b"0,10,5\n\xff\xfe,1,1\n")
    with pytest.raises(UserError, match="t.csv: not UTF-8 text"):
        list(load_traffic(str(p)))


def test_rows_out_of_order_across_chunks(tmp_path, monkeypatch):
    """Rows are sorted within a chunk; one that goes back before an earlier chunk is an error."""
    monkeypatch.setattr(loaders, "CHUNK_ROWS", 4)
    p = tmp_path / "t.csv"
    p.write_text(G + "".join(f"{i},10,5\n" for i in (1, 0, 2, 3, 4, 5, 0.5)))
    with pytest.raises(UserError, match="t.csv:8: timestamp earlier than an earlier chunk's"):
        list(load_traffic(str(p)))


def test_blank_rows_are_skipped_and_the_first_arrival_is_zero(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(G + "5,10,5\n\n3,20,5\n")
    _, arrival, prompt, _ = collect(load_traffic(str(p)))
    assert list(arrival) == [0.0, 2.0] and list(prompt) == [20, 10]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("poisson?rat=2", "synthetic:poisson: unknown parameter 'rat' (known: duration, output_max, output_mean, "
                          "output_sigma, prompt_max, prompt_mean, prompt_sigma, rate, seed)"),
        ("ramp?rate=2", "synthetic:ramp: unknown parameter 'rate' (known: duration, end_rate,"),
        ("poisson?rate=2&rate=3", "rate given twice"),
        ("poisson?rate=1e11", "rate must be in [0, 10000], got 1e+11"),
        ("poisson?duration=1e11", "duration must be in (0, 1e+08], got 1e+11"),
        ("poisson?seed=1.5", "seed must be a whole number, got 1.5"),
        ("poisson?prompt_mean=0", "prompt_mean must be in [1, 1e+07], got 0"),
        ("poisson?prompt_mean=1e11", "prompt_mean must be in [1, 1e+07]"),
        ("poisson?prompt_mean=9000", "prompt_mean 9000 is above prompt_max 7900"),
        ("poisson?output_max=1e11", "output_max must be in [1, 1e+07]"),
        ("poisson?prompt_sigma=1e11", "prompt_sigma must be in [0, 5]"),
        ("mmpp?mean_low_s=0", "mean_low_s must be in [1, 1e+08], got 0"),
        ("mmpp?mean_high_s=1e-9", "mean_high_s must be in [1, 1e+08]"),
        ("diurnal?period_s=0", "period_s must be in [1, 1e+08], got 0"),
        ("diurnal?amplitude=5", "amplitude must be in [0, 1], got 5"),
        ("step?at=50&until=10&duration=60", "the step must start (at 50) before it ends (until 10)"),
        ("step?at=1e5&duration=60", "and before the trace does (duration 60)"),
        ("poisson?rate=0&duration=60", "no requests"),
    ],
)
def test_bad_synthetic_specs(spec, message):
    with pytest.raises(UserError) as exc:
        list(load_traffic(f"synthetic:{spec}"))
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"rate_scale": float("nan")}, "rate scale must be in (0, 10000]"),
        ({"rate_scale": 1e11}, "rate scale must be in (0, 10000]"),
        ({"start_s": float("nan")}, "slice start must be in [0, 1e+08] s"),
        ({"start_s": 1e11}, "slice start must be in [0, 1e+08] s"),
        ({"duration_s": float("inf")}, "slice duration must be in (0, 1e+08] s"),
        ({"start_s": 100.0}, "the trace ends at 59."),
        ({"start_s": 10.0, "duration_s": 1e-9}, "no requests in the slice [10, 10) s"),
    ],
)
def test_bad_slices_fail_when_the_stream_is_made(kw, message):
    with pytest.raises(UserError) as exc:
        load_traffic("synthetic:poisson?rate=2&duration=60", **kw)  # not consumed: checked at once
    assert message in str(exc.value)


def test_large_rate_scale_keeps_chunks_small(monkeypatch):
    """Copies are made a piece at a time: no chunk holds a whole input chunk's copies (at x10000,
    one 65k-row chunk would be 655M rows at once)."""
    monkeypatch.setattr(transforms, "CHUNK_ROWS", 1000)
    spec = "synthetic:poisson?rate=20&duration=60"  # one 1260-row chunk
    chunks, arrival, _, _ = collect(load_traffic(spec, rate_scale=100))
    assert max(len(c) for c in chunks) < 0.2 * len(arrival)  # the last 10 s of jitter come at once
    assert len(arrival) == 100 * len(collect(load_traffic(spec))[1]) and np.all(np.diff(arrival) >= 0)


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
