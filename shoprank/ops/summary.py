"""`python -m shoprank.ops.summary --out artifacts/demo`: one screen summarising a demo run.

Prints the short summaries each stage wrote beside its artifacts (training's metrics.md,
the conversion report, the load test's summary.md), so this reads files, not stage code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shoprank import contract

SECTIONS = (
    ("training", lambda p: p.training_summary),
    ("conversion", lambda p: p.conversion_report_md),
    ("load test (Locust, gRPC, embedded Triton)", lambda p: p.loadtest_summary_md),
)


def _body(text: str) -> list[str]:
    """The file's lines without its leading "# title" and surrounding blank lines."""
    lines = text.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    while lines and not lines[0].strip():
        lines = lines[1:]
    return lines


def lines(paths: contract.ArtifactPaths) -> list[str]:
    """Summary lines for whatever stages have run below `paths.root`."""
    out = [f"shoprank summary for {paths.root}", ""]
    for title, where in SECTIONS:
        path = where(paths)
        if path.exists():
            out += [f"## {title}", *_body(path.read_text()), ""]
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=contract.DEFAULT_ARTIFACTS)
    args = parser.parse_args(argv)
    print("\n".join(lines(contract.ArtifactPaths(args.out))))


if __name__ == "__main__":
    main()
