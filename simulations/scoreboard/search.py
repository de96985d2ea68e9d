"""Which configurations of each baseline the scoreboard runs.

* blog: the configuration the blog posts use (the policies' defaults: HPA and KEDA on
  5 waiting requests per pod, Knative's defaults);
* best: the cheapest configuration meeting the SLO target found by `qscale tune`'s search
  (`simulations/tuning`) within the policy's own declared parameter space (`Tunable`
  fields of its `Params`: the metric, the target, the windows), on the cell itself.
"""

from __future__ import annotations

from typing import Any

BLOG: dict[str, dict[str, Any]] = {"hpa": {}, "keda": {}, "kpa": {}}
TUNED: tuple[str, ...] = ("hpa", "keda", "kpa")
