"""The policy scoreboard: qscale's hybrid against HPA, KEDA and Knative's KPA (as blog posts
configure them, and at their best within their own parameter space), measured against the
three reference points of the same run: `bound` (GPU-hours nothing can go below), `oracle`
(the cheapest clairvoyant schedule found) and `static-best` (the smallest constant fleet
that meets the SLO target).

Panel: 7 traffic shapes x 2 loads x 2 cold starts (`simulations/scoreboard/panel.py`).
Prints the per-policy summary and every cell hybrid falls short in; about 15 minutes on
2 cores. Same as `qscale scoreboard`; any of its flags work here too.

Run: python bench/policies.py [--json out/scoreboard.json] [--plot out/scoreboard.png] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qscale.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["scoreboard", *sys.argv[1:]]))
