"""`qscale calibrate`: fit a performance profile to a live vLLM server."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from policies.errors import UserError
from qscale.commands.checks import check_http_url, number, output_file, whole

HELP = "measure a live vLLM server and write the simulator's performance profile for it"
FIELD_COMMENTS = {
    "base_s": "per engine step (weights read, launch, sampling)",
    "prefill_token_s": "per prompt token computed",
    "prefill_attention_s": "per attention pair of a prefill chunk (prefill_attention in simulations/profile.py)",
    "decode_seq_s": "per decoding sequence in a step",
    "context_token_s": "per context token a decoding sequence attends over",
    "frontend_s": "per request, before the scheduler sees it (HTTP, tokenizing)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="base URL of a running vLLM server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--out", required=True, type=output_file(), help="profile YAML to write")
    parser.add_argument("--name", default=None, help="profile name (default: the file's stem)")
    parser.add_argument("--model", default=None, help="served model to measure (default: the server's first)")
    parser.add_argument("--budget", type=number(5, 3600), default=180.0,
                        help="seconds the sweep may take, probes included (default 180)")
    parser.add_argument("--repeats", type=whole(1, 20), default=5, help="times each point is measured (default 5)")
    parser.add_argument("--max-num-seqs", type=whole(1, 2**31 - 1), default=None,
                        help="the server's max_num_seqs (default: probed)")
    parser.add_argument("--max-num-batched-tokens", type=whole(1, 2**31 - 1), default=None,
                        help="the server's max_num_batched_tokens (default: probed)")


def profile_yaml(result) -> str:
    p = result.profile
    data = p.model_dump(mode="json", exclude_none=True)
    lines = [f"# Fitted by `qscale calibrate` against {result.facts.url} ({result.facts.model}) in "
             f"{result.duration_s:.0f} s, {len(result.observations)} points.",
             "# step_s = base_s + prefill_token_s*P + prefill_attention_s*A + decode_seq_s*D + context_token_s*C;",
             "# each request also spends frontend_s before the scheduler sees it (simulations/profile.py).",
             f"# Relative residuals of the fit: median {result.fit.quantile(0.5):.1%}, "
             f"p90 {result.fit.quantile(0.9):.1%}, max {result.fit.worst():.1%}."]
    for name, why in FIELD_COMMENTS.items():
        lines.append(f"#   {name}: {why}")
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)


def _progress(total_ref: list):
    from qscale.progress import ProgressBar

    def on_plan(plan):
        bar = ProgressBar("calibrating", plan.size, unit="points")
        total_ref.append(bar)
        return bar
    return on_plan


def run(args: argparse.Namespace, settings) -> int:
    from server.calibrate.calibrate import run_calibration

    url = check_http_url(args.url)
    bars: list = []
    try:
        result = run_calibration(url, args.name or Path(args.out).stem, model=args.model, budget_s=args.budget,
                                 max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                 repeats=args.repeats, on_plan=_progress(bars))
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"calibration failed: {exc}") from None
    finally:
        for bar in bars:
            bar.close()
    Path(args.out).write_text(profile_yaml(result))
    print(_summary(result))
    print(f"wrote {args.out}")
    return 0


def _summary(result) -> str:
    p, fit = result.profile, result.fit
    terms = "  ".join(f"{k}={getattr(p, k):.3g}" for k in FIELD_COMMENTS)
    lines = [f"{result.facts.model} at {result.facts.url}: max_model_len {p.max_model_len}, "
             f"KV {p.kv_capacity_tokens} tokens, max_num_seqs {p.max_num_seqs}, "
             f"max_num_batched_tokens {p.max_num_batched_tokens}",
             f"fit over {len(fit.residuals)} points: {terms}",
             f"relative residuals: median {fit.quantile(0.5):.1%}  p90 {fit.quantile(0.9):.1%}  "
             f"max {fit.worst():.1%}" + (f"  (dropped: {', '.join(fit.dropped)})" if fit.dropped else "")]
    lines += [f"note: {n}" for n in (p.calibration.notes if p.calibration else [])]
    return "\n".join(lines)
