"""Faults an emulated replica can be told to show on /metrics, for fault runs (`bench/faults.py`).

Started with `qscale serve --fault-dir DIR`, a replica on port P reads `DIR/P` on every
scrape: absent or empty, it answers normally; otherwise the file names the fault:

* `garbled`: an HTML error page with status 200 (a proxy in the way);
* `inf-waiting`, `nan-running`, `negative`: one gauge reads +Inf, NaN, or -3;
* `truncated`: half the exposition, then the connection drops.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

MODES = ("garbled", "inf-waiting", "nan-running", "negative", "truncated")

_GAUGE = {
    "inf-waiting": ("vllm:num_requests_waiting", "+Inf"),
    "nan-running": ("vllm:num_requests_running", "NaN"),
    "negative": ("vllm:num_requests_waiting", "-3.0"),
}


def fault_mode(fault_dir: str | None, port: int | None) -> str | None:
    """The fault this replica must show now, if any."""
    if not fault_dir or port is None:
        return None
    try:
        mode = (Path(fault_dir) / str(port)).read_text().strip()
    except OSError:
        return None
    return mode if mode in MODES else None


def _set_gauge(body: bytes, name: str, value: str) -> bytes:
    pattern = re.compile(rb"^(" + re.escape(name.encode()) + rb"(\{[^}]*\})?) \S+$", re.M)
    return pattern.sub(lambda m: m.group(1) + b" " + value.encode(), body)


async def faulty_metrics(request: web.Request, mode: str, body: bytes, ctype: str) -> web.StreamResponse:
    if mode == "garbled":
        return web.Response(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
    if mode in _GAUGE:
        return web.Response(body=_set_gauge(body, *_GAUGE[mode]), headers={"Content-Type": ctype})
    resp = web.StreamResponse(headers={"Content-Type": ctype})  # truncated: chunked, cut halfway
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return resp
