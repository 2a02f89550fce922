"""Prefix-tree merging benchmark (see trainer/rl/benchmark.py): `python -m bench.prefix_tree`."""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    from trainer.rl.benchmark import BenchConfig, run

    small = "--quick" in argv
    cfg = BenchConfig(episodes=4, turns=4, repeats=1) if small else BenchConfig()
    print(json.dumps({"prefix_tree": run(cfg)}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
