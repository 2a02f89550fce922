"""m2-workbench: a self-evolving agent workbench for debugging ML training runs.

Packages in loop order: ``runs`` (MLflow, git, launch, sandbox), ``doctor`` (findings and
diagnosis), ``supervisor`` (the fix graph), ``rl`` (episodes into policy updates), ``evolve``
(scaffold evolution), ``mle`` (MLE-Bench-style agent), ``cli`` (the ``workbench`` command).
"""

from pathlib import Path

__version__ = "0.1.0"

# The state folder (checkpoints, review queue, archive, trajectories); the CLI's ``--home``
# defaults to ``$WORKBENCH_HOME``, else this.
DEFAULT_HOME = Path(".workbench")
