"""Issue 13's speed targets over the benchmark table: every model >= 0.8x ONNX Runtime, and the
geometric mean of taskflow/ORT >= 1.2x.

Runs what ``taskflow bench --all`` runs (:func:`taskflow.bench.suite.run_suite`: the ONNX
light model zoo and the real-model PyTorch exports at the issue's sizes, each model's runtimes
interleaved, 2 kernel threads each), prints the table, then one PASS/FAIL line per target.
Not a test: ~20-30 minutes on a 2-core machine; ratios move by 0.1-0.3 between runs there.

    python benchmarks/bench_models.py [--suite light|modern|all] [--threads 2] [--repeat 5]
                                      [--json out.json] [--check]

``--check`` exits 1 when a target fails.
"""

from __future__ import annotations

import argparse
import json
import sys

from taskflow.bench.suite import SUITES, run_suite, suite_cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=SUITES, default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed runs")
    parser.add_argument("--json", metavar="PATH", help="write the rows here too")
    parser.add_argument("--cache", metavar="DIR", help="folder of the exports")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    result = run_suite(
        suite_cases(args.suite),
        threads=args.threads,
        repeat=args.repeat,
        cache_dir=args.cache,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(result.table())  # ends with the PASS/FAIL line of each target
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.as_dict(), f, indent=1)
    return 1 if args.check and not all(ok for ok, _ in result.targets()) else 0


if __name__ == "__main__":
    sys.exit(main())
