"""How one stage's artifact files are written and read by the next, defined once.

Stages share files, not code: training writes the item index that conversion reads,
conversion records which encoder (and TensorRT plan) the repository should serve, and the
repository builder reads that choice. Each format lives here, beside its reader.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from shoprank import contract

# Keys of the conversion report that the repository builder reads.
SELECTED_ENCODER_KEY = "selected_encoder"
TENSORRT_KEY = "tensorrt"
SELECTED_PLAN_KEY = "selected_plan"


# ---------------------------------------------------------------------------------------
# Item index (training → conversion, bench)
# ---------------------------------------------------------------------------------------
def save_item_index(
    path: Path, product_ids: np.ndarray, embeddings: np.ndarray, features: np.ndarray
) -> None:
    """Catalog ids, embeddings (N, D) and behaviour features (N, F) in one safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "product_ids": product_ids.astype(np.int64),
            "embeddings": embeddings,
            "features": features.astype(np.float32),
        },
        str(path),
    )


def load_item_index(path: Path) -> dict[str, np.ndarray]:
    """Inverse of save_item_index."""
    return load_file(str(path))


# ---------------------------------------------------------------------------------------
# The conversion's choices (conversion → model repository)
# ---------------------------------------------------------------------------------------
def read_conversion_report(paths: contract.ArtifactPaths) -> dict | None:
    """The conversion report, or None if conversion has not run."""
    if not paths.conversion_report.exists():
        return None
    return json.loads(paths.conversion_report.read_text())


def selected_encoder_path(paths: contract.ArtifactPaths) -> Path:
    """The encoder ONNX the conversion report selected (fp32 if there is no report)."""
    report = read_conversion_report(paths)
    if report is not None:
        return Path(report["variants"][report[SELECTED_ENCODER_KEY]]["path"])
    return paths.encoder_onnx


def int8_encoder_path(paths: contract.ArtifactPaths) -> Path:
    """The int8 encoder ONNX that benchmarks time: the served one when the conversion served
    an int8 variant (what Triton runs), else the dynamic int8 graph."""
    served = selected_encoder_path(paths)
    return paths.encoder_int8_onnx if served == paths.encoder_onnx else served


@dataclass(frozen=True)
class OptimizationProfile:
    """(batch, sequence) bounds of the encoder inputs a TensorRT engine accepts, tuned at
    `opt`. The defaults fit served queries: the tokenizer pads every query to a multiple of
    SEQUENCE_BUCKET (1: its own length) and truncates at MAX_QUERY_TOKENS (32); a dynamic
    batch holds up to MAX_BATCH_SIZE requests, typically a few."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = contract.MAX_BATCH_SIZE
    min_seq: int = contract.SEQUENCE_BUCKET
    opt_seq: int = contract.TYPICAL_QUERY_TOKENS
    max_seq: int = contract.MAX_QUERY_TOKENS

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"batch must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if not 1 <= self.min_seq <= self.opt_seq <= self.max_seq:
            raise ValueError(
                f"sequence must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_seq}/{self.opt_seq}/{self.max_seq}"
            )
        # An engine that rejected a servable query would fail requests at run time.
        if self.min_seq > contract.SEQUENCE_BUCKET:
            raise ValueError(
                f"min sequence {self.min_seq} > {contract.SEQUENCE_BUCKET}: "
                "the shortest served queries would not fit the engine"
            )
        if self.max_seq < contract.MAX_QUERY_TOKENS:
            raise ValueError(
                f"max sequence {self.max_seq} < {contract.MAX_QUERY_TOKENS}: "
                "the longest served queries would not fit the engine"
            )

    def shapes(self) -> dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """(min, opt, max) shape per engine input, as `IOptimizationProfile.set_shape` takes."""
        lo = (self.min_batch, self.min_seq)
        opt = (self.opt_batch, self.opt_seq)
        hi = (self.max_batch, self.max_seq)
        inputs = (contract.ONNX_INPUT_IDS, contract.ONNX_ATTENTION_MASK)
        return {name: (lo, opt, hi) for name in inputs}


def plan_info_path(plan_path: Path) -> Path:
    """The JSON written beside a plan: precision, profile, TensorRT version, GPU."""
    return plan_path.with_suffix(plan_path.suffix + ".json")


def write_plan_info(plan_path: Path, profile: OptimizationProfile, **info: object) -> None:
    """Record how a plan was built (its profile above all) beside it."""
    plan_info_path(plan_path).write_text(json.dumps({**info, "profile": asdict(profile)}, indent=2))


def read_plan_profile(plan_path: Path) -> OptimizationProfile | None:
    """The profile a plan was built with (None if its info file is missing)."""
    info = plan_info_path(plan_path)
    if not info.exists():
        return None
    return OptimizationProfile(**json.loads(info.read_text())["profile"])


def served_plan(paths: contract.ArtifactPaths) -> Path | None:
    """The plan the GPU repository should serve: the conversion report's choice, else fp16.

    The report selects the int8 plan only when it passed the quality gate; without a
    report (or a selection) an existing fp16 plan is served; None if no plan exists.
    """
    report = read_conversion_report(paths)
    if report is not None:
        name = report.get(TENSORRT_KEY, {}).get(SELECTED_PLAN_KEY)
        if name and (paths.onnx / name).exists():
            return paths.onnx / name
    fp16 = paths.encoder_plan("fp16")
    return fp16 if fp16.exists() else None
