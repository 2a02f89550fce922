"""MLE-Bench-style autonomous experiments: the AIDE-style search agent and its evaluation.

``agent.run_task`` (one competition), ``evaluate.evaluate`` (a suite over seeds — the evolve
loop's entry point), brains in ``brains``, the sandboxed node runner in ``isolation``, the
scaffold loader in ``config``.
"""
