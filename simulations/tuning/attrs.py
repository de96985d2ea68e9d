"""Names of what a trial records in the study (user attributes and the constraint)."""

ATTAINMENT = "attainment"  # lowest served SLO attainment over the parts
GPU_HOURS = "gpu_hours"  # summed over the parts
PER_PART = "per_part"  # [attainment, GPU-hours] per part
PARAMS = "params"  # the parameters as run (rounded)
CONSTRAINT = "slo_shortfall"  # target - attainment: feasible when <= 0
CANNOT_MEET = "cannot_meet"  # a part already missed more requests than the target allows
WORKER = "worker"  # who ran it
ERROR = "error"  # why the policy refused the parameters
OVER_BUDGET = "over_budget"  # opened after the study's budget was taken: not run
INTERRUPTED = "interrupted"  # stopped by Ctrl-C or SIGTERM: its parameters were queued again
RETRY_OF = "retry_of"  # on a queued trial: the number of the one it repeats
