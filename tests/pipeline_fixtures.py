"""Fixtures that build the real pipeline at tiny size: data → train → convert → repository.

A tiny random BERT with the real WordPiece vocabulary stands in for MiniLM, so every stage
(and the real Triton server) runs exactly the production code in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from shoprank import contract


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> contract.ArtifactPaths:
    """Trained, converted tiny artifacts with a CPU model repository."""
    from shoprank.conversion.convert import ConversionConfig
    from shoprank.conversion.convert import run as convert
    from shoprank.model_repository.build import ServingConfig, build
    from shoprank.training.train import TrainConfig
    from shoprank.training.train import run as train

    out = tmp_path_factory.mktemp("artifacts")
    train(
        TrainConfig(
            out=out,
            scale="tiny",
            tiny_encoder=True,
            max_steps=30,
            fusion_epochs=2,
            seq_epochs=3,
            seq_in_search="1",  # served whatever the tiny validation says, to be tested
        )
    )
    convert(ConversionConfig(out=out, latency_runs=3))
    paths = contract.ArtifactPaths(out)
    # The fp32 encoder, not the conversion's pick: the tests compare batched answers with
    # single ones, which only an encoder that embeds each row on its own gives (the pick is
    # one by default, `ConversionConfig.max_batch_drift`; fp32 is one under any setting).
    # No admission limit: bursts of requests test the dynamic batcher here; shedding load is
    # tested on a repository of its own (test_production.test_overload_is_refused_...).
    serving = ServingConfig(target="cpu", max_in_flight=0)
    build(paths, serving, encoder_onnx=paths.encoder_onnx)
    return paths


@pytest.fixture(scope="session")
def ensemble_server(tiny_artifacts) -> Iterator:
    """The real embedded tritonserver serving the tiny ensemble on free ports."""
    from shoprank.ops.tritonserver import running_server

    with running_server(
        tiny_artifacts.repository("cpu"), log_path=tiny_artifacts.root / "tritonserver.log"
    ) as handle:
        yield handle


@pytest.fixture(scope="session")
def in_process(tiny_artifacts):
    """The same repository's files run in-process: the reference for the server's answers."""
    from shoprank.core.pipeline import InProcessPipeline

    return InProcessPipeline(tiny_artifacts.repository("cpu"))


# Triton and the in-process pipeline run the same ONNX files; only float rounding differs,
# and padding a query to the longest of its dynamic batch changes the encoder's summation
# order (measured: up to 1.4e-5 relative on scores around 8).
SCORE_ATOL = 1e-4
SCORE_RTOL = 5e-5


def assert_same_ranking(
    ids: Sequence[int],
    scores: Sequence[float],
    ref_ids: Sequence[int],
    ref_scores: Sequence[float],
    atol: float = SCORE_ATOL,
    rtol: float = SCORE_RTOL,
) -> None:
    """Same length, same scores position by position, and the same products except where
    two products tie within the tolerance (rounding may then order them either way)."""
    ids, ref_ids = np.asarray(ids), np.asarray(ref_ids)
    scores, ref_scores = np.asarray(scores, np.float64), np.asarray(ref_scores, np.float64)
    assert len(ids) == len(ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=rtol, atol=atol)
    where = {int(p): i for i, p in enumerate(ref_ids)}
    for i in np.flatnonzero(ids != ref_ids):
        j = where.get(int(ids[i]))
        # A swapped neighbour scores the same; a product from past the reference's cut
        # ties with the reference's last one.
        other = ref_scores[j] if j is not None else ref_scores[-1]
        assert abs(other - ref_scores[i]) <= 2 * (atol + rtol * abs(ref_scores[i])), (
            f"rank {i + 1}: served {ids[i]} where the reference has {ref_ids[i]} "
            f"({ref_scores[i]:.6f} vs {other:.6f})"
        )
