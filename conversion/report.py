"""The conversion report in Markdown: variants, exclusion searches, TensorRT engines."""

from __future__ import annotations

from pathlib import Path

from shoprank.data.metrics import NDCG_AT_10


def report_lines(report: dict) -> list[str]:
    """The conversion report as a Markdown table."""
    p = report["parity"]
    lines = [
        "# Conversion report",
        "",
        "fp32 ONNX vs SentenceTransformer.encode: min cosine "
        f"{p['queries']['min_cosine']:.6f} (queries), "
        f"{p['products']['min_cosine']:.6f} (products); ranker max |Δscore| "
        f"{p['ranker_max_abs_diff']:.2e}; graph fused: {report['fused']}",
        "",
        "| variant | size MB | p50 ms (batch 1) | cosine vs fp32 | NDCG@10 | batch drift "
        "| accepted |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        if v.get("path") is None:
            lines.append(f"| {name} | - | - | - | - | - | no: {v['reason']} |")
            continue
        drift = v.get("batch_drift")
        lines.append(
            f"| {name} | {v['size_mb']} | {v['latency']['p50_ms']:.2f} | "
            f"{v['cosine']:.4f} | {v['quality'][NDCG_AT_10]:.4f} | "
            f"{'-' if drift is None else f'{drift:.1e}'} | "
            f"{'yes' if v['accepted'] else 'no: ' + v['reason']} |"
        )
    lines += ["", f"Served encoder: **{report['selected_encoder']}**"]
    qdq = report["variants"].get("int8_static_qdq", {}).get("static_qdq")
    if qdq:
        lines += ["", *_search_lines("Static QDQ exclusion search (CPU, uint8 activations)", qdq)]
    lines += ["", *_tensorrt_lines(report.get("tensorrt", {}))]
    if "dense_index" in report:
        lines += ["", *_dense_lines(report["dense_index"])]
    return lines


def _dense_lines(dense: dict) -> list[str]:
    tuning = dense["tuning"]
    recall_key = next(k for k in dense if k.startswith("test_recall@"))
    lines = [
        f"## Dense index: {dense['config']['kind']} over {dense['products']:,} products",
        "",
        f"Built in {dense['build_s']:.1f} s, {dense['size_mb']} MB; "
        f"{recall_key.replace('test_', '')} against the exact scan on the test queries: "
        f"**{dense[recall_key]:.4f}**.",
    ]
    if tuning.get("param"):
        lines += [
            "",
            f"Search knob `{tuning['param']}` = **{tuning['value']}**: the smallest reaching "
            f"recall@{tuning['k']} ≥ {tuning['target']} on validation queries"
            + ("" if tuning["reached"] else " (not reached: the largest tried)"),
            "",
            f"| {tuning['param']} | recall@{tuning['k']} | ms per query |",
            "|---|---|---|",
            *(
                f"| {t[tuning['param']]} | {t['recall']:.4f} | {t['ms_per_query']:.3f} |"
                for t in tuning["trials"]
            ),
        ]
    return lines


def _search_lines(title: str, qdq: dict) -> list[str]:
    lines = [
        f"## {title}",
        "",
        f"Calibrated on {qdq['calibration_queries']} train queries + "
        f"{qdq['calibration_products']} product texts; chosen on "
        f"{qdq['selection_queries']} val queries ({qdq['rule']}): **{qdq['exclusion']}** "
        f"({qdq['description']}); {qdq['seconds']:.0f}s.",
        "",
        "| exclusion set | mean cosine | min cosine | Q/DQ nodes | size MB | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for t in qdq["trials"]:
        p50 = f"{t['p50_ms']:.2f}" if t["p50_ms"] is not None else "-"
        lines.append(
            f"| {t['name']} | {t['mean_cosine']:.4f} | {t['min_cosine']:.4f} | "
            f"{t['qdq_nodes']} | {t['size_mb']} | {p50} |"
        )
    return lines


def _tensorrt_lines(trt: dict) -> list[str]:
    profile = trt.get("profile", {})
    shape = (
        f"batch {profile['min_batch']}/{profile['opt_batch']}/{profile['max_batch']}, "
        f"tokens {profile['min_seq']}/{profile['opt_seq']}/{profile['max_seq']} (min/opt/max)"
        if profile
        else ""
    )
    if not trt.get("engines"):
        why = trt.get("reason", "not attempted")
        return [f"TensorRT engines skipped: {why}. Profile: {shape}."]
    lines = [
        f"## TensorRT ({trt['reason']}); profile {shape}",
        "",
        "| plan | build s | size MB | p50 ms (batch 1) | cosine vs fp32 | NDCG@10 | accepted |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in trt["engines"].values():
        lat = e.get("latency", {}).get("p50_ms")
        verdict = "yes" if e.get("accepted") else "no"
        cos, ndcg = e.get("cosine"), e.get("quality", {}).get(NDCG_AT_10)
        lines.append(
            f"| {Path(e['plan']).name} | {e.get('build_s', '-')} | {e.get('size_mb', '-')} | "
            f"{f'{lat:.2f}' if lat is not None else '-'} | "
            f"{f'{cos:.4f}' if cos is not None else '-'} | "
            f"{f'{ndcg:.4f}' if ndcg is not None else '-'} | "
            f"{verdict}{': ' + e['reason'] if e.get('reason') else ''} |"
        )
    if "int8_qdq" in trt and "exclusion" in trt["int8_qdq"]:
        lines += ["", *_search_lines("Static QDQ for TensorRT (int8 symmetric)", trt["int8_qdq"])]
    lines += ["", f"Served plan (GPU repository): **{trt.get('selected_plan')}**"]
    return lines
