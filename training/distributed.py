"""The encoder fine-tuning on several processes: torchrun (PyTorch DDP) for that step only.

`finetune.finetune` hands over here when `FinetuneConfig.nproc` > 1. The launcher writes
what the step needs into `<work_dir>/distributed/` (the config as JSON, the model, the
training rows, the validation set), runs

    python -m torch.distributed.run --nproc-per-node N -m shoprank.training.distributed SPEC

and loads back the model rank 0 saved; the rest of training stays in the calling process.
Every rank runs the same `finetune` (gloo between CPU processes, nccl when each process has
a GPU of its own), on its slice of the same global batch (`batch_size` stays the global
batch: accelerate's `split_batches`), and MultipleNegativesRankingLoss gathers the
embeddings of every rank (`gather_across_devices`), so each query's softmax runs over the
whole global batch, as on one process. Rank 0 alone writes: the Trainer's checkpoints in
`work_dir`, and `distributed/model` + `distributed/result.json` (the loss/validation curve).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd

from shoprank.ops.tritonserver import DEFAULT_HOST, free_ports

log = logging.getLogger(__name__)

LAUNCH_DIR = "distributed"  # below the fine-tuning work folder
SPEC_FILE = "launch.json"
INPUT_MODEL = "input_model"
OUTPUT_MODEL = "model"  # written by rank 0
RESULT_FILE = "result.json"  # written by rank 0
RANK_LOGS = "logs"  # every rank's stdout/stderr, kept by torchrun


def world_size() -> int:
    """Processes of the torchrun launch this process is part of (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank in its torchrun launch (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def gpu_per_process(nproc: int) -> bool:
    """True when each of `nproc` processes can have a GPU of its own (then DDP uses nccl)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() >= nproc


def threads_per_process(nproc: int) -> int:
    """This machine's cores shared out: `nproc` processes must not each start a thread per
    core (on 2 cores, 2 processes x 2 threads run slower than 1 process)."""
    return max(1, (os.cpu_count() or 1) // nproc)


def launch_command(nproc: int, spec: Path, port: int, log_dir: Path) -> list[str]:
    """torchrun on this machine: `nproc` ranks of this module's `main`, rendezvous on loopback
    `port`; every rank's output kept under `log_dir`, rank 0's shown."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        DEFAULT_HOST,
        "--master-port",
        str(port),
        "--log-dir",
        str(log_dir),
        "--tee",
        "3",
        "--local-ranks-filter",
        "0",
        "-m",
        __name__,
        str(spec),
    ]


def _evaluator_json(evaluator) -> dict:
    # JSON keys are strings: ids go out as str and come back as int (`_read_evaluator`).
    return {
        "queries": {str(q): text for q, text in evaluator.queries.items()},
        "corpus": {str(p): text for p, text in evaluator.corpus.items()},
        "grades": {
            str(q): {str(p): int(g) for p, g in grades.items()}
            for q, grades in evaluator.grades.items()
        },
        "batch_size": evaluator.batch_size,
    }


def _read_evaluator(raw: dict):
    from shoprank.training.finetune import GradedNDCGEvaluator

    return GradedNDCGEvaluator(
        {int(q): text for q, text in raw["queries"].items()},
        {int(p): text for p, text in raw["corpus"].items()},
        {int(q): {int(p): g for p, g in gr.items()} for q, gr in raw["grades"].items()},
        batch_size=raw["batch_size"],
    )


def write_launch(model, train_sets: dict[str, pd.DataFrame], config, work_dir: Path, evaluator):
    """Everything the ranks read, in `<work_dir>/distributed/`; the spec file's path."""
    from shoprank.training.finetune import FinetuneConfig

    launch = (Path(work_dir) / LAUNCH_DIR).resolve()
    shutil.rmtree(launch, ignore_errors=True)
    launch.mkdir(parents=True)
    model.save(str(launch / INPUT_MODEL))
    sets = {}
    for name, rows in train_sets.items():
        sets[name] = str(launch / f"{name}.parquet")
        rows.to_parquet(sets[name], index=False)
    # Only the fine-tuning knobs: `config` may be a stage config that extends them.
    spec = {
        "config": {f.name: getattr(config, f.name) for f in fields(FinetuneConfig)},
        "work_dir": str(Path(work_dir).resolve()),
        "model": str(launch / INPUT_MODEL),
        "max_seq_length": model.max_seq_length,
        "sets": sets,
        "evaluator": _evaluator_json(evaluator) if evaluator is not None else None,
        "output": str(launch / OUTPUT_MODEL),
        "result": str(launch / RESULT_FILE),
    }
    path = launch / SPEC_FILE
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path


def finetune_distributed(
    model, train_sets: dict[str, pd.DataFrame], config, work_dir: Path, evaluator=None
) -> list[dict[str, float]]:
    """`finetune.finetune` on `config.nproc` processes: `model` is updated in place with the
    weights rank 0 saved; the curve rank 0 logged is returned.

    Raises:
        RuntimeError: a rank failed (torchrun names it; every rank's log is kept).
    """
    from shoprank.models.encoder import load_encoder

    nproc = config.nproc
    spec = write_launch(model, train_sets, config, work_dir, evaluator)
    launch = spec.parent
    command = launch_command(nproc, spec, free_ports(1)[0], launch / RANK_LOGS)
    threads = str(threads_per_process(nproc))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    log.info("fine-tuning on %d processes (%s threads each): %s", nproc, threads, " ".join(command))
    completed = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"distributed fine-tuning failed (torchrun exit code {completed.returncode}); "
            f"every rank's output is under {launch / RANK_LOGS}"
        )
    result = json.loads((launch / RESULT_FILE).read_text())
    trained = load_encoder(launch / OUTPUT_MODEL, model.max_seq_length)
    model.load_state_dict(trained.state_dict())
    # The inputs were copies for the ranks; the model and result rank 0 wrote stay.
    shutil.rmtree(launch / INPUT_MODEL)
    for path in launch.glob("*.parquet"):
        path.unlink()
    return result["curve"]


def run_rank(spec: dict) -> None:
    """One rank: `finetune` the spec's model on the spec's rows; rank 0 saves the result."""
    from shoprank.models.encoder import load_encoder
    from shoprank.training.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(**spec["config"])
    if world_size() != config.nproc:
        raise RuntimeError(f"launched with {world_size()} processes, configured {config.nproc}")
    model = load_encoder(spec["model"], spec["max_seq_length"])
    sets = {name: pd.read_parquet(path) for name, path in spec["sets"].items()}
    evaluator = _read_evaluator(spec["evaluator"]) if spec["evaluator"] else None
    curve = finetune(model, sets, config, Path(spec["work_dir"]), evaluator)
    if rank() == 0:
        model.save(spec["output"])
        result = {"rank": rank(), "world_size": world_size(), "curve": curve}
        Path(spec["result"]).write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of each rank: `python -m shoprank.training.distributed SPEC_JSON`
    under torchrun."""
    from torch.distributed.elastic.multiprocessing.errors import record

    from shoprank.configargs import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: torchrun ... -m shoprank.training.distributed SPEC_JSON", file=sys.stderr)
        return 2
    setup_logging("shoprank")
    # `record` hands a failing rank's traceback to torchrun, which reports it.
    record(run_rank)(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
