"""Item-to-item co-visits and the served next-product score that blends them in.

Counting (training): for every pair of products at most `window` steps apart in a training
sequence, the later one gets `decay^(gap-1)` as a neighbour of the earlier one and
`backward` times that the other way round; each row is then divided by its total^p
(`degree_power`) so that best-sellers do not neighbour everything. Scoring (training and
serving alike): the history's last `recent` products, the k-th most recent weighted
k^-age_power, sum their rows.

The served score of product i for a history (`next_item_scores`):

    w_seq · ⟨u, e_i⟩ + w_co · log1p(co-visits_i) + ε · popularity_i / max popularity

w_seq = 1, w_co = 0 is the sequential model alone, w_seq = 0 co-visits alone (log1p keeps
their order), both > 0 the blend; training chooses on validation (`training.recommend`).
ε only breaks ties (most products share a co-visit score of 0). numpy only: the Triton
`recommender` and `ranker` models use it without scipy or torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from shoprank.core.scoring import SEQUENTIAL_PART

COOCCURRENCE_PART = "cooccurrence"
POPULARITY_PART = "popularity"
TIE_BREAK = 1e-6  # ε: popularity only orders products whose other parts are equal


@dataclass(frozen=True)
class CoVisitConfig:
    """How co-visits are counted and weighted (every field chosen on validation)."""

    window: int = 3  # products at most this many steps apart co-visit
    backward: float = 0.3  # weight of "j came before i" relative to "i before j"
    decay: float = 0.7  # per extra step between the two products
    recent: int = 10  # the history's last products that vote
    age_power: float = 1.5  # the k-th most recent votes k^-age_power
    degree_power: float = 0.3  # rows divided by their total^p


@dataclass(frozen=True)
class Blend:
    """The weights of the served score's parts (see the module docstring)."""

    name: str = SEQUENTIAL_PART  # which candidate (training.recommend)
    sequential: float = 1.0
    cooccurrence: float = 0.0


SEQUENTIAL_ONLY = Blend()  # what artifacts without a chosen blend serve


class CoVisits:
    """The row-normalised co-visit matrix (N, N) as CSR arrays, and how a history votes."""

    def __init__(
        self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, config: CoVisitConfig
    ) -> None:
        self.indptr = np.asarray(indptr, np.int64)
        self.indices = np.asarray(indices, np.int64)
        self.data = np.asarray(data, np.float32)
        self.config = config
        self.num_items = len(self.indptr) - 1

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """For np.savez: the CSR arrays and the config, each key under `prefix`."""
        values = asdict(self.config)
        return {
            f"{prefix}indptr": self.indptr,
            f"{prefix}indices": self.indices,
            f"{prefix}data": self.data,
            f"{prefix}config": np.array([values[k] for k in CONFIG_FIELDS], np.float64),
        }

    @classmethod
    def from_arrays(cls, z, prefix: str) -> CoVisits | None:
        """The inverse of `arrays` (None where the file has no co-visits)."""
        if f"{prefix}indptr" not in z:
            return None
        values = dict(zip(CONFIG_FIELDS, z[f"{prefix}config"].tolist(), strict=True))
        for name in ("window", "recent"):
            values[name] = int(values[name])
        return cls(
            z[f"{prefix}indptr"], z[f"{prefix}indices"], z[f"{prefix}data"], CoVisitConfig(**values)
        )

    def votes(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(products, weights) of the history's last `recent` products, most recent 1."""
        kept = np.asarray(history, np.int64)[-self.config.recent :]
        age = np.arange(len(kept), 0, -1, dtype=np.float64)  # oldest kept first
        return kept, (age**-self.config.age_power).astype(np.float32)

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Co-visit score (B, N) of every product for each history."""
        out = np.zeros((len(histories), self.num_items), np.float32)
        for i, history in enumerate(histories):
            for row, weight in zip(*self.votes(history), strict=True):
                start, end = self.indptr[row], self.indptr[row + 1]
                out[i, self.indices[start:end]] += weight * self.data[start:end]
        return out

    def scores_at(self, histories: Sequence[Sequence[int]], rows: np.ndarray) -> np.ndarray:
        """Co-visit score (B, C) of the candidate rows (B, C) (-1 padding: 0)."""
        full = self.scores(histories)
        return np.where(rows >= 0, np.take_along_axis(full, np.maximum(rows, 0), axis=1), 0.0)


CONFIG_FIELDS = tuple(CoVisitConfig.__dataclass_fields__)


def count(sequences: Sequence[Sequence[int]], num_items: int, config: CoVisitConfig) -> CoVisits:
    """Co-visits of the training sequences (catalog rows, oldest first)."""
    rows, cols, weights = [], [], []
    for s in sequences:
        s = np.asarray(s, np.int64)
        for gap in range(1, config.window + 1):
            if len(s) <= gap:
                break
            w = np.full(len(s) - gap, config.decay ** (gap - 1), np.float32)
            rows += [s[:-gap], s[gap:]]
            cols += [s[gap:], s[:-gap]]
            weights += [w, w * config.backward]
    if rows:
        r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    else:
        r = c = np.zeros(0, np.int64)
        w = np.zeros(0, np.float32)
    # Sum duplicates per (row, col): sort by the flat key, then one reduceat.
    key = r * num_items + c
    order = np.argsort(key, kind="stable")
    key, w = key[order], w[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, int)
    summed = np.add.reduceat(w, starts) if len(key) else w
    r, c = key[starts] // num_items, key[starts] % num_items
    degree = np.bincount(r, weights=summed, minlength=num_items)
    summed = summed / np.maximum(degree[r], 1e-12) ** config.degree_power
    indptr = np.r_[0, np.cumsum(np.bincount(r, minlength=num_items))]
    return CoVisits(indptr, c, summed.astype(np.float32), config)


def next_item_scores(
    blend: Blend,
    dots: np.ndarray | None,
    covisits: np.ndarray | None,
    popularity: np.ndarray | None = None,
) -> np.ndarray:
    """The served score from its parts (any shape, broadcast): ⟨u, e⟩ (None: not computed,
    its weight must be 0), co-visit scores (None: none) and popularity (None: no tie-break)."""
    return sum(next_item_parts(blend, dots, covisits, popularity).values())


def next_item_parts(
    blend: Blend,
    dots: np.ndarray | None,
    covisits: np.ndarray | None,
    popularity: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The weighted parts that `next_item_scores` adds up (explanations list them)."""
    parts: dict[str, np.ndarray] = {}
    if blend.sequential:
        if dots is None:
            raise ValueError("the sequential part is weighted but was not computed")
        parts[SEQUENTIAL_PART] = np.float32(blend.sequential) * dots
    if blend.cooccurrence and covisits is not None:
        parts[COOCCURRENCE_PART] = np.float32(blend.cooccurrence) * np.log1p(covisits)
    if popularity is not None and len(popularity):
        top = max(float(np.max(popularity)), 1e-12)
        parts[POPULARITY_PART] = (TIE_BREAK / top * popularity).astype(np.float32)
    if not parts:
        raise ValueError(f"blend {blend} weighs nothing")
    return parts


PREFIX = "covisits_"  # the co-visit arrays' keys in an .npz


def blend_arrays(blend: Blend, covisits: CoVisits | None) -> dict[str, np.ndarray]:
    """For np.savez: the blend and the co-visits (training's COVISITS_FILE, and inside the
    served ITEM_VECTORS_FILE)."""
    out = {
        "blend_name": np.array(blend.name),
        "blend_weights": np.array([blend.sequential, blend.cooccurrence], np.float64),
    }
    return out | (covisits.arrays(PREFIX) if covisits is not None else {})


def load_blend(path) -> tuple[Blend, CoVisits | None]:
    """`blend_from` of the .npz at `path`; the sequential model alone when there is none
    (artifacts trained before co-visits)."""
    if not path.exists():
        return SEQUENTIAL_ONLY, None
    with np.load(path, allow_pickle=False) as z:
        return blend_from(z)


def blend_from(z) -> tuple[Blend, CoVisits | None]:
    """The inverse of `blend_arrays` on an open .npz; without a blend: the sequential model
    alone."""
    blend = SEQUENTIAL_ONLY
    if "blend_weights" in z:
        sequential, cooccurrence = z["blend_weights"].tolist()
        blend = Blend(str(z["blend_name"]), sequential, cooccurrence)
    return blend, CoVisits.from_arrays(z, PREFIX)
