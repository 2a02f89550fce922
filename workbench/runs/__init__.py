"""What touches the user's runs and repos: the MLflow client (``tracking``), git branches and
worktrees (``gitops``), starting a patched run (``launch``) and the process sandbox it runs in
(``sandbox``). Side effects live here; the supervisor decides, these modules act."""
