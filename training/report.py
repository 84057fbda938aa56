"""The evaluation report: `reports/eval.md` plus PNG plots from a metrics.json dict.

    from shoprank.training.report import write_report
    write_report(metrics, Path("artifacts/demo"))  # -> artifacts/demo/reports/eval.md

Reads whatever is there and says what is not: a run without behaviour events has no
fusion section, a metrics.json without "baselines" has no BM25 row. Retrieval systems
are every dict under `metrics["retrieval"]` with an NDCG@10 (zero-shot, fine-tuned, any
later variant), the baselines and the served ranker's cold-start ranking; fusion variants
are every dict under `metrics["fusion"]` with a click AUC.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede the pyplot import

import matplotlib.pyplot as plt

from shoprank.data.metrics import (
    CLICK_AUC,
    HIT_RATE_AT_10,
    MRR,
    NDCG_AT_10,
    PURCHASE_NDCG_AT_10,
    RECALL_AT_10,
    RECALL_AT_100,
)

REPORT_DIR = "reports"
REPORT_NAME = "eval.md"
# Targets: fine-tuning must beat the packaged encoder, the served two-stage pipeline must
# beat BM25 and dense retrieval alone, behaviour must beat relevance alone.
MIN_FINETUNE_GAIN = 0.05  # fine-tuned NDCG@10 >= zero-shot + this
MIN_FUSION_GAIN = 0.10  # best fusion purchase-NDCG@10 >= relevance-only x (1 + this)
MIN_SERVED_VS_BM25 = 1.10  # served NDCG@10 >= BM25 x this
RETRIEVAL_METRICS = (NDCG_AT_10, RECALL_AT_100, MRR)
SESSION_METRICS = (CLICK_AUC, PURCHASE_NDCG_AT_10)
RECOMMEND_METRICS = (HIT_RATE_AT_10, NDCG_AT_10, MRR)
MIN_SEQUENTIAL_VS_POPULARITY = 2.0  # sequential HR@10 >= popularity x this
_LABELS = {
    "bm25": "BM25 only",
    "popularity": "popularity",
    "zero_shot": "zero-shot (dense)",
    "fine_tuned": "dense only (fine-tuned, exact)",
    "rrf": "reciprocal-rank fusion",
    "learned_hybrid": "learned hybrid",
    "judged_cold_start": "fusion ranker, cold start (exact candidates)",
    "served": "served pipeline (ANN + BM25 + ranker, int8)",
    "relevance_only": "relevance only",
    "weighted_fusion": "weighted fusion",
    "weighted": "weighted fusion",
    "concat_mlp": "concat MLP",
    "target_attention": "target attention",
    "session_popularity": "popularity (baseline)",
    "cooccurrence": "item-to-item co-visits (recency-weighted)",
    "text_only": "text only (mean of the history's embeddings)",
    "sequential": "sequential model",
    "blend": "blend: sequential model + co-visits",
    "cold_start_popularity": "cold start: popularity, history withheld",
    HIT_RATE_AT_10: "HR@10",
    NDCG_AT_10: "NDCG@10",
    RECALL_AT_10: "Recall@10",
    RECALL_AT_100: "Recall@100",
    MRR: "MRR",
    CLICK_AUC: "click AUC",
    PURCHASE_NDCG_AT_10: "purchase-NDCG@10",
}


def label(name: str) -> str:
    """Display name of a system, variant or metric key."""
    return _LABELS.get(name, name.replace("_", " "))


def _fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _num(value: object) -> float | None:
    """A finite float, or None for missing / NaN / non-numbers."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        f = float(value)
        return None if math.isnan(f) else f
    return None


# ---------------------------------------------------------------------------------------
# What the metrics dict holds
# ---------------------------------------------------------------------------------------
# The order the retrieval table and plot show the systems in: baselines, each stage of
# the hybrid, the served pipeline last.
SYSTEM_ORDER = (
    "popularity",
    "zero_shot",
    "bm25",
    "fine_tuned",
    "rrf",
    "learned_hybrid",
    "judged_cold_start",
    "served",
)


def retrieval_systems(metrics: Mapping) -> dict[str, dict]:
    """Judged full-catalog retrieval metrics by system, in SYSTEM_ORDER (missing ones left
    out). BM25 is the evaluation stage's (`baselines.bm25`) when it ran, else training's."""
    found: dict[str, dict] = {}
    for name, value in (metrics.get("retrieval") or {}).items():
        if isinstance(value, dict) and NDCG_AT_10 in value:
            found[name] = value
    for name, value in (metrics.get("baselines") or {}).items():
        if isinstance(value, dict) and NDCG_AT_10 in value:
            found[name] = value
    cold = (metrics.get("fusion") or {}).get("judged_cold_start")
    if isinstance(cold, dict) and NDCG_AT_10 in cold:
        found["judged_cold_start"] = cold
    ordered = {k: found[k] for k in SYSTEM_ORDER if k in found}
    return {**ordered, **{k: v for k, v in found.items() if k not in ordered}}


def fusion_variants(metrics: Mapping) -> dict[str, dict]:
    """Held-out session metrics by fusion variant (text-only first), session baseline last."""
    fusion = metrics.get("fusion") or {}
    variants = {k: v for k, v in fusion.items() if isinstance(v, dict) and CLICK_AUC in v}
    ordered = dict(sorted(variants.items(), key=lambda kv: kv[0] != "relevance_only"))
    baseline = (metrics.get("baselines") or {}).get("session_popularity")
    if isinstance(baseline, dict) and CLICK_AUC in baseline:
        ordered["session_popularity"] = baseline
    return ordered


def loss_curves(metrics: Mapping) -> dict[str, dict[str, list[dict]]]:
    """{plot: {series: [{step, loss[, eval_...]}, ...]}}, one plot per model.

    Top-level `*loss_curve` keys are plots of their own ("encoder", "mlm"); the fusion
    curves (`fusion.loss_curve` and each variant's) share one "fusion" plot.
    """
    plots: dict[str, dict[str, list[dict]]] = {}

    def add(plot: str, series: str, curve: object) -> None:
        if isinstance(curve, list) and any(isinstance(p, dict) and "loss" in p for p in curve):
            plots.setdefault(plot, {})[series] = [p for p in curve if isinstance(p, dict)]

    for key, value in metrics.items():
        if key.endswith("loss_curve"):
            name = key.removesuffix("loss_curve").strip("_") or "encoder"
            add(name, name, value)
    fusion = metrics.get("fusion") or {}
    add("fusion", "fusion", fusion.get("loss_curve"))
    for name, value in fusion.items():
        if isinstance(value, dict):
            add("fusion", label(name), value.get("loss_curve"))
    return plots


def _fusion_note(best: str | None, metrics: Mapping) -> str:
    if best is None:
        return "no fusion variant"
    note = f"best on test: {label(best)}"
    fusion = metrics.get("fusion") or {}
    served = fusion.get("served")
    if isinstance(served, str) and served != best and isinstance(fusion.get(served), dict):
        value = _fmt(fusion[served].get(PURCHASE_NDCG_AT_10))
        note += f"; served (chosen on validation): {label(served)} {value}"
    return note


@dataclass
class Target:
    """One target: what is measured, against what, and whether it holds."""

    name: str
    value: float | None
    threshold: float | None
    comparison: str  # ">=" or ">"
    note: str = ""

    @property
    def result(self) -> str:
        if self.value is None or self.threshold is None:
            return "n/a"
        ok = (
            self.value >= self.threshold if self.comparison == ">=" else self.value > self.threshold
        )
        return "pass" if ok else "miss"


def recommenders(metrics: Mapping) -> dict[str, dict]:
    """{model: {hr@10, ndcg@10, mrr, users}} of metrics.json's recommendation section."""
    rec = metrics.get("recommendation") or {}
    return {k: m for k, m in rec.items() if isinstance(m, Mapping) and HIT_RATE_AT_10 in m}


def served_name(metrics: Mapping) -> str:
    """The recommender training chose to serve (the sequential model in older metrics)."""
    rec = metrics.get("recommendation") or {}
    return (rec.get("served") or {}).get("name", "sequential")


def targets(metrics: Mapping) -> list[Target]:
    """The targets evaluated on `metrics` ("n/a" where an input is missing)."""
    systems = retrieval_systems(metrics)

    def value(system: str, key: str = NDCG_AT_10) -> float | None:
        return _num(systems.get(system, {}).get(key))

    ft, zs, bm25, served = value("fine_tuned"), value("zero_shot"), value("bm25"), value("served")
    out = [
        Target(
            f"fine-tuned NDCG@10 ≥ zero-shot + {MIN_FINETUNE_GAIN:g}",
            ft,
            None if zs is None else zs + MIN_FINETUNE_GAIN,
            ">=",
        ),
        Target(
            f"served NDCG@10 ≥ BM25 × {MIN_SERVED_VS_BM25:g}",
            served,
            None if bm25 is None else bm25 * MIN_SERVED_VS_BM25,
            ">=",
        ),
        Target("served NDCG@10 ≥ dense only", served, ft, ">="),
        Target(
            "served Recall@100 ≥ BM25 and dense only",
            value("served", RECALL_AT_100),
            max(
                (
                    v
                    for v in (value("bm25", RECALL_AT_100), value("fine_tuned", RECALL_AT_100))
                    if v is not None
                ),
                default=None,
            ),
            ">=",
        ),
    ]
    variants = fusion_variants(metrics)
    text = _num(variants.get("relevance_only", {}).get(PURCHASE_NDCG_AT_10))
    learned = {
        name: _num(m.get(PURCHASE_NDCG_AT_10))
        for name, m in variants.items()
        if name not in ("relevance_only", "session_popularity")
    }
    learned = {k: v for k, v in learned.items() if v is not None}
    best = max(learned, key=lambda k: learned[k]) if learned else None
    out.append(
        Target(
            f"best fusion purchase-NDCG@10 ≥ relevance only × {1 + MIN_FUSION_GAIN:g}",
            learned[best] if best else None,
            None if text is None else text * (1 + MIN_FUSION_GAIN),
            ">=",
            note=_fusion_note(best, metrics),
        )
    )
    rec = recommenders(metrics)
    if rec:

        def hr(name: str) -> float | None:
            return _num(rec.get(name, {}).get(HIT_RATE_AT_10))

        served = served_name(metrics)
        seq, pop = hr(served), hr("popularity")
        out.append(
            Target(
                f"served recommender ({served}) HR@10 ≥ popularity × "
                f"{MIN_SEQUENTIAL_VS_POPULARITY:g}",
                seq,
                None if pop is None else pop * MIN_SEQUENTIAL_VS_POPULARITY,
                ">=",
            )
        )
        others = [
            v
            for v in (hr("text_only"), hr("cooccurrence"))
            if v is not None and served != "cooccurrence"
        ]
        out.append(
            Target(
                f"served recommender ({served}) HR@10 ≥ text-only and co-occurrence (test)",
                seq,
                max(others) if others else seq,
                ">=",
            )
        )
    return out


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------
def _plot_curves(title: str, series: Mapping[str, list[dict]], path: Path) -> None:
    """Training loss by step, one line per series; validation NDCG@10 points (if logged)
    on a second axis."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    right = None
    for name, curve in series.items():
        loss = [(float(p["step"]), float(p["loss"])) for p in curve if "step" in p and "loss" in p]
        val = [
            (float(p["step"]), float(p[key]))
            for p in curve
            for key in p
            if "step" in p and key.startswith("eval_") and "ndcg" in key
        ]
        suffix = f" ({name})" if len(series) > 1 else ""
        if loss:
            xs, ys = zip(*loss, strict=True)
            ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=f"training loss{suffix}")
        if val:
            right = right or ax.twinx()
            xs, ys = zip(*val, strict=True)
            right.plot(xs, ys, "o--", color="tab:orange", label=f"validation NDCG@10{suffix}")
            right.set_ylabel("validation NDCG@10")
    ax.set(title=f"{title} training loss", xlabel="step", ylabel="training loss")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if right is not None:
        handles += right.get_legend_handles_labels()[0]
    if len(handles) > 1:
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bars(title: str, groups: dict[str, dict], keys: tuple[str, ...], path: Path) -> None:
    """Grouped bars: one group per metric key, one bar per system; missing values skipped."""
    names = list(groups)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) * len(keys) / 2 + 3), 4))
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, key in enumerate(keys):
            value = _num(groups[name].get(key))
            if value is not None:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(value)
        bars = ax.bar(xs, ys, width, label=label(name))
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(range(len(keys)), [label(k) for k in keys])
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------
def _config(metrics: Mapping, key: str) -> str:
    return str((metrics.get("config") or {}).get(key, "?"))


def _data_line(metrics: Mapping) -> str:
    config = metrics.get("config") or {}
    source = (
        f"bring-your-own data `{config['data']}`"
        if config.get("data")
        else f"synthetic shop (scale {config.get('scale', '?')}, seed {config.get('seed', '?')})"
    )
    counts = metrics.get("data") or {}
    sizes = ", ".join(f"{_fmt(v)} {k}" for k, v in counts.items())
    return f"Data: {source}" + (f"; {sizes}." if sizes else ".")


# Long on purpose: the report's sections in reading order, one block each; they share
# nothing but `lines`, and reading the document top to bottom is the point.
def report_markdown(metrics: Mapping, plots: Mapping[str, str]) -> str:
    """The Markdown text of the report; `plots` maps a caption to a PNG file name."""
    split = (metrics.get("retrieval") or {}).get("split") or (metrics.get("baselines") or {}).get(
        "split", "test"
    )
    lines = ["# shoprank evaluation", "", _data_line(metrics), ""]

    lines += [
        "## Targets",
        "",
        "| target | value | threshold | result | note |",
        "|---|---|---|---|---|",
    ]
    for t in targets(metrics):
        lines.append(
            f"| {t.name} | {_fmt(t.value)} | {t.comparison} {_fmt(t.threshold)} | "
            f"**{t.result}** | {t.note} |"
        )
    lines.append("")

    systems = retrieval_systems(metrics)
    lines += [f"## Retrieval: held-out {split!r} queries, full catalog", ""]
    if systems:
        keys = (NDCG_AT_10, RECALL_AT_10, RECALL_AT_100, MRR, "queries")
        lines += [
            "| system | " + " | ".join(label(k) for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for name, m in systems.items():
            lines.append(f"| {label(name)} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
        lines += [
            "",
            "Graded judgements 0–3; NDCG@10 with gain 2^rel − 1 against all judged products of "
            "the query; Recall and MRR count grade ≥ 2 as relevant.",
        ]
        lines += [
            "",
            "BM25 and the dense scan retrieve on their own; reciprocal-rank fusion and the "
            "learned hybrid re-rank the union of their candidates (dense top "
            f"{_config(metrics, 'dense_k')}, BM25 top {_config(metrics, 'lexical_k')}); the "
            "fusion ranker adds the item prior at cold start; the served pipeline is the "
            "generated Triton repository run in process (int8 encoder, ANN index, BM25, "
            "ranker graph), with an empty history.",
        ]
    else:
        lines.append("No retrieval metrics in metrics.json.")
    skipped = {
        k: v["skipped"]
        for k, v in (metrics.get("baselines") or {}).items()
        if isinstance(v, dict) and "skipped" in v
    }
    if "baselines" not in metrics:
        lines += ["", "Baselines not run (`python -m shoprank.training.evaluate` adds them)."]
    for name, why in skipped.items():
        lines += ["", f"{label(name)}: {why}."]
    lines.append("")

    variants = fusion_variants(metrics)
    lines += ["## Fusion: held-out sessions", ""]
    fusion = metrics.get("fusion") or {}
    served = fusion.get("served")
    if variants:
        base = _num(variants.get("relevance_only", {}).get(PURCHASE_NDCG_AT_10))
        lines += [
            "| variant | click AUC | purchase-NDCG@10 | vs relevance only (95% CI) "
            "| sessions with purchase |",
            "|---|---|---|---|---|",
        ]
        for name, m in variants.items():
            value = _num(m.get(PURCHASE_NDCG_AT_10))
            rel = f"{(value / base - 1) * 100:+.1f}%" if value is not None and base else "—"
            gain = m.get("gain_vs_relevance_only")
            if isinstance(gain, Mapping):
                lo, hi = gain["ci95_low"] * 100, gain["ci95_high"] * 100
                rel += f" ({lo:+.1f}% … {hi:+.1f}%)"
            shown = label(name) + (" (served)" if name == served else "")
            lines.append(
                f"| {shown} | {_fmt(m.get(CLICK_AUC))} | {_fmt(m.get(PURCHASE_NDCG_AT_10))}"
                f" | {rel} | {_fmt(m.get('sessions_with_purchase'))} |"
            )
        alpha = _num(fusion.get("alpha"))
        notes = []
        if isinstance(served, str):
            notes.append(f"Served variant (best on validation sessions): {label(served)}.")
        if alpha is not None:
            notes.append(f"Its learned α: {alpha:.3f}.")
        if any(isinstance(m.get("gain_vs_relevance_only"), Mapping) for m in variants.values()):
            notes.append(
                "Intervals: paired bootstrap over the held-out sessions with a purchase "
                "(2,000 resamples)."
            )
        if notes:
            lines += ["", " ".join(notes)]
    else:
        lines.append("No fusion ranker was trained (the data has no behaviour events).")
    lines.append("")

    rec = recommenders(metrics)
    if rec:
        users = next(iter(rec.values())).get("users", "?")
        served = served_name(metrics)
        val = (metrics.get("recommendation") or {}).get("validation") or {}
        lines += [
            f"## Recommendation: leave-last-out, {users} shoppers, full catalog",
            "",
            "| model | val HR@10 | val NDCG@10 | test HR@10 | test NDCG@10 | test MRR |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in rec.items():
            v = val.get(name, {})
            shown = f"**{label(name)} (served)**" if name == served else label(name)
            lines.append(
                f"| {shown} | {_fmt(v.get(HIT_RATE_AT_10))} | {_fmt(v.get(NDCG_AT_10))}"
                f" | {_fmt(m.get(HIT_RATE_AT_10))} | {_fmt(m.get(NDCG_AT_10))}"
                f" | {_fmt(m.get(MRR))} |"
            )
        lines += [
            "",
            "Each shopper's last clicked or bought product is the test target, the one before "
            "it the validation target; every product of the catalog is ranked, the history's "
            "own products left out (as served). The served model is the candidate (sequential, "
            "co-visits, blend) with the best validation NDCG@10 among those no baseline beats "
            "on validation. The cold-start row ranks the test targets by popularity with the "
            "history withheld.",
            "",
        ]

    if plots:
        lines += ["## Plots", ""]
        for caption, file in plots.items():
            lines += [f"### {caption}", "", f"![{caption}]({file})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(metrics: Mapping, out_dir: Path) -> Path:
    """Write `out_dir/reports/eval.md` and its PNG plots; return the Markdown path.

    Tolerates missing sections: whatever metrics.json lacks is left out (and said so).
    """
    report_dir = Path(out_dir) / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}

    for title, series in loss_curves(metrics).items():
        file = f"loss_{_slug(title)}.png"
        _plot_curves(title, series, report_dir / file)
        plots[f"{title} training loss"] = file

    systems = retrieval_systems(metrics)
    if systems:
        file = "retrieval.png"
        _plot_bars("retrieval on held-out queries", systems, RETRIEVAL_METRICS, report_dir / file)
        plots["retrieval by system"] = file

    variants = fusion_variants(metrics)
    if variants:
        file = "fusion.png"
        _plot_bars("fusion on held-out sessions", variants, SESSION_METRICS, report_dir / file)
        plots["fusion variants"] = file

    rec = recommenders(metrics)
    if rec:
        file = "recommendation.png"
        _plot_bars("recommendation, leave-last-out", rec, RECOMMEND_METRICS, report_dir / file)
        plots["recommendation by model"] = file
        curve = (metrics.get("recommendation") or {}).get("sequential_curve")
        if curve:
            file = "loss_sequential.png"
            points = [{"step": c["epoch"], "loss": c["loss"]} for c in curve]
            _plot_curves("sequential model", {"": points}, report_dir / file)
            plots["sequential model training loss (per epoch)"] = file

    path = report_dir / REPORT_NAME
    path.write_text(report_markdown(metrics, plots))
    return path
