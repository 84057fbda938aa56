"""Whether Triton's dynamic batcher forms batches: per served model, the requests it
answered (`inference_count`) over the executions that answered them (`execution_count`),
from the server's statistics read before and after a measurement.

A mean of 1.0 at concurrency 8 means every request ran on its own, and the concurrency
runs measure queueing rather than batching; above 1 the model answered several requests
per execution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# (inference_count, execution_count) per model name, summed over its versions
Totals = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Batching:
    """One model's requests and executions between two statistics snapshots."""

    model: str
    inferences: int
    executions: int

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else float("nan")


def totals_of(statistics: Mapping) -> Totals:
    """Totals from Triton's statistics as JSON (`get_inference_statistics(as_json=True)`);
    counts arrive as strings, as protobuf's JSON writes 64-bit integers."""
    out: Totals = {}
    for model in statistics.get("model_stats", []):
        inferences, executions = out.get(model["name"], (0, 0))
        out[model["name"]] = (
            inferences + int(model.get("inference_count", 0) or 0),
            executions + int(model.get("execution_count", 0) or 0),
        )
    return out


def read_totals(grpc_url: str) -> Totals:
    """The running server's totals so far."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return totals_of(client.get_inference_statistics(as_json=True))
    finally:
        client.close()


def batching_between(before: Totals, after: Totals, skip: tuple[str, ...] = ()) -> list[Batching]:
    """Each model that executed between the two snapshots, by name; `skip` leaves out
    models whose counts say nothing about batching (ensembles count one execution per
    request by construction)."""
    out = []
    for name in sorted(after):
        if name in skip:
            continue
        inferences = after[name][0] - before.get(name, (0, 0))[0]
        executions = after[name][1] - before.get(name, (0, 0))[1]
        if executions > 0:
            out.append(Batching(name, inferences, executions))
    return out


def format_batching(found: list[Batching]) -> str:
    """`model=inferences/executions` separated by spaces (a CSV cell); empty when nothing
    ran."""
    return " ".join(f"{b.model}={b.inferences}/{b.executions}" for b in found)


def parse_batching(text: str) -> list[Batching]:
    """Inverse of `format_batching`."""
    out = []
    for item in text.split():
        model, _, counts = item.partition("=")
        inferences, _, executions = counts.partition("/")
        out.append(Batching(model, int(inferences), int(executions)))
    return out
