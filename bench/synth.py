"""Large catalogs for the scale benchmarks, synthesized from a trained demo catalog.

Embedding a million product texts with the real encoder would take hours on two cores,
so catalogs larger than the trained one are derived from it, exactly like this:

- rows 0..n_real-1 are the real catalog with its real fine-tuned embeddings;
- row j ≥ n_real copies the real product j mod n_real (title, brand, category,
  attributes, description, price), gets a new product id, its model number replaced by
  a new one (so lexical search can find it and only it), and the embedding
  normalize(e_src + noise · g / sqrt(D)), g ~ N(0, I), seeded: a near-duplicate of its
  source (cosine ≈ 1 / sqrt(1 + noise²), 0.93 at the default 0.4), the way variants of
  one product sit together in a real catalog.

Every report built on these says so next to its numbers.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

DEFAULT_NOISE = 0.4
# Model numbers as the synthetic shop writes them ("NO-4521B").
_CODE = re.compile(r"\b[A-Z]{2}-\d{4}[A-Z]\b")
DESCRIPTION = (
    "rows beyond the trained catalog copy a real product (text, attributes) with a new id "
    "and model number; embedding = normalize(real + {noise}·N(0, I)/sqrt(D)), "
    "cosine ≈ {cos:.2f} to its source"
)


def describe(noise: float = DEFAULT_NOISE) -> str:
    """One line saying how the catalog was synthesized, for reports."""
    return DESCRIPTION.format(noise=noise, cos=1 / np.sqrt(1 + noise**2))


def synthetic_embeddings(
    base: np.ndarray, n: int, noise: float = DEFAULT_NOISE, seed: int = 0, chunk: int = 65536
) -> np.ndarray:
    """(n, D) float32: the real rows first, then noisy copies (see the module docstring)."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    n_real, d = base.shape
    out = np.empty((n, d), dtype=np.float32)
    out[: min(n, n_real)] = base[: min(n, n_real)]
    rng = np.random.default_rng(seed)
    for start in range(n_real, n, chunk):
        stop = min(n, start + chunk)
        src = base[np.arange(start, stop) % n_real]
        block = src + (noise / np.sqrt(d)) * rng.standard_normal((stop - start, d), np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def synthetic_catalog(real: pd.DataFrame, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """(catalog of n rows, source row of each): real rows first, then copies with a new
    product id and their model number replaced by a new one ("SX-0020001")."""
    n_real = len(real)
    src = np.arange(n) % n_real
    out = real.iloc[src].reset_index(drop=True).copy()
    if n > n_real:
        extra = np.arange(n_real, n)
        out.loc[n_real:, "product_id"] = int(real["product_id"].max()) + 1 + (extra - n_real)
        codes = [f"SX-{i:07d}" for i in extra]
        for column in ("title", "description"):
            values = out.loc[n_real:, column].astype(str).tolist()
            out.loc[n_real:, column] = [
                _CODE.sub(code, v) for v, code in zip(values, codes, strict=True)
            ]
    out["product_id"] = out["product_id"].astype(np.int64)
    return out, src
