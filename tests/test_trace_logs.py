"""Request logs as gateways and APIs write them (the `openai` trace format) and `--columns`.

Every expected arrival below is worked out by hand from the file's text: seconds after the
earliest row, with ISO offsets and epoch units applied.
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from policies.errors import UserError
from qscale.cli import main
from simulations.traffic import ColumnMap, detect_format, load_traffic, loaders


def read(path, **kw):
    chunks = list(load_traffic(str(path), **kw))
    arrival = np.concatenate([c.arrival for c in chunks])
    prompt = np.concatenate([c.prompt for c in chunks])
    output = np.concatenate([c.output for c in chunks])
    return list(arrival), list(prompt), list(output)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_issue_csv_timestamp_prompt_completion_with_iso_times(tmp_path):
    p = write(tmp_path, "gw.csv", "timestamp,prompt_tokens,completion_tokens\n"
                                  "2024-05-10T12:00:00Z,120,30\n"
                                  "2024-05-10T12:00:02.250Z,80,0\n"
                                  "2024-05-10T12:01:00Z,15,7\n")
    assert detect_format(p) == "openai"
    arrival, prompt, output = read(p)
    assert arrival == pytest.approx([0.0, 2.25, 60.0], abs=1e-6)
    assert prompt == [120, 80, 15]
    assert output == [30, 1, 7]  # a 0-token completion is kept as 1 token, as in every format


def test_iso_offsets_are_honoured_and_rows_need_not_be_sorted(tmp_path):
    # 14:00+02:00 = 12:00Z (0 s); 12:00:30 with a space (30 s); 07:01-05:00 = 12:01Z (60 s);
    # no offset: UTC, 12:00:10.5 (10.5 s); 17:30:20+0530 = 12:00:20Z (20 s).
    p = write(tmp_path, "t.csv", "created_at,input_tokens,output_tokens\n"
                                 "2024-05-10T14:00:00+02:00,1,11\n"
                                 "2024-05-10 12:00:30Z,2,12\n"
                                 "2024-05-10T07:01:00-05:00,3,13\n"
                                 "2024-05-10T12:00:10.5,4,14\n"
                                 "2024-05-10T17:30:20+0530,5,15\n")
    arrival, prompt, output = read(p)
    assert arrival == pytest.approx([0.0, 10.5, 20.0, 30.0, 60.0], abs=1e-6)
    assert prompt == [1, 4, 5, 2, 3] and output == [11, 14, 15, 12, 13]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        (["1700000000", "1700000001.5", "1700000090"], [0.0, 1.5, 90.0]),  # epoch seconds
        (["1700000000000", "1700000000250", "1700000003000"], [0.0, 0.25, 3.0]),  # > 1e11: ms
        (["1700000000000000", "1700000000500000", "1700000002000000"], [0.0, 0.5, 2.0]),  # > 1e14: us
        (["0", "12.5", "40"], [0.0, 12.5, 40.0]),  # small numbers: seconds from any origin
    ],
)
def test_epoch_numbers_in_seconds_or_the_unit_their_size_implies(tmp_path, times, expected):
    rows = "".join(f"{t},{10 + i},{20 + i}\n" for i, t in enumerate(times))
    p = write(tmp_path, "t.csv", "time,prompt_tokens,completion_tokens\n" + rows)
    arrival, prompt, output = read(p)
    assert arrival == pytest.approx(expected, abs=1e-6)
    assert prompt == [10, 11, 12] and output == [20, 21, 22]


def test_the_unit_is_fixed_by_the_first_row_across_chunks(tmp_path, monkeypatch):
    """Chunks of 2 rows: the ms read from the first chunk holds for the next ones."""
    monkeypatch.setattr(loaders, "CHUNK_ROWS", 2)
    rows = "".join(f"{1700000000000 + ms},5,5\n" for ms in (0, 400, 1000, 7500, 9000))
    p = write(tmp_path, "t.csv", "timestamp,prompt_tokens,completion_tokens\n" + rows)
    arrival, _, _ = read(p)
    assert arrival == pytest.approx([0.0, 0.4, 1.0, 7.5, 9.0], abs=1e-6)


def test_openai_responses_in_json_lines_with_nested_usage(tmp_path):
    lines = [{"id": "a", "created": 1700000000, "usage": {"prompt_tokens": 12, "completion_tokens": 30,
                                                          "total_tokens": 42}},
             {"id": "b", "created": 1700000004, "usage": {"prompt_tokens": 7, "completion_tokens": 9}},
             {"id": "c", "created": 1700000002, "usage": {"prompt_tokens": 100, "completion_tokens": 1}}]
    p = write(tmp_path, "r.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    assert detect_format(p) == "openai"
    arrival, prompt, output = read(p)
    assert arrival == [0.0, 2.0, 4.0] and prompt == [12, 100, 7] and output == [30, 1, 9]


def test_flat_json_lines_with_iso_times_and_input_output_tokens(tmp_path):
    p = write(tmp_path, "r.jsonl",
              '{"Timestamp": "2024-05-10T12:00:00.000Z", "Input_Tokens": 3, "Output_Tokens": 4}\n'
              "\n"
              '{"Timestamp": "2024-05-10T13:00:01.125+01:00", "Input_Tokens": 5, "Output_Tokens": 6}\n')
    arrival, prompt, output = read(p)  # 13:00:01.125+01:00 is 12:00:01.125Z
    assert arrival == pytest.approx([0.0, 1.125], abs=1e-6) and prompt == [3, 5] and output == [4, 6]


def test_json_lines_in_epoch_ms_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "CHUNK_ROWS", 1)
    p = write(tmp_path, "r.jsonl", "".join(
        json.dumps({"timestamp_s": t, "usage": {"input_tokens": n, "output_tokens": 2 * n}}) + "\n"
        for t, n in ((1700000000000, 1), (1700000000500, 2), (1700000002000, 3))))
    arrival, prompt, output = read(p)
    assert arrival == pytest.approx([0.0, 0.5, 2.0], abs=1e-6) and prompt == [1, 2, 3] and output == [2, 4, 6]


def test_generic_csv_is_still_generic(tmp_path):
    p = write(tmp_path, "g.csv", "timestamp_s,input_tokens,output_tokens\n3,10,5\n1.5,20,6\n")
    assert detect_format(p) == "generic"
    assert read(p) == ([0.0, 1.5], [20, 10], [6, 5])


def test_column_map_parse():
    assert ColumnMap.parse("time=ts:ms,prompt=in_tok,output=out_tok") == ColumnMap("ts", "in_tok", "out_tok", "ms")
    assert ColumnMap.parse(" Input = a b , completion=c ") == ColumnMap(None, "a b", "c", None)
    assert ColumnMap.parse("time=when") == ColumnMap("when", None, None, None)


def test_columns_name_any_layout_and_nested_json_fields(tmp_path):
    p = write(tmp_path, "t.csv", "ts,in_tok,out_tok,prompt_tokens\n0,100,50,9\n500,120,40,9\n2500,80,60,9\n")
    cols = ColumnMap.parse("time=ts:ms,prompt=in_tok,output=out_tok")
    assert read(p, columns=cols) == (pytest.approx([0.0, 0.5, 2.5]), [100, 120, 80], [50, 40, 60])
    # Only the time named: the token columns are found by their usual names.
    q = write(tmp_path, "t.jsonl", '{"meta": {"at": "2024-01-01T00:00:05Z"}, "prompt_tokens": 1, "completion_tokens": 2}\n'
                                   '{"meta": {"at": "2024-01-01T00:00:00Z"}, "prompt_tokens": 3, "completion_tokens": 4}\n')
    assert read(q, columns=ColumnMap.parse("time=meta.at")) == ([0.0, 5.0], [3, 1], [4, 2])


def qscale(*args):
    return subprocess.run([sys.executable, "-m", "qscale.cli", *args], capture_output=True, text=True)


def test_columns_through_simulate(tmp_path):
    trace = write(tmp_path, "f.csv", "ts,in_tok,out_tok\n0,100,50\n500,120,40\n2500,80,60\n")
    proc = qscale("simulate", "--trace", str(trace), "--columns", "time=ts:ms,prompt=in_tok,output=out_tok",
                  "--policy", "static-best", "--policy", "static", "--set", "static.replicas=1",
                  "--duration", "60", "--requests-out", str(tmp_path / "r.csv"))
    assert proc.returncode == 0, proc.stderr
    assert "static-best" in proc.stdout
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"])) for r in rows] == [
        (0.0, 100, 50), (0.5, 120, 40), (2.5, 80, 60)]


H = "timestamp,prompt_tokens,completion_tokens\n"
U = '{{"created": {}, "usage": {{"prompt_tokens": {}, "completion_tokens": {}}}}}\n'


@pytest.mark.parametrize(
    ("name", "content", "flags", "message"),
    [
        ("t.csv", H + "2024-05-10T12:00:00Z,1,1\nyesterday,1,1\n", [], "t.csv:3: unreadable timestamp 'yesterday'"),
        ("t.csv", H + "2024-05-10T12:00:00Z,1,1\n1715342401,1,1\n", [], "t.csv:3: unreadable timestamp '1715342401'"),
        ("t.csv", H + "1715342400,1,1\n2024-05-10T12:00:01Z,1,1\n", [], "t.csv:3: unreadable timestamp '2024-05-10T12"),
        ("t.csv", H + "2024-05-10T12:00:00Z,1,1\n2024-13-10T12:00:00Z,1,1\n", [], "t.csv:3: unreadable timestamp"),
        ("t.csv", H + "1715342400,1,1\n1715342400000,1,1\n", [], "t.csv:3: timestamp more than 1e+08 s after the first"),
        ("t.csv", H + "1715342400,1,1\nnan,1,1\n", [], "t.csv:3: timestamp is not a finite number"),
        ("t.csv", H + "1715342400,nan,1\n", [], "t.csv:2: input tokens must be a whole number of tokens in [0, "
                                                "10000000], got nan"),
        ("t.csv", H + "1715342400,4,2.5\n", [], "t.csv:2: output tokens must be a whole number"),
        ("t.csv", "timestamp,prompt_tokens\n2024-05-10T12:00:00Z,1\n", [], "unknown column layout"),
        ("t.csv", "timestamp,prompt_tokens\n2024-05-10T12:00:00Z,1\n", ["--columns", "time=timestamp"],
         "t.csv: no column for output (none of completion_tokens"),
        ("t.csv", H + "0,1,1\n", ["--columns", "time=nope"], "t.csv: no column for time ('nope', as mapped)"),
        ("t.csv", H + "2024-05-10T12:00:00Z,1,1\n", ["--columns", "time=timestamp:ms"],
         "t.csv:2: unreadable timestamp '2024-05-10T12:00:00Z'"),
        ("t.jsonl", U.format(1, "NaN", 1), [], "t.jsonl:1: usage.prompt_tokens must be a whole number of tokens"),
        ("t.jsonl", U.format(1, 1, 1) + U.format("NaN", 1, 1), [], "t.jsonl:2: timestamp is not a finite number"),
        ("t.jsonl", U.format(1, 1, 1) + U.format('"x"', 1, 1), [], "t.jsonl:2: unreadable timestamp 'x'"),
        ("t.jsonl", U.format(1, '"12"', 1), [], "t.jsonl:1: usage.prompt_tokens must be a number, got '12'"),
        ("t.jsonl", U.format(1, 1, 1) + '{"created": 2}\n', [], "t.jsonl:2: no usage.prompt_tokens"),
        ("t.jsonl", U.format(1, 1, 1) + '{"created": 2, \n', [], "t.jsonl:2: not JSON"),
        ("t.jsonl", U.format(1, 1, 1) + "[1]\n", [], "t.jsonl:2: not a JSON object"),
        ("t.jsonl", '{"created": 1, "usage": {"prompt_tokens": 1}}\n', [], "unknown JSONL layout"),
    ],
)
def test_bad_logs_are_one_line_errors_with_exit_2(tmp_path, capsys, name, content, flags, message):
    p = write(tmp_path, name, content)
    assert main(["simulate", "--trace", str(p), "--policy", "static-best", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time", "column mapping 'time': expected role=column, got 'time'"),
        ("tim=ts", "unknown role 'tim' (known: time, prompt, input, output, completion)"),
        ("time=ts:h", "unknown time unit 'h' (known: s, ms, us, ns)"),
        ("time=a,time=b", "time given twice"),
        ("time=a,input=b,prompt=c", "prompt given twice"),
        ("prompt=", "no column named for prompt"),
        ("time=:ms", "no column named for time"),
        ("", "expected role=column, got ''"),
    ],
)
def test_bad_columns_text_is_a_one_line_error(tmp_path, capsys, text, message):
    p = write(tmp_path, "t.csv", H + "0,1,1\n")
    assert main(["simulate", "--trace", str(p), "--policy", "static-best", "--columns", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error: argument --columns: ") and err.count("\n") == 1, err
    assert message in err, err
    with pytest.raises(UserError, match="column mapping"):
        ColumnMap.parse(text)


def test_columns_do_not_apply_to_synthetic_traffic(capsys):
    assert main(["simulate", "--trace", "synthetic:poisson?duration=60", "--policy", "static-best",
                 "--columns", "time=ts"]) == 2
    assert "a column mapping applies to a trace file, not to synthetic:poisson" in capsys.readouterr().err
