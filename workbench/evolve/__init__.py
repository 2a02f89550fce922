"""Self-evolution: the agent edits its own scaffold on branches, proves each edit on held-out
runs, and queues winners for review.  Entry point: ``run_evolution`` (``workbench evolve``)."""

from workbench.evolve.archive import Archive, Node
from workbench.evolve.loop import run_evolution, summary

__all__ = ["Archive", "Node", "run_evolution", "summary"]
