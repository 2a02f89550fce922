"""``workbench report``: a markdown report with PNG plots of the implicated metrics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from scaffold.loader import Scaffold
from workbench.doctor.core import judge, series_of
from workbench.doctor.series import Series, resolve_roles
from workbench.doctor.types import RunVerdict
from workbench.runs.tracking import RunInfo, TrackingClient


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "metric"


def plot_metric(s: Series, onsets: list[tuple[int, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    fin = np.isfinite(s.values)
    ax.plot(s.steps[fin], s.values[fin], lw=1.0, color="#1f77b4", label=s.name)
    if (~fin).any():
        top = np.nanmax(s.values[fin]) if fin.any() else 1.0
        ax.scatter(
            s.steps[~fin],
            np.full((~fin).sum(), top),
            marker="x",
            color="red",
            s=12,
            label="NaN/inf",
        )
    for step, kind in onsets:
        ax.axvline(step, color="#d62728", ls="--", lw=1.2)
        ax.annotate(
            f"{kind} @ {step}",
            (step, 0.95),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="#d62728",
            ha="left",
            va="top",
        )
    if (
        fin.any()
        and np.nanmin(s.values[fin]) > 0
        and np.nanmax(s.values[fin]) / np.nanmin(s.values[fin]) > 1e3
    ):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(s.name, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_markdown(info: RunInfo, v: RunVerdict, plots: list[str]) -> str:
    lines = [f"# Run doctor report: `{info.run_id}`", ""]
    lines += [
        f"- run name: {info.name or '-'}",
        f"- status: {info.status}",
        f"- verdict: **{v.status}**",
        "",
    ]
    if v.diagnosis:
        d = v.diagnosis
        lines += [
            "## Diagnosis",
            "",
            f"**{d.cause}** (confidence {d.confidence:.2f}): {d.summary}",
            "",
        ]
        if d.explanation:
            lines += [d.explanation, ""]
    lines += ["## Findings", ""]
    if v.findings:
        lines += ["| kind | metric | onset step | severity | evidence |", "|---|---|---|---|---|"]
        for f in v.findings:
            ev = f.evidence.replace("|", "\\|")
            lines.append(
                f"| {f.kind} | {f.metric or '-'} | {f.step if f.step is not None else '-'} | {f.severity:.2f} | {ev} |"
            )
    else:
        lines.append("No findings: the run looks healthy.")
    lines.append("")
    if v.remedies:
        lines += ["## Remedies (ranked)", ""]
        for i, r in enumerate(v.remedies, 1):
            ops = (
                ", ".join(
                    f"`{p.key} {'*=' if p.op == 'mul' else '+=' if p.op == 'add' else '=' if p.op == 'set' else 'delete'}"
                    f"{'' if p.op == 'delete' else ' ' + repr(p.value)}`"
                    for p in r.patch
                )
                or "(no config patch)"
            )
            lines.append(f"{i}. **{r.id}**: {r.description} — {ops}")
        lines.append("")
    if plots:
        lines += ["## Metrics", ""]
        lines += [f"![{p}]({p})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _atomic(path: Path, write) -> None:
    """Write via a temp file in the same folder, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        from model.checkpoint import umask_file_mode  # mkstemp's 0600 must not leak

        os.chmod(tmp, umask_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(
    client: TrackingClient,
    run_id: str,
    out_dir: str | Path,
    scaffold: Scaffold,
    *,
    log_to_mlflow: bool = False,
) -> tuple[Path, RunVerdict]:
    """Write ``report.md`` + one PNG per implicated metric into ``out_dir``."""
    info = client.run(run_id)
    series = series_of(client.histories(run_id))
    v = judge(client, info, series, scaffold)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onsets: dict[str, list[tuple[int, str]]] = {}
    for f in v.findings:
        if f.metric and f.step is not None:
            onsets.setdefault(f.metric, []).append((f.step, f.kind))
    roles = resolve_roles({k: len(s) for k, s in series.items()}, scaffold.metrics)
    names = [n for n in onsets if n in series]
    for role in ("train_loss", "eval_loss", "grad_norm"):
        if roles.get(role) and roles[role] not in names and len(names) < 4:
            names.append(roles[role])
    # Status findings (crash, stalled) are marked on the loss curve.
    loss = roles.get("train_loss")
    for f in v.findings:
        if f.metric is None and f.step is not None and loss:
            onsets.setdefault(loss, []).append((f.step, f.kind))
    plots = []
    for name in names:
        fname = f"{_safe(name)}.png"
        _atomic(
            out / fname, lambda p, name=name: plot_metric(series[name], onsets.get(name, []), p)
        )
        plots.append(fname)
    text = render_markdown(info, v, plots)
    _atomic(out / "report.md", lambda p: p.write_text(text))
    if log_to_mlflow:
        client.log_artifacts(run_id, str(out), "doctor_report")
    return out / "report.md", v
