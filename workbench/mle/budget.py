"""`workbench mle eval`'s default budget per (task, seed) run, the one the targets are set for.

Read by the CLI's defaults and by the priors' node budget; no imports, so the CLI, which loads
it at start-up, stays fast.
"""

EVAL_STEPS = 6
EVAL_TIME_LIMIT_S = 75.0
