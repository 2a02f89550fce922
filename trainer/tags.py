"""The ``workbench.*`` MLflow run-tag names, spelled once.

The trainer sets the first group on every run it starts; the launcher, the supervisor, the
doctor and the suites set and search the rest. It lives in ``trainer`` because that is the
lowest layer that sets them (``trainer`` never imports ``workbench``; everyone above imports
``trainer``).
"""

from __future__ import annotations


class Tag:
    # set by the trainer (trainer.harness.run_tags)
    PROGRAM = "workbench.program"  # lm | digits
    CONFIG = "workbench.config"  # the config file, relative to the repo
    GIT_COMMIT = "workbench.git_commit"  # the repo's HEAD when the run started
    REPO = "workbench.repo"  # the repo's git toplevel (a worktree per fix attempt)
    LAUNCH = "workbench.launch"  # a command that reproduces the run
    # set on a fix run by the launcher and the supervisor
    EPISODE = "workbench.episode"  # the episode attempt that launched it
    PARENT_RUN = "workbench.parent_run"  # the failing run it fixes
    BRANCH = "workbench.branch"  # the fix branch it ran from
    VERIFIED = "workbench.verified"  # "true" | "false"
    REVIEW_ID = "workbench.review_id"
    # set by `workbench watch --tag-runs`
    DIAGNOSIS = "workbench.diagnosis"
    CAUSE = "workbench.cause"
    # fault-suite runs (experiments.faults) and measured fix reruns (workbench.rl.outcomes)
    SCENARIO = "workbench.scenario"
    EXPECTED = "workbench.expected"  # the label a run was built with, a record (suites score their file's); never shown to the doctor
    SPLIT = "workbench.split"
    FIX_OUTCOME = "workbench.fix_outcome"  # unique per rerun: finds the run in the scratch store
    FIX_SCENARIO = "workbench.fix_scenario"  # not SCENARIO: a rerun is no suite run
