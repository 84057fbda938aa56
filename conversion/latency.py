"""How fast and how big a converted graph is, measured the way it is served."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank.core.sessions import cpu_session


@dataclass
class Speed:
    """Latency of one encoder call, milliseconds."""

    p50_ms: float
    p95_ms: float
    batch: int
    threads: int


def measure_latency(
    onnx_path: Path,
    feeds: Mapping[str, np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
) -> Speed:
    """p50/p95 latency of `feeds` through `onnx_path` on `threads` threads."""
    session = cpu_session(onnx_path, threads=threads)
    for _ in range(warmup):
        session.run(None, dict(feeds))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, dict(feeds))
        times.append((time.perf_counter() - t0) * 1e3)
    batch = int(next(iter(feeds.values())).shape[0])
    return Speed(
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        batch=batch,
        threads=threads,
    )


def file_mb(path: Path) -> float:
    """Size on disk, MB (external data included)."""
    extra = path.with_suffix(path.suffix + ".data")
    size = path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)
    return round(size / 1e6, 2)
