"""`python -m shoprank.bench.benchmarks_doc --out OUT [--doc docs/benchmarks.md]` (`make
benchmarks-doc`): the benchmark commands' own output files, as the sections of
docs/benchmarks.md.

Reads whatever of these exists below OUT and writes one section per file found: a table,
the command that produces the file, the file's modification date and the current commit.

    metrics.json                  relevance                  make eval (make train)
    onnx/conversion_report.json   encoder conversion         make convert
    reports/bench.csv             latency and throughput     make bench
    reports/scale.csv             catalog scale              make bench-scale
    reports/ann.csv               ANN libraries              make bench-ann
    loadtest/summary.json         load test                  make loadtest
    reports/deploy.json           hot deploy under load      make bench-deploy

Each section sits between `<!-- benchmarks:NAME -->` and `<!-- /benchmarks:NAME -->`. Only
the sections of the files found are replaced, so the figures of other runs, and anything
written outside the markers, stay. `reports/scale.png` is copied beside the doc.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shoprank import contract
from shoprank.bench import ann, scale
from shoprank.bench.batching import parse_batching
from shoprank.bench.report import interleaved_note, round_ratios
from shoprank.bench.systems import ONNX_INT8, ONNX_INT8_ENCODER, TRITON, TRITON_ECHO
from shoprank.configargs import parse_config
from shoprank.data.artifacts import SELECTED_ENCODER_KEY
from shoprank.data.metrics import (
    CLICK_AUC,
    HIT_RATE_AT_10,
    MRR,
    NDCG_AT_10,
    PURCHASE_NDCG_AT_10,
    RECALL_AT_100,
)

REPO = Path(__file__).resolve().parents[1]
SCALE_PLOT = "scale.png"
HEADER = """# Benchmarks

What shoprank measures, one section per benchmark command. `make benchmarks-doc OUT=<run
folder>` rewrites the sections whose output files exist below that folder; the others keep
their figures. Each section names the command that gives its figures, the date its file was
written and the commit this doc was written at. Unless a section says otherwise the
machine is 2 CPU cores, shared, and the catalog is the demo shop's 20,000 products.
"""


@dataclass
class BenchmarksDocConfig:
    """Where the measurements are read and where they are written; each field is a flag."""

    out: Path = field(default=contract.DEFAULT_ARTIFACTS, metadata={"help": "run folder read"})
    doc: Path = field(default=Path("docs/benchmarks.md"), metadata={"help": "doc updated"})


@dataclass(frozen=True)
class Rendered:
    """A section's body: the exact command that gives its figures, then Markdown lines."""

    command: str
    lines: list[str]


@dataclass(frozen=True)
class Source:
    """One benchmark output file and how its section is written."""

    name: str  # marker name
    path: str  # below OUT
    title: str
    render: Callable[[Path], Rendered]


# -- formatting -----------------------------------------------------------------------------
def num(value: object, digits: int = 2) -> str:
    """`value` with `digits` decimals; "–" for missing, empty or NaN."""
    if value is None or value == "" or isinstance(value, bool):
        return "–"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return "–" if math.isnan(number) else f"{number:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def file_date(path: Path) -> str:
    """The day `path` was last written (local time), as YYYY-MM-DD."""
    return datetime.date.fromtimestamp(path.stat().st_mtime).isoformat()


def current_commit(repo: Path = REPO) -> str:
    """`git rev-parse --short HEAD` of the repository holding this code ("unknown" outside one)."""
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


# -- relevance: metrics.json ---------------------------------------------------------------
RETRIEVAL_ORDER = (
    "popularity",
    "bm25",
    "zero_shot",
    "fine_tuned",
    "rrf",
    "learned_hybrid",
    "judged_cold_start",
    "served",
)
LABELS = {
    "popularity": "popularity",
    "bm25": "BM25",
    "zero_shot": "zero-shot MiniLM (dense, exact)",
    "fine_tuned": "fine-tuned dense (exact)",
    "rrf": "reciprocal-rank fusion",
    "learned_hybrid": "learned hybrid",
    "judged_cold_start": "fusion ranker at cold start (exact candidates)",
    "served": "**served pipeline** (int8 encoder, ANN + BM25, ranker, cold start)",
    "relevance_only": "relevance only",
    "weighted": "fusion: weighted",
    "concat_mlp": "fusion: concat MLP",
    "target_attention": "fusion: target attention",
    "session_popularity": "popularity",
    "cooccurrence": "item-to-item co-visits (recency-weighted)",
    "text_only": "text only (mean of the history's embeddings)",
    "sequential": "sequential model",
    "blend": "blend: sequential model + co-visits",
    "cold_start_popularity": "cold start: popularity, history withheld",
}


def _label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


def _scored(section: object, key: str) -> dict[str, dict]:
    """The entries of a metrics.json section that carry `key` (skips "split", "seconds"...)."""
    if not isinstance(section, Mapping):
        return {}
    return {k: v for k, v in section.items() if isinstance(v, Mapping) and key in v}


def _retrieval_lines(metrics: Mapping) -> list[str]:
    found = {
        **_scored(metrics.get("retrieval"), NDCG_AT_10),
        **_scored(metrics.get("baselines"), NDCG_AT_10),
    }
    cold = _scored(metrics.get("fusion"), NDCG_AT_10).get("judged_cold_start")
    if cold is not None:
        found["judged_cold_start"] = cold
    if not found:
        return []
    names = [n for n in RETRIEVAL_ORDER if n in found] + sorted(set(found) - set(RETRIEVAL_ORDER))
    queries = next(iter(found.values())).get("queries", "?")
    rows = [
        [_label(n), *(num(found[n].get(k), 4) for k in (NDCG_AT_10, RECALL_AT_100, MRR))]
        for n in names
    ]
    lines = [
        f"Retrieval, {queries} held-out queries, full catalog:",
        "",
        *table(["system", "NDCG@10", "Recall@100", "MRR"], rows),
    ]
    served, bm25 = found.get("served", {}), found.get("bm25", {})
    if served.get(NDCG_AT_10) and bm25.get(NDCG_AT_10):
        ratio = served[NDCG_AT_10] / bm25[NDCG_AT_10]
        lines += ["", f"Served NDCG@10 = **{ratio:.3f}× BM25**."]
    return lines


def _gain(gain: object) -> str:
    if not isinstance(gain, Mapping):
        return "–"
    return (
        f"{gain['relative'] * 100:+.1f}% "
        f"({gain['ci95_low'] * 100:+.1f}% … {gain['ci95_high'] * 100:+.1f}%)"
    )


def _fusion_lines(metrics: Mapping) -> list[str]:
    fusion = metrics.get("fusion") or {}
    variants = _scored(fusion, CLICK_AUC)
    baseline = _scored(metrics.get("baselines"), CLICK_AUC).get("session_popularity")
    if baseline is not None:
        variants["session_popularity"] = baseline
    if not variants:
        return []
    served = fusion.get("served")
    rows = [
        [
            _label(name) + (" (served)" if name == served else ""),
            num(m.get(CLICK_AUC), 4),
            num(m.get(PURCHASE_NDCG_AT_10), 4),
            _gain(m.get("gain_vs_relevance_only")),
        ]
        for name, m in sorted(variants.items(), key=lambda kv: kv[0] != "relevance_only")
    ]
    counts = (m.get("sessions_with_purchase") for m in variants.values())
    sessions = next((c for c in counts if c is not None), "?")
    lines = [
        "",
        f"Search with behaviour, held-out sessions ({sessions} with a purchase):",
        "",
        *table(["ranker", "click AUC", "purchase-NDCG@10", "vs relevance only (95% CI)"], rows),
    ]
    seq = fusion.get("sequential_in_search") or {}
    test = seq.get("test_purchase_ndcg@10")
    if isinstance(test, Mapping):
        lines += [
            "",
            "The served recommender's score as a search signal (weight λ chosen on validation "
            "sessions):",
            "",
            *table(
                ["λ", "served without it", "served with it", "gain (95% CI)", "sessions"],
                [
                    [
                        num(seq.get("lambda"), 2),
                        num(test.get("served"), 4),
                        num(test.get("served_plus_sequential"), 4),
                        _gain(seq.get("gain")),
                        str(seq.get("sessions", "?")),
                    ]
                ],
            ),
        ]
    return lines


def _recommendation_lines(metrics: Mapping) -> list[str]:
    models = _scored(metrics.get("recommendation"), HIT_RATE_AT_10)
    if not models:
        return []
    users = next(iter(models.values())).get("users", "?")
    rec = metrics["recommendation"]
    served = (rec.get("served") or {}).get("name")
    val = rec.get("validation") or {}
    rows = [
        [
            f"**{_label(n)}** (served)" if n == served else _label(n),
            *(num(val.get(n, {}).get(k), 4) for k in (HIT_RATE_AT_10, NDCG_AT_10)),
            *(num(m.get(k), 4) for k in (HIT_RATE_AT_10, NDCG_AT_10, MRR)),
        ]
        for n, m in models.items()
    ]
    header = ["model", "val HR@10", "val NDCG@10", "test HR@10", "test NDCG@10", "test MRR"]
    return [
        "",
        f"Recommendation, leave-last-out, {users} shoppers, every product ranked:",
        "",
        *table(header, rows),
    ]


def relevance(path: Path) -> Rendered:
    """metrics.json: retrieval, search with behaviour, recommendation."""
    metrics = json.loads(path.read_text())
    command = "make eval" if "baselines" in metrics else "make train"
    lines = _retrieval_lines(metrics) + _fusion_lines(metrics) + _recommendation_lines(metrics)
    return Rendered(command, lines or ["metrics.json holds no relevance figures."])


# -- conversion: onnx/conversion_report.json -----------------------------------------------
def conversion(path: Path) -> Rendered:
    """The encoder variants the quality gate judged, and the dense index conversion built."""
    report = json.loads(path.read_text())
    rows = []
    for name, v in report.get("variants", {}).items():
        if v.get("path") is None:
            rows.append([name, "–", "–", "–", "–", "–", f"no: {v.get('reason', '')}"])
            continue
        verdict = "yes" if v.get("accepted") else f"no: {v.get('reason', '')}"
        rows.append(
            [
                name,
                num(v.get("size_mb"), 1),
                num((v.get("latency") or {}).get("p50_ms")),
                num(v.get("cosine"), 4),
                num((v.get("quality") or {}).get(NDCG_AT_10), 4),
                "–" if v.get("batch_drift") is None else f"{v['batch_drift']:.1e}",
                verdict,
            ]
        )
    header = [
        "encoder",
        "MB",
        "p50 ms (batch 1)",
        "cosine vs fp32",
        "NDCG@10",
        "batch drift",
        "accepted",
    ]
    lines = [*table(header, rows), "", f"Served: **{report.get(SELECTED_ENCODER_KEY, '?')}**."]
    dense = report.get("dense_index")
    if isinstance(dense, Mapping):
        recall_key = next((k for k in dense if k.startswith("test_recall@")), None)
        tuning = dense.get("tuning") or {}
        knob = f", `{tuning['param']}` {tuning['value']}" if tuning.get("param") else ""
        recall = (
            f"; {recall_key.removeprefix('test_')} against the exact scan "
            f"{num(dense[recall_key], 4)} on the test queries"
            if recall_key
            else ""
        )
        lines += [
            "",
            f"Dense index: {dense['config']['kind']} over {dense['products']:,} products"
            f"{knob}, {num(dense.get('size_mb'), 1)} MB, built in "
            f"{num(dense.get('build_s'), 1)} s{recall}.",
        ]
    return Rendered("make convert", lines)


# -- latency and throughput: reports/bench.csv ---------------------------------------------
def _cell(rows: list[dict[str, str]], system: str, column: str) -> str:
    """`column` of `system`'s concurrency-1 row ("" when there is no such row or column)."""
    for r in rows:
        if r["system"] == system and r["concurrency"] == "1":
            return r.get(column) or ""
    return ""


def _p50(rows: list[dict[str, str]], system: str) -> float | None:
    value = _cell(rows, system, "p50_ms")
    return float(value) if value else None


def _rounds(rows: list[dict[str, str]], system: str) -> list[float]:
    """A concurrency-1 row's p50 per interleaved round ([] when it has none)."""
    return [float(v) for v in _cell(rows, system, "interleaved_p50_ms").split()]


def _encoder_inside(rows: list[dict[str, str]]) -> float | None:
    """The in-process int8 row's encoder p50 inside the pipeline (None: no such column)."""
    value = _cell(rows, ONNX_INT8, "encoder_in_pipeline_p50_ms")
    return float(value) if value else None


def _bench_ratio_lines(rows: list[dict[str, str]]) -> list[str]:
    """The same-run p50 ratios the benchmark's targets are set on, where both rows exist."""
    pairs = (
        ("Triton ×1 / in-process int8 pipeline", (TRITON, ONNX_INT8)),
        (
            "the transport alone (echo model ×1) / in-process int8 pipeline",
            (TRITON_ECHO, ONNX_INT8),
        ),
        ("in-process int8 pipeline / int8 encoder alone", (ONNX_INT8, ONNX_INT8_ENCODER)),
    )
    out = []
    for name, (top, bottom) in pairs:
        a, b = _p50(rows, top), _p50(rows, bottom)
        if a is not None and b:
            paired = round_ratios(_rounds(rows, top), _rounds(rows, bottom))
            note = f" ({interleaved_note(paired)})" if paired else ""
            out.append(f"{name}: {a:.2f} / {b:.2f} ms = **{a / b:.2f}×**{note}")
    inside, alone = _encoder_inside(rows), _p50(rows, ONNX_INT8_ENCODER)
    if inside is not None and alone:
        name = "the int8 encoder inside the pipeline / alone"
        out.append(f"{name}: {inside:.2f} / {alone:.2f} ms = **{inside / alone:.2f}×**")
    return ["p50 ratios in this run: " + "; ".join(out) + "."] if out else []


def _batching_lines(rows: list[dict[str, str]]) -> list[str]:
    """Mean dynamic batch size per served model and concurrency (Triton's statistics)."""
    found = [(r, parse_batching(r.get("batching") or "")) for r in rows]
    found = [(r, b) for r, b in found if b]
    if not found:
        return []
    models = list(dict.fromkeys(b.model for _, batching in found for b in batching))
    table_rows = []
    for r, batching in found:
        by = {b.model: b for b in batching}
        cells = [num(by[m].mean_batch) if m in by else "–" for m in models]
        table_rows.append([r["label"] or r["system"], r["concurrency"], *cells])
    return [
        "",
        "Mean dynamic batch size per model (requests / executions, Triton's statistics over "
        "each row's run):",
        "",
        *table(["system", "conc.", *models], table_rows),
    ]


def bench(path: Path) -> Rendered:
    """Every (system, concurrency) of `make bench`, with its ratios to the naive baseline,
    the same-run ratios of its targets and the served models' batch sizes."""
    rows = []
    found = read_csv(path)
    for r in found:
        head = [r["label"] or r["system"], r["transport"], r["concurrency"]]
        if not r["p50_ms"]:
            rows.append([*head, f"failed: {r['error']}", "", "", "", "", ""])
            continue
        rows.append(
            [
                *head,
                num(r["p50_ms"]),
                num(r["p95_ms"]),
                num(r["p99_ms"]),
                num(r["throughput_rps"], 1),
                num(r["latency_ratio_vs_naive"]),
                num(r["throughput_ratio_vs_naive_http_best"]),
            ]
        )
    header = ["system", "transport", "conc.", "p50 ms", "p95 ms", "p99 ms", "req/s"]
    header += ["naive p50 / p50", "req/s / naive HTTP best req/s"]
    ratios = _bench_ratio_lines(found)
    return Rendered(
        "make bench",
        [
            *table(header, rows),
            *(["", *ratios] if ratios else []),
            *_batching_lines(found),
            "",
            "Closed loop, the same held-out workload for every system; the load generator "
            "shares the cores with the servers. The concurrency-1 ratios are also measured in "
            "interleaved rounds (the systems they compare open together, each round sending the "
            "same requests through each in turn), so both sides of a ratio see the same "
            "machine; `make bench`'s targets are judged on the rounds' median.",
        ],
    )


# -- catalog scale: reports/scale.csv ------------------------------------------------------
def _scale_row(r: dict[str, str]) -> scale.Row:
    ints, strs = ("products", "concurrency"), ("retrieval", "system")
    return scale.Row(
        **{
            k: int(v) if k in ints else v if k in strs else float(v or "nan")
            for k, v in r.items()
            if k in scale.CSV_COLUMNS
        }
    )


def catalog_scale(path: Path) -> Rendered:
    """`make bench-scale`: each catalog size, exact scan vs ANN, Triton vs in process."""
    rows = [_scale_row(r) for r in read_csv(path)]
    sizes = ",".join(str(n) for n in dict.fromkeys(r.products for r in rows))
    command = "make bench-scale"
    if sizes != scale.ScaleConfig().sizes:
        command += f' BENCH_ARGS="--sizes {sizes}"'
    body = [
        [
            f"{r.products:,}",
            r.retrieval,
            "Triton, gRPC" if r.system == TRITON else "in process",
            str(r.concurrency),
            num(r.p50_ms, 1),
            num(r.p99_ms, 1),
            num(r.rps, 1),
            num(r.searcher_ms, 1) if r.system == TRITON else "–",
            num(r.recall_at_100, 3),
            num(r.index_mb, 0),
            num(r.build_s, 0),
            num(r.searcher_rss_mb, 0),
        ]
        for r in rows
    ]
    header = ["products", "dense retrieval", "served by", "conc.", "p50 ms", "p99 ms", "req/s"]
    header += ["ms in the searcher", "recall@100 vs exact", "index MB"]
    header += ["build s", "searcher stub MB"]
    lines = [*table(header, body), ""]
    for mode in dict.fromkeys(r.retrieval for r in rows):
        slope = scale.growth_exponent(rows, mode)
        if slope is not None:
            lines.append(f"- {mode}: the served c1 p50 grows as products^{slope:.2f}.")
    lines += [
        "",
        "`exact` is the float32 scan, `ann` the index kind conversion serves. Rows beyond the "
        "demo's products copy a real product with a new id and model number and a noisy "
        "embedding (near-duplicates: the hard case for 8-bit ANN). In-process rows are the same "
        "repository's files answering in the benchmark's process, server stopped; \"ms in "
        "the searcher\" is Triton's mean time per request in the served model, queue included.",
    ]
    return Rendered(command, lines)


# -- ANN libraries: reports/ann.csv --------------------------------------------------------
def ann_libraries(path: Path) -> Rendered:
    """`make bench-ann`: recall@100 and batch-1 latency of each index at each setting."""
    rows = read_csv(path)
    sizes = ",".join(dict.fromkeys(r["size"] for r in rows))
    command = "make bench-ann"
    if sizes != ann.AnnBenchConfig().sizes:
        command += f' BENCH_ARGS="--sizes {sizes}"'
    body = [
        [
            f"{int(r['size']):,}",
            r["library"],
            r["index"],
            r["param"],
            num(r["build_s"], 1),
            num(r["index_mb"], 0),
            num(r["recall_at_100"], 3),
            num(r["ms_per_query"]),
        ]
        for r in rows
    ]
    header = ["products", "library", "index", "search", "build s", "MB", "recall@100", "ms/query"]
    return Rendered(
        command,
        [
            *table(header, body),
            "",
            "Recall@100 against the exact scan over held-out demo queries; one search thread, "
            "batch 1.",
        ],
    )


# -- load test: loadtest/summary.json ------------------------------------------------------
def load_test(path: Path) -> Rendered:
    """`make loadtest`: Locust's aggregate, and what was refused or throttled apart."""
    s = json.loads(path.read_text())
    command = f"make loadtest USERS={s.get('users', '?')} RUN_TIME={s.get('run_time', '?')}"
    parts = [("all requests", s), ("refused by the server", s.get("refused"))]
    parts.append(("dropped by the client's throttle", s.get("throttled")))
    rows = [
        [
            what,
            f"{part['requests']:,}",
            f"{part['failures']:,}",
            num(part.get("rps"), 1),
            *(num(part.get(k), 0) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
        ]
        for what, part in parts
        if isinstance(part, Mapping)
    ]
    header = ["requests", "count", "failed", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    return Rendered(
        command,
        [
            *table(header, rows),
            "",
            f"{s.get('users', '?')} closed-loop Locust users over gRPC for "
            f"{s.get('run_time', '?')}, the held-out workload; Locust shares the cores with "
            "the server.",
        ],
    )


# -- hot deploy: reports/deploy.json -------------------------------------------------------
def hot_deploy(path: Path) -> Rendered:
    """`make bench-deploy`: a deploy and its rollback under load, window by window."""
    r = json.loads(path.read_text())
    users = r.get("users", "?")
    command = "make bench-deploy"
    if users != 8:
        command += f' BENCH_ARGS="--users {users}"'
    rows = [
        [
            name,
            num(w.get("start"), 1),
            num(w.get("end"), 1),
            f"{w['requests']:,}",
            str(w["failures"]),
            num(w.get("p50_ms"), 0),
            num(w.get("p99_ms"), 0),
            num(w.get("worst_rolling_p99_ms"), 0),
        ]
        for name, w in r.get("windows", {}).items()
    ]
    header = ["window", "from s", "to s", "requests", "failed", "p50 ms", "p99 ms"]
    header.append("worst 10 s p99 ms")
    return Rendered(
        command,
        [
            f"{users} closed-loop Locust users, {r['requests']:,} requests, "
            f"**{r['failures']} failed**; deploy {num(r.get('deploy_s'), 1)} s, rollback "
            f"{num(r.get('rollback_s'), 1)} s; swap p99 = "
            f"**{num(r.get('swap_p99_over_steady_p99'))}× the steady p99**.",
            "",
            *table(header, rows),
            "",
            "Seconds from the deploy's start; steady is the settle period before it, swap the "
            "deploy's start to the rollback's end. The plot of every request is "
            "`reports/deploy.png`.",
        ],
    )


SOURCES = (
    Source("relevance", "metrics.json", "Relevance", relevance),
    Source("conversion", "onnx/conversion_report.json", "Encoder conversion", conversion),
    Source("bench", "reports/bench.csv", "Latency and throughput", bench),
    Source("scale", "reports/scale.csv", "Catalog scale", catalog_scale),
    Source("ann", "reports/ann.csv", "ANN libraries", ann_libraries),
    Source("loadtest", "loadtest/summary.json", "Load test", load_test),
    Source("deploy", "reports/deploy.json", "Hot deploy under load", hot_deploy),
)


# -- the document --------------------------------------------------------------------------
def start_marker(name: str) -> str:
    return f"<!-- benchmarks:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- /benchmarks:{name} -->"


def section(source: Source, rendered: Rendered, date: str, commit: str, plot: bool) -> str:
    """One marked section: title, provenance line, body (and the scale plot)."""
    lines = [
        start_marker(source.name),
        f"## {source.title}",
        "",
        f"`{rendered.command}` → `{source.path}` · measured {date} · commit {commit}",
        "",
        *rendered.lines,
    ]
    if plot:
        lines += ["", f"![p50 against catalog size]({SCALE_PLOT})"]
    return "\n".join([*lines, end_marker(source.name)])


def _span(text: str, name: str) -> re.Match | None:
    pattern = re.escape(start_marker(name)) + r".*?" + re.escape(end_marker(name))
    return re.search(pattern, text, flags=re.DOTALL)


def update(text: str, sections: Mapping[str, str]) -> str:
    """`text` with each named section replaced in place; a section it lacks is inserted
    before the next section of SOURCES' order that it holds, else appended."""
    text = text if text.strip() else HEADER
    order = [s.name for s in SOURCES]
    for name, block in sections.items():
        found = _span(text, name)
        if found is not None:
            text = text[: found.start()] + block + text[found.end() :]
            continue
        later = (_span(text, n) for n in order[order.index(name) + 1 :])
        after = next((m for m in later if m is not None), None)
        if after is not None:
            text = text[: after.start()] + block + "\n\n" + text[after.start() :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    return text


def write_doc(out: Path, doc: Path, commit: str | None = None) -> list[str]:
    """Update `doc` from the outputs below `out`; return the names of the sections written."""
    commit = commit or current_commit()
    sections = {}
    for source in SOURCES:
        path = out / source.path
        if not path.is_file():
            continue
        plot = False
        if source.name == "scale" and (path.parent / SCALE_PLOT).is_file():
            doc.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path.parent / SCALE_PLOT, doc.parent / SCALE_PLOT)
            plot = True
        sections[source.name] = section(source, source.render(path), file_date(path), commit, plot)
    if sections:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(update(doc.read_text() if doc.exists() else "", sections))
    return list(sections)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 2 when OUT holds no benchmark output."""
    config = parse_config(BenchmarksDocConfig, argv, description=__doc__ or "")
    written = write_doc(Path(config.out), Path(config.doc))
    if not written:
        expected = ", ".join(s.path for s in SOURCES)
        print(f"error: none of {expected} below {config.out}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(written)} into {config.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
