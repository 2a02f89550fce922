"""MLE-Bench-style autonomous experiments: the AIDE-style search agent and its evaluation.

``run_task`` (one competition), ``evaluate`` (a suite over seeds), brains in ``brains``,
the sandboxed node runner in ``isolation``, the scaffold loader in ``config``.
"""

from __future__ import annotations


def run_task(*args, **kwargs):
    from workbench.mle.agent import run_task as _run

    return _run(*args, **kwargs)


def evaluate(*args, **kwargs):
    from workbench.mle.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
