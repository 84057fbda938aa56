"""Generate the Triton model repository from `contract` and the converted artifacts.

    python -m shoprank.model_repository.build --out artifacts/demo --target cpu|gpu|gpu-embedded

- cpu: the embedded server in nvidia-pytriton (Python backend only). One Python-backend
  model, the `searcher`, tokenizes, encodes and ranks (ONNX Runtime inside): `search` and
  `rerank` are one-step ensembles over it, so a request crosses the server/stub boundary
  once (three hops cost about 2 ms more per request on 2 cores).
- gpu: NVIDIA's Triton container. The encoder is a native `tensorrt_plan` model when an
  engine was built (conversion/tensorrt.py: `encoder.fp16.plan`, or `encoder.int8.plan`
  when the conversion report selected it after its quality gate), else `onnxruntime_onnx`;
  the tokenizer and ranker stay Python-backend models.
- gpu-embedded: the embedded server on a host with CUDA PyTorch (no TensorRT or ONNX
  Runtime GPU needed). Encoder and ranker are Python-backend models on a GPU instance:
  the fine-tuned encoder in PyTorch (fp16, CUDA graphs per batch/sequence bucket) and the
  exact dense scan on the GPU (`shoprank.models.gpu`); BM25, features and the fusion ranker's
  ONNX graph stay on the CPU. `--device cpu` builds the same repository on CPU instances
  (how it is tested on hosts without a GPU).

Every target is written from the same tensor specs, so the ensemble wiring cannot drift
between them. Each model gets dynamic batching, warm-up requests and a numbered version folder.
"""

from __future__ import annotations

import json
import py_compile
import shutil
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from shoprank import contract
from shoprank.configargs import parse_config
from shoprank.core.admission import DEFAULT_STALE_S
from shoprank.core.ann import meta_path
from shoprank.core.catalog import CatalogIndex
from shoprank.core.lexical import search_dir
from shoprank.core.ranking import RetrievalConfig
from shoprank.core.tokenizer import QueryTokenizer, tokenizer_file
from shoprank.data import datasets
from shoprank.data.artifacts import (
    OptimizationProfile,
    read_plan_profile,
    selected_encoder_path,
    served_plan,
)
from shoprank.model_repository import models as model_sources

TARGETS = ("cpu", "gpu", "gpu-embedded")
# gpu-embedded: the encoder's sentence-transformers folder inside its version folder.
GPU_ENCODER_DIR = "encoder"


@dataclass
class ServingConfig:
    """Scheduling knobs per target (tuned for a 2-core CPU host by default)."""

    target: str = field(default="cpu", metadata={"choices": TARGETS, "help": "serving target"})
    version: int = field(default=1, metadata={"help": "version folder the models are written to"})
    device: str = field(
        default="gpu",
        metadata={"choices": ("gpu", "cpu"), "help": "gpu-embedded: encoder and ranker instances"},
    )
    dtype: str = field(
        default="float16", metadata={"help": "gpu-embedded: encoder weights and the dense scan"}
    )
    max_batch_size: int = contract.MAX_BATCH_SIZE
    # On 2 CPU cores waiting for company only adds latency: requests that arrive while a
    # model is busy are batched anyway.
    max_queue_delay_us: int = 0
    # Overload: a request that cannot start within queue_timeout_us, or finds
    # max_queue_size requests already waiting, is refused at once (UNAVAILABLE); clients
    # retry with backoff. Off (0) by default: with any queue policy, the dynamic batcher
    # of Triton 2.51 (pytriton 0.7.0) leaves about 2% of back-to-back requests waiting
    # ~500 ms even at concurrency 1 (with the 300 ms timeout they are refused instead;
    # cf. triton-inference-server/server#5783, #6796); docs/benchmarks.md "Overload" has
    # the measured p99 with and without a policy.
    max_queue_size: int = field(
        default=0, metadata={"help": "refuse beyond this many queued requests per model (0: off)"}
    )
    queue_timeout_us: int = field(
        default=0, metadata={"help": "refuse requests queued longer than this (0: no timeout)"}
    )
    # Overload without Triton's queue policy: at most this many search/rerank requests in
    # flight between the tokenizer and the ranker; beyond it the tokenizer refuses at once
    # with UNAVAILABLE (shoprank.core.admission). 0: no limit. 12 = 8 closed-loop users (where 2
    # cores saturate) + the supervisor's probe + headroom: no refusal at that load, nor
    # during a deploy under it.
    max_in_flight: int = field(
        default=12,
        metadata={"help": "refuse search/rerank requests beyond this many in flight (0: off)"},
    )
    # While demand exceeds max_in_flight (sustained overload), the limit drops to this many,
    # so that answers keep their latency (Little's law) rather than all waiting; 0 or
    # >= max_in_flight: one limit. docs/benchmarks.md "Overload" has the measured trade-off.
    shed_in_flight: int = field(
        default=6,
        metadata={"help": "the lower in-flight limit while demand exceeds --max-in-flight"},
    )
    admission_stale_s: float = DEFAULT_STALE_S
    # Per model, as JSON on the command line: --instances '{"ranker": 2}'.
    instances: dict[str, int] = field(
        default_factory=lambda: {
            contract.TOKENIZER_MODEL: 1,
            contract.ENCODER_MODEL: 1,
            contract.RANKER_MODEL: 1,
            contract.SEARCHER_MODEL: 1,
            contract.RECOMMENDER_MODEL: 1,
        }
    )
    # The searcher runs the encoder's and the ranker's sessions with their own threads.
    ort_threads: dict[str, int] = field(
        default_factory=lambda: {
            contract.ENCODER_MODEL: 1,
            contract.RANKER_MODEL: 1,
            contract.RECOMMENDER_MODEL: 1,
        }
    )


def _io(
    config_list,
    spec: contract.TensorSpec,
    dims: tuple[int, ...] | None = None,
    ragged: bool | None = None,
    optional: bool = False,
) -> None:
    t = config_list.add()
    t.name = spec.name
    t.data_type = mc.DataType.Value(spec.triton_dtype)
    t.dims.extend(dims if dims is not None else spec.dims)
    if isinstance(t, mc.ModelInput):
        if ragged if ragged is not None else spec.ragged:
            t.allow_ragged_batch = True
        t.optional = optional


def _base(
    name: str,
    serving: ServingConfig,
    inputs,
    outputs,
    dims: dict[str, tuple[int, ...]],
    ragged: bool = True,
    optional: tuple[contract.TensorSpec, ...] = (),
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=serving.max_batch_size)
    for spec in inputs:
        _io(
            config.input,
            spec,
            dims.get(spec.name),
            None if ragged else False,
            optional=spec in optional,
        )
    for spec in outputs:
        _io(config.output, spec, dims.get(spec.name))
    config.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    if serving.max_queue_size or serving.queue_timeout_us:
        policy = config.dynamic_batching.default_queue_policy
        policy.max_queue_size = serving.max_queue_size
        policy.default_timeout_microseconds = serving.queue_timeout_us
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.allow_timeout_override = True
    # The live version is named, not "latest": a deploy loads the next version beside it
    # and switches the ensembles over in one step (model_repository/deploy.py).
    config.version_policy.specific.versions.append(serving.version)
    group = config.instance_group.add()
    on_gpu = (serving.target == "gpu" and name == contract.ENCODER_MODEL) or (
        serving.target == "gpu-embedded"
        and serving.device == "gpu"
        and name in (contract.ENCODER_MODEL, contract.RANKER_MODEL)
    )
    group.kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    group.count = serving.instances.get(name, 1)
    return config


def _warmup(config: mc.ModelConfig, samples: dict[str, tuple[contract.TensorSpec, tuple, str]]):
    """One warm-up request of batch 1, read from files under <model>/warmup/."""
    w = config.model_warmup.add()
    w.name = "warmup"
    w.batch_size = 1
    for name, (spec, dims, file_name) in samples.items():
        inp = w.inputs[name]
        inp.data_type = mc.DataType.Value(spec.triton_dtype)
        inp.dims.extend(dims)
        inp.input_data_file = file_name


def _write_warmup(model_dir: Path, files: dict[str, bytes]) -> None:
    (model_dir / "warmup").mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (model_dir / "warmup" / name).write_bytes(payload)


def _bytes_tensor(*items: bytes) -> bytes:
    """Triton's raw BYTES layout: 4-byte little-endian length, then the bytes, per element."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


# Warm-up inputs several models read: name → (spec, dims, file name), and each file's bytes.
QUERY_SAMPLE = {contract.QUERY.name: (contract.QUERY, (1,), "query")}
TOP_K_SAMPLE = {contract.TOP_K.name: (contract.TOP_K, (1,), "top_k")}
SAMPLE_FILES = {
    "query": _bytes_tensor(contract.SAMPLE_QUERY.encode()),
    "top_k": np.array([contract.DEFAULT_TOP_K], np.int32).tobytes(),
}


def _sample_files(samples: dict[str, tuple]) -> dict[str, bytes]:
    """The SAMPLE_FILES that `samples` (as `_warmup` takes them) name."""
    return {file: SAMPLE_FILES[file] for _, _, file in samples.values()}


def _write_model(
    repo: Path,
    config: mc.ModelConfig,
    version: int,
    files: dict[str, Path],
    python_source: str | None = None,
) -> Path:
    model_dir = repo / config.name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    for target_name, source in files.items():
        if Path(source).is_dir():
            shutil.copytree(source, version_dir / target_name)
        else:
            shutil.copyfile(source, version_dir / target_name)
    if python_source:
        src = Path(model_sources.__file__).parent / f"{python_source}.py"
        shutil.copyfile(src, version_dir / "model.py")
        # Compiled now, so that Triton's first import does not write __pycache__ into the
        # version folder: Triton takes a changed folder for a new model, and a hot deploy
        # (one ensemble load after another) would load that version twice.
        py_compile.compile(str(version_dir / "model.py"), doraise=True)
    return model_dir


def embedding_dim(onnx_path: Path) -> int:
    """Width of the encoder's output, read from the ONNX graph."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    out = next(o for o in graph.output if o.name == contract.ONNX_SENTENCE_EMBEDDING)
    return int(out.type.tensor_type.shape.dim[1].dim_value)


def ensemble_config(
    serving: ServingConfig,
    name: str = contract.ENSEMBLE_MODEL,
    inputs: tuple[contract.TensorSpec, ...] = contract.ENSEMBLE_INPUTS,
) -> mc.ModelConfig:
    """`search` (the ranker retrieves its own candidates) or `rerank` (the caller's
    CANDIDATE_IDS go to the ranker): one step, the searcher, on the CPU target; tokenizer →
    encoder → ranker on the GPU targets."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=serving.max_batch_size)
    for spec in inputs:
        optional = spec in contract.OPTIONAL_INPUTS or spec in contract.MODEL_VALIDATED_INPUTS
        _io(config.input, spec, ragged=False, optional=optional)
    for spec in contract.ALL_OUTPUTS:
        _io(config.output, spec)

    def step(model: str, step_inputs, outputs) -> None:
        s = config.ensemble_scheduling.step.add()
        s.model_name = model
        s.model_version = serving.version
        for spec in step_inputs:
            s.input_map[spec.name] = spec.name
        for spec in outputs:
            s.output_map[spec.name] = spec.name

    if serving.target == "cpu":
        searcher_inputs = [s for s in contract.SEARCHER_INPUTS if s in inputs]
        step(contract.SEARCHER_MODEL, searcher_inputs, contract.SEARCHER_OUTPUTS)
        return config
    tokenizer_inputs = [s for s in contract.TOKENIZER_INPUTS if s in inputs]
    step(contract.TOKENIZER_MODEL, tokenizer_inputs, contract.TOKENIZER_OUTPUTS)
    step(contract.ENCODER_MODEL, contract.ENCODER_INPUTS, contract.ENCODER_OUTPUTS)
    between = (contract.QUERY_EMBEDDING, contract.ADMISSION_TICKET)  # from earlier steps
    ranker_inputs = [s for s in contract.RANKER_INPUTS if s in inputs or s in between]
    step(contract.RANKER_MODEL, ranker_inputs, contract.RANKER_OUTPUTS)
    return config


def recommend_ensemble_config(serving: ServingConfig) -> mc.ModelConfig:
    """The `recommend` ensemble: one step, the `recommender` (its name is the public one)."""
    config = mc.ModelConfig(
        name=contract.RECOMMEND_MODEL, platform="ensemble", max_batch_size=serving.max_batch_size
    )
    for spec in contract.RECOMMEND_INPUTS:
        optional = spec in contract.RECOMMENDER_OPTIONAL
        _io(config.input, spec, ragged=False, optional=optional)
    for spec in contract.RECOMMENDER_OUTPUTS:
        _io(config.output, spec)
    s = config.ensemble_scheduling.step.add()
    s.model_name = contract.RECOMMENDER_MODEL
    s.model_version = serving.version
    s.input_map.update({spec.name: spec.name for spec in contract.RECOMMENDER_INPUTS})
    s.output_map.update({spec.name: spec.name for spec in contract.RECOMMENDER_OUTPUTS})
    return config


def _admission(cfg: mc.ModelConfig, serving: ServingConfig) -> None:
    """The in-flight limits of a model that admits an ensemble's requests."""
    cfg.parameters[contract.PARAM_MAX_IN_FLIGHT].string_value = str(serving.max_in_flight)
    cfg.parameters[contract.PARAM_ADMISSION_STALE_S].string_value = str(serving.admission_stale_s)
    shed = serving.shed_in_flight if 0 < serving.shed_in_flight < serving.max_in_flight else 0
    cfg.parameters[contract.PARAM_SHED_IN_FLIGHT].string_value = str(shed)


def write_recommender(repo: Path, paths: contract.ArtifactPaths, serving: ServingConfig) -> None:
    """The `recommender` model (sequential history encoder + item vectors) and `recommend`."""
    cfg = _base(
        contract.RECOMMENDER_MODEL,
        serving,
        contract.RECOMMENDER_INPUTS,
        contract.RECOMMENDER_OUTPUTS,
        {},
        optional=contract.RECOMMENDER_OPTIONAL,
    )
    cfg.backend = "python"
    threads = serving.ort_threads[contract.RECOMMENDER_MODEL]
    cfg.parameters[contract.PARAM_THREADS].string_value = str(threads)
    _admission(cfg, serving)
    _warmup(cfg, TOP_K_SAMPLE)
    files = {
        contract.SEQUENTIAL_ONNX_FILE: paths.sequential_onnx,
        contract.ITEM_VECTORS_FILE: paths.item_vectors,
        contract.CATALOG_FILE: paths.catalog_npz,
    }
    model_dir = _write_model(repo, cfg, serving.version, files, python_source="recommender")
    _write_warmup(model_dir, _sample_files(TOP_K_SAMPLE))
    _write_model(repo, recommend_ensemble_config(serving), serving.version, {})


def encoder_gpu_config(
    serving: ServingConfig,
    dim: int,
    engine: Path | None,
    profile: OptimizationProfile | None = None,
) -> mc.ModelConfig:
    """Native GPU encoder: TensorRT plan if an engine exists, else ONNX Runtime.

    A plan accepts only the shapes of its optimization profile (`profile`, else the
    default one conversion builds with), so the encoder's max_batch_size is capped at the
    profile's max batch; the sequence dim stays -1 (any length the profile covers).
    """
    dims = {contract.QUERY_EMBEDDING.name: (dim,)}
    config = _base(
        contract.ENCODER_MODEL,
        serving,
        contract.ENCODER_INPUTS,
        contract.ENCODER_OUTPUTS,
        dims,
        ragged=False,
    )
    if engine is not None:
        profile = profile or OptimizationProfile()
        config.platform = "tensorrt_plan"
        config.default_model_filename = contract.ENCODER_PLAN_FILE
        config.max_batch_size = min(serving.max_batch_size, profile.max_batch)
    else:
        config.backend = "onnxruntime"
        config.default_model_filename = contract.ENCODER_ONNX_FILE
    return config


def check_inputs(paths: contract.ArtifactPaths, encoder_onnx: Path) -> bool:
    """Fail early, naming the step to run, when an input file is missing; return whether the
    ranker serves the sequential shopper vector (training weighed it for search)."""
    for needed in (encoder_onnx, paths.ranker_onnx, paths.relevance_onnx, paths.dense_index):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} missing: run `make convert` first")
    for needed in (paths.lexical_index, paths.item_tables, paths.retrieval_config):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} missing: run `make train` first")
    sequential_in_search = RetrievalConfig.load(paths.retrieval_config).sequential_weight != 0
    if sequential_in_search:
        for needed in (paths.sequential_onnx, paths.item_vectors):
            if not needed.exists():
                raise FileNotFoundError(
                    f"{needed} missing: {paths.retrieval_config} weighs the sequential "
                    "shopper vector in search; run `make convert` first"
                )
    return sequential_in_search


def write_tokenizer(repo: Path, paths: contract.ArtifactPaths, serving: ServingConfig) -> Path:
    """The `tokenizer` model: the encoder's fast tokenizer, and the search admission gate."""
    cfg = _base(
        contract.TOKENIZER_MODEL,
        serving,
        contract.TOKENIZER_INPUTS,
        contract.TOKENIZER_OUTPUTS,
        {},
        optional=contract.TOKENIZER_OPTIONAL,
    )
    cfg.backend = "python"
    cfg.parameters[contract.PARAM_TOKENIZER_FILE].string_value = contract.TOKENIZER_FILE
    _admission(cfg, serving)
    _warmup(cfg, QUERY_SAMPLE)
    files = {contract.TOKENIZER_FILE: tokenizer_file(paths.encoder)}
    model_dir = _write_model(repo, cfg, serving.version, files, python_source="tokenizer")
    _write_warmup(model_dir, _sample_files(QUERY_SAMPLE))
    return model_dir


def write_encoder(
    repo: Path, paths: contract.ArtifactPaths, serving: ServingConfig, encoder_onnx: Path, dim: int
) -> dict:
    """The `encoder` model of a GPU target, warmed up with the tokenizer's own ids for the
    sample query; returns what the build record adds about it (the TensorRT plan, if any)."""
    sample, sample_mask = QueryTokenizer(tokenizer_file(paths.encoder)).encode(
        [contract.SAMPLE_QUERY]
    )[0]
    record: dict = {}
    source: str | None = "encoder"
    if serving.target == "gpu-embedded":
        cfg = _base(
            contract.ENCODER_MODEL,
            serving,
            contract.ENCODER_INPUTS,
            contract.ENCODER_OUTPUTS,
            {contract.QUERY_EMBEDDING.name: (dim,)},
        )
        cfg.backend = "python"
        cfg.parameters[contract.PARAM_RUNTIME].string_value = contract.TORCH_RUNTIME
        cfg.parameters[contract.PARAM_ENCODER_DIR].string_value = GPU_ENCODER_DIR
        cfg.parameters[contract.PARAM_DTYPE].string_value = serving.dtype
        files = {GPU_ENCODER_DIR: paths.encoder}
    else:
        engine = served_plan(paths)
        profile = read_plan_profile(engine) if engine is not None else None
        cfg = encoder_gpu_config(serving, dim, engine, profile)
        files = {cfg.default_model_filename: engine or encoder_onnx}
        source = None
        if engine is not None:
            record = {
                "encoder_plan": str(engine),
                "tensorrt_profile": asdict(profile or OptimizationProfile()),
            }
    _warmup(
        cfg,
        {
            contract.INPUT_IDS.name: (contract.INPUT_IDS, sample.shape, "input_ids"),
            contract.ATTENTION_MASK.name: (contract.ATTENTION_MASK, sample.shape, "mask"),
        },
    )
    model_dir = _write_model(repo, cfg, serving.version, files, python_source=source)
    _write_warmup(model_dir, {"input_ids": sample.tobytes(), "mask": sample_mask.tobytes()})
    return record


def write_catalog(paths: contract.ArtifactPaths) -> Path:
    """`catalog.npz`: ids, titles and facets of the product table, what the ranker and the
    recommender answer with and filter on."""
    catalog = pd.read_parquet(paths.catalog)
    CatalogIndex(
        product_ids=catalog["product_id"].to_numpy(np.int64),
        titles=catalog["title"].to_numpy(object),
        categories=catalog["category"].fillna("").astype(str).to_numpy(str),
        prices=pd.to_numeric(catalog["price"], errors="coerce").to_numpy(np.float64),
        in_stock=catalog[datasets.IN_STOCK].fillna(True).to_numpy(bool)
        if datasets.IN_STOCK in catalog
        else None,
    ).save(paths.catalog_npz)
    return paths.catalog_npz


def ranker_files(
    paths: contract.ArtifactPaths, target: str, sequential_in_search: bool
) -> dict[str, Path]:
    """The ranker's version folder: file name there → source artifact."""
    dense_meta = meta_path(Path(contract.DENSE_INDEX_FILE)).name
    files = {
        contract.RANKER_ONNX_FILE: paths.ranker_onnx,
        contract.RELEVANCE_ONNX_FILE: paths.relevance_onnx,
        contract.DENSE_INDEX_FILE: paths.dense_index,
        dense_meta: meta_path(paths.dense_index),
        contract.LEXICAL_INDEX_FILE: paths.lexical_index,
        search_dir(Path(contract.LEXICAL_INDEX_FILE)).name: search_dir(paths.lexical_index),
        contract.ITEM_TABLES_FILE: paths.item_tables,
        contract.CATALOG_FILE: paths.catalog_npz,
        contract.RETRIEVAL_CONFIG_FILE: paths.retrieval_config,
    }
    if sequential_in_search:
        files[contract.SEQUENTIAL_ONNX_FILE] = paths.sequential_onnx
        files[contract.ITEM_VECTORS_FILE] = paths.item_vectors
    if target == "gpu-embedded":  # the exact scan on the GPU reads the item index instead
        del files[contract.DENSE_INDEX_FILE], files[dense_meta]
        files[paths.item_index.name] = paths.item_index
    return files


def write_ranker(
    repo: Path,
    paths: contract.ArtifactPaths,
    serving: ServingConfig,
    dim: int,
    sequential_in_search: bool,
) -> Path:
    """The `ranker` model: retrieval (dense ANN + BM25) and the fusion ranker."""
    cfg = _base(
        contract.RANKER_MODEL,
        serving,
        contract.RANKER_INPUTS,
        contract.RANKER_OUTPUTS,
        {contract.QUERY_EMBEDDING.name: (dim,)},
        optional=contract.RANKER_OPTIONAL,
    )
    cfg.backend = "python"
    threads = serving.ort_threads[contract.RANKER_MODEL]
    cfg.parameters[contract.PARAM_THREADS].string_value = str(threads)
    if serving.target == "gpu-embedded":
        cfg.parameters[contract.PARAM_RUNTIME].string_value = contract.TORCH_RUNTIME
        cfg.parameters[contract.PARAM_ITEM_INDEX].string_value = paths.item_index.name
        cfg.parameters[contract.PARAM_DTYPE].string_value = serving.dtype
    embedding = {contract.QUERY_EMBEDDING.name: (contract.QUERY_EMBEDDING, (dim,), "embedding")}
    samples = {**QUERY_SAMPLE, **embedding, **TOP_K_SAMPLE}
    _warmup(cfg, samples)
    files = ranker_files(paths, serving.target, sequential_in_search)
    model_dir = _write_model(repo, cfg, serving.version, files, python_source="ranker")
    query = np.zeros(dim, dtype=np.float32)
    query[0] = 1.0
    shared = _sample_files({**QUERY_SAMPLE, **TOP_K_SAMPLE})
    _write_warmup(model_dir, {**shared, "embedding": query.tobytes()})
    return model_dir


def _searcher_tensors(name: str, serving: ServingConfig) -> mc.ModelConfig:
    """A Python-backend model `name` with the searcher's inputs (all optional) and outputs."""
    cfg = _base(
        name,
        serving,
        contract.SEARCHER_INPUTS,
        contract.SEARCHER_OUTPUTS,
        {},
        optional=contract.SEARCHER_OPTIONAL,
    )
    cfg.backend = "python"
    return cfg


def write_searcher(
    repo: Path,
    paths: contract.ArtifactPaths,
    serving: ServingConfig,
    encoder_onnx: Path,
    sequential_in_search: bool,
) -> Path:
    """The CPU target's `searcher` model: the ranker's files, the tokenizer and the encoder's
    ONNX graph in one version folder, and the search admission gate."""
    cfg = _searcher_tensors(contract.SEARCHER_MODEL, serving)
    threads = serving.ort_threads
    cfg.parameters[contract.PARAM_THREADS].string_value = str(threads[contract.RANKER_MODEL])
    encoder_threads = str(threads[contract.ENCODER_MODEL])
    cfg.parameters[contract.PARAM_ENCODER_THREADS].string_value = encoder_threads
    _admission(cfg, serving)
    samples = {**QUERY_SAMPLE, **TOP_K_SAMPLE}
    _warmup(cfg, samples)
    files = {
        **ranker_files(paths, serving.target, sequential_in_search),
        contract.TOKENIZER_FILE: tokenizer_file(paths.encoder),
        contract.ENCODER_ONNX_FILE: encoder_onnx,
    }
    model_dir = _write_model(repo, cfg, serving.version, files, python_source="searcher")
    _write_warmup(model_dir, _sample_files(samples))
    return model_dir


def write_echo(repo: Path, paths: contract.ArtifactPaths, serving: ServingConfig) -> Path:
    """The benchmark's `echo` model (never part of a served repository): the searcher's
    tensors and the catalog, no admission, no warm-up."""
    cfg = _searcher_tensors(contract.ECHO_MODEL, serving)
    files = {contract.CATALOG_FILE: paths.catalog_npz}
    return _write_model(repo, cfg, serving.version, files, python_source="echo")


def target_models(target: str) -> tuple[str, ...]:
    """The search models a target serves (beside the ensembles and the recommender)."""
    if target == "cpu":
        return (contract.SEARCHER_MODEL,)
    return (contract.TOKENIZER_MODEL, contract.ENCODER_MODEL, contract.RANKER_MODEL)


def remove_other_models(repo: Path, target: str, recommend: bool) -> None:
    """Delete the model folders of `repo` that a `target` build does not write (another
    target's layout, a recommender training no longer serves): Triton would load them."""
    kept = {*target_models(target), *((contract.RECOMMENDER_MODEL,) if recommend else ())}
    known = {*target_models("cpu"), *target_models("gpu"), contract.RECOMMENDER_MODEL}
    for name in known - kept:
        shutil.rmtree(repo / name, ignore_errors=True)
    if not recommend:
        shutil.rmtree(repo / contract.RECOMMEND_MODEL, ignore_errors=True)


def write_ensembles(repo: Path, serving: ServingConfig) -> None:
    """`search` and `rerank` (each needs an empty version folder)."""
    _write_model(repo, ensemble_config(serving), serving.version, {})
    rerank = ensemble_config(serving, contract.RERANK_MODEL, contract.RERANK_INPUTS)
    _write_model(repo, rerank, serving.version, {})


def build(
    paths: contract.ArtifactPaths,
    serving: ServingConfig,
    encoder_onnx: Path | None = None,
    repo: Path | None = None,
) -> Path:
    """Write the repository for `serving.target` below `repo` (default:
    `paths.repository(target)`), its models at version `serving.version`."""
    if serving.target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {serving.target!r}")
    encoder_onnx = encoder_onnx or selected_encoder_path(paths)
    sequential_in_search = check_inputs(paths, encoder_onnx)
    repo = Path(repo) if repo is not None else paths.repository(serving.target)
    repo.mkdir(parents=True, exist_ok=True)
    dim = embedding_dim(encoder_onnx)
    # Recommend mode, when training had event logs to learn it from.
    recommend = paths.sequential_onnx.exists() and paths.item_vectors.exists()
    remove_other_models(repo, serving.target, recommend)
    write_catalog(paths)
    encoder_record: dict = {}
    if serving.target == "cpu":
        write_searcher(repo, paths, serving, encoder_onnx, sequential_in_search)
    else:
        write_tokenizer(repo, paths, serving)
        encoder_record = write_encoder(repo, paths, serving, encoder_onnx, dim)
        write_ranker(repo, paths, serving, dim, sequential_in_search)
    write_ensembles(repo, serving)
    if recommend:
        write_recommender(repo, paths, serving)
    record = {
        "target": serving.target,
        "version": serving.version,
        "encoder_onnx": str(encoder_onnx),
        "embedding_dim": dim,
        "recommend": recommend,
        "serving": asdict(serving),  # a deploy builds the next version alike
        **encoder_record,
    }
    (repo / contract.REPOSITORY_BUILD_FILE).write_text(json.dumps(record, indent=2))
    return repo


@dataclass
class BuildConfig(ServingConfig):
    """The repository builder's command line: the artifacts folder and every serving knob."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "artifacts folder"})
    echo_to: str = field(
        default="",
        metadata={"help": "benchmark only: write just the echo model into this folder"},
    )

    def serving(self) -> ServingConfig:
        return ServingConfig(**{f.name: getattr(self, f.name) for f in fields(ServingConfig)})


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m shoprank.model_repository.build --out DIR --target TARGET`."""
    config = parse_config(BuildConfig, argv, description=__doc__ or "")
    if config.echo_to:
        model = write_echo(
            Path(config.echo_to), contract.ArtifactPaths(config.out), config.serving()
        )
        print(f"wrote the echo model: {model}")
        return
    repo = build(contract.ArtifactPaths(config.out), config.serving())
    print(f"wrote {config.target} repository: {repo}")


if __name__ == "__main__":
    main()
