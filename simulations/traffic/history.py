"""vLLM's metric history from Prometheus, window by window, for `qscale record`.

One `query_range` per series, evaluated at each window's end with
`sum(increase(NAME{selector}[step]))`: the increase over the window, summed over the
replicas the selector matches, counter resets handled by Prometheus. Each name is asked
for in both spellings (`vllm:x` or `vllm_x`, see autoscaler/metrics/prometheus.py).
Plain urllib: whole-second-exact times, one attempt, and Prometheus's own error text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlencode

from policies.errors import UserError
from simulations.traffic.record import E2E, OUTPUT, PROMPT, REQUESTS, WindowReading, histogram

Series = dict[int, float]  # window end (epoch seconds) -> increase


def increase_query(name: str, selector: str, step_s: int, by: str = "") -> str:
    """`sum [by (x)] (increase(NAME{selector}[step]))`, in both spellings of NAME."""
    group = f" by ({by})" if by else ""

    def one(metric: str) -> str:
        return f"sum{group} (increase({metric}{selector}[{step_s}s]))"

    return f"{one(name)} or {one(name.replace('vllm:', 'vllm_', 1))}"


@dataclass(frozen=True)
class PrometheusHistory:
    """Reads `WindowReading`s: call it with the first window's start and a window count."""

    url: str  # http(s)://host:port, no trailing slash
    selector: str  # `{label="value",...}` or ""
    step_s: int
    timeout_s: float = 60.0

    def __call__(self, first_start_s: float, windows: int) -> list[WindowReading]:
        span = (first_start_s + self.step_s, first_start_s + windows * self.step_s)
        requests = self._series(REQUESTS, span)
        e2e_sum, e2e_count = self._series(E2E + "_sum", span), self._series(E2E + "_count", span)
        prompt, output = self._buckets(PROMPT + "_bucket", span), self._buckets(OUTPUT + "_bucket", span)
        prompt_sum, output_sum = self._series(PROMPT + "_sum", span), self._series(OUTPUT + "_sum", span)
        readings = []
        for i in range(windows):
            end = int(first_start_s) + (i + 1) * self.step_s
            readings.append(WindowReading(
                end - self.step_s, requests.get(end), e2e_sum.get(end), e2e_count.get(end),
                histogram(prompt.get(end, {})), histogram(output.get(end, {})),
                prompt_sum.get(end), output_sum.get(end)))
        return readings

    def _series(self, name: str, span: tuple[float, float]) -> Series:
        rows = self._matrix(increase_query(name, self.selector, self.step_s), span)
        return _values(rows[0]) if rows else {}

    def _buckets(self, name: str, span: tuple[float, float]) -> dict[int, dict[float, float]]:
        """window end -> {le -> increase of that cumulative bucket}."""
        out: dict[int, dict[float, float]] = {}
        for row in self._matrix(increase_query(name, self.selector, self.step_s, by="le"), span):
            try:
                le = float(row["metric"]["le"])
            except (KeyError, ValueError, TypeError):
                raise UserError(f"Prometheus at {self.url}: a {name} series without a numeric le label") from None
            for end, value in _values(row).items():
                out.setdefault(end, {})[le] = value
        return out

    def _matrix(self, query: str, span: tuple[float, float]) -> list[dict]:
        """The `result` of one query_range, or a one-line UserError."""
        params = urlencode({"query": query, "start": f"{span[0]:.0f}", "end": f"{span[1]:.0f}",
                            "step": str(self.step_s)})
        body = self._get(f"{self.url}/api/v1/query_range?{params}")
        try:
            answer = json.loads(body)
            data = answer["data"]
            if answer.get("status") != "success" or data.get("resultType") != "matrix":
                raise ValueError
            return list(data["result"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"Prometheus at {self.url} sent something that is not a query_range answer "
                            f"({len(body)} bytes, starting {body[:60]!r})") from None

    def _get(self, url: str) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise UserError(f"Prometheus at {self.url} refused the query: {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"cannot reach Prometheus at {self.url}: {reason}") from None


def _values(row: dict) -> Series:
    """{window end: value} of one matrix row (NaN and Inf kept: the rebuild skips them)."""
    try:
        return {round(float(t)): float(v) for t, v in row["values"]}
    except (KeyError, ValueError, TypeError):
        raise UserError("Prometheus sent a series whose values are not [time, number] pairs") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    """Prometheus's `error` field (e.g. a PromQL parse error), else the HTTP status."""
    try:
        return f"{json.loads(exc.read())['error']} (HTTP {exc.code})"
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code} {exc.reason}"
