"""`make profile`: py-spy on the loaded server's stubs (shoprank.bench.profile)."""

from __future__ import annotations

import json

import pytest

from shoprank import contract
from shoprank.bench.profile import ProfileConfig, frame_name, hottest, profile


def test_collapsed_stacks_become_shares_per_function() -> None:
    collapsed = "\n".join(
        [
            "execute (model.py:40);rank (/x/pipeline.py:99);run (/y/onnx.py:3) 6",
            "execute (model.py:40);rank (/x/pipeline.py:99) 2",
            "execute (model.py:40);flush (/x/metrics.py:7) 2",
            "",
        ]
    )
    samples, hot = hottest(collapsed, top=3)
    assert samples == 10
    by = {h.function: h for h in hot}
    assert list(by) == ["execute (model.py)", "rank (pipeline.py)", "run (onnx.py)"]
    assert (by["execute (model.py)"].total, by["execute (model.py)"].own) == (1.0, 0.0)
    assert (by["rank (pipeline.py)"].total, by["rank (pipeline.py)"].own) == (0.8, 0.2)
    assert by["run (onnx.py)"].own == 0.6
    assert frame_name("<module> (stub)") == "<module> (stub)"


@pytest.mark.integration
@pytest.mark.slow  # a server of its own, sampled for a few seconds
def test_a_loaded_searcher_is_sampled(tiny_artifacts, search_workload, tmp_path) -> None:
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps(search_workload))
    config = ProfileConfig(
        out=tiny_artifacts.root,
        reports=tmp_path / "reports",
        workload=str(workload),
        concurrency=2,
        seconds=3.0,
    )
    found = profile(config)
    samples, hot = found[contract.SEARCHER_MODEL]
    assert samples > 0
    names = [h.function.split(" ")[0] for h in hot]
    assert "SearchPipeline.rank" in names, names  # the searcher's time: its pipeline
    text = (config.reports / "profile.md").read_text()
    assert f"## {contract.SEARCHER_MODEL}" in text
    assert (config.reports / f"profile_{contract.SEARCHER_MODEL}.txt").stat().st_size > 0
