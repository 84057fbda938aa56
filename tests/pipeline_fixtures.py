"""Fixtures that build the real pipeline at tiny size: data → train → convert → repository.

A tiny random BERT with the real WordPiece vocabulary stands in for MiniLM, so every stage
(and the real Triton server) runs exactly the production code in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import contract


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> contract.ArtifactPaths:
    """Trained, converted tiny artifacts with a CPU model repository."""
    from conversion.convert import ConversionConfig
    from conversion.convert import run as convert
    from model_repository.build import ServingConfig, build
    from training.train import TrainConfig
    from training.train import run as train

    out = tmp_path_factory.mktemp("artifacts")
    train(TrainConfig(out=out, scale="tiny", tiny_encoder=True, max_steps=30, fusion_epochs=2))
    convert(ConversionConfig(out=out, latency_runs=3))
    paths = contract.ArtifactPaths(out)
    build(paths, ServingConfig(target="cpu"))
    return paths


@pytest.fixture(scope="session")
def ensemble_server(tiny_artifacts) -> Iterator:
    """The real embedded tritonserver serving the tiny ensemble on free ports."""
    from model_repository.server import running_server

    with running_server(
        tiny_artifacts.repository("cpu"), log_path=tiny_artifacts.root / "tritonserver.log"
    ) as handle:
        yield handle


@pytest.fixture(scope="session")
def in_process(tiny_artifacts):
    """The same repository's files run in-process: the reference for the server's answers."""
    from model_repository.pipeline import InProcessPipeline

    return InProcessPipeline(tiny_artifacts.repository("cpu"))
