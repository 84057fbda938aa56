"""Recommend mode: the sequential model and its leave-last-out evaluation.

Each shopper's clicks and purchases, oldest first, each product once (a purchase after a
click of the same product adds nothing to predict) form a sequence. Leave-last-out: the
last product is the test target (history: everything before it), the one before it the
validation target, and the model trains on the rest. Every product of the catalog is
ranked, the history's products excluded (as served), and the target's rank gives HR@10,
NDCG@10 and MRR (`metrics.next_item_metrics`).

Baselines, ranked the same way: popularity (training sequences), item-to-item
co-occurrence (neighbours within a few steps in the training sequences, recency-weighted
over the history) and text only (mean of the history's fine-tuned text embeddings). Cold
start (empty history → popularity) is measured on the same test targets, history withheld.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shoprank.core.covisits import (
    COOCCURRENCE_PART,
    POPULARITY_PART,
    SEQUENTIAL_ONLY,
    Blend,
    CoVisitConfig,
    CoVisits,
    blend_arrays,
    count,
    next_item_scores,
)
from shoprank.core.scoring import SEQUENTIAL_PART
from shoprank.core.shopper_vectors import left_pad
from shoprank.data.datasets import HISTORY_EVENTS
from shoprank.data.metrics import HIT_RATE_AT_10, NDCG_AT_10, next_item_metrics
from shoprank.models.sequential import SequentialConfig, SequentialRecommender

log = logging.getLogger(__name__)

SEQUENTIAL = SEQUENTIAL_PART
COOCCURRENCE = COOCCURRENCE_PART
POPULARITY = POPULARITY_PART
BLEND = "blend"
TEXT_ONLY = "text_only"
COLD_START = "cold_start_popularity"
CANDIDATES = (SEQUENTIAL, COOCCURRENCE, BLEND)  # what may be served
BASELINES = (POPULARITY, COOCCURRENCE, TEXT_ONLY)  # what the served model must not lose to
# Co-visit variants tried on validation: the first measured best on Amazon Beauty; the
# second is the classic symmetric, unweighted neighbour count.
COVISIT_GRID = (
    CoVisitConfig(),
    CoVisitConfig(window=1, backward=1.0, decay=1.0, age_power=1.0, degree_power=0.0),
    CoVisitConfig(window=5, decay=0.5),
    CoVisitConfig(age_power=2.0, degree_power=0.5),
)
COVISITS_ONLY = Blend(COOCCURRENCE, 0.0, 1.0)
BLEND_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # w_co per unit of w_seq


class RecommendationError(ValueError):
    """No candidate model reaches every baseline on validation: nothing fit to serve."""


@dataclass
class Sequences:
    """Leave-last-out splits of the shoppers' sequences (catalog rows)."""

    train: list[list[int]]  # what the models learn from (all but the last two)
    val: list[tuple[list[int], int]]  # (history, next product)
    test: list[tuple[list[int], int]]


@dataclass
class SequentialTraining:
    """Knobs of the sequential model's training (TrainConfig's seq_* flags)."""

    dim: int = 384
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    id_dim: int = 64  # the width when the data has ids only (no text to project)
    id_embeddings: bool = False
    min_id_count: int = 5  # products in fewer training sequences fall back to their text
    # Softmax over the batch's targets and this many random products (0: the whole catalog).
    # Measured on the demo shop: whole catalog, test HR@10 0.0667 after 4 epochs; 2,048
    # sampled, 0.0592 after 6. Sampling is for catalogs where the full softmax is too slow.
    negatives: int = 0
    epochs: int = 10
    batch_size: int = 128
    batching: str = field(default="random", metadata={"help": "random|length (batches_of)"})
    lr: float = 2e-3
    patience: int = 2
    seed: int = 0


def user_sequences(events: pd.DataFrame, row_of: dict[int, int]) -> list[list[int]]:
    """Per shopper (user id order): catalog rows clicked or bought, oldest first, each once."""
    acts = events[events["event_type"].isin(HISTORY_EVENTS)]
    acts = acts.sort_values(["user_id", "timestamp", "session_id"], kind="stable")
    out = []
    for _, products in acts.groupby("user_id", sort=True)["product_id"]:
        seen: dict[int, None] = {}
        for p in products.tolist():
            if p in row_of:
                seen.setdefault(row_of[p], None)
        if seen:
            out.append(list(seen))
    return out


def leave_last_out(sequences: Sequence[list[int]]) -> Sequences:
    """Shoppers with 3+ products give a test and a validation target; shorter ones only
    train."""
    train, val, test = [], [], []
    for s in sequences:
        if len(s) >= 3:
            test.append((s[:-1], s[-1]))
            val.append((s[:-2], s[-2]))
            train.append(s[:-2])
        else:
            train.append(s)
    return Sequences(train, val, test)


# -- ranking and metrics -----------------------------------------------------------------
Scorer = Callable[[list[list[int]]], np.ndarray]  # histories → scores (B, N)


def chunk_ranks(scores: np.ndarray, pairs: Sequence[tuple[list[int], int]]) -> np.ndarray:
    """1-based rank of each row's target among all products (scores (B, N)), the history
    excluded; ties count half."""
    scores = np.array(scores, np.float64)  # a copy: the history is masked in place
    for i, (history, target) in enumerate(pairs):
        scores[i, [r for r in history if r != target]] = -np.inf
    target = scores[np.arange(len(pairs)), [t for _, t in pairs]][:, None]
    greater = (scores > target).sum(axis=1)
    ties = (scores == target).sum(axis=1) - 1
    return 1.0 + greater + 0.5 * ties


def target_ranks(
    scorer: Scorer, pairs: Sequence[tuple[list[int], int]], chunk: int = 512
) -> np.ndarray:
    """1-based rank of each target among all products, history excluded; ties count half."""
    ranks = [
        chunk_ranks(scorer([h for h, _ in pairs[s : s + chunk]]), pairs[s : s + chunk])
        for s in range(0, len(pairs), chunk)
    ]
    return np.concatenate(ranks) if ranks else np.zeros(0)


def evaluate(scorer: Scorer, pairs: Sequence[tuple[list[int], int]]) -> dict[str, float]:
    return next_item_metrics(target_ranks(scorer, pairs))


# -- baselines -----------------------------------------------------------------------------
def popularity(train: Sequence[list[int]], num_items: int) -> np.ndarray:
    """How many training sequences hold each product (N,) float32."""
    counts = np.zeros(num_items, np.float32)
    for s in train:
        np.add.at(counts, s, 1.0)
    return counts


def popularity_scorer(counts: np.ndarray) -> Scorer:
    return lambda histories: np.broadcast_to(counts, (len(histories), len(counts)))


def cooccurrence_scorer(covisits: CoVisits, counts: np.ndarray) -> Scorer:
    """Co-visits alone, as served (popularity breaks ties)."""
    return blend_scorer(None, covisits, COVISITS_ONLY, counts)


def text_scorer(text: np.ndarray) -> Scorer:
    """Cosine to the mean of the history's text embeddings (unit rows)."""

    def score(histories: list[list[int]]) -> np.ndarray:
        users = np.stack(
            [text[h].mean(axis=0) if h else np.zeros(text.shape[1]) for h in histories]
        )
        users /= np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-9)
        return users.astype(np.float32) @ text.T

    return score


# -- the sequential model --------------------------------------------------------------------
def training_windows(train: Sequence[list[int]], max_len: int) -> list[list[int]]:
    """Windows of at most max_len + 1 products (inputs and next-product targets), from the
    most recent backwards, so long sequences are seen whole."""
    out = []
    for s in train:
        end = len(s)
        while end >= 2:
            out.append(s[max(0, end - max_len - 1) : end])
            end -= max_len
    return out


def next_item_loss(
    states: torch.Tensor,
    items: torch.Tensor,
    targets: np.ndarray,
    config: SequentialTraining,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Cross-entropy of the next products (P,) given states (P, d): over the whole catalog,
    or over the batch's targets plus `config.negatives` random products."""
    if not config.negatives or config.negatives >= len(items):
        return F.cross_entropy(states @ items.T, torch.from_numpy(targets))
    sampled = rng.choice(len(items), config.negatives, replace=False)
    classes, index = np.unique(np.concatenate([targets, sampled]), return_inverse=True)
    logits = states @ items[torch.from_numpy(classes)].T  # (P, K)
    return F.cross_entropy(logits, torch.from_numpy(index[: len(targets)]))


def sequential_scorer(model: SequentialRecommender, text: torch.Tensor) -> Scorer:
    model.eval()

    @torch.inference_mode()
    def score(histories: list[list[int]]) -> np.ndarray:
        items = model.item_vectors(text)
        rows, mask = left_pad(histories, model.config.max_len)
        user = model.encoder.user_vector(items[torch.from_numpy(rows)], torch.from_numpy(mask))
        return (user @ items.T).numpy()

    return score


def batches_of(
    windows: Sequence[list[int]], config: SequentialTraining, rng: np.random.Generator
) -> list[np.ndarray]:
    """Window indices per batch, in random order: `config.batching` "random" (a fresh
    shuffle) or "length" (windows of similar length together, each batch padded to its own
    longest window: less padding, since most shoppers' histories are short).

    Measured on the demo shop (2 epochs, test HR@10): random 0.061, by length 0.051, by
    length with each batch's loss weighted by its positions 0.025, by length with a fixed
    budget of positions per batch 0.036. Length-homogeneous batches train faster per epoch
    (72 s against 101 s for 2 epochs with their evaluation) but learn less from them."""
    if config.batching == "random":
        order = rng.permutation(len(windows))
    elif config.batching == "length":
        order = np.argsort([len(w) + rng.random() for w in windows], kind="stable")
    else:
        raise ValueError(f"batching must be random or length, got {config.batching!r}")
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def id_mask(train: Sequence[list[int]], num_items: int, min_count: int) -> torch.Tensor:
    """m_i (N,): 1 for products in at least `min_count` training sequences."""
    return torch.from_numpy((popularity(train, num_items) >= min_count).astype(np.float32))


def new_model(
    text: np.ndarray, train: Sequence[list[int]], config: SequentialTraining, max_len: int
) -> SequentialRecommender:
    """An untrained model for these products; (N, 0) text means ids only."""
    has_text = text.shape[1] > 0
    model = SequentialRecommender(
        SequentialConfig(
            text_dim=text.shape[1],
            num_items=len(text),
            dim=config.dim if has_text else config.id_dim,
            layers=config.layers,
            heads=config.heads,
            max_len=max_len,
            dropout=config.dropout,
            id_embeddings=config.id_embeddings or not has_text,
            text=has_text,
        )
    )
    model.id_mask.copy_(id_mask(train, len(text), config.min_id_count if has_text else 0))
    return model


def train_epoch(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    windows: Sequence[list[int]],
    text: torch.Tensor,
    config: SequentialTraining,
    rng: np.random.Generator,
    desc: str,
) -> float:
    """One pass over the windows; the mean next-product loss."""
    model.train()
    total, count = 0.0, 0
    # Progress within the epoch too: on real logs one epoch takes minutes.
    for index in tqdm(batches_of(windows, config, rng), desc=desc, leave=False):
        batch = [windows[i] for i in index]
        rows, mask = left_pad([w[:-1] for w in batch], model.config.max_len)
        targets, target_mask = left_pad([w[1:] for w in batch], model.config.max_len)
        items = model.item_vectors(text)  # (N, d)
        states = model.encoder.user_states(items[torch.from_numpy(rows)], torch.from_numpy(mask))
        keep = torch.from_numpy(target_mask) > 0
        # Logits only where a next product exists: most positions are padding.
        loss = next_item_loss(states[keep], items, targets[target_mask > 0], config, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * int(keep.sum())
        count += int(keep.sum())
    return total / max(count, 1)


def train_sequential(
    seqs: Sequences, text: np.ndarray, config: SequentialTraining, max_len: int
) -> tuple[SequentialRecommender, list[dict]]:
    """Next-product cross-entropy at every position (sampled or whole-catalog softmax); the
    epoch with the best validation NDCG@10 is kept (early stopping after `patience` worse
    epochs). The curve records each epoch's loss, validation metrics and seconds."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    text_t = torch.from_numpy(np.ascontiguousarray(text, np.float32))
    model = new_model(text, seqs.train, config, max_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    windows = training_windows(seqs.train, max_len)
    curve: list[dict] = []
    best, best_state, bad = -1.0, None, 0
    for epoch in tqdm(range(config.epochs), desc="sequential model", unit="epoch"):
        started = time.perf_counter()
        loss = train_epoch(model, optimizer, windows, text_t, config, rng, f"epoch {epoch + 1}")
        seconds = time.perf_counter() - started
        val = evaluate(sequential_scorer(model, text_t), seqs.val)
        curve.append({"epoch": epoch + 1, "loss": loss, "seconds": round(seconds, 1), **val})
        log.info("sequential epoch %d (%.0f s): loss %.4f, val %s", epoch + 1, seconds, loss, val)
        if val[NDCG_AT_10] > best:
            best, best_state, bad = val[NDCG_AT_10], copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), curve


@dataclass
class NextItems:
    """What recommend mode serves and how it measured: the sequential model, the popularity
    prior, the co-visits and the blend chosen on validation, and the report for
    metrics.json (`recommendation`)."""

    model: SequentialRecommender
    popularity: np.ndarray
    covisits: CoVisits
    blend: Blend
    report: dict


def train_and_evaluate(
    events: pd.DataFrame,
    row_of: dict[int, int],
    text: np.ndarray,
    config: SequentialTraining,
    max_len: int,
) -> NextItems:
    """`evaluate_sequences` from the shoppers' events."""
    return evaluate_sequences(user_sequences(events, row_of), text, config, max_len)


def tune_covisits(
    seqs: Sequences, counts: np.ndarray, grid: Sequence[CoVisitConfig] = COVISIT_GRID
) -> tuple[CoVisits, list[dict]]:
    """The co-visit variant with the best validation NDCG@10, and every variant's result."""
    best, best_ndcg, tried = None, -1.0, []
    for config in tqdm(grid, desc="co-visits on validation", unit="variant"):
        covisits = count(seqs.train, len(counts), config)
        val = evaluate(cooccurrence_scorer(covisits, counts), seqs.val)
        tried.append({"config": asdict(config), "val": val})
        if val[NDCG_AT_10] > best_ndcg:
            best, best_ndcg = covisits, val[NDCG_AT_10]
    assert best is not None
    return best, tried


def blend_scorer(dots: Scorer, covisits: CoVisits, blend: Blend, counts: np.ndarray) -> Scorer:
    """Any blend as served: w_seq·⟨u, e⟩ + w_co·log1p(co-visits) + popularity tie-break."""

    def score(histories: list[list[int]]) -> np.ndarray:
        return next_item_scores(
            blend,
            dots(histories) if blend.sequential else None,
            covisits.scores(histories) if blend.cooccurrence else None,
            counts,
        )

    return score


def evaluate_blends(
    dots: Scorer,
    covisits: CoVisits,
    counts: np.ndarray,
    blends: dict[str, Blend],
    pairs: Sequence[tuple[list[int], int]],
    chunk: int = 512,
) -> dict[str, dict[str, float]]:
    """`evaluate` of several blends in one pass: each chunk's sequential and co-visit scores
    are computed once and shared (a pass per blend made `make demo` minutes slower)."""
    ranks: dict[str, list[np.ndarray]] = {name: [] for name in blends}
    need_dots = any(b.sequential for b in blends.values())
    need_co = any(b.cooccurrence for b in blends.values())
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        histories = [h for h, _ in part]
        d = dots(histories) if need_dots else None
        c = covisits.scores(histories) if need_co else None
        for name, b in blends.items():
            scores = next_item_scores(b, d if b.sequential else None, c, counts)
            ranks[name].append(chunk_ranks(scores, part))
    return {
        name: next_item_metrics(np.concatenate(r) if r else np.zeros(0))
        for name, r in ranks.items()
    }


def choose_served(val: dict[str, dict], candidates: Sequence[str], baselines: Sequence[str]) -> str:
    """The candidate with the best validation NDCG@10 among those at least as good as every
    baseline on HR@10 and NDCG@10; RecommendationError when none is."""
    metrics = (HIT_RATE_AT_10, NDCG_AT_10)
    present = [b for b in baselines if b in val]

    def losses(c: str) -> list[str]:
        return [
            f"{b} {m} {val[b][m]:.4f} > {val[c][m]:.4f}"
            for b in present
            for m in metrics
            if val[b][m] > val[c][m] + 1e-12
        ]

    fair = [c for c in candidates if c in val and not losses(c)]
    if not fair:
        detail = "; ".join(f"{c}: {', '.join(losses(c))}" for c in candidates if c in val)
        raise RecommendationError(f"every candidate loses to a baseline on validation ({detail})")
    return max(fair, key=lambda c: (val[c][NDCG_AT_10], val[c][HIT_RATE_AT_10]))


def evaluate_sequences(
    sequences: Sequence[list[int]], text: np.ndarray, config: SequentialTraining, max_len: int
) -> NextItems:
    """Train the sequential model, tune co-visits and the blend on validation, choose what is
    served (`choose_served`) and measure every model on the test targets.

    The report: `<model>` test metrics, `validation.<model>` validation metrics,
    `served` {name, weights, val, test, beats_baselines_on_test}, the co-visit variants and
    blend weights tried, the sequential curve and cold start."""
    seqs = leave_last_out(sequences)
    n = len(text)
    counts = popularity(seqs.train, n)
    model, curve = train_sequential(seqs, text, config, max_len)
    dots = sequential_scorer(model, torch.from_numpy(np.ascontiguousarray(text, np.float32)))
    covisits, covisit_variants = tune_covisits(seqs, counts)
    blends = {SEQUENTIAL: SEQUENTIAL_ONLY, COOCCURRENCE: COVISITS_ONLY}
    baselines: dict[str, Scorer] = {POPULARITY: popularity_scorer(counts)}
    if text.shape[1]:  # ids-only data has no text to score by
        baselines[TEXT_ONLY] = text_scorer(np.asarray(text, np.float32))
    val = {name: evaluate(scorer, seqs.val) for name, scorer in baselines.items()}
    weighted = {str(w): Blend(BLEND, 1.0, w) for w in BLEND_WEIGHTS}
    on_val = evaluate_blends(dots, covisits, counts, blends | weighted, seqs.val)
    by_weight = {w: on_val[str(w)] for w in BLEND_WEIGHTS}
    best_w = max(by_weight, key=lambda w: (by_weight[w][NDCG_AT_10], -w))
    blends[BLEND] = Blend(BLEND, 1.0, best_w)
    val |= {SEQUENTIAL: on_val[SEQUENTIAL], COOCCURRENCE: on_val[COOCCURRENCE]}
    val[BLEND] = by_weight[best_w]
    served = choose_served(val, CANDIDATES, BASELINES)
    report: dict = {name: evaluate(scorer, seqs.test) for name, scorer in baselines.items()}
    report |= evaluate_blends(dots, covisits, counts, blends, seqs.test)
    beaten = [
        b
        for b in BASELINES
        if b in report and b != served and report[b][NDCG_AT_10] > report[served][NDCG_AT_10]
    ]
    report["served"] = {
        "name": served,
        "weights": {
            SEQUENTIAL: blends[served].sequential,
            COOCCURRENCE: blends[served].cooccurrence,
        },
        "val": val[served],
        "test": report[served],
        "beats_baselines_on_test": not beaten,
    }
    if beaten:
        log.warning("served %s is below %s on the test targets", served, ", ".join(beaten))
    report["validation"] = val
    report["cooccurrence_variants"] = covisit_variants
    report["blend_val_by_weight"] = {str(w): m for w, m in by_weight.items()}
    report[COLD_START] = evaluate(popularity_scorer(counts), [([], t) for _, t in seqs.test])
    report["sequential_curve"] = curve
    report["shoppers"] = {"train": len(seqs.train), "test": len(seqs.test)}
    log.info("served recommender: %s", report["served"])
    return NextItems(model, counts, covisits, blends[served], report)


def save_next_items(chosen: NextItems, paths) -> None:
    """The sequential model, the popularity prior and the chosen blend with its co-visits
    (`contract.ArtifactPaths`: sequential, popularity, covisits)."""
    from shoprank.models.sequential import save_sequential

    save_sequential(chosen.model, paths.sequential)
    np.save(paths.popularity, chosen.popularity)
    np.savez(paths.covisits, **blend_arrays(chosen.blend, chosen.covisits))


def remove_next_items(paths) -> None:
    """Remove what `save_next_items` writes (nothing fit to serve)."""
    import shutil

    shutil.rmtree(paths.sequential, ignore_errors=True)
    paths.popularity.unlink(missing_ok=True)
    paths.covisits.unlink(missing_ok=True)


# -- bring your own interactions ---------------------------------------------------------------
@dataclass
class RecommendConfig(SequentialTraining):
    """`python -m shoprank.training.recommend`: recommend mode on your interactions."""

    data: str = field(default="", metadata={"help": "interactions folder or file (required)"})
    data_format: str = field(
        default="auto", metadata={"help": "auto|interactions|recbole|sequences"}
    )
    data_encoding: str = field(default="", metadata={"help": "text encoding; default: detected"})
    out: Path = field(default=Path("artifacts/recommend"), metadata={"help": "output folder"})
    encoder_path: str = field(
        default="", metadata={"help": "encoder for the item texts; default: packaged MiniLM"}
    )
    # Real logs: on Amazon Beauty (12,101 products, ids only) an epoch with 2,048 sampled
    # negatives takes ~15 s on 2 cores; validation NDCG@10 peaks after about 6 epochs.
    epochs: int = 30
    patience: int = 3
    dropout: float = 0.3
    negatives: int = field(default=2048, metadata={"help": "sampled softmax (0: whole catalog)"})


def run(config: RecommendConfig) -> dict:
    """Load, embed the item texts, train and evaluate; write the model and a report."""
    from shoprank import contract
    from shoprank.configargs import config_to_dict
    from shoprank.data import datasets
    from shoprank.models.encoder import embed, load_encoder
    from shoprank.training.interactions import load_interactions
    from shoprank.training.report import write_report

    if not config.data:
        raise datasets.DataError("--data is required (an interactions folder or file)")
    data = load_interactions(config.data, config.data_format, config.data_encoding or None)
    catalog = data.catalog.copy()
    for column in datasets.CATALOG_COLUMNS:
        if column not in catalog:
            catalog[column] = np.nan if column == "price" else ""
    if data.has_text:
        model = load_encoder(config.encoder_path or None)
        text = embed(model, datasets.product_text(catalog), progress=True)
    else:  # ids only: nothing to embed, the model learns id vectors alone
        text = np.zeros((len(catalog), 0), np.float32)
    training = SequentialTraining(
        **{name: getattr(config, name) for name in SequentialTraining.__dataclass_fields__}
    )
    chosen = evaluate_sequences(data.sequences, text, training, contract.MAX_HISTORY)
    report = chosen.report
    paths = contract.ArtifactPaths(Path(config.out))
    save_next_items(chosen, paths)
    catalog.to_parquet(paths.model / "items.parquet", index=False)
    metrics = {
        "config": config_to_dict(config),
        "data": {
            "products": len(catalog),
            "shoppers": len(data.sequences),
            "interactions": sum(len(s) for s in data.sequences),
        },
        "summary": data.summary(),
        "recommendation": report,
    }
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.metrics.write_text(json.dumps(metrics, indent=2))
    write_report(metrics, paths.root)  # reports/eval.md with the models' bars and the curve
    return metrics


def main(argv: list[str] | None = None) -> None:
    from shoprank.configargs import parse_config, setup_logging, user_errors
    from shoprank.data.datasets import DataError

    setup_logging("shoprank")
    config = parse_config(RecommendConfig, argv, description=RecommendConfig.__doc__ or "")
    with user_errors(DataError, RecommendationError):
        metrics = run(config)
    print(metrics["summary"])
    rec = metrics["recommendation"]
    print("leave-last-out, validation | test (HR@10 / NDCG@10):")
    for name, m in rec.items():
        if isinstance(m, dict) and HIT_RATE_AT_10 in m:
            v = rec["validation"].get(name)
            on_val = f"{v[HIT_RATE_AT_10]:.4f} / {v[NDCG_AT_10]:.4f}" if v else " " * 15
            print(f"  {name:<21} {on_val} | {m[HIT_RATE_AT_10]:.4f} / {m[NDCG_AT_10]:.4f}")
    print(f"served: {rec['served']['name']} {rec['served']['weights']}")


if __name__ == "__main__":
    main()
