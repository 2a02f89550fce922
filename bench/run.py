"""`make bench`: runs every CPU benchmark, each printing ratios measured side by side."""

from __future__ import annotations

import importlib
import sys

# Each module exposes ``main(argv: list[str]) -> None``.
BENCHMARKS = [
    "bench.model_step",
    "bench.kernels",
    "bench.serving",
    "bench.doctor",
    "bench.sandbox",
]


def main() -> None:
    ran = 0
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        print(f"\n=== {name}", flush=True)
        module.main(["--tiny"] if name == "bench.kernels" else [])
        ran += 1
    if ran == 0:
        sys.exit("no benchmarks found")


if __name__ == "__main__":
    main()
