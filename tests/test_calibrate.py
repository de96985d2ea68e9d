"""`qscale calibrate` end to end: against an emulated server whose true step costs are set here,
the fit must find them through HTTP; bad URLs and servers that are not vLLM get one-line errors."""

from __future__ import annotations

import http.server
import threading

import pytest
import yaml

from simulations.profile import load_profile
from tests.servers import free_port, qscale, qscale_process, wait_http

# The emulated engine's truth: 4 ms a step, 50 us a prompt token, 1 ms a decoding sequence, no
# attention terms, 8 sequences at most. Large enough to time over loopback HTTP on a busy machine.
TRUTH = """
name: truth
base_s: 0.004
prefill_token_s: 5.0e-05
decode_seq_s: 0.001
context_token_s: 0.0
block_size: 16
num_gpu_blocks: 16384
max_num_seqs: 8
max_num_batched_tokens: 2048
max_model_len: 2048
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    path = tmp_path_factory.mktemp("truth") / "truth.yaml"
    path.write_text(TRUTH)
    port = free_port()
    with qscale_process("serve", "--profile", str(path), "--port", str(port), "--model-name", "m") as proc:
        wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
        yield f"http://127.0.0.1:{port}"


def test_finds_the_emulated_engines_true_costs(emulated, tmp_path):
    out = tmp_path / "fitted.yaml"
    done = qscale("calibrate", "--url", emulated, "--out", str(out), "--budget", "90", "--repeats", "2", timeout=300)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    fitted = load_profile(str(out))
    assert fitted.max_num_seqs == 8  # probed, not given
    assert (fitted.max_model_len, fitted.block_size, fitted.num_gpu_blocks) == (2048, 16, 16384)  # read
    assert fitted.base_s == pytest.approx(0.004, rel=0.2)
    assert fitted.prefill_token_s == pytest.approx(5e-5, rel=0.2)
    assert fitted.decode_seq_s == pytest.approx(0.001, rel=0.2)
    # Terms the engine does not have are dropped, or negligible next to the real ones.
    assert fitted.context_token_s * 2048 < 0.1 * fitted.decode_seq_s
    assert fitted.prefill_attention_s * 2048 < 0.1 * fitted.prefill_token_s
    record = yaml.safe_load(out.read_text())["calibration"]
    assert record["points"] >= 20 and record["residual_p90"] < 0.15


@pytest.mark.parametrize("url, says", [
    ("ftp://127.0.0.1:1", "--url must be"),
    ("http://127.0.0.1:1", "cannot reach"),
])
def test_bad_or_unreachable_url_is_one_line_exit_2(url, says, tmp_path):
    done = qscale("calibrate", "--url", url, "--out", str(tmp_path / "p.yaml"), timeout=60)
    assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "p.yaml").exists()


class _NotVllm(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'{"object": "list", "data": [{"id": "m", "max_model_len": 4096}]}' if self.path == "/v1/models" \
            else b"# some other exporter\nup 1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_that_is_not_vllm_is_refused(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = qscale("calibrate", "--url", url, "--out", str(tmp_path / "p.yaml"), timeout=60)
    finally:
        server.shutdown()
    assert done.returncode == 2 and "not a vLLM server" in done.stderr, done.stderr
