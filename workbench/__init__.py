"""m2-workbench: a self-evolving agent workbench for debugging ML training runs."""

__version__ = "0.1.0"
