"""An episode's report: markdown (findings, attempts, numbers) + a PNG of the eval metric
before vs after, under ``<home>/reports``. The graph's report node writes it."""

from __future__ import annotations

from pathlib import Path

from model.files import atomic_path, atomic_write_text


def write_report(state: dict) -> Path:
    """Markdown report (+ a PNG of the eval metric, before vs after) under ``<home>/reports``."""
    reports = Path(state["home"]) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    tid = state["thread_id"]
    cur = state.get("current") or {}
    d = state.get("diagnosis") or {}
    lines = [
        f"# Fix episode {tid}",
        "",
        f"- run: `{state['run_id']}`  status: **{state.get('status', 'failed')}**",
        f"- diagnosis: {d.get('cause', 'n/a')} ({d.get('confidence', 0):.2f}) — {d.get('summary', '')}",
        "",
        "## Findings",
        *[
            f"- `{f['kind']}` at step {f.get('step')}: {f['evidence']}"
            for f in state.get("findings", [])
        ],
        "",
        "## Attempts",
    ]
    for a in [*state.get("attempts", []), *([cur] if cur else [])]:
        verdict = (
            "verified" if a.get("passed") else (a.get("error") or "; ".join(a.get("reasons") or []))
        )
        lines.append(f"- #{a.get('n')} `{a.get('remedy_id')}` on `{a.get('branch')}`: {verdict}")
    before = state.get("before") or {}
    after = cur.get("after") or {}
    lines += [
        "",
        "## Numbers",
        f"- best {before.get('eval_metric')}: before {before.get('best_eval')} → after {after.get('best_eval')}",
        f"- last step: before {before.get('last_step')} → after {after.get('last_step')}",
    ]
    png = _plot(state, reports / f"{tid}.png")
    if png:
        lines += ["", f"![eval metric]({png.name})"]
    return atomic_write_text(reports / f"{tid}.md", "\n".join(lines) + "\n")


def _plot(state: dict, path: Path) -> Path | None:
    cur = state.get("current") or {}
    metric = (state.get("before") or {}).get("eval_metric")
    if not metric or not cur.get("new_run_id"):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from workbench.runs.launch import absolute_tracking_uri
        from workbench.runs.tracking import TrackingClient

        tc = TrackingClient(absolute_tracking_uri(state["tracking_uri"]))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for rid, label in ((state["run_id"], "original"), (cur["new_run_id"], "patched")):
            h = tc.history(rid, metric)
            ax.plot(h.steps, h.values, label=f"{label} {rid[:8]}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        return path
    except Exception:  # a plot is a nicety; the report stands without it
        return None
