"""The seed's dashboard and alerts (manifests/overlays/observability).

* Every panel's PromQL and every rule runs against a real Prometheus scraping emulated vLLM
  replicas (a `qscale run` with the local backend, under load from `qscale load`), that
  `qscale run`'s own /metrics, and the three DCGM gauges, and returns data.
* Prometheus evaluates the rules file (rule_files) and reports each rule healthy;
  `promtool check rules` accepts it, and `promtool test rules` shows each alert firing on the
  case it is for and not on the other one (capacity problem vs upstream broke).
* The keda overlay's metrics-api trigger (URL path and GJSON valueLocation) reads the same
  number from that running qscale as its qscale_desired_replicas gauge.
* The PrometheusRule is the rules file; the dashboard ships in a ConfigMap Grafana's sidecar
  picks up; every vLLM metric name it reads is one vLLM 0.33 exposes (wire-formats.md, 1.2).

DCGM has no source here (no GPU, and the emulator speaks only vLLM's /metrics): a test-only
HTTP server serves the three gauges as dcgm-exporter writes them, from fixed values.

`python3 -m tests.test_dashboard` rewrites prometheusrule.yaml from qscale.rules.yaml.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.prometheus import prometheus_server
from tests.servers import ROOT, free_port, free_port_run, http_get, qscale_process, wait_http

OBSERVABILITY = ROOT / "manifests" / "overlays" / "observability"
RULES_FILE = OBSERVABILITY / "qscale.rules.yaml"
PROMETHEUS_RULE_FILE = OBSERVABILITY / "prometheusrule.yaml"
DASHBOARD_FILE = OBSERVABILITY / "qscale-dashboard.json"
WIRE_FORMATS = ROOT.parent / "shared" / "reference" / "wire-formats.md"
DCGM_GAUGES = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_MEM_COPY_UTIL")
REPLICAS = 2
# Grafana's variables, as the test asks Prometheus: "All" for each template variable.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "2m", "$target": ".*", "$model_name": ".*",
                     "$namespace": ".*"}


# --- the rules file and its PrometheusRule ------------------------------------------------------


def rules() -> dict:
    return yaml.safe_load(RULES_FILE.read_text())


def prometheus_rule() -> dict:
    """The PrometheusRule the operator reads: the rules file, as its spec."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "qscale-alerts", "labels": {"app.kubernetes.io/name": "qscale"}},
            "spec": rules()}


def _literal_blocks(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def render_prometheus_rule() -> str:
    dumper = type("BlockDumper", (yaml.SafeDumper,), {})
    dumper.add_representer(str, _literal_blocks)
    head = ("# Generated from qscale.rules.yaml by `python3 -m tests.test_dashboard`: edit that file,\n"
            "# then run it. tests/test_dashboard.py fails while the two differ.\n")
    return head + yaml.dump(prometheus_rule(), Dumper=dumper, sort_keys=False, width=120)


def all_rules() -> list[dict]:
    return [r for g in rules()["groups"] for r in g["rules"]]


def test_the_prometheusrule_is_the_rules_file():
    assert yaml.safe_load(PROMETHEUS_RULE_FILE.read_text()) == prometheus_rule(), \
        "prometheusrule.yaml differs from qscale.rules.yaml: run python3 -m tests.test_dashboard"


def promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool (Debian's prometheus package) is not installed: scripts/test installs it"
    return binary


def test_promtool_accepts_the_rules_file():
    out = subprocess.run([promtool(), "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in out.stdout


def test_promtool_check_can_fail(tmp_path):
    bad = tmp_path / "bad.rules.yaml"
    bad.write_text("groups: [{name: g, rules: [{alert: A, expr: 'sum(rate(x[1m])'}]}]\n")
    assert subprocess.run([promtool(), "check", "rules", str(bad)], capture_output=True).returncode != 0


# --- each alert fires on its case, and only there (promtool test rules) --------------------------
# Series every 15 s for 40 minutes; the change comes at minute 20, the check at minute 32.
STEPS_BEFORE, STEPS_AFTER = 80, 80  # 15 s steps


def counter(per_s_before: float, per_s_after: float) -> str:
    """A counter rising at one rate, then at another, from minute 20 on."""
    a, b = per_s_before * 15, per_s_after * 15
    return f"0+{a:g}x{STEPS_BEFORE} {a * STEPS_BEFORE + b:g}+{b:g}x{STEPS_AFTER - 1}"


def gauge(before: float, after_start: float, after_step: float = 0.0) -> str:
    return f"{before:g}x{STEPS_BEFORE} {after_start:g}+{after_step:g}x{STEPS_AFTER - 1}"


def fleet(served: tuple[float, float], aborted: tuple[float, float], waiting: str, kv: str = "0.5x160",
          preemptions: str = "0x160", vllm: str = "vllm:") -> list[dict]:
    """One model on two replicas (a, b): the same series on each. `vllm`: the names' prefix as
    Prometheus stored them (vllm: from text, vllm_ from an OpenMetrics scrape)."""
    out = []
    for pod in ("a", "b"):
        lbl = f'model_name="m",pod="{pod}"'
        out += [
            {"series": f'{vllm}request_success_total{{{lbl},finished_reason="length"}}',
             "values": counter(served[0] / 2, served[1] / 2)},
            {"series": f'{vllm}request_success_total{{{lbl},finished_reason="abort"}}',
             "values": counter(aborted[0] / 2, aborted[1] / 2)},
            {"series": f"{vllm}num_requests_waiting{{{lbl}}}", "values": waiting},
            {"series": f"{vllm}kv_cache_usage_perc{{{lbl}}}", "values": kv},
            {"series": f"{vllm}num_preemptions_total{{{lbl}}}", "values": preemptions},
        ]
    return out


ALERTS = ("LLMQueueRising", "LLMKVCacheNearFullWithPreemptions", "LLMCapacityProblem", "LLMUpstreamBroke")
# (case, input series, the alerts that must fire at minute 32; every other one must not)
CASES = [
    ("steady", fleet((10, 10), (0, 0), gauge(1, 1)), set()),
    ("queue rising", fleet((10, 10), (0, 0), gauge(1, 1, 0.25)), {"LLMQueueRising"}),
    ("kv cache full with preemptions",
     fleet((10, 10), (0, 0), gauge(1, 1), kv=gauge(0.5, 0.95), preemptions=counter(0, 0.5)),
     {"LLMKVCacheNearFullWithPreemptions"}),
    ("kv cache full, no preemptions", fleet((10, 10), (0, 0), gauge(1, 1), kv=gauge(0.5, 0.95)), set()),
    # Throughput halves and the queue climbs (1 a minute per replica): the replicas cannot keep up.
    ("capacity problem", fleet((10, 5), (0, 0), gauge(1, 1, 0.25)), {"LLMCapacityProblem", "LLMQueueRising"}),
    # Throughput halves, a fifth of what comes fails, the queue stays at 1: look upstream.
    ("upstream broke", fleet((10, 4), (0, 1), gauge(1, 1)), {"LLMUpstreamBroke"}),
    ("upstream broke, vllm_ names", fleet((10, 4), (0, 1), gauge(1, 1), vllm="vllm_"), {"LLMUpstreamBroke"}),
    # The same fall in throughput with no errors is neither (demand simply fell).
    ("demand fell", fleet((10, 5), (0, 0), gauge(1, 1)), set()),
]


def unit_tests() -> dict:
    tests = []
    for name, series, firing in CASES:
        tests.append({
            "name": name, "interval": "15s", "input_series": series,
            "alert_rule_test": [
                {"eval_time": "32m", "alertname": a,
                 "exp_alerts": ([_expected(a)] if a in firing else [])}
                for a in ALERTS
            ],
        })
    return {"rule_files": [str(RULES_FILE)], "evaluation_interval": "15s", "tests": tests}


def _expected(alert: str) -> dict:
    """The alert for model m: its labels, and its annotations with the model's name filled in."""
    rule = next(r for r in all_rules() if r.get("alert") == alert)
    notes = {k: v.replace("{{ $labels.model_name }}", "m") for k, v in rule["annotations"].items()}
    return {"exp_labels": {"model_name": "m", **rule["labels"]}, "exp_annotations": notes}


def test_each_alert_fires_on_its_case_and_not_on_the_others(tmp_path):
    spec = tmp_path / "alerts.test.yaml"
    spec.write_text(yaml.safe_dump(unit_tests(), sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]


def test_the_alert_unit_tests_can_fail(tmp_path):
    """The same cases with the capacity and upstream expectations swapped must fail."""
    spec = unit_tests()
    for t in spec["tests"]:
        for check in t["alert_rule_test"]:
            swap = {"LLMCapacityProblem": "LLMUpstreamBroke", "LLMUpstreamBroke": "LLMCapacityProblem"}
            if check["alertname"] in swap and t["name"] in ("capacity problem", "upstream broke"):
                check["alertname"] = swap[check["alertname"]]
                check["exp_alerts"] = [_expected(check["alertname"])] if check["exp_alerts"] else []
    path = tmp_path / "swapped.test.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True).returncode != 0


# --- the dashboard's shape -------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_the_dashboard_has_the_three_layers_and_qscale():
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert [r.split(" ")[0].rstrip(":") for r in rows] == ["qscale", "GPU", "LLM", "Application"]
    text = " ".join(q for _, q in queries())
    for name in DCGM_GAUGES + ("qscale_desired_replicas", "qscale_decisions_total"):
        assert name in text, name
    titles = {p["title"] for p in panels()}
    assert {"Time to first token", "Tokens per second", "KV-cache use", "Prefix-cache hit rate", "Queue wait",
            "Requests per second", "Errors", "End-to-end latency"} <= titles


def test_panels_have_unique_ids_and_the_datasource_variable():
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]


def vllm_names_in_wire_formats() -> set[str]:
    """Exposed names in the first column of wire-formats.md's table 1.2 (`{a,b}` inside a name
    expanded, a trailing `{labels}` dropped), with a histogram's `_bucket`, `_count`, `_sum`."""
    section = WIRE_FORMATS.read_text().split("### 1.2", 1)[1].split("### 1.3", 1)[0]
    names: set[str] = set()
    for first_cell in re.findall(r"^\|([^|]+)\|", section, re.M):
        for span in re.findall(r"`(vllm:[^`]+)`", first_cell):
            names |= _expand(re.sub(r"\{[^}]*\}$", "", span))
    return {n + s for n in names for s in ("", "_bucket", "_count", "_sum")}


def _expand(name: str) -> set[str]:
    m = re.search(r"\{([^}]*)\}", name)
    if not m:
        return {name}
    return {x for alt in m.group(1).split(",") for x in _expand(name[:m.start()] + alt + name[m.end():])}


def vllm_names_read() -> set[str]:
    """Every vLLM name the dashboard and the rules read (`vllm[:_]x` read as vllm:x)."""
    exprs = [q for _, q in queries()] + [r["expr"] for r in all_rules()] + list(variable_queries().values())
    text = " ".join(exprs)
    return {f"vllm:{name}" for name in re.findall(r"vllm(?::|\[:_\])(\w+)", text)}


def test_every_vllm_metric_it_reads_is_one_vllm_exposes():
    used = vllm_names_read()
    assert {"vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket"} <= used
    known = vllm_names_in_wire_formats()
    assert "vllm:time_to_first_token_seconds_bucket" in known and "vllm:request_success_total" in known
    assert used - known == set()


def test_the_observability_overlay_ships_the_dashboard_for_grafanas_sidecar():
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is not installed"
    out = subprocess.run([kubectl, "kustomize", str(OBSERVABILITY)], capture_output=True, text=True, check=True)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    cm = docs[("ConfigMap", "qscale-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["qscale-dashboard.json"]) == dashboard()
    assert yaml.safe_load(docs[("ConfigMap", "qscale-alert-rules")]["data"]["qscale.rules.yaml"]) == rules()
    assert docs[("PrometheusRule", "qscale-alerts")]["spec"] == rules()


# --- live: Prometheus scraping emulated replicas, qscale and the DCGM gauges ---------------------


def dcgm_text(pods: list[str]) -> str:
    """The three gauges as dcgm-exporter writes them (its pod mapping on), fixed values."""
    lines = []
    for name, doc, value in (("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", 87),
                             ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", 73_000),
                             ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", 41)):
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
        for i, pod in enumerate(pods):
            lines.append(f'{name}{{gpu="0",UUID="GPU-{i:08d}",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",'
                         f'Hostname="node-{i}",container="vllm",namespace="llm",pod="{pod}"}} {value}')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def dcgm_exporter() -> Iterator[int]:
    body = dcgm_text([f"replica-{i}" for i in range(REPLICAS)]).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.end_headers()
            self.wfile.write(body if self.path == "/metrics" else b"")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def qscale_config(tmp: Path, api: int, svc: int, base: int) -> Path:
    cfg = tmp / "qscale.yaml"
    cfg.write_text(textwrap.dedent(f"""
        listen: 127.0.0.1:{api}
        tick_s: 1
        targets:
          - name: demo
            backend: local
            policy: hybrid
            params: {{min_replicas: {REPLICAS}, max_replicas: {REPLICAS}, default_cold_start_s: 2}}
            limits: {{min_replicas: {REPLICAS}, max_replicas: {REPLICAS}}}
            local:
              model_name: demo-model
              max_num_seqs: 4
              cold_start_s: 1
              service_port: {svc}
              base_port: {base}
    """))
    return cfg


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[dict]:
    """`qscale run` (local backend, two emulated replicas) under load from `qscale load`."""
    tmp = tmp_path_factory.mktemp("fleet")
    api, svc, base = free_port(), free_port(), free_port_run(REPLICAS)
    with qscale_process("run", "--config", str(qscale_config(tmp, api, svc, base))) as run:
        wait_http(f"http://127.0.0.1:{api}/readyz", 30, run)
        wait_http(f"http://127.0.0.1:{svc}/v1/models", 30, run)
        trace = "synthetic:poisson?rate=6&duration=120&seed=1&output_mean=64"
        with qscale_process("load", "--trace", trace, "--url", f"http://127.0.0.1:{svc}", "--duration", "120",
                            "--out", str(tmp / "load.csv")):
            yield {"api": api, "replicas": [base + i for i in range(REPLICAS)]}


def prometheus_config(fleet: dict, dcgm_port: int) -> str:
    replicas = ",".join(
        f'{{targets: ["127.0.0.1:{p}"], labels: {{pod: replica-{i}}}}}' for i, p in enumerate(fleet["replicas"]))
    return textwrap.dedent(f"""
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        rule_files: ["{RULES_FILE}"]
        scrape_configs:
          - job_name: vllm
            static_configs: [{replicas}]
          - job_name: qscale
            static_configs: [{{targets: ["127.0.0.1:{fleet['api']}"]}}]
          - job_name: dcgm
            static_configs: [{{targets: ["127.0.0.1:{dcgm_port}"]}}]
    """)


@pytest.fixture(scope="module")
def prometheus(fleet, dcgm_exporter, tmp_path_factory) -> Iterator[str]:
    with prometheus_server(tmp_path_factory.mktemp("prom"), prometheus_config(fleet, dcgm_exporter)) as url:
        yield url


def for_prometheus(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def instant(prom: str, expr: str) -> list[dict]:
    status, body = http_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5)
    reply = json.loads(body)
    assert status == 200 and reply["status"] == "success", f"{expr}: {reply.get('error')}"
    return reply["data"]["result"]


def has_data(result: list[dict]) -> bool:
    """At least one series with a finite value (histogram_quantile of nothing is NaN)."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


def wait_for_data(prom: str, exprs: dict[str, str], timeout_s: float) -> dict[str, str]:
    """Poll until every query returns data; what still has none at the deadline, with why."""
    pending = dict(exprs)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = {k: e for k, e in pending.items() if not has_data(instant(prom, e))}
        if pending:
            time.sleep(1)
    return {k: f"{e} -> {instant(prom, e)[:2]}" for k, e in pending.items()}


def variable_queries() -> dict[str, str]:
    """Each template variable's `label_values(SELECTOR, LABEL)` as the PromQL it stands for."""
    out = {}
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"]).groups()
            out[f"${v['name']}"] = f"count by ({label}) ({selector})"
    return out


def test_every_panel_and_variable_query_returns_data(prometheus):
    exprs = {f"{title}: {expr}": for_prometheus(expr) for title, expr in queries()}
    assert wait_for_data(prometheus, {**exprs, **variable_queries()}, 90) == {}


def test_a_query_without_a_source_returns_no_data(prometheus):
    """The check above can fail: a family nothing exports has no data."""
    assert not has_data(instant(prometheus, "DCGM_FI_DEV_POWER_USAGE"))
    assert not has_data(instant(prometheus, 'vllm:num_requests_waiting{model_name="no-such-model"}'))


def rule_groups(prom: str) -> list[dict]:
    status, body = http_get(f"{prom}/api/v1/rules", timeout=5)
    assert status == 200
    return json.loads(body)["data"]["groups"]


def test_prometheus_evaluates_every_rule_healthy(prometheus):
    deadline = time.monotonic() + 30
    evaluated: list[dict] = []
    while time.monotonic() < deadline:
        evaluated = [r for g in rule_groups(prometheus) for r in g["rules"]]
        if len(evaluated) == len(all_rules()) and all(r["health"] != "unknown" for r in evaluated):
            break
        time.sleep(0.5)
    assert sorted(r["name"] for r in evaluated) == sorted(r.get("record") or r["alert"] for r in all_rules())
    assert [(r["name"], r["health"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []


def test_every_recording_rule_and_alert_term_returns_data(prometheus):
    """The recorded llm:* series have data, and each alert's expression runs (an alert that
    does not fire returns nothing: promtool's cases above show each one firing)."""
    records = {r["record"]: r["record"] for r in all_rules() if "record" in r}
    assert wait_for_data(prometheus, records, 60) == {}
    for r in all_rules():
        if "alert" in r:
            instant(prometheus, r["expr"])  # raises on an error


def gjson(document: dict, path: str):
    """KEDA's valueLocation for a plain dotted path (all the overlay uses)."""
    for key in path.split("."):
        document = document[key]
    return document


def test_the_keda_trigger_reads_the_decision_from_a_running_qscale(fleet):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "manifests" / "overlays" / "keda")],
                         capture_output=True, text=True, check=True)
    (so,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "ScaledObject"]
    meta = so["spec"]["triggers"][0]["metadata"]
    path = urllib.parse.urlsplit(meta["url"]).path
    assert path == "/api/v1/targets/vllm"
    path = path.replace("/vllm", "/demo")  # the overlay's target is vllm, here demo
    location = meta["valueLocation"]
    status, body = http_get(f"http://127.0.0.1:{fleet['api']}{path}")
    assert status == 200
    value = gjson(json.loads(body), location)
    status, metrics = http_get(f"http://127.0.0.1:{fleet['api']}/metrics")
    (gauge,) = re.findall(r'^qscale_desired_replicas\{target="demo"\} (\S+)$', metrics.decode(), re.M)
    assert isinstance(value, int) and value == float(gauge) == REPLICAS
    status, body = http_get(f"http://127.0.0.1:{fleet['api']}/api/v1/targets/nope")
    assert status == 404 and json.loads(body)["reason"] == "NotFound"


if __name__ == "__main__":
    PROMETHEUS_RULE_FILE.write_text(render_prometheus_rule())
    print(f"wrote {PROMETHEUS_RULE_FILE.relative_to(ROOT)}", file=sys.stderr)
