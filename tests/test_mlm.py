"""Domain-adaptive MLM: it trains, writes a usable bi-encoder, and leaves the baseline alone."""

import json

import numpy as np
import pytest

from shoprank.data.datasets import product_text
from shoprank.models.encoder import load_encoder
from shoprank.training.base_encoder import make_tiny_encoder
from shoprank.training.mlm import domain_adapt
from shoprank.training.synthetic import generate


def test_domain_adapt_writes_a_trained_bi_encoder(tmp_path):
    base = make_tiny_encoder(tmp_path / "base")
    texts = list(product_text(generate("tiny", seed=0).catalog))[:64]
    out, curve = domain_adapt(base, texts, tmp_path / "mlm", steps=4, batch_size=8)
    assert curve and all(np.isfinite(c["loss"]) for c in curve)
    before = load_encoder(base).encode(["grey velvet sofa"])
    after = load_encoder(out).encode(["grey velvet sofa"])
    assert after.shape == before.shape
    assert np.linalg.norm(after) == pytest.approx(1.0, abs=1e-5)  # pooling + normalise kept
    assert not np.allclose(before, after, atol=1e-4)  # the body was trained


@pytest.mark.slow  # a whole tiny training run, MLM adaptation included
def test_zero_shot_baseline_is_measured_before_domain_adaptation(tmp_path, tiny_artifacts):
    """With MLM on, "zero-shot" must still be the encoder as shipped (the fixture's run),
    not the adapted one the run fine-tuned from."""
    from shoprank.data import datasets
    from shoprank.training.evaluate import zero_shot_metrics
    from shoprank.training.train import TrainConfig, run

    metrics = run(
        TrainConfig(
            out=tmp_path,
            scale="tiny",
            tiny_encoder=True,
            mlm_steps=2,
            max_steps=2,
            fusion_epochs=1,
            fusions="weighted",
        )
    )
    assert metrics["mlm_loss_curve"]
    with_mlm = zero_shot_metrics(datasets.load(tmp_path), metrics["config"], "test")
    fixture = json.loads(tiny_artifacts.metrics.read_text())["config"]
    without = zero_shot_metrics(datasets.load(tiny_artifacts), fixture, "test")
    assert with_mlm == pytest.approx(without)
