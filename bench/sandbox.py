"""`python -m bench.sandbox`: wall time one MLE solution run costs under each sandbox path.

Side by side, interleaved, in one process: the same solution (a bare ``print`` and a script
that imports pandas + scikit-learn and fits a tiny model) run through
``workbench.mle.isolation.run_solution`` with the unshare fallback (what ran before bubblewrap)
and with bubblewrap. Prints the median per path and the ratio bwrap / fallback.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from workbench.mle.isolation import NodeLimits, copy_public, prepare_workdir, run_solution
from workbench.runs import sandbox

SCRIPTS = {
    "print": "print('validation_score: 0.5')\n",
    "sklearn-fit": (
        "import pandas as pd\n"
        "from sklearn.datasets import make_classification\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "X, y = make_classification(200, 8, random_state=0)\n"
        "print('validation_score:', LogisticRegression().fit(X, y).score(X, y))\n"
    ),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if not sandbox.bwrap_available():
        print("bubblewrap is not usable here: nothing to compare")
        return
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        (root / "public").mkdir()
        (root / "public" / "train.csv").write_text("id,y\n1,2\n")
        inp = copy_public(root / "public", root / "run" / "input")
        for name, code in SCRIPTS.items():
            times: dict[str, list[float]] = {"unshare": [], "bwrap": []}
            for i in range(args.repeats + 1):  # the first round warms caches, not counted
                for backend in times:
                    node = root / "run" / f"{name}-{backend}-{i}"
                    prepare_workdir(node, inp, code)
                    res = run_solution(node, [], NodeLimits(timeout_s=120, backend=backend))
                    assert res.returncode == 0, res.log
                    if i:
                        times[backend].append(res.wall_s)
            old, new = (statistics.median(times[b]) for b in ("unshare", "bwrap"))
            print(
                f"{name:12s} fallback {old * 1000:7.1f} ms   bwrap {new * 1000:7.1f} ms   "
                f"ratio {new / old:.2f}x   (+{(new - old) * 1000:.1f} ms per run, "
                f"median of {args.repeats})"
            )


if __name__ == "__main__":
    main()
