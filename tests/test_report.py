"""The evaluation report: Markdown + PNGs, targets, and missing sections."""

from __future__ import annotations

import copy
import json

import pytest

from shoprank.training.report import fusion_variants, loss_curves, targets, write_report


def _retrieval(ndcg: float) -> dict:
    return {"ndcg@10": ndcg, "recall@10": 0.1, "recall@100": 0.5, "mrr": 0.8, "queries": 300}


def _session(auc: float, ndcg: float) -> dict:
    return {
        "click_auc": auc,
        "purchase_ndcg@10": ndcg,
        "sessions_with_purchase": 570,
        "impressions": 20000,
    }


FULL = {
    "config": {"data": "", "scale": "demo", "seed": 0},
    "data": {"products": 20000, "queries": 2000, "judgements": 4000, "events": 10},
    "retrieval": {
        "split": "test",
        "zero_shot": _retrieval(0.70),
        "fine_tuned": _retrieval(0.80),
        "rrf": _retrieval(0.78),
        "learned_hybrid": _retrieval(0.84),
        "served": _retrieval(0.85),
    },
    "encoder_loss_curve": [
        {"step": 1.0, "loss": 2.0},
        {"step": 2.0, "loss": 1.0},
        {"step": 2.0, "eval_val_ndcg@10": 0.5},  # validation points share the curve
    ],
    "mlm_loss_curve": [],  # an empty curve is no plot
    "fusion": {
        "trained": True,
        "served": "weighted_fusion",
        "alpha": 0.3,
        "relevance_only": _session(0.60, 0.40),
        "weighted_fusion": _session(0.62, 0.42),
        "concat_mlp": {
            **_session(0.65, 0.45),
            "loss_curve": [{"step": 1.0, "loss": 0.7}],
            "gain_vs_relevance_only": {"relative": 0.125, "ci95_low": 0.031, "ci95_high": 0.2},
        },
        "loss_curve": [{"step": 10.0, "loss": 1.5}, {"step": 20.0, "loss": 0.9}],
        "judged_cold_start": _retrieval(0.78),
    },
    "baselines": {
        "split": "test",
        "bm25": _retrieval(0.60),
        "popularity": _retrieval(0.01),
        "session_popularity": _session(0.55, 0.39),
    },
}


def test_full_report_writes_markdown_and_plots(tmp_path):
    path = write_report(FULL, tmp_path)
    assert path == tmp_path / "reports" / "eval.md"
    text = path.read_text()
    for png in ("loss_encoder.png", "loss_fusion.png", "retrieval.png", "fusion.png"):
        assert (tmp_path / "reports" / png).stat().st_size > 1000
        assert f"({png})" in text
    for name in (
        "BM25 only",
        "popularity",
        "zero-shot",
        "dense only",
        "reciprocal-rank fusion",
        "learned hybrid",
        "served pipeline",
        "concat MLP",
    ):
        assert name in text
    # 0.80 >= 0.75; 0.85 >= 0.60 x 1.1; 0.85 >= 0.80; recall 0.5 >= 0.5; 0.45 >= 0.44
    assert text.count("**pass**") == 5
    # The table lists the stages in pipeline order, the served pipeline last.
    stages = ("BM25 only", "dense only", "learned hybrid", "served pipeline")
    order = [text.index(f"| {n}") for n in stages]
    assert order == sorted(order)
    assert "| weighted fusion (served) |" in text
    assert "| +12.5% (+3.1% … +20.0%) |" in text  # the bootstrap interval, when there is one
    assert "paired bootstrap" in text
    assert "served (chosen on validation): weighted fusion 0.4200" in text
    assert not (tmp_path / "reports" / "loss_mlm.png").exists()


def test_targets_pass_and_miss():
    assert [t.result for t in targets(FULL)] == ["pass"] * 5
    worse = copy.deepcopy(FULL)
    worse["retrieval"]["fine_tuned"]["ndcg@10"] = 0.74  # < 0.70 + 0.05
    worse["retrieval"]["served"]["ndcg@10"] = 0.65  # < 0.60 x 1.1, and below dense
    worse["retrieval"]["served"]["recall@100"] = 0.49  # below BM25's 0.5
    worse["fusion"]["concat_mlp"]["purchase_ndcg@10"] = 0.43  # < 0.40 x 1.1
    got = targets(worse)
    assert [t.result for t in got] == ["miss", "miss", "miss", "miss", "miss"]
    assert got[4].value == pytest.approx(0.43) and "concat MLP" in got[4].note


def test_variants_and_curves_are_found_generically():
    assert list(fusion_variants(FULL)) == [
        "relevance_only",
        "weighted_fusion",
        "concat_mlp",
        "session_popularity",
    ]
    curves = loss_curves(FULL)
    assert set(curves) == {"encoder", "fusion"}  # the empty MLM curve is left out
    assert set(curves["fusion"]) == {"fusion", "concat MLP"}


def test_report_without_events_or_baselines(tmp_path):
    bare = {k: v for k, v in FULL.items() if k not in ("fusion", "baselines")}
    bare["fusion"] = {"trained": False}
    text = write_report(json.loads(json.dumps(bare)), tmp_path).read_text()
    assert "No fusion ranker was trained" in text
    assert "Baselines not run" in text
    # Without baselines: no BM25 to compare with; no fusion: no fusion target.
    assert [t.result for t in targets(bare)] == ["pass", "n/a", "pass", "pass", "n/a"]
    assert not (tmp_path / "reports" / "fusion.png").exists()
    assert (tmp_path / "reports" / "retrieval.png").exists()


def test_report_of_an_empty_dict(tmp_path):
    text = write_report({}, tmp_path).read_text()
    assert "No retrieval metrics" in text and "n/a" in text


def test_skipped_baselines_and_nan_are_shown(tmp_path):
    m = copy.deepcopy(FULL)
    m["baselines"]["popularity"] = {"skipped": "skipped: the data has no behaviour events"}
    m["fusion"]["weighted_fusion"]["purchase_ndcg@10"] = float("nan")
    text = write_report(m, tmp_path).read_text()
    assert "popularity: skipped: the data has no behaviour events" in text
    assert "| weighted fusion (served) | 0.6200 | — |" in text


def test_evaluate_merges_baselines_and_writes_the_report(tmp_path):
    from shoprank.data import datasets
    from shoprank.training.evaluate import EvalConfig, evaluate
    from shoprank.training.synthetic import generate

    datasets.save(generate("tiny"), tmp_path)
    run = copy.deepcopy(FULL)
    del run["baselines"]
    (tmp_path / "metrics.json").write_text(json.dumps(run))
    metrics, report = evaluate(EvalConfig(out=tmp_path, zero_shot=False))
    assert metrics["baselines"]["split"] == "test"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["baselines"]["bm25"]["queries"] == 9  # the tiny shop's test queries
    assert "click_auc" in saved["baselines"]["session_popularity"]
    assert saved["fusion"] == run["fusion"]  # the training sections are kept as they were
    assert report == tmp_path / "reports" / "eval.md" and "BM25" in report.read_text()


def test_evaluate_needs_a_training_run(tmp_path):
    from shoprank.training.evaluate import EvalConfig, evaluate

    with pytest.raises(FileNotFoundError, match=r"python -m shoprank\.training"):
        evaluate(EvalConfig(out=tmp_path))


def test_recommendation_section_targets_and_plot(tmp_path):
    def rec(hr: float) -> dict:
        return {"hr@10": hr, "ndcg@10": hr / 2, "mrr": hr / 3, "users": 40}

    metrics = {
        "recommendation": {
            "popularity": rec(0.01),
            "cooccurrence": rec(0.03),
            "text_only": rec(0.04),
            "sequential": rec(0.05),
            "blend": rec(0.06),
            "cold_start_popularity": rec(0.01),
            "sequential_curve": [{"epoch": 1, "loss": 9.0}, {"epoch": 2, "loss": 8.0}],
            "validation": {"blend": rec(0.07)},
            "served": {"name": "blend"},
        }
    }
    path = write_report(metrics, tmp_path)
    text = path.read_text()
    assert "## Recommendation: leave-last-out, 40 shoppers" in text
    # the served row is marked, with its validation and test figures
    assert "| **blend: sequential model + co-visits (served)** | 0.0700 | 0.0350 | 0.0600 |" in text
    assert "| sequential model | — | — | 0.0500 |" in text
    assert (tmp_path / "reports" / "recommendation.png").stat().st_size > 0
    assert (tmp_path / "reports" / "loss_sequential.png").stat().st_size > 0
    results = {t.name: t.result for t in targets(metrics)}
    assert results["served recommender (blend) HR@10 ≥ popularity × 2"] == "pass"
    beats = "served recommender (blend) HR@10 ≥ text-only and co-occurrence (test)"
    assert results[beats] == "pass"
    metrics["recommendation"]["text_only"] = rec(0.07)
    results = {t.name: t.result for t in targets(metrics)}
    assert results[beats] == "miss"
