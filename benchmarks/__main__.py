"""Run every benchmark module of this package with its defaults: `python -m benchmarks` (`make bench`).

A benchmark is a module here with a `main(argv)` function; each writes its results as JSON under
outputs/bench/. `python -m benchmarks NAME ...` runs only the named ones. A module that sets
`DEFAULT_IN_MAKE_BENCH = False` (the minutes-long end-to-end `signs`) runs only when named.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def benchmark_names() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or [
        n
        for n in benchmark_names()
        if getattr(importlib.import_module(f"benchmarks.{n}"), "DEFAULT_IN_MAKE_BENCH", True)
    ]
    unknown = sorted(set(names) - set(benchmark_names()))
    if unknown:
        print(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(benchmark_names())}",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"[bench] {name}", file=sys.stderr)
        status = max(status, int(module.main([]) or 0))
    return status


if __name__ == "__main__":
    sys.exit(main())
