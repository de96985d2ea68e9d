# Sourced by scripts/demo, scripts/test and scripts/scoreboard: the project's own virtual
# environment (.venv in the repository root, or $QSCALE_VENV), created on first use. qscale and
# its dependencies are installed there, never into your own Python; the scripts then run
# everything with it. Usage: source scripts/venv.sh EXTRAS (e.g. "test,plot").
venv="${QSCALE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating the project's virtual environment in $venv (qscale installs nothing outside it)"
  python3 -m venv "$venv"
fi
VIRTUAL_ENV="$(cd "$venv" && pwd)"
export VIRTUAL_ENV
export PATH="$VIRTUAL_ENV/bin:$PATH"
# (pip's notes about package folders this machine's pip config names but lacks are noise.)
python -m pip install --quiet --disable-pip-version-check -e ".[$1]" 2> >(grep -v "^WARNING: Location" >&2)
