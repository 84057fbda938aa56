"""Helpers shared by the Python-backend models (importable only inside Triton's stub)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.core.admission import NO_TICKET, AdmissionTable, overloaded_message, table_path
from shoprank.core.requests import InvalidInput, pad_answers, pad_explanations


def version_dir(args: dict[str, Any]) -> Path:
    """The model version folder holding the model's files."""
    return Path(args["model_repository"]) / args["model_version"]


def check_source(args: dict[str, Any], source: str) -> None:
    """Refuse to load a model whose `model.py` is not this package's `<source>.py`: the copy
    calls shared code that may have changed since its repository was built, and a mismatch
    need not fail loudly (a `model.py` that ignores what `answer_admitted` returns answers
    nothing, and Triton waits on its warm-up for ever)."""
    copy = version_dir(args) / "model.py"
    own = Path(__file__).with_name(f"{source}.py")
    if copy.read_bytes() != own.read_bytes():
        raise RuntimeError(
            f"{copy} is not {own}: the repository was built by another version of shoprank; "
            "rebuild it (make repo)"
        )


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The config.pbtxt `parameters` as plain strings."""
    params = json.loads(args["model_config"]).get("parameters", {})
    return {k: v["string_value"] for k, v in params.items()}


def invalid(message: str) -> Any:
    """An INVALID_ARGUMENT response: the request is refused, the model keeps serving."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal(message: str) -> Any:
    """An INTERNAL error response for failures that are the server's fault."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
    )


def input_array(request: Any, name: str) -> Any:
    """The numpy value of required input `name` of `request`; a request without it is
    refused naming it (contract.MODEL_VALIDATED_INPUTS: Triton lets it through)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InvalidInput(f"{name} is missing: the request must carry it", "missing_input")
    return tensor.as_numpy()


def request_arrays(request: Any) -> dict[str, Any]:
    """Every input tensor of `request` by name, as numpy, in one pass: each by-name lookup
    walks the request's whole input list again (12 lookups of a ranker request cost 7×
    one pass, measured inside the stub)."""
    return {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}


def ticket_of(arrays: dict[str, Any]) -> int | None:
    """The admission ticket a request carries (None: it carries none)."""
    ticket = arrays.get(contract.ADMISSION_TICKET.name)
    return int(ticket.reshape(-1)[0]) if ticket is not None and ticket.size else None


def optional_array(request: Any, name: str) -> Any:
    """The numpy value of optional input `name`, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def ranked_response(answers: list) -> Any:
    """The response of one request's rows (`scoring.Ranked` each), padded to the longest."""
    ids, scores, titles = pad_answers([(a.product_ids, a.scores, a.titles) for a in answers])
    explained = pad_explanations([a.explanations for a in answers], ids.shape[1])
    return pb_utils.InferenceResponse(
        [
            pb_utils.Tensor(contract.PRODUCT_IDS.name, ids),
            pb_utils.Tensor(contract.SCORES.name, scores),
            pb_utils.Tensor(contract.TITLES.name, titles),
            pb_utils.Tensor(contract.EXPLANATION.name, explained),
        ]
    )


def answer_batch(
    requests: list,
    parse: Callable[[Any], list],
    rank: Callable[[list], list],
    on_invalid: Callable[[InvalidInput], None],
    observe: Callable[[list, list], None] | None = None,
) -> list:
    """Responses to a dynamic batch: each request parsed into rows on its own (a bad one is
    refused with INVALID_ARGUMENT, `on_invalid` told why), every good row ranked in one
    `rank` call, the answers split back per request."""
    responses: list = [None] * len(requests)
    rows: list = []
    spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
    for i, request in enumerate(requests):
        try:
            parsed = parse(request)
        except InvalidInput as exc:
            on_invalid(exc)
            responses[i] = invalid(str(exc))
            continue
        spans.append((i, len(rows), len(parsed)))
        rows += parsed
    answers = rank(rows)
    if observe is not None:
        observe(rows, answers)
    for i, first, count in spans:
        responses[i] = ranked_response(answers[first : first + count])
    return responses


def answer_admitted(
    requests: list, gate: AdmissionGate, answer: Callable[[list], list], metrics: Any
) -> list | None:
    """Answer a dynamic batch at an ensemble's only step: each request admitted or refused,
    the admitted ones answered by one `answer` call, their slots freed whatever happens.
    `execute` returns what this returns.

    A batch with nothing refused returns its responses, which reach the server as one
    message (each response sender's `send` is a round trip of its own: 0.7 ms a request at
    concurrency 1, and 6% of the throughput at 8, measured). A batch with a refusal sends
    every response through its request's sender and returns None, the refusals first, so a
    refused request costs its client no more than its wait in the queue.
    """
    tickets = gate.admit_many(len(requests))
    admitted = [i for i, t in enumerate(tickets) if t is not None]
    refused = len(requests) - len(admitted)
    if refused:
        for i, ticket in enumerate(tickets):
            if ticket is None:
                _send(requests[i], gate.refusal())
        metrics.refused(reason="in_flight").increment(refused)
    try:
        answered = answer([requests[i] for i in admitted])
    except Exception as exc:  # the server's fault: each admitted request is told, none hangs
        message = f"{type(exc).__name__}: {exc}"
        pb_utils.Logger.log_error(f"answering a batch failed: {message}")
        answered = [internal(message) for _ in admitted]
    finally:  # answered or failed, the requests are no longer in flight
        for i in admitted:
            gate.release(tickets[i])
    if not refused:
        return answered
    for i, response in zip(admitted, answered, strict=True):
        _send(requests[i], response)
    return None


def _send(request: Any, response: Any) -> None:
    request.get_response_sender().send(
        response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    )


class RankedBatch:
    """Search and re-rank requests answered by `ranker.rank` (a `CandidateRanker`, or the
    searcher's `SearchPipeline`): each request's tensors read once and validated on its
    own, every good row ranked in one call, the batch's metrics summed before they are
    sent (`core.ranking.batch_counts`)."""

    def __init__(self, model: str, ranker: Any, metrics: Any) -> None:
        self.model = model
        self.ranker = ranker
        self.metrics = metrics
        self.ignored = {"unknown": 0, "duplicate": 0}  # this batch's ignored re-rank ids

    def answer(self, arrays: list[dict[str, Any]]) -> list:
        """Responses to the requests' tensors by name (`request_arrays`)."""
        # Counted afresh per batch: a batch that fails before `_observe` leaves nothing behind.
        self.ignored = {"unknown": 0, "duplicate": 0}
        return answer_batch(arrays, self._parse, self.ranker.rank, self._invalid, self._observe)

    def _parse(self, arrays: dict[str, Any]) -> list:
        # Imported here: the GPU targets' tokenizer stub imports this module, not faiss & co.
        from shoprank.core.ranking import parse_request

        parsed = parse_request(arrays, self.ranker.catalog)
        self.ignored["unknown"] += parsed.unknown_ids
        self.ignored["duplicate"] += parsed.duplicate_ids
        return parsed.rows

    def _invalid(self, exc: InvalidInput) -> None:
        self.metrics.invalid_request(self.model, exc.reason)

    def _observe(self, rows: list, answers: list) -> None:
        from shoprank.core.ranking import batch_counts

        self.metrics.ranked_batch(batch_counts(rows, answers), self.ranker.last_timings)
        unknown, duplicate = self.ignored["unknown"], self.ignored["duplicate"]
        if unknown or duplicate:
            self.metrics.ignored_ids(unknown, duplicate)
            pb_utils.Logger.log_verbose(
                f"rerank: {unknown} unknown and {duplicate} duplicate candidate ids ignored"
            )


class AdmissionGate:
    """`shoprank.core.admission` for the model that takes an ensemble's requests first (the
    tokenizer of `search` and `rerank`, the recommender of `recommend`): one table per
    server, so every entry point counts against the same cores.

    Triton's warm-up requests come first, before the model serves anything: they pass
    without a slot. Under load every slot may be taken, and a refused warm-up would fail the
    model's load, and with it a hot deploy under traffic.
    """

    def __init__(self, args: dict[str, Any], params: dict[str, str]) -> None:
        self.table = AdmissionTable(
            table_path(),
            int(params[contract.PARAM_MAX_IN_FLIGHT]),
            float(params[contract.PARAM_ADMISSION_STALE_S]),
            shed_limit=int(params[contract.PARAM_SHED_IN_FLIGHT]),  # 0: no lower limit
        )
        self.warmups_left = warmup_requests(json.loads(args["model_config"]))

    def admit(self) -> int | None:
        """A ticket, or None: refuse the request (`refusal()`)."""
        if self.warmups_left > 0:
            self.warmups_left -= 1
            return NO_TICKET
        return self.table.admit()

    def admit_many(self, n: int) -> list[int | None]:
        """`admit` for each request of a dynamic batch, the table locked once."""
        warm = min(self.warmups_left, n)
        self.warmups_left -= warm
        return [NO_TICKET] * warm + (self.table.admit_many(n - warm) if n > warm else [])

    def release(self, ticket: int) -> None:
        self.table.release(ticket)

    def refusal(self) -> Any:
        """An UNAVAILABLE response: refused at once, worth retrying after a backoff."""
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(
                overloaded_message(self.table.current_limit()), pb_utils.TritonError.UNAVAILABLE
            )
        )


def warmup_requests(model_config: dict) -> int:
    """How many warm-up requests Triton sends each instance (a sample runs `count` times,
    once when unset)."""
    return sum(max(int(w.get("count", 0) or 0), 1) for w in model_config.get("model_warmup", []))
