"""The set-up every foreign program shares: its ``--key value`` flags and its seeds.

Only plumbing lives here (no training, no metric names), so the programs stay written apart
from the doctor and from each other.  A program runs as a script, so it imports this module
from its own folder (``import _setup``).
"""

import argparse

import numpy as np


def parse_flags(flags):
    """``{flag: default}`` or ``{flag: (dest, default)}`` → parsed args; a flag's type is its
    default's type (a float flag given ``0`` is still ``0.0``)."""
    p = argparse.ArgumentParser()
    for flag, spec in flags.items():
        dest, default = spec if isinstance(spec, tuple) else (None, spec)
        kw = {"dest": dest} if dest else {}
        p.add_argument(flag, type=type(default), default=default, **kw)
    return p.parse_args()


def seeded(seed, torch=True):
    """Seed numpy (returned as the program's generator) and, for a PyTorch program, torch on
    one thread (the harness runs several programs side by side)."""
    if torch:
        import torch as pt

        pt.set_num_threads(1)
        pt.manual_seed(seed)
    return np.random.default_rng(seed)
