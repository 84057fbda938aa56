"""`python -m shoprank.training.seq_in_search --out OUT`: would the sequential recommender's
shopper vector help the search fusion ranker?

Measured offline on a trained OUT, before anything is served: every shown product of the
held-out search sessions gets the served fusion score s_f plus

    λ · std(s_f) · z(⟨u_seq, e_item⟩)

where u_seq is the sequential model's shopper vector for the session's history, e_item its
item vector, z the standardisation over impressions with a history (0 without one). λ is
chosen on validation sessions; purchase-NDCG@10 on test sessions is compared with the
served score alone (paired bootstrap over sessions). Writes `OUT/reports/seq_in_search.json`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shoprank import contract, datasets
from shoprank.artifacts import load_item_index
from shoprank.configargs import parse_config, setup_logging
from shoprank.encoder import embed, load_encoder
from shoprank.features import ItemTables
from shoprank.fusion import load_ranker
from shoprank.lexical import LexicalIndex, tokenize
from shoprank.metrics import paired_bootstrap_gain
from shoprank.sequential import left_pad, load_sequential
from shoprank.training import behaviour


@dataclass
class SeqInSearchConfig:
    """Every knob; each is a flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "trained OUT"})
    lambdas: str = field(
        default="0,0.05,0.1,0.2,0.5,1,2,5", metadata={"help": "weights of the sequential score"}
    )
    seed: int = 0


@torch.no_grad()
def sequential_scores(seq, items: torch.Tensor, ex: behaviour.Examples) -> np.ndarray:
    """z-scored ⟨u_seq(history), e_item⟩ per impression (M,); 0 where the history is empty."""
    histories = [list(r[m > 0]) for r, m in zip(ex.history_rows, ex.history_mask, strict=True)]
    warm = np.array([len(h) > 0 for h in histories])
    raw = np.zeros(len(ex), np.float32)
    for start in range(0, len(ex), 4096):
        idx = [i for i in range(start, min(start + 4096, len(ex))) if warm[i]]
        if not idx:
            continue
        rows, mask = left_pad([histories[i] for i in idx], seq.config.max_len)
        user = seq.encoder.user_vector(items[torch.from_numpy(rows)], torch.from_numpy(mask))
        raw[idx] = (user * items[torch.from_numpy(ex.item_rows[idx])]).sum(-1).numpy()
    if not warm.any():
        return raw
    return np.where(warm, (raw - raw[warm].mean()) / (raw[warm].std() + 1e-9), 0.0)


def run(config: SeqInSearchConfig) -> dict:
    paths = contract.ArtifactPaths(Path(config.out))
    if not paths.sequential.exists():
        raise FileNotFoundError(f"{paths.sequential} is missing: train with event logs first")
    data = datasets.load(paths, check=False)
    item_emb = load_item_index(paths.item_index)["embeddings"]
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    tables = ItemTables.load(paths.item_tables)
    lexical = LexicalIndex.load(paths.lexical_index)
    ranker = load_ranker(paths.ranker)
    q_emb = embed(
        load_encoder(paths.encoder),
        data.queries["query"].tolist(),
        batch_size=64,
        max_seq_length=contract.MAX_QUERY_TOKENS,
    )
    seq = load_sequential(paths.sequential)
    with torch.no_grad():
        items = seq.item_vectors(torch.from_numpy(np.asarray(item_emb, np.float32)))
    query_row_of = {int(q): i for i, q in enumerate(data.queries["query_id"].to_numpy())}
    row_of = {int(p): i for i, p in enumerate(product_ids)}
    tokens = [tokenize(q) for q in data.queries["query"]]
    histories = behaviour.session_histories(data.events, row_of)
    scored = {}
    for split in ("val", "test"):
        ex = behaviour.build_examples(data.events, split, query_row_of, row_of, histories)
        ex = behaviour.attach_features(ex, tokens, lexical, tables)
        served = behaviour.impression_scores(ranker, q_emb, item_emb, tables, ex)
        scored[split] = (ex, served, sequential_scores(seq, items, ex))

    def ndcgs(split: str, lam: float) -> np.ndarray:
        ex, served, z = scored[split]
        return behaviour.purchase_ndcgs(served + lam * served.std() * z, ex)

    lambdas = [float(v) for v in config.lambdas.split(",")]
    val = {lam: float(ndcgs("val", lam).mean()) for lam in lambdas}
    best = max(val, key=val.get)
    base, new = ndcgs("test", 0.0), ndcgs("test", best)
    ex, served, z = scored["test"]
    alone = behaviour.purchase_ndcgs(z + 1e-6 * served, ex)  # ties broken by the served score
    report = {
        "val_purchase_ndcg@10_by_lambda": val,
        "lambda": best,
        "test_purchase_ndcg@10": {
            "served": float(base.mean()),
            "served_plus_sequential": float(new.mean()),
            "sequential_alone": float(alone.mean()),
        },
        "gain": paired_bootstrap_gain(base, new, seed=config.seed),
        "sessions": len(base),
        "warm_share": float(np.mean(ex.history_mask.sum(1) > 0)),
    }
    paths.reports.mkdir(parents=True, exist_ok=True)
    (paths.reports / "seq_in_search.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    setup_logging("shoprank")
    config = parse_config(SeqInSearchConfig, argv, description=__doc__ or "")
    report = run(config)
    t, g = report["test_purchase_ndcg@10"], report["gain"]
    print(
        f"test purchase-NDCG@10 over {report['sessions']} sessions: served {t['served']:.4f}, "
        f"+ sequential shopper vector (λ={report['lambda']:g}) {t['served_plus_sequential']:.4f} "
        f"({g['relative']:+.1%}, 95% CI {g['ci95_low']:+.1%}…{g['ci95_high']:+.1%}), "
        f"sequential alone {t['sequential_alone']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
