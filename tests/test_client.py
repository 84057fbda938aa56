"""The gRPC search client and its CLI, against the real tiny ensemble on real Triton.

Answers are held against the same repository's files run in-process (`in_process`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, replace

import numpy as np
import pytest
from pipeline_fixtures import assert_same_ranking

from shoprank.contract import DEFAULT_TOP_K, MAX_TOP_K
from shoprank.core.filters import Filters as CoreFilters
from shoprank.core.pipeline import Answer
from shoprank.ops.tritonserver import free_ports
from shoprank_client import Filters, SearchClient, SearchError, SearchResult
from shoprank_client.__main__ import format_table, main, parse_history

# Validation happens before anything is sent, so no server is needed; the port is unused.
OFFLINE_URL = f"localhost:{free_ports(1)[0]}"


@pytest.fixture(scope="module")
def grpc_url(ensemble_server) -> str:
    return ensemble_server.grpc_url


@pytest.fixture()
def search_client(grpc_url: str):
    with SearchClient(grpc_url) as client:
        yield client


@pytest.fixture(scope="module")
def shopper(search_workload: list[dict]) -> dict:
    """A real request whose history holds a few real product ids."""
    return next(r for r in search_workload if 2 <= len(r["history"]) <= 10)


def as_ranked(results: list[SearchResult]) -> Answer:
    return Answer(
        product_ids=np.array([r.product_id for r in results], dtype=np.int64),
        scores=np.array([r.score for r in results], dtype=np.float32),
        titles=[r.title for r in results],
    )


def assert_same_results(results: list[SearchResult], reference: Answer) -> None:
    """Same products, titles and order as `reference` (ties aside); scores equal up to
    float rounding."""
    assert [r.rank for r in results] == list(range(1, len(reference.product_ids) + 1))
    served = as_ranked(results)
    assert_same_ranking(served.product_ids, served.scores, reference.product_ids, reference.scores)
    title_of = dict(zip(reference.product_ids.tolist(), reference.titles, strict=True))
    assert all(
        title_of.get(p, t) == t for p, t in zip(served.product_ids, served.titles, strict=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query": b"sofa"}, "query must be a str"),
        ({"query": None}, "query must be a str"),
        ({"top_k": 0}, f"top_k must be in 1..{MAX_TOP_K}"),
        ({"top_k": MAX_TOP_K + 1}, f"top_k must be in 1..{MAX_TOP_K}"),
        ({"top_k": True}, "top_k must be an int"),
        ({"top_k": "5"}, "top_k must be an int"),
        ({"history": "12,55"}, "not a string"),
        ({"history": [12, 1.5]}, "history ids must be ints"),
        ({"history": [2**63]}, "does not fit in int64"),
    ],
)
def test_client_side_validation(kwargs: dict, message: str) -> None:
    arguments = {"query": "sofa", "history": (), "top_k": DEFAULT_TOP_K, **kwargs}
    with SearchClient(OFFLINE_URL) as client, pytest.raises(ValueError, match=message):
        client.search(**arguments)


def test_unreachable_server_is_a_search_error() -> None:
    with SearchClient(OFFLINE_URL, timeout_s=5) as client:
        assert not client.is_ready()
        with pytest.raises(SearchError) as caught:
            client.search("sofa")
    assert caught.value.status == "UNAVAILABLE"


def test_parse_history() -> None:
    assert parse_history("12,55, 7") == [12, 55, 7]
    assert parse_history("") == []


def test_format_table_aligns_columns() -> None:
    table = format_table([SearchResult(1, 12345, 0.5, "Sofa"), SearchResult(2, 7, 0.25, "Chair")])
    lines = table.splitlines()
    assert lines[0].split() == ["rank", "id", "score", "title"]
    # The title column starts at the same offset in every line.
    assert (
        len({line.index(t) for line, t in zip(lines, ["title", "Sofa", "Chair"], strict=True)}) == 1
    )
    assert lines[1].endswith("0.5000  Sofa")


@pytest.mark.integration
def test_search_matches_the_in_process_pipeline(
    search_client: SearchClient, in_process, shopper: dict
) -> None:
    assert search_client.is_ready()
    results = search_client.search(shopper["query"], history=shopper["history"], top_k=5)
    assert all(isinstance(r, SearchResult) for r in results)
    assert all(isinstance(r.product_id, int) and isinstance(r.score, float) for r in results)
    assert all(isinstance(r.title, str) and r.title for r in results)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert_same_results(results, in_process.search(shopper["query"], shopper["history"], 5))


@pytest.mark.integration
def test_history_reaches_the_ranker_and_unknown_ids_are_ignored(
    search_client: SearchClient, in_process, shopper: dict
) -> None:
    query, history = shopper["query"], shopper["history"]
    with_history = search_client.search(query, history=history)
    cold = search_client.search(query)
    assert_same_results(cold, in_process.search(query, [], DEFAULT_TOP_K))
    assert [r.score for r in with_history] != pytest.approx([r.score for r in cold])

    unknown = [-5, 987654321, 2**62]
    noisy = search_client.search(query, history=[unknown[0], *history, *unknown[1:]])
    assert_same_results(noisy, as_ranked(with_history))
    assert_same_results(search_client.search(query, history=unknown), as_ranked(cold))


@pytest.mark.integration
def test_top_k_limits(search_client: SearchClient, in_process, shopper: dict) -> None:
    query, history = shopper["query"], shopper["history"]
    assert len(search_client.search(query)) == DEFAULT_TOP_K
    top = search_client.search(query, history=history, top_k=1)
    assert_same_results(top, in_process.search(query, history, 1))

    results = search_client.search(query, history=history, top_k=MAX_TOP_K)
    reference = in_process.search(query, history, MAX_TOP_K)
    assert len(results) == MAX_TOP_K
    # Deep in the list, products whose scores tie within rounding may swap places.
    assert len({r.product_id for r in results}) == MAX_TOP_K
    assert_same_results(results, reference)


@pytest.mark.integration
def test_empty_query_is_invalid_argument(search_client: SearchClient) -> None:
    for query in ("", "  \t "):
        with pytest.raises(SearchError) as caught:
            search_client.search(query, history=[1, 2])
        assert caught.value.status == "INVALID_ARGUMENT"
        assert "empty" in caught.value.message


@pytest.mark.integration
def test_search_many_keeps_order(search_client: SearchClient, search_workload: list[dict]) -> None:
    requests = search_workload[:12]
    queries = [r["query"] for r in requests]
    histories = [r["history"] for r in requests]
    batches = search_client.search_many(queries, histories, top_k=5)
    assert len(batches) == len(requests)
    for query, history, batch in zip(queries, histories, batches, strict=True):
        assert_same_results(batch, as_ranked(search_client.search(query, history, top_k=5)))
    # Different requests really got different answers, so a shuffle would have shown.
    assert len({tuple(r.product_id for r in b) for b in batches}) > 1

    with pytest.raises(SearchError) as caught:
        search_client.search_many([queries[0], ""], [histories[0], []])
    assert caught.value.status == "INVALID_ARGUMENT"


@pytest.mark.integration
def test_unknown_model_is_not_ready(grpc_url: str) -> None:
    with SearchClient(grpc_url, model="no_such_model") as client:
        assert not client.is_ready()
        with pytest.raises(SearchError):
            client.search("sofa")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoprank_client", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration
def test_cli_prints_a_table(grpc_url: str, in_process, shopper: dict) -> None:
    query, history = shopper["query"], shopper["history"]
    result = _cli(
        "search",
        query,
        "--history",
        ",".join(str(p) for p in history),
        "--top-k",
        "3",
        "--url",
        grpc_url,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "id", "score", "title"]
    assert len(lines) == 4
    reference = in_process.search(query, history, 3)
    for rank, (line, pid, score, title) in enumerate(
        zip(lines[1:], reference.product_ids, reference.scores, reference.titles, strict=True), 1
    ):
        shown_rank, shown_id, shown_score, shown_title = line.split(maxsplit=3)
        assert (int(shown_rank), int(shown_id), shown_title) == (rank, pid, title)
        assert float(shown_score) == pytest.approx(float(score), abs=1e-3)


@pytest.mark.integration
def test_cli_prints_json(grpc_url: str, in_process, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", "lamp", "--top-k", "2", "--json", "--url", grpc_url]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["query"] == "lamp"
    assert [r["rank"] for r in payload["results"]] == [1, 2]
    assert set(payload["results"][0]) == {"rank", "product_id", "score", "title"}
    reference = in_process.search("lamp", [], 2)
    assert [r["product_id"] for r in payload["results"]] == reference.product_ids.tolist()
    assert [r["title"] for r in payload["results"]] == reference.titles


@pytest.mark.integration
def test_cli_server_error_exits_2_without_traceback(grpc_url: str) -> None:
    result = _cli("search", "", "--url", grpc_url)
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bad_arguments_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["search", "sofa", "--top-k", "0", "--url", OFFLINE_URL]) == 2
    assert f"1..{MAX_TOP_K}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["search", "sofa", "--history", "a,b"])
    assert caught.value.code == 2
    assert "comma-separated" in capsys.readouterr().err


def test_cli_unreachable_server_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["search", "sofa", "--url", OFFLINE_URL, "--timeout", "5"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert main(["health", "--url", OFFLINE_URL, "--timeout", "5"]) == 2


@pytest.mark.integration
def test_cli_health(grpc_url: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["health", "--url", grpc_url]) == 0
    assert "ready" in capsys.readouterr().out


@pytest.mark.integration
def test_rerank_ranks_the_callers_candidates(
    search_client: SearchClient, in_process, shopper: dict
) -> None:
    query, history = shopper["query"], shopper["history"]
    candidates = [int(p) for p in in_process.search(query, [], 20).product_ids[::2]]
    results = search_client.rerank(query, candidates, history=history, top_k=4)
    assert_same_results(results, in_process.rerank(query, candidates, history, 4))
    assert {r.product_id for r in results} <= set(candidates)
    assert search_client.rerank(query, [], top_k=4) == []


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ("1,2", "not a string"),
        ([1, 2.5], "candidate ids must be ints"),
        (list(range(1001)), "at most 1000 candidates"),
    ],
)
def test_rerank_validates_candidates_before_sending(candidates, message) -> None:
    with SearchClient(OFFLINE_URL) as client, pytest.raises(ValueError, match=message):
        client.rerank("sofa", candidates)


@pytest.mark.integration
def test_cli_rerank_prints_json(grpc_url: str, in_process, capsys: pytest.CaptureFixture) -> None:
    candidates = [int(p) for p in in_process.search("lamp", [], 6).product_ids]
    ids = ",".join(str(p) for p in reversed(candidates))
    assert (
        main(["rerank", "lamp", "--candidates", ids, "--top-k", "3", "--json", "--url", grpc_url])
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload["candidates"] == list(reversed(candidates))
    want = in_process.rerank("lamp", list(reversed(candidates)), [], 3).product_ids.tolist()
    assert [r["product_id"] for r in payload["results"]] == want


@pytest.mark.integration
def test_search_batch_is_one_request_with_every_row(
    search_client: SearchClient, search_workload
) -> None:
    rows = search_workload[:4]
    ks = [5, 2, 7, 3]
    got = search_client.search_batch([r["query"] for r in rows], [r["history"] for r in rows], ks)
    assert [len(g) for g in got] == ks
    for r, k, results in zip(rows, ks, got, strict=True):
        assert_same_results(results, as_ranked(search_client.search(r["query"], r["history"], k)))
    with pytest.raises(ValueError, match="a batch holds"):
        search_client.search_batch([])


@pytest.mark.integration
def test_recommend_from_history_alone(search_client: SearchClient, in_process, shopper: dict):
    history = shopper["history"]
    results = search_client.recommend(history, top_k=6)
    assert_same_results(results, in_process.recommend(history, 6))
    assert len(results) == 6 and not {r.product_id for r in results} & set(history)
    # Cold start: the most popular products.
    assert_same_results(search_client.recommend([], top_k=3), in_process.recommend([], 3))


@pytest.mark.integration
def test_cli_recommend_prints_json(grpc_url: str, in_process, shopper: dict, capsys) -> None:
    history = ",".join(str(p) for p in shopper["history"])
    assert (
        main(["recommend", "--history", history, "--top-k", "4", "--json", "--url", grpc_url]) == 0
    )
    payload = json.loads(capsys.readouterr().out)
    want = in_process.recommend(shopper["history"], 4).product_ids.tolist()
    assert [r["product_id"] for r in payload["results"]] == want
    assert main(["recommend", "--top-k", "0", "--url", grpc_url]) == 2  # checked client-side


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (Filters(price_min=5, price_max=1), "price_min 5 > price_max 1"),
        (Filters(price_min="5"), "price_min must be a number"),
        (Filters(exclude_ids="1,2"), "not a string"),
    ],
)
def test_filters_are_checked_before_sending(filters, message) -> None:
    with SearchClient(OFFLINE_URL) as client, pytest.raises(ValueError, match=message):
        client.search("sofa", filters=filters)


@dataclass(frozen=True)
class FilterCase:
    """Filters that each leave out part of the tiny catalog, and requests they apply to."""

    query: str
    category: str  # the department of the query's best product
    exclude: int  # the query's best product
    candidates: list[int]  # for rerank: the query's top 30
    history: list[int]  # for recommend
    # About the middle half of the department's in-stock prices. Each bound lies halfway
    # between two catalog prices: the wire carries bounds as float32, which moves a bound
    # typed as a price by up to 2e-4 (see test_a_price_bound_equal_to_a_price_keeps_it).
    price_min: float = -math.inf
    price_max: float = math.inf

    def client_filters(self, price: bool = True) -> Filters:
        return Filters(
            category_prefix=self.category,
            price_min=self.price_min if price else None,
            price_max=self.price_max if price else None,
            exclude_ids=[self.exclude],
            in_stock_only=True,
        )

    def core_filters(self, catalog, price: bool = True) -> CoreFilters:
        """The same filters as the in-process pipeline takes them (excluded rows, not ids)."""
        return CoreFilters(
            category_prefix=self.category,
            price_min=self.price_min if price else -math.inf,
            price_max=self.price_max if price else math.inf,
            exclude_rows=catalog.known_rows([self.exclude]),
            in_stock_only=True,
        )

    def allowed(self, catalog, price: bool = True) -> np.ndarray:
        """(N,) bool: the catalog rows these filters let through, from the facets by hand."""
        categories = [c.lower() for c in catalog.categories.astype(str)]
        ok = np.array([c.startswith(self.category.lower()) for c in categories])
        if price:
            ok &= (catalog.prices >= self.price_min) & (catalog.prices <= self.price_max)
        return ok & catalog.in_stock.astype(bool) & (catalog.product_ids != self.exclude)


@pytest.fixture(scope="module")
def filter_case(in_process, shopper: dict) -> FilterCase:
    catalog = in_process.catalog
    query = "sofa"
    found = [int(p) for p in in_process.search(query, [], 30).product_ids]
    (row,) = catalog.known_rows(found[:1])
    department = str(catalog.categories[row]).split(" > ")[0]
    case = FilterCase(query, department, found[0], found, shopper["history"])
    prices = np.unique(catalog.prices[case.allowed(catalog, price=False)])
    low, high = len(prices) // 4, 3 * len(prices) // 4
    case = replace(
        case,
        price_min=float(prices[low - 1] + prices[low]) / 2,
        price_max=float(prices[high] + prices[high + 1]) / 2,
    )
    # Each filter leaves something out of the catalog, and something is left.
    assert case.allowed(catalog).sum() < case.allowed(catalog, price=False).sum()
    assert (catalog.prices[case.allowed(catalog, price=False)] < case.price_min).any()
    assert (catalog.prices[case.allowed(catalog, price=False)] > case.price_max).any()
    assert not all(c.startswith(department) for c in catalog.categories.astype(str))
    assert not catalog.in_stock.all()
    assert case.allowed(catalog).sum() > 0
    return case


def assert_obeys(catalog, case: FilterCase, ids: list[int], want: int, price: bool = True):
    """`ids` are `want` products that all pass the filters (checked on the catalog's facets)."""
    rows = catalog.known_rows(ids)
    assert len(rows) == len(ids) == want > 0
    assert case.allowed(catalog, price)[rows].all(), ids
    assert case.exclude not in ids


@pytest.mark.integration
def test_filters_reach_every_mode(
    search_client: SearchClient, in_process, shopper: dict, filter_case: FilterCase
):
    """Category, price range, in stock and an excluded id, in search, rerank and recommend,
    against the real server: every product obeys every filter, answers are as long as the
    catalog allows, and ranked like the in-process pipeline with the same filters."""
    first = search_client.search("sofa", top_k=5)
    skip = [first[0].product_id]
    again = search_client.search("sofa", top_k=5, filters=Filters(exclude_ids=skip))
    assert skip[0] not in {r.product_id for r in again} and len(again) == 5
    cheap = search_client.recommend(
        shopper["history"], 5, Filters(price_max=50, in_stock_only=True)
    )
    catalog = in_process.recommender.catalog
    rows = catalog.known_rows([r.product_id for r in cheap])
    assert len(cheap) == 5 and (catalog.prices[rows] <= 50).all() and catalog.in_stock[rows].all()

    case, k = filter_case, 8
    catalog = in_process.catalog
    # search: all five filters; it widens past retrieval, so k whenever k products match.
    unfiltered = search_client.search(case.query, top_k=k)
    assert not case.allowed(catalog)[catalog.known_rows([r.product_id for r in unfiltered])].all()
    got = search_client.search(case.query, top_k=k, filters=case.client_filters())
    assert_obeys(catalog, case, [r.product_id for r in got], min(k, case.allowed(catalog).sum()))
    assert_same_results(got, in_process.search(case.query, [], k, case.core_filters(catalog)))
    # rerank: only the caller's candidates that pass.
    got = search_client.rerank(
        case.query, case.candidates, top_k=k, filters=case.client_filters(price=False)
    )
    passing = case.allowed(catalog, price=False)[catalog.known_rows(case.candidates)].sum()
    assert_obeys(catalog, case, [r.product_id for r in got], min(k, passing), price=False)
    assert {r.product_id for r in got} <= set(case.candidates)
    want = in_process.rerank(case.query, case.candidates, [], k, case.core_filters(catalog, False))
    assert_same_results(got, want)
    # recommend: the whole catalog but the shopper's history.
    catalog = in_process.recommender.catalog
    got = search_client.recommend(case.history, k, case.client_filters(price=False))
    allowed = case.allowed(catalog, price=False)
    allowed[catalog.known_rows(case.history)] = False
    assert_obeys(catalog, case, [r.product_id for r in got], min(k, allowed.sum()), price=False)
    want = in_process.recommend(case.history, k, case.core_filters(catalog, price=False))
    assert_same_results(got, want)


@pytest.mark.integration
def test_a_price_bound_equal_to_a_price_keeps_it(search_client: SearchClient, in_process):
    catalog = in_process.recommender.catalog
    price = next(float(p) for p in catalog.prices if float(np.float32(p)) != p)
    at_price = set(catalog.product_ids[catalog.prices == price].tolist())
    got = search_client.recommend([], len(at_price), Filters(price_min=price, price_max=price))
    assert {r.product_id for r in got} == at_price


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["search", "rerank", "recommend"])
def test_cli_filters_reach_every_mode(
    grpc_url: str, in_process, filter_case: FilterCase, mode: str
) -> None:
    """`python -m shoprank_client <mode> ... --category --price-min --price-max --exclude
    --in-stock --json` against the real server: the printed results obey every filter, are
    as many as the catalog allows, and are the in-process pipeline's filtered answer."""
    case, k = filter_case, 6
    catalog = in_process.recommender.catalog if mode == "recommend" else in_process.catalog
    filters = case.core_filters(catalog)
    allowed = case.allowed(catalog)
    if mode == "search":
        args = [case.query]
        want = in_process.search(case.query, [], k, filters)
    elif mode == "rerank":
        args = [case.query, "--candidates", ",".join(map(str, case.candidates))]
        want = in_process.rerank(case.query, case.candidates, [], k, filters)
        allowed &= np.isin(catalog.product_ids, case.candidates)
    else:
        args = ["--history", ",".join(map(str, case.history))]
        want = in_process.recommend(case.history, k, filters)
        allowed[catalog.known_rows(case.history)] = False
    result = _cli(
        mode,
        *args,
        "--category",
        case.category,
        "--price-min",
        repr(case.price_min),
        "--price-max",
        repr(case.price_max),
        "--exclude",
        str(case.exclude),
        "--in-stock",
        "--top-k",
        str(k),
        "--json",
        "--url",
        grpc_url,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)["results"]
    ids = [r["product_id"] for r in printed]
    assert_obeys(catalog, case, ids, min(k, allowed.sum()))
    results = [SearchResult(**r) for r in printed]
    assert_same_results(results, want)


@pytest.mark.integration
def test_cli_explain_prints_the_parts(grpc_url: str, shopper: dict, capsys) -> None:
    history = ",".join(str(p) for p in shopper["history"])
    args = ["search", shopper["query"], "--history", history, "--top-k", "3", "--explain"]
    assert main([*args, "--url", grpc_url]) == 0
    out = capsys.readouterr().out
    assert out.count(" semantic") == 3 and "closest in history:" in out
    assert main([*args, "--json", "--url", grpc_url]) == 0
    payload = json.loads(capsys.readouterr().out)
    for r in payload["results"]:
        assert sum(r["explanation"]["parts"].values()) == pytest.approx(r["score"], abs=1e-3)


def test_backoff_between_retries_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retrying a server that is down (real UNAVAILABLE from gRPC): the pauses double from
    backoff_s, but never beyond max_backoff_s (plus jitter), and end within the deadline."""
    import shoprank_client.search_client as search_client

    pauses: list[float] = []
    monkeypatch.setattr(search_client.time, "sleep", pauses.append)
    (port,) = free_ports(1)
    client = SearchClient(
        f"localhost:{port}", retries=8, backoff_s=0.1, max_backoff_s=0.4, timeout_s=60,
        throttle_k=0,
    )  # fmt: skip
    with client, pytest.raises(SearchError) as info:
        client.search("red sofa")
    assert info.value.status == "UNAVAILABLE"
    assert len(pauses) == 8
    assert 0.1 <= pauses[0] <= 0.2 and pauses[-1] >= 0.4  # grew to the cap
    assert max(pauses) <= 0.8  # 0.4 with at most 2x jitter: uncapped, the 8th is 12.8+ s


# --- gRPC targets: one server, or replicas balanced per request (shoprank_client.target) ---
@pytest.mark.parametrize(
    ("text", "scheme", "endpoints"),
    [
        ("localhost:8001", "", ("localhost:8001",)),
        ("[::1]:8001", "", ("[::1]:8001",)),
        ("dns:///search.shop.svc.local:8001", "dns", ("search.shop.svc.local:8001",)),
        ("dns://127.0.0.1:5353/search.test:8001", "dns", ("search.test:8001",)),
        ("ipv4:127.0.0.2:8001,127.0.0.3:8001", "ipv4", ("127.0.0.2:8001", "127.0.0.3:8001")),
        ("ipv6:[::1]:8001", "ipv6", ("[::1]:8001",)),
    ],
)  # fmt: skip
def test_target_forms_are_parsed(text: str, scheme: str, endpoints: tuple) -> None:
    from shoprank_client.target import parse_target

    target = parse_target(text)
    assert (target.text, target.scheme, target.endpoints) == (text, scheme, endpoints)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "needs host:port"),
        ("dns:///search.test", "needs host:port"),  # gRPC would pick port 443
        ("dns://search.test:8001", "dns:///name:port"),
        ("ipv4:127.0.0.2", "needs host:port"),
        ("ipv4:127.0.0.2:8001,localhost:8001", "no IPv4 address"),
        ("ipv6:::1:8001", r"\[addr\]:port"),
        ("ipv4:127.0.0.2:0", "port 1..65535"),
        ("http://localhost:8001", "unsupported gRPC target"),
        ("127.0.0.2:8001,127.0.0.3:8001", "unsupported gRPC target"),
    ],
)
def test_bad_targets_are_refused_before_a_channel_is_made(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchClient(text)


def test_cli_bad_target_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["health", "--url", "ipv4:127.0.0.2"]) == 2
    assert "error: gRPC target 'ipv4:127.0.0.2' needs host:port" in capsys.readouterr().err


def test_channel_balances_per_request_and_keeps_tritonclient_defaults() -> None:
    """tritonclient uses only the channel options it is given once given any, so the
    client passes tritonclient's defaults (unlimited message size: a 4 MB gRPC default
    would fail large batches) alongside round_robin."""
    import tritonclient.grpc as grpcclient

    from shoprank_client.target import channel_args

    options = dict(channel_args())
    assert options["grpc.lb_policy_name"] == "round_robin"
    assert options["grpc.max_receive_message_length"] == grpcclient.MAX_GRPC_MESSAGE_SIZE
    assert options["grpc.max_send_message_length"] == grpcclient.MAX_GRPC_MESSAGE_SIZE
    keepalive = grpcclient.KeepAliveOptions()
    assert options["grpc.keepalive_time_ms"] == keepalive.keepalive_time_ms
    assert options["grpc.keepalive_timeout_ms"] == keepalive.keepalive_timeout_ms


@pytest.mark.integration
@pytest.mark.parametrize("form", ["ipv4:127.0.0.1:{port}", "dns:///localhost:{port}"])
def test_target_forms_reach_the_server(grpc_url: str, form: str, shopper: dict) -> None:
    """The balanced forms of one server's address answer as its host:port does."""
    port = grpc_url.rpartition(":")[2]
    request = (shopper["query"], shopper["history"], 5)
    with SearchClient(grpc_url) as plain, SearchClient(form.format(port=port)) as balanced:
        assert balanced.target.scheme in ("ipv4", "dns")
        expected = plain.search(*request)
        assert [r.product_id for r in balanced.search(*request)] == [r.product_id for r in expected]
