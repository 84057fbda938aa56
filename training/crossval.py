"""Query-grouped k-fold cross-validation of BM25, zero-shot, fine-tuned and hybrid retrieval.

    python -m shoprank.training.crossval --data train.csv.gz --folds 5 --max-steps 150 --out DIR

For bring-your-own relevance data (catalog, queries, graded judgements; behaviour events,
if any, are ignored), where one fixed 15% test split of a few hundred queries is too
noisy to trust. The queries are dealt into `folds` groups; in fold i the test queries are
group i and the rest train the encoder, a `val_fraction` of them held out as val for the
validation NDCG@10 that keeps the best checkpoint and stops early. A query's judgements
therefore never appear on both sides of a fold. Each fold fine-tunes a fresh copy of the
base encoder with the recipe and defaults of `python -m shoprank.training` (`finetune.finetune`;
`--hard-negatives` mines them with the zero-shot encoder, `--graded-loss` adds the margin loss);
BM25 and the zero-shot encoder need no training and are scored on the same test queries.
The hybrid is the relevance model of `python -m shoprank.training` (training/hybrid.py: dense
cosine + lexical features over the union of dense and BM25 candidates), fitted on the
fold's train queries with the fold's fine-tuned encoder and chosen on its val queries.

What "the catalog" is: every distinct product in the data, across all queries and all
folds (the loaders build one catalog from all rows). Two modes are reported:

- **catalog**: each test query ranks the whole catalog (top 100) and is scored with
  `metrics.mean_metrics`, as in training. Products that were never judged for the query
  count as grade 0, so a product judged relevant only for a similar query counts against
  the system: numbers are a pessimistic bound.
- **judged**: each test query re-ranks only its own judged products (the framing of
  Kaggle-style relevance sets such as CrowdFlower, whose ~40 products per query come
  from a search engine's results); this measures ordering, not retrieval.

Writes DIR/crossval.json (per fold and mean ± sample std over folds) and DIR/crossval.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shoprank import contract
from shoprank.configargs import config_to_dict, parse_config, setup_logging, user_errors
from shoprank.core.ann import DenseConfig, DenseIndex
from shoprank.core.lexical import LexicalIndex
from shoprank.core.ranking import CandidateConfig
from shoprank.data.datasets import DataError, ShopData, judgement_grades, product_text, validate
from shoprank.data.metrics import (
    MRR,
    NDCG_AT_10,
    RECALL_AT_10,
    RECALL_AT_100,
    mean_metrics,
    top_k_rankings,
)
from shoprank.models.encoder import embed, load_encoder
from shoprank.training import finetune, hybrid
from shoprank.training.base_encoder import base_encoder_path
from shoprank.training.finetune import FinetuneConfig
from shoprank.training.sources import DataSource, EncoderSource

# Named, not __name__: under `python -m` that would be "__main__", outside setup_logging.
log = logging.getLogger("training.crossval")

SYSTEMS = ("bm25", "zero_shot", "fine_tuned", "hybrid")
MODES = ("catalog", "judged")
SUMMARY_METRICS = (NDCG_AT_10, RECALL_AT_10, RECALL_AT_100, MRR)
PARTIAL = "crossval.partial.json"  # folds finished so far, removed when the run completes


@dataclass
class CrossvalConfig(DataSource, EncoderSource, FinetuneConfig, CandidateConfig):
    """Every knob of the cross-validation; each is a command-line flag. Data, base encoder,
    fine-tuning and candidate counts are declared by the configs it extends (`--data` is
    required here)."""

    out: Path = field(default=Path("artifacts/crossval"), metadata={"help": "output folder"})
    folds: int = 5
    val_fraction: float = field(
        default=0.1, metadata={"help": "share of each fold's training queries held out as val"}
    )
    resume_folds: bool = field(
        default=False,
        metadata={"help": "reuse folds finished by a stopped run (OUT/crossval.partial.json)"},
    )


# ---------------------------------------------------------------------------------------
# Folds
# ---------------------------------------------------------------------------------------
def query_folds(query_ids: Sequence[int], folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Distinct query ids dealt into `folds` disjoint groups of near-equal size (seeded)."""
    ids = np.unique(np.asarray(query_ids, dtype=np.int64))
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if folds > len(ids):
        raise ValueError(f"{folds} folds need at least {folds} queries, got {len(ids)}")
    shuffled = np.random.default_rng(seed).permutation(ids)
    return [np.sort(part) for part in np.array_split(shuffled, folds)]


def fold_data(
    data: ShopData, test_ids: Sequence[int], val_fraction: float = 0.1, seed: int = 0
) -> ShopData:
    """A copy of `data` whose query `split` column makes `test_ids` the test queries.

    The other queries are train, except a seeded `val_fraction` of them (val). Catalog and
    judgements are shared with `data`, not copied; users and events are dropped, since
    their own splits would not follow the fold.
    """
    queries = data.queries.copy()
    is_test = queries["query_id"].isin(set(int(q) for q in test_ids)).to_numpy()
    rest = np.flatnonzero(~is_test)
    n_val = round(val_fraction * len(rest))
    val = np.random.default_rng(seed).choice(rest, size=n_val, replace=False)
    split = np.full(len(queries), "train", dtype=object)
    split[val] = "val"
    split[is_test] = "test"
    queries["split"] = split
    return ShopData(catalog=data.catalog, queries=queries, judgements=data.judgements)


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------
def judged_rankings(
    scores: np.ndarray,
    query_ids: Sequence[int],
    grades: Mapping[int, Mapping[int, int]],
    row_of: Mapping[int, int],
) -> dict[int, list[int]]:
    """Each query's own judged products ordered by its row of `scores` (ties: id order)."""
    out = {}
    for i, q in enumerate(query_ids):
        products = sorted(grades.get(int(q), {}))
        rows = [row_of[p] for p in products]
        order = np.argsort(-scores[i, rows], kind="stable")
        out[int(q)] = [products[j] for j in order]
    return out


def score_metrics(
    scores: np.ndarray, query_ids: Sequence[int], data: ShopData
) -> dict[str, dict[str, float]]:
    """{"catalog": full-catalog metrics, "judged": judged-products re-ranking metrics}."""
    product_ids = data.catalog["product_id"].to_numpy(np.int64)
    row_of = {int(p): i for i, p in enumerate(product_ids)}
    grades = judgement_grades(data, query_ids)
    return {
        "catalog": mean_metrics(top_k_rankings(scores, query_ids, product_ids), grades),
        "judged": mean_metrics(judged_rankings(scores, query_ids, grades, row_of), grades),
    }


def _embed_queries(model, texts: Sequence[str], config: CrossvalConfig) -> np.ndarray:
    return embed(
        model,
        list(texts),
        batch_size=config.embed_batch_size,
        max_seq_length=contract.MAX_QUERY_TOKENS,
    )


def _embed_catalog(model, texts: Sequence[str], config: CrossvalConfig, desc: str) -> np.ndarray:
    return embed(
        model,
        list(texts),
        batch_size=config.embed_batch_size,
        max_seq_length=config.max_product_tokens,
        progress=True,
    )


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
    }


def summarize(fold_results: Sequence[Mapping]) -> dict:
    """{mode: {system: {metric: {"mean", "std"}}}} over folds (sample std, ddof=1)."""
    return {
        mode: {
            system: {
                metric: _mean_std([f["systems"][system][mode][metric] for f in fold_results])
                for metric in SUMMARY_METRICS
            }
            for system in SYSTEMS
        }
        for mode in MODES
    }


PAIRS = (
    ("fine_tuned", "zero_shot"),
    ("fine_tuned", "bm25"),
    ("zero_shot", "bm25"),
    ("hybrid", "fine_tuned"),
    ("hybrid", "bm25"),
)


def paired_differences(fold_results: Sequence[Mapping], metric: str = NDCG_AT_10) -> dict:
    """{mode: {"a - b": {"mean", "std", "folds_better"}}} of per-fold differences.

    Folds differ in difficulty far more than systems differ within a fold, so the
    per-system std overlaps even when one system wins every fold; the paired difference
    is the comparison to read.
    """
    out: dict = {}
    for mode in MODES:
        out[mode] = {}
        for a, b in PAIRS:
            diffs = [
                f["systems"][a][mode][metric] - f["systems"][b][mode][metric] for f in fold_results
            ]
            out[mode][f"{a} - {b}"] = {
                **_mean_std(diffs),
                "folds_better": sum(d > 0 for d in diffs),
            }
    return out


def _hybrid_metrics(
    model, fd: ShopData, items: np.ndarray, lexical: LexicalIndex, test: list[int], config
) -> dict[str, dict[str, float]]:
    """The fold's learned hybrid on its test queries, in both modes: over the dense + BM25
    candidates (catalog) and over each query's judged products (judged)."""
    q_emb = _embed_queries(model, fd.queries["query"].tolist(), config)
    exact = DenseIndex.build(items, DenseConfig(kind="flat"))
    retrieval = CandidateConfig(dense_k=config.dense_k, lexical_k=config.lexical_k)
    sets = {
        split: hybrid.build_query_set(fd, split, q_emb, items, exact, lexical, retrieval)
        for split in ("train", "val", "test")
    }
    relevance, _ = hybrid.fit_relevance(fd, sets["train"], sets["val"], seed=config.seed)
    qs = sets["test"]
    order = {int(q): i for i, q in enumerate(qs.query_ids)}
    n = len(items)
    catalog = np.full((len(test), n), -np.inf, np.float32)
    judged = np.full((len(test), n), -np.inf, np.float32)
    scores = hybrid.relevance_scores(relevance, qs)
    grades = judgement_grades(fd, test)
    row_of = {int(p): i for i, p in enumerate(fd.catalog["product_id"].to_numpy(np.int64))}
    with torch.no_grad():
        for t, q in enumerate(test):
            i = order[q]
            cand = qs.candidates[i]
            catalog[t, cand] = scores[i, : len(cand)]
            rows = np.array([row_of[p] for p in grades.get(q, {})], dtype=np.int64)
            if len(rows):
                cosine = items[rows] @ qs.embeddings[i]
                lex = lexical.features(qs.tokens[i], rows)
                judged[t, rows] = relevance(
                    torch.from_numpy(cosine[None, :].astype(np.float32)),
                    torch.from_numpy(lex[None]),
                ).numpy()[0]
    product_ids = fd.catalog["product_id"].to_numpy(np.int64)
    return {
        "catalog": mean_metrics(top_k_rankings(catalog, test, product_ids), grades),
        "judged": mean_metrics(judged_rankings(judged, test, grades, row_of), grades),
    }


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def _settings(config: CrossvalConfig | Mapping) -> dict:
    """The settings that decide the results (all but the resume switches), JSON-friendly."""
    values = config if isinstance(config, Mapping) else config_to_dict(config)
    return {k: v for k, v in values.items() if k not in ("resume", "resume_folds")}


def _finished_folds(path: Path, config: CrossvalConfig) -> list[dict]:
    """Folds a stopped run with the same settings finished (see `resume_folds`)."""
    if not path.exists():
        return []
    partial = json.loads(path.read_text())
    if _settings(partial.get("config", {})) != _settings(config):
        log.warning("%s was written with other settings; starting over", path)
        return []
    return list(partial.get("folds", []))


@dataclass
class Shared:
    """What every fold reads: the data, BM25, and the zero-shot encoder's embeddings (the
    systems that do not train, scored once), and where the base encoder is."""

    data: ShopData
    texts: list[str]  # product texts, catalog order
    query_text: dict[int, str]
    lexical: LexicalIndex
    base_path: Path
    zs_items: np.ndarray
    zs_queries: dict[int, np.ndarray]


def shared_inputs(data: ShopData, config: CrossvalConfig, work_dir: Path) -> Shared:
    """BM25 over the catalog and the zero-shot embeddings (cached for --resume-folds)."""
    texts = list(product_text(data.catalog))
    query_ids = data.queries["query_id"].to_numpy(np.int64)
    query_text = dict(zip(query_ids.tolist(), data.queries["query"].tolist(), strict=True))
    lexical = LexicalIndex.build(data.catalog)
    base_path = base_encoder_path(config.encoder_path, config.tiny_encoder, work_dir, config.seed)
    torch.manual_seed(config.seed)
    model = load_encoder(base_path, config.max_product_tokens)
    cache = work_dir / "zero_shot.npz"  # kept for --resume-folds; removed with work_dir at the end
    settings = json.dumps(_settings(config), sort_keys=True)
    saved = dict(np.load(cache)) if config.resume_folds and cache.exists() else {}
    if str(saved.get("settings", "")) == settings:
        zs_items, zs_q = saved["items"], saved["queries"]
    else:
        zs_items = _embed_catalog(model, texts, config, "embed catalog (zero-shot)")
        zs_q = _embed_queries(model, query_text.values(), config)
        work_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, items=zs_items, queries=zs_q, settings=np.array(settings))
    zs_queries = dict(zip(query_ids.tolist(), zs_q, strict=True))
    return Shared(data, texts, query_text, lexical, base_path, zs_items, zs_queries)


def run_fold(
    f: int, test_ids: np.ndarray, sh: Shared, config: CrossvalConfig, work_dir: Path
) -> dict:
    """Fold `f`: BM25 and zero-shot scored on its test queries, a fresh copy of the base
    encoder fine-tuned on the rest, then the fine-tuned and hybrid systems scored."""
    started = time.perf_counter()
    data, query_text = sh.data, sh.query_text
    fd = fold_data(data, test_ids, config.val_fraction, config.seed + f)
    split_of = dict(zip(fd.queries["query_id"].tolist(), fd.queries["split"], strict=True))
    test = [int(q) for q in test_ids]
    val = [q for q, s in split_of.items() if s == "val"]
    test_text = [query_text[q] for q in test]
    systems = {
        "bm25": score_metrics(sh.lexical.score_matrix(test_text), test, data),
        "zero_shot": score_metrics(
            np.stack([sh.zs_queries[q] for q in test]) @ sh.zs_items.T, test, data
        ),
    }
    torch.manual_seed(config.seed)
    model = load_encoder(sh.base_path, config.max_product_tokens)
    train_sets = finetune.training_sets(
        fd, sh.zs_queries, sh.zs_items, config.hard_negatives, config.graded_loss, config.seed
    )
    curve = finetune.finetune_with_validation(model, fd, train_sets, config, work_dir / f"fold{f}")
    items = _embed_catalog(model, sh.texts, config, f"embed catalog (fold {f + 1})")
    q_emb = _embed_queries(model, [query_text[q] for q in test + val], config)
    systems["fine_tuned"] = score_metrics(q_emb[: len(test)] @ items.T, test, data)
    systems["hybrid"] = _hybrid_metrics(model, fd, items, sh.lexical, test, config)
    return {
        "fold": f,
        "queries": {
            s: sum(1 for v in split_of.values() if v == s) for s in ("train", "val", "test")
        },
        "test_query_ids": test,
        "training_rows": {k: len(v) for k, v in train_sets.items()},
        "systems": systems,
        # Val queries picked the checkpoint: a sanity check, not an unbiased estimate.
        "fine_tuned_val": (
            score_metrics(q_emb[len(test) :] @ items.T, val, data)["catalog"] if val else None
        ),
        "loss_curve": curve,
        "seconds": round(time.perf_counter() - started, 1),
    }


def crossval(data: ShopData, config: CrossvalConfig) -> dict:
    """Run the k-fold comparison on `data`; return the results (see module docstring)."""
    started = time.perf_counter()
    data = ShopData(catalog=data.catalog, queries=data.queries, judgements=data.judgements)
    validate(data)
    out = Path(config.out)
    work_dir = out / "work"
    folds = query_folds(data.queries["query_id"].to_numpy(), config.folds, config.seed)
    shared = shared_inputs(data, config, work_dir)
    results: list[dict] = []
    done = _finished_folds(out / PARTIAL, config) if config.resume_folds else []
    for f, test_ids in enumerate(tqdm(folds, desc="folds")):
        if f < len(done) and done[f]["test_query_ids"] == [int(q) for q in test_ids]:
            log.info("fold %d/%d: reused from %s", f + 1, len(folds), out / PARTIAL)
            results.append(done[f])
            continue
        fold = run_fold(f, test_ids, shared, config, work_dir)
        log.info(
            "fold %d/%d NDCG@10 (catalog): %s",
            f + 1,
            len(folds),
            {s: round(m["catalog"][NDCG_AT_10], 4) for s, m in fold["systems"].items()},
        )
        results.append(fold)
        # A real run takes minutes per fold: keep what is done readable if it is stopped.
        out.mkdir(parents=True, exist_ok=True)
        partial = {"config": config_to_dict(config), "folds": results}
        (out / PARTIAL).write_text(json.dumps(partial, indent=2))
    shutil.rmtree(work_dir, ignore_errors=True)
    (out / PARTIAL).unlink(missing_ok=True)
    grades = data.judgements["relevance"].value_counts().sort_index()
    return {
        "config": config_to_dict(config),
        "data": {
            "products": len(data.catalog),
            "queries": len(data.queries),
            "judgements": len(data.judgements),
            "grades": {str(int(g)): int(n) for g, n in grades.items()},
            "catalog": "every distinct product in the data, shared by all folds and queries",
        },
        "folds": results,
        "summary": summarize(results),
        "paired": paired_differences(results),
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: Mapping) -> str:
    """crossval.md: per-fold and mean ± std NDCG@10 for each system and mode."""
    folds = result["folds"]
    d = result["data"]
    lines = [
        f"# {len(folds)}-fold query-grouped cross-validation",
        "",
        f"Data: `{result['config']['data']}`: {d['products']:,} products, {d['queries']:,} "
        f"queries, {d['judgements']:,} judgements (grades 0–3: "
        + ", ".join(f"{g}: {n:,}" for g, n in d["grades"].items())
        + f"). Fine-tuning: {result['config']['max_steps']} steps per fold, "
        f"batch {result['config']['batch_size']}.",
        "",
        f"The catalog is every distinct product in the data ({d['products']:,}), shared by "
        "all folds. *catalog*: each test query ranks the whole catalog; products not judged "
        "for it count as grade 0. *judged*: each test query re-ranks only its own judged "
        "products. Mean ± sample std over folds.",
        "",
    ]
    for mode in MODES:
        lines += [
            f"## NDCG@10, {mode}",
            "",
            "| system | " + " | ".join(f"fold {f['fold'] + 1}" for f in folds) + " | mean ± std |",
            "|---|" + "---|" * (len(folds) + 1),
        ]
        for system in SYSTEMS:
            s = result["summary"][mode][system][NDCG_AT_10]
            lines.append(
                f"| {system} | "
                + " | ".join(f"{f['systems'][system][mode]['ndcg@10']:.4f}" for f in folds)
                + f" | {s['mean']:.4f} ± {s['std']:.4f} |"
            )
        lines.append("")
    lines += [
        "## Paired NDCG@10 differences (mean ± std over folds, folds where the first wins)",
        "",
        "| comparison | " + " | ".join(MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]
    for a, b in PAIRS:
        cells = []
        for mode in MODES:
            d = result["paired"][mode][f"{a} - {b}"]
            cells.append(f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['folds_better']}/{len(folds)})")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## All metrics, catalog (mean ± std)",
        "",
        "| system | " + " | ".join(SUMMARY_METRICS) + " |",
        "|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for system in SYSTEMS:
        s = result["summary"]["catalog"][system]
        lines.append(
            f"| {system} | "
            + " | ".join(f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in SUMMARY_METRICS)
            + " |"
        )
    lines += [
        "",
        "Queries per fold (train / val / test): "
        + ", ".join(
            f"{f['queries']['train']}/{f['queries']['val']}/{f['queries']['test']}" for f in folds
        )
        + f". Total time {result['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def write_results(result: Mapping, out: Path) -> tuple[Path, Path]:
    """Write crossval.json and crossval.md below `out`; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "crossval.json", out / "crossval.md"
    json_path.write_text(json.dumps(result, indent=2))
    md_path.write_text(markdown(result))
    return json_path, md_path


def run(config: CrossvalConfig) -> dict:
    """Load `config.data`, cross-validate, write the results; return them."""
    from shoprank.training.loaders import load_any

    if not config.data:
        raise SystemExit("--data is required: a relevance file or folder (see training.loaders)")
    data = load_any(config.data, fmt=config.data_format, encoding=config.data_encoding)
    if data.events is not None:
        log.info("behaviour events are ignored by cross-validation")
    result = crossval(data, config)
    write_results(result, Path(config.out))
    return result


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    setup_logging("shoprank")
    config = parse_config(CrossvalConfig, argv, description=__doc__ or "")
    with user_errors(DataError):
        result = run(config)
    print(markdown(result))
    print(f"written: {Path(config.out) / 'crossval.json'}, {Path(config.out) / 'crossval.md'}")


if __name__ == "__main__":
    main()
