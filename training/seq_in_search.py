"""The served recommender's score as a search signal: how much it weighs.

Every shown product of the held-out search sessions gets the fusion score s_f plus

    λ · std(s_f) · z(r(history, item))

where r is the score recommend mode serves (`shoprank.core.covisits.next_item_scores`: the
sequential model's ⟨u_seq, e_item⟩, the history's co-visits or their blend, whichever
training chose), z the standardisation over validation impressions with a history (0
without one). λ is chosen on validation sessions (`fit_sequential_weight`, called by
training, which serves the result through the retrieval config: `ranking.sequential_part`);
purchase-NDCG@10 on test sessions is compared with s_f alone (paired bootstrap over
sessions).

`python -m shoprank.training.seq_in_search --out OUT` re-measures a trained OUT with other
λs, changing nothing served; writes `OUT/reports/seq_in_search.json`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shoprank import contract
from shoprank.configargs import parse_config, setup_logging
from shoprank.core.covisits import SEQUENTIAL_ONLY, Blend, CoVisits, load_blend, next_item_scores
from shoprank.core.features import ItemTables
from shoprank.core.lexical import LexicalIndex, tokenize
from shoprank.core.ranking import RetrievalConfig, sequential_part
from shoprank.core.shopper_vectors import left_pad
from shoprank.data import datasets
from shoprank.data.artifacts import load_item_index
from shoprank.data.metrics import paired_bootstrap_gain
from shoprank.models.encoder import embed, load_encoder
from shoprank.models.fusion import FusionRanker, load_ranker
from shoprank.models.sequential import SequentialRecommender, load_sequential
from shoprank.training import behaviour

# λ tried on validation sessions; on the demo shop validation keeps improving up to 5.
LAMBDAS = "0,0.05,0.1,0.2,0.5,1,2,5,10,20"


@dataclass
class SeqInSearchConfig:
    """Every knob; each is a flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "trained OUT"})
    lambdas: str = field(default=LAMBDAS, metadata={"help": "weights of the sequential score"})
    seed: int = 0


@torch.no_grad()
def raw_sequential_scores(
    seq: SequentialRecommender,
    items: torch.Tensor,
    ex: behaviour.Examples,
    blend: Blend = SEQUENTIAL_ONLY,
    covisits: CoVisits | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(the served recommender's score per impression (M,), has-a-history mask (M,)); 0
    where the history is empty. The score is ⟨u_seq(history), e_item⟩ blended with the
    history's co-visits as recommend mode serves it (`covisits.next_item_scores`, no
    tie-break). A session's impressions share its history: each distinct history is
    encoded once (the transformer over 20k impressions took minutes on 2 cores)."""
    histories = [tuple(r[m > 0]) for r, m in zip(ex.history_rows, ex.history_mask, strict=True)]
    warm = np.array([len(h) > 0 for h in histories], bool)
    raw = np.zeros(len(ex), np.float32)
    distinct = list(dict.fromkeys(h for h in histories if h))
    if not distinct:
        return raw, warm
    chunks = []
    for start in range(0, len(distinct), 1024):
        rows, mask = left_pad([list(h) for h in distinct[start : start + 1024]], seq.config.max_len)
        chunks.append(
            seq.encoder.user_vector(items[torch.from_numpy(rows)], torch.from_numpy(mask))
        )
    users = torch.cat(chunks)  # (distinct histories, d)
    which = {h: i for i, h in enumerate(distinct)}
    idx = np.flatnonzero(warm)
    user_rows = np.array([which[histories[i]] for i in idx], np.int64)
    item_rows = ex.item_rows[idx]
    dots = (users[torch.from_numpy(user_rows)] * items[torch.from_numpy(item_rows)]).sum(-1)
    co = None
    if blend.cooccurrence and covisits is not None:
        co = np.zeros(len(idx), np.float32)
        for start in range(0, len(distinct), 1024):  # (histories, N) per chunk, not all at once
            mine = (user_rows >= start) & (user_rows < start + 1024)
            full = covisits.scores(distinct[start : start + 1024])
            co[mine] = full[user_rows[mine] - start, item_rows[mine]]
    raw[idx] = next_item_scores(blend, dots.numpy(), co)
    return raw, warm


def fit_sequential_weight(
    seq: SequentialRecommender,
    ranker: FusionRanker,
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    tables: ItemTables,
    val: behaviour.Examples,
    test: behaviour.Examples,
    lambdas: Sequence[float],
    seed: int = 0,
    blend: Blend = SEQUENTIAL_ONLY,
    covisits: CoVisits | None = None,
) -> tuple[RetrievalConfig, dict]:
    """Choose λ on validation sessions; return the retrieval-config fields that serve it
    (`ranking.sequential_part`: weight λ·std(s_f), mean and std of the raw score over
    validation impressions with a history) and the report (test sessions unseen until now)."""
    with torch.no_grad():
        items = seq.item_vectors(torch.from_numpy(np.asarray(item_embeddings, np.float32)))
    raw = {
        "val": raw_sequential_scores(seq, items, val, blend, covisits),
        "test": raw_sequential_scores(seq, items, test, blend, covisits),
    }
    served = {
        name: behaviour.impression_scores(ranker, query_embeddings, item_embeddings, tables, ex)
        for name, ex in (("val", val), ("test", test))
    }
    val_raw, val_warm = raw["val"]
    fitted = RetrievalConfig(
        sequential_mean=float(val_raw[val_warm].mean()) if val_warm.any() else 0.0,
        sequential_std=float(val_raw[val_warm].std()) if val_warm.any() else 1.0,
    )
    scale = float(served["val"].std())
    examples = {"val": val, "test": test}

    def ndcgs(split: str, lam: float) -> np.ndarray:
        r, warm = raw[split]
        fitted.sequential_weight = lam * scale
        part = np.where(warm, sequential_part(r, fitted), 0.0)
        return behaviour.purchase_ndcgs(served[split] + part, examples[split])

    by_lambda = {lam: float(ndcgs("val", lam).mean()) for lam in lambdas}
    best = max(by_lambda, key=lambda lam: (by_lambda[lam], -lam))  # ties: the smaller λ
    base, new = ndcgs("test", 0.0), ndcgs("test", best)
    r, warm = raw["test"]
    z = np.where(warm, (r - fitted.sequential_mean) / max(fitted.sequential_std, 1e-9), 0.0)
    alone = behaviour.purchase_ndcgs(z + 1e-6 * served["test"], test)  # ties: served score
    fitted.sequential_weight = best * scale
    report = {
        "val_purchase_ndcg@10_by_lambda": by_lambda,
        "lambda": best,
        "weight": fitted.sequential_weight,
        "test_purchase_ndcg@10": {
            "served": float(base.mean()),
            "served_plus_sequential": float(new.mean()),
            "sequential_alone": float(alone.mean()),
        },
        # None where no test session has a purchase ranked anywhere useful (tiny data).
        "gain": paired_bootstrap_gain(base, new, seed=seed)
        if len(base) and base.mean() > 0
        else None,
        "sessions": len(base),
        "warm_share": float(warm.mean()) if len(warm) else 0.0,
    }
    return fitted, report


def run(config: SeqInSearchConfig) -> dict:
    paths = contract.ArtifactPaths(Path(config.out))
    if not paths.sequential.exists():
        raise FileNotFoundError(f"{paths.sequential} is missing: train with event logs first")
    data = datasets.load(paths, check=False)
    item_emb = load_item_index(paths.item_index)["embeddings"]
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    tables = ItemTables.load(paths.item_tables)
    lexical = LexicalIndex.load(paths.lexical_index)
    q_emb = embed(
        load_encoder(paths.encoder),
        data.queries["query"].tolist(),
        batch_size=64,
        max_seq_length=contract.MAX_QUERY_TOKENS,
    )
    query_row_of = {int(q): i for i, q in enumerate(data.queries["query_id"].to_numpy())}
    row_of = {int(p): i for i, p in enumerate(product_ids)}
    tokens = [tokenize(q) for q in data.queries["query"]]
    histories = behaviour.session_histories(data.events, row_of)
    val, test = (
        behaviour.attach_features(
            behaviour.build_examples(data.events, split, query_row_of, row_of, histories),
            tokens,
            lexical,
            tables,
        )
        for split in ("val", "test")
    )
    blend, covisits = load_blend(paths.covisits)
    _, report = fit_sequential_weight(
        load_sequential(paths.sequential),
        load_ranker(paths.ranker),
        q_emb,
        item_emb,
        tables,
        val,
        test,
        parse_lambdas(config.lambdas),
        seed=config.seed,
        blend=blend,
        covisits=covisits,
    )
    paths.reports.mkdir(parents=True, exist_ok=True)
    (paths.reports / "seq_in_search.json").write_text(json.dumps(report, indent=2))
    return report


def parse_lambdas(text: str) -> list[float]:
    """ "0,0.5,1" → [0.0, 0.5, 1.0]; ValueError on anything else, or a negative weight."""
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 0 for v in values):
        raise ValueError(f"weights of the sequential score must be ≥ 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    setup_logging("shoprank")
    config = parse_config(SeqInSearchConfig, argv, description=__doc__ or "")
    report = run(config)
    t, g = report["test_purchase_ndcg@10"], report["gain"]
    if g is None:
        print(f"no test session to measure on: {t}")
        return 0
    print(
        f"test purchase-NDCG@10 over {report['sessions']} sessions: served {t['served']:.4f}, "
        f"+ sequential shopper vector (λ={report['lambda']:g}) {t['served_plus_sequential']:.4f} "
        f"({g['relative']:+.1%}, 95% CI {g['ci95_low']:+.1%}…{g['ci95_high']:+.1%}), "
        f"sequential alone {t['sequential_alone']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
