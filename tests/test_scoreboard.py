"""The scoreboard: one small cell end to end through the CLI, and the summary's arithmetic by hand."""

from __future__ import annotations

import json
import math

from simulations.scoreboard.panel import Cell
from simulations.scoreboard.run import CellResult, Row
from simulations.scoreboard.summary import shortfalls, summarize
from tests.servers import qscale

LABELS = {"bound", "oracle", "static-best", "hybrid", "hpa (blog)", "keda (blog)", "kpa (blog)",
          "hpa (best)", "keda (best)", "kpa (best)"}


def test_one_cell_end_to_end(tmp_path):
    out = tmp_path / "sb.json"
    proc = qscale("scoreboard", "--quick", "--only", "heavy-tail", "--workers", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "hybrid" in proc.stdout and "kpa (best)" in proc.stdout and "falls short" in proc.stdout
    data = json.loads(out.read_text())
    (cell,) = data["cells"]
    rows = {r["label"]: r for r in cell["rows"]}
    assert set(rows) == LABELS
    for r in rows.values():
        assert r["x_bound"] >= 1.0 - 1e-9, r  # nothing goes below the bound
    assert rows["static-best"]["slo_attainment"] >= 0.99
    # A baseline at its best is never worse than its blog configuration on both axes.
    for name in ("hpa", "keda", "kpa"):
        blog, best = rows[f"{name} (blog)"], rows[f"{name} (best)"]
        assert best["slo_attainment"] >= 0.99 or best["slo_attainment"] >= blog["slo_attainment"]
        assert best["params"], "the best configuration says what it is"
    assert {s["label"] for s in data["summary"]} == LABELS


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = qscale("scoreboard", "--traces", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "traces folder" in proc.stderr
    proc = qscale("scoreboard", "--only", "no-such-cell")
    assert proc.returncode == 2 and "no panel cell" in proc.stderr


def row(label: str, slo: float, gpu: float, oracle: float = 1.0, static: float = 2.0) -> Row:
    return Row(label, label.split()[0], {}, slo, slo, 0, 0, gpu, gpu / oracle, gpu / 0.5, gpu / static, None, 0)


def result(name: str, rows: list[Row]) -> CellResult:
    cell = Cell(name, "small", 60.0, "synthetic:poisson", 1.0, None)
    return CellResult(cell, rows, 10, 2, 2, 1.0, True, len(rows), 0.0)


def test_summary_by_hand():
    a = result("a", [row("hybrid", 0.995, 1.5), row("hpa (blog)", 0.60, 3.0)])
    b = result("b", [row("hybrid", 0.97, 2.0), row("hpa (blog)", 0.999, 2.5)])
    s = {x.label: x for x in summarize([a, b])}
    assert s["hybrid"].cells_meeting_slo == 1 and s["hybrid"].worst_slo == 0.97
    assert s["hybrid"].worst_cell == "b/small/cs60"
    assert math.isclose(s["hybrid"].geomean_x_oracle, math.sqrt(1.5 * 2.0))


def test_shortfalls_name_every_missed_goal():
    # Cell a: hybrid meets the SLO and is cheaper than static-best: no shortfall.
    a = result("a", [row("hybrid", 0.995, 1.5), row("hpa (best)", 0.995, 1.6)])
    # Cell b: it misses the SLO, costs more than static-best, and hpa beats it on both axes.
    b = result("b", [row("hybrid", 0.95, 2.5), row("hpa (best)", 0.99, 2.2)])
    (only,) = shortfalls([a, b])
    assert only.cell == "b/small/cs60"
    text = "; ".join(only.what)
    assert "SLO 95.00%" in text and "1.25x static-best" in text and "beaten by hpa (best)" in text
