"""`python -m shoprank.bench.gpu_check` (`make gpu-check`): the gpu-embedded target served and
measured on the machine it runs on, in one prepared run.

1. Builds the `gpu-embedded` repository from OUT's artifacts (`--device gpu`: encoder and
   dense scan on CUDA; `--device cpu` runs the same code on CPU instances).
2. Compares, on the workload's queries: the served encoder's embeddings (fp16 on the
   GPU) with the fp32 PyTorch encoder (cosine, min and mean), and the served top-k with
   the CPU pipeline (fp32 ONNX encoder, exact scan) in process (top-k overlap and the
   share of identical lists).
3. Serves it with the embedded tritonserver and measures the full request over gRPC
   (bench.measure: closed loop, stable windows) at each concurrency.
4. Writes `<report-dir>/gpu_check.json` and `.md`, with the date, the machine (GPU name,
   CUDA, torch, CPU cores) and the command.

What the GPU host needs: the embedded server from an unzipped nvidia-pytriton wheel with
the venv's `bin/` first on PATH (the stub ignores PYTHONPATH), numpy<2 ahead of any numpy 2
the host ships (nvidia-pytriton pins numpy<2), and this project's run-time dependencies
(faiss-cpu, bm25s, tantivy, tritonclient, pandas, pyarrow). A run that could not measure
something says so in the report instead of giving a figure.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shoprank import contract
from shoprank.bench.measure import BenchError, MeasureConfig, measure
from shoprank.configargs import parse_config

K = 10


@dataclass
class GpuCheckConfig:
    """Every knob of the GPU check; each is a flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "trained artifacts"})
    report_dir: Path = field(default=Path("docs/gpu"), metadata={"help": "where reports go"})
    device: str = field(default="gpu", metadata={"help": "instances: gpu|cpu"})
    dtype: str = field(default="float16", metadata={"help": "encoder and scan precision"})
    concurrency: str = field(default="1,8,32,128", metadata={"help": "client concurrencies"})
    queries: int = field(default=300, metadata={"help": "workload queries used"})
    warmup_s: float = 2.0
    window_s: float = 4.0
    max_windows: int = 4


def machine() -> dict:
    """What ran the check."""
    import torch

    return {
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def _workload(paths: contract.ArtifactPaths, n: int) -> list[dict]:
    """The demo workload's first n requests, or the held-out queries when there is none."""
    if paths.workload.exists():
        return json.loads(paths.workload.read_text())[:n]
    from shoprank.data import datasets

    queries = datasets.load(paths).queries
    return [
        {"query": q, "history": [], "top_k": K}
        for q in queries.loc[queries["split"] == "test", "query"].head(n)
    ]


def agreement(
    paths: contract.ArtifactPaths, repo: Path, workload: list[dict], config: GpuCheckConfig
) -> dict:
    """Served encoder vs fp32, and the served ranking vs the CPU pipeline (exact scan)."""
    from shoprank.core.ann import DenseConfig, DenseIndex
    from shoprank.core.pipeline import InProcessPipeline
    from shoprank.core.ranking import CandidateRanker, Request
    from shoprank.core.requests import pad_rows
    from shoprank.core.sessions import encoder_feeds
    from shoprank.core.tokenizer import QueryTokenizer
    from shoprank.data.artifacts import load_item_index
    from shoprank.models.gpu import TorchDenseIndex, TorchEncoder, device_of

    device = device_of(config.device)
    queries = [w["query"] for w in workload]
    tokenizer = QueryTokenizer(paths.encoder / contract.TOKENIZER_FILE)
    rows = tokenizer.encode(queries)
    ids, mask = pad_rows([r[0] for r in rows]), pad_rows([r[1] for r in rows])
    served = TorchEncoder(paths.encoder, device, config.dtype)
    full = TorchEncoder(paths.encoder, device, "float32", graphs=False)
    feeds = encoder_feeds(ids, mask)
    fast = np.concatenate(
        [served.embed(ids[i : i + 64], mask[i : i + 64]) for i in range(0, len(ids), 64)]
    )
    (exact,) = full.run([contract.ONNX_SENTENCE_EMBEDDING], feeds)
    cosine = np.sum(fast * exact, axis=1)

    embeddings = load_item_index(paths.item_index)["embeddings"]
    reference = InProcessPipeline(paths.repository("cpu"))
    reference.ranker.dense = DenseIndex.build(embeddings, DenseConfig(kind="flat"))
    ranker = CandidateRanker.load(
        repo / contract.RANKER_MODEL / "1",
        dense=TorchDenseIndex(embeddings, device, config.dtype),
    )
    overlap, same = [], 0
    for i, w in enumerate(workload):
        ref = reference.search(w["query"], w.get("history", []), K).product_ids
        row = ranker.rank([Request(w["query"], fast[i], np.zeros(0, np.int64), K)])[0]
        got = row.product_ids
        overlap.append(len(set(got.tolist()) & set(ref.tolist())) / max(1, len(ref)))
        same += int(np.array_equal(got, ref))
    return {
        "queries": len(workload),
        "embedding_cosine_min": float(cosine.min()),
        "embedding_cosine_mean": float(cosine.mean()),
        f"top{K}_overlap_mean": float(np.mean(overlap)),
        f"top{K}_identical_share": same / len(workload),
    }


def run(config: GpuCheckConfig) -> dict:
    from shoprank.bench.systems import TritonCaller
    from shoprank.ops.tritonserver import running_server

    paths = contract.ArtifactPaths(Path(config.out))
    started = time.perf_counter()
    # The repository stage's own command builds it (bench imports no stage's code).
    target = "gpu-embedded"
    subprocess.run(
        [sys.executable, "-m", "shoprank.model_repository.build", f"--out={paths.root}",
         f"--target={target}", f"--device={config.device}", f"--dtype={config.dtype}"],
        check=True,
    )  # fmt: skip
    repo = paths.repository(target)
    workload = _workload(paths, config.queries)
    report: dict = {
        "machine": machine(),
        "command": " ".join(["python -m shoprank.bench.gpu_check", *sys.argv[1:]]),
        "config": {k: str(v) for k, v in asdict(config).items()},
        "agreement": agreement(paths, repo, workload, config),
        "serving": [],
    }
    mconfig = MeasureConfig(
        warmup_s=config.warmup_s, window_s=config.window_s, max_windows=config.max_windows
    )
    with running_server(repo, log_path=paths.root / "tritonserver.gpu.log") as server:
        for c in (int(x) for x in config.concurrency.split(",")):
            try:
                m = measure(lambda s=server: TritonCaller(s.grpc_url), workload, c, mconfig)
            except BenchError as exc:
                report["serving"].append({"concurrency": c, "error": str(exc)})
                continue
            report["serving"].append({"concurrency": c, "stable": m.stable, **asdict(m.summary)})
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, Path(config.report_dir))
    return report


def write_report(report: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_check.json").write_text(json.dumps(report, indent=2))
    m, a = report["machine"], report["agreement"]
    lines = [
        f"# GPU check, {m['date']}",
        "",
        f"Machine: {m['gpu'] or 'no GPU (CPU instances)'}, CUDA {m['cuda']}, torch {m['torch']}, "
        f"{m['cpu_cores']} CPU cores. Command: `{report['command']}`.",
        "",
        "| concurrency | p50 ms | p99 ms | requests/s | errors |",
        "|---|---|---|---|---|",
    ]
    for row in report["serving"]:
        if "error" in row:
            lines.append(f"| {row['concurrency']} | – | – | – | {row['error']} |")
        else:
            lines.append(
                f"| {row['concurrency']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['throughput_rps']:.0f} | {row['errors']} |"
            )
    lines += [
        "",
        f"Agreement on {a['queries']} workload queries: served encoder vs fp32 cosine "
        f"min {a['embedding_cosine_min']:.5f}, mean {a['embedding_cosine_mean']:.5f}; top-{K} "
        f"vs the CPU pipeline (fp32 ONNX, exact scan): overlap {a[f'top{K}_overlap_mean']:.3f}, "
        f"identical lists {a[f'top{K}_identical_share']:.1%}.",
    ]
    (folder / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    config = parse_config(GpuCheckConfig, argv, description=__doc__)
    run(config)
    print((Path(config.report_dir) / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
