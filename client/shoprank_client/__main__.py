"""Command line search against a running shoprank Triton server.

    python -m shoprank_client search "red leather sofa" --history 12,55 --top-k 10
    python -m shoprank_client search "red leather sofa" --json
    python -m shoprank_client rerank "red leather sofa" --candidates 100012,100055,100077
    python -m shoprank_client recommend --history 100012,100055 --top-k 5
    python -m shoprank_client health
    python -m shoprank_client search "red leather sofa" --url dns:///search-grpc.shop:8001

Exit codes: 0 success, 2 bad arguments, server error or server not ready.
"""

from __future__ import annotations

import argparse
import json
import sys

from shoprank_client.protocol import (
    DEFAULT_GRPC_URL,
    DEFAULT_TOP_K,
    ENSEMBLE_MODEL,
    MAX_CANDIDATES,
    MAX_TOP_K,
)
from shoprank_client.search_client import (
    DEFAULT_TIMEOUT_S,
    Filters,
    SearchClient,
    SearchError,
    SearchResult,
)

EXIT_ERROR = 2


def parse_history(text: str) -> list[int]:
    """Parse "12,55, 7" into [12, 55, 7]; an empty string is an empty list."""
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated product ids like 12,55 — got {text!r}"
        ) from None


def format_table(results: list[SearchResult]) -> str:
    """A fixed-width table: rank, id, score, title."""
    if not results:
        return "(no results)"
    id_width = max(len("id"), *(len(str(r.product_id)) for r in results))
    lines = [f"{'rank':>4}  {'id':>{id_width}}  {'score':>8}  title"]
    for r in results:
        lines.append(f"{r.rank:>4}  {r.product_id:>{id_width}}  {r.score:>8.4f}  {r.title}")
        if r.explanation:
            # The parts that add up to the score, largest first, then the closest history.
            parts = sorted(
                ((k, v) for k, v in r.explanation["parts"].items() if abs(v) >= 5e-4),
                key=lambda kv: -abs(kv[1]),
            )
            lines.append(" " * 6 + "= " + " ".join(f"{v:+.3f} {k}" for k, v in parts))
            similar = r.explanation.get("similar_history") or []
            if similar:
                near = ", ".join(f"{h['product_id']} ({h['cosine']:.2f})" for h in similar)
                lines.append(" " * 6 + f"closest in history: {near}")
    return "\n".join(lines)


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=DEFAULT_GRPC_URL,
        help="gRPC target: host:port, or replicas balanced per request as dns:///name:port "
        "or ipv4:a.b.c.d:port,a.b.c.e:port (%(default)s)",
    )
    parser.add_argument("--model", default=ENSEMBLE_MODEL, help="model name (%(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (%(default)s)"
    )


def _cmd_search(args: argparse.Namespace) -> int:
    with SearchClient(args.url, model=args.model, timeout_s=args.timeout) as client:
        results = client.search(
            args.query,
            history=args.history,
            top_k=args.top_k,
            filters=_filters(args),
            explain=args.explain,
        )
    _print(args, results, query=args.query, history=args.history, top_k=args.top_k)
    return 0


def _print(args: argparse.Namespace, results: list[SearchResult], **request) -> None:
    if args.json:
        payload = {**request, "results": [r.to_dict() for r in results]}
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(format_table(results))


def _cmd_rerank(args: argparse.Namespace) -> int:
    with SearchClient(args.url, timeout_s=args.timeout) as client:
        results = client.rerank(
            args.query,
            args.candidates,
            history=args.history,
            top_k=args.top_k,
            filters=_filters(args),
            explain=args.explain,
        )
    _print(
        args,
        results,
        query=args.query,
        candidates=args.candidates,
        history=args.history,
        top_k=args.top_k,
    )
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    with SearchClient(args.url, timeout_s=args.timeout) as client:
        results = client.recommend(
            history=args.history, top_k=args.top_k, filters=_filters(args), explain=args.explain
        )
    _print(args, results, history=args.history, top_k=args.top_k)
    return 0


def _request_args(
    parser: argparse.ArgumentParser,
    history_help: str = "comma-separated product ids the shopper interacted with, oldest first",
) -> None:
    """--history, --top-k, --json, the filters, --explain and the connection flags."""
    parser.add_argument("--history", type=parse_history, default=[], help=history_help)
    parser.add_argument(
        "--top-k", type=int, default=DEFAULT_TOP_K, help=f"1..{MAX_TOP_K} (%(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _filter_args(parser)
    _connection_args(parser)


def _filter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (TOP_K results whenever that many match)")
    group.add_argument("--category", help='category path prefix, e.g. "Furniture > Sofas"')
    group.add_argument("--price-min", type=float, help="lowest price")
    group.add_argument("--price-max", type=float, help="highest price")
    group.add_argument(
        "--exclude", type=parse_history, default=[], help="comma-separated product ids to leave out"
    )
    group.add_argument("--in-stock", action="store_true", help="in-stock products only")
    parser.add_argument(
        "--explain", action="store_true", help="show each score broken into its parts"
    )


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        category_prefix=args.category,
        price_min=args.price_min,
        price_max=args.price_max,
        exclude_ids=args.exclude,
        in_stock_only=args.in_stock,
    )


def _cmd_health(args: argparse.Namespace) -> int:
    with SearchClient(args.url, model=args.model, timeout_s=args.timeout) as client:
        if not client.is_ready():
            print(
                f"error: server at {args.url} is not ready (or model '{args.model}' is not "
                "loaded); start it with `python -m shoprank.model_repository.server start`",
                file=sys.stderr,
            )
            return EXIT_ERROR
        meta = client.server_metadata()
    print(f"ok: {meta['name']} {meta['version']} at {args.url}, model '{args.model}' ready")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m shoprank_client`."""
    parser = argparse.ArgumentParser(
        prog="python -m shoprank_client", description="Query the shoprank search server (gRPC)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_search = sub.add_parser("search", help="rank products for a query")
    p_search.add_argument("query", help="free-text search query")
    _request_args(p_search)
    p_search.set_defaults(func=_cmd_search)

    p_rerank = sub.add_parser("rerank", help="rank only the given candidate ids for a query")
    p_rerank.add_argument("query", help="free-text search query")
    p_rerank.add_argument(
        "--candidates",
        type=parse_history,
        required=True,
        help=f"comma-separated product ids to rank (at most {MAX_CANDIDATES})",
    )
    _request_args(p_rerank)
    p_rerank.set_defaults(func=_cmd_rerank)

    p_recommend = sub.add_parser(
        "recommend", help="recommend products from a shopper's history alone (no query)"
    )
    _request_args(p_recommend, "comma-separated product ids, oldest first (empty: best sellers)")
    p_recommend.set_defaults(func=_cmd_recommend)

    p_health = sub.add_parser("health", help="is the server up and the model ready?")
    _connection_args(p_health)
    p_health.set_defaults(func=_cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of raising on expected errors."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
    except SearchError as err:
        hint = ""
        if err.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            hint = f" (is the server running at {args.url}?)"
        print(f"error: server error {err}{hint}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
