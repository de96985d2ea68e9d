"""Offline tuning: the best parameters of a policy for recorded traffic (Optuna).

* `space`: the policy's own declared search space (`policies.tunable`), suggested per trial;
* `parts`: each trace split in time into a tuning part and a held-out part;
* `objective`: one parameter set on every tuning part, checkpointed so hopeless trials stop early;
* `study`: the constrained search (fewest GPU-hours with SLO attainment at or above the target),
  on any Optuna storage, shared by workers;
* `report`: the held-out comparison and the sensitivity of the chosen parameters.
"""
