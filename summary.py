"""`python -m summary --out artifacts/demo`: one screen summarising a demo run.

Reads what each stage wrote (metrics.json, the conversion report, the load-test
summary) and prints the numbers a reviewer asks for first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import contract
from conversion.convert import report_lines
from training.train import summary_lines


def lines(paths: contract.ArtifactPaths) -> list[str]:
    """Summary lines for whatever stages have run below `paths.root`."""
    out = [f"shoprank summary for {paths.root}", ""]
    if paths.metrics.exists():
        out += ["## training", *summary_lines(json.loads(paths.metrics.read_text())), ""]
    if paths.conversion_report.exists():
        report = json.loads(paths.conversion_report.read_text())
        out += ["## conversion", *report_lines(report)[2:], ""]
    load = paths.loadtest_summary
    if load.exists():
        s = json.loads(load.read_text())
        out += [
            "## load test (Locust, gRPC, embedded Triton)",
            f"p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
            f"{s['rps']:.1f} req/s, {s['requests']} requests, "
            f"{s['failures']} failures",
        ]
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=contract.DEFAULT_ARTIFACTS)
    args = parser.parse_args(argv)
    print("\n".join(lines(contract.ArtifactPaths(args.out))))


if __name__ == "__main__":
    main()
