"""`python -m shoprank.bench.profile --out OUT` (`make profile`): where a loaded server's
Python-backend stubs spend their time.

Starts the embedded server on OUT's CPU repository, drives the held-out workload
(`<out>/loadtest/workload.json`) closed-loop at `--concurrency` through the `search`
ensemble, and samples every stub with py-spy meanwhile (idle time left out). Writes
`<reports>/profile_<model>.txt`, py-spy's collapsed stacks, and `profile.md`: per model, the
functions with the largest share of its busy samples, counting every frame a sample passes
through (total) and the frame it was in (own).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shoprank import contract
from shoprank.configargs import parse_config


@dataclass
class ProfileConfig:
    """Every knob of the profile; each is a flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "trained demo"})
    reports: Path = field(default=Path("reports"), metadata={"help": "where to write"})
    workload: str = field(default="", metadata={"help": "requests JSON; empty: <out>/loadtest/…"})
    concurrency: int = field(default=8, metadata={"help": "closed-loop clients"})
    seconds: float = field(default=15.0, metadata={"help": "how long to sample"})
    rate: int = field(default=200, metadata={"help": "py-spy samples per second"})
    top: int = field(default=15, metadata={"help": "functions listed per model"})


@dataclass
class Hot:
    """One function's share of a stub's busy samples."""

    function: str  # "name (file.py)"
    total: float  # samples passing through it / all samples
    own: float  # samples in it / all samples


def frame_name(frame: str) -> str:
    """ "name (file.py)" of a py-spy frame "name (path/file.py:line)"."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def hottest(collapsed: str, top: int) -> tuple[int, list[Hot]]:
    """(samples, the `top` functions by total share) of py-spy's collapsed stacks: one line
    per distinct stack, "frame;frame;... count"."""
    total: Counter[str] = Counter()
    own: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            total[name] += n
        own[frames[-1]] += n
    share = max(samples, 1)
    ranked = [Hot(name, n / share, own[name] / share) for name, n in total.most_common(top)]
    return samples, ranked


def markdown(found: dict[str, tuple[int, list[Hot]]], config: ProfileConfig) -> str:
    lines = [
        "# Where the stubs spend their time",
        "",
        f"`python -m shoprank.bench.profile --out {config.out}`: {config.concurrency} "
        f"closed-loop clients, py-spy at {config.rate} Hz for {config.seconds:g} s, busy "
        "samples only.",
    ]
    for model, (samples, hot) in sorted(found.items()):
        lines += ["", f"## {model} ({samples} samples)", "", "| function | total | own |"]
        lines.append("|---|---:|---:|")
        lines += [f"| `{h.function}` | {h.total:.1%} | {h.own:.1%} |" for h in hot]
    return "\n".join(lines) + "\n"


def sample(spy: str, pid: int, output: Path, config: ProfileConfig) -> subprocess.Popen:
    """py-spy recording process `pid` for `config.seconds` (busy samples, no pausing)."""
    command = [spy, "record", "--pid", str(pid), "--duration", str(round(config.seconds))]
    command += ["--rate", str(config.rate), "--format", "raw", "--nonblocking"]
    command += ["--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def profile(config: ProfileConfig) -> dict[str, tuple[int, list[Hot]]]:
    """Run the load, sample the stubs, write the reports; return each model's hottest."""
    from shoprank.bench.measure import MeasureConfig, load_workload, measure
    from shoprank.bench.systems import TritonCaller
    from shoprank.ops.tritonserver import model_stubs, running_server

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    paths = contract.ArtifactPaths(config.out)
    workload = load_workload(Path(config.workload) if config.workload else paths.workload)
    config.reports.mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple[int, list[Hot]]] = {}
    with running_server(paths.repository("cpu")) as server:
        stubs = model_stubs(server.process.pid)
        outputs = {m: config.reports / f"profile_{m}.txt" for m, _ in stubs}
        samplers = [sample(spy, proc.pid, outputs[m], config) for m, proc in stubs]
        window = MeasureConfig(warmup_s=0.5, window_s=config.seconds / 2, max_windows=2)
        load = threading.Thread(
            target=measure,
            args=(lambda: TritonCaller(server.grpc_url), workload, config.concurrency, window),
        )
        load.start()
        for sampler in samplers:
            _, err = sampler.communicate()
            if sampler.returncode != 0:
                raise RuntimeError(f"py-spy failed: {err.strip()[-500:]}")
        load.join()
    for model, path in outputs.items():
        found[model] = hottest(path.read_text(), config.top)
    (config.reports / "profile.md").write_text(markdown(found, config))
    return found


def main(argv: list[str] | None = None) -> int:
    config = parse_config(ProfileConfig, argv, description=__doc__ or "")
    found = profile(config)
    print(markdown(found, config))
    print(f"wrote {config.reports / 'profile.md'} and the collapsed stacks beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
