"""The README's and docs' figures, rendered from the committed runs under docs/measurements/.

A markdown file quotes a run in a block:

    <!-- figures: NAME docs/measurements/FILE.json -->
    ...what RENDERERS[NAME] makes of FILE.json...
    <!-- /figures -->

    python bench/figures.py            # rewrite every block from its JSON
    python bench/figures.py --check    # exit 1 naming each block that differs (tests/test_figures.py)

Each JSON is written by the tool that measured it (bench.py, bench_rerank.py, bench_batch.py, compare_demo.py, soak.py,


Each JSON is written by the tool that measured it (bench.py, bench_rerank.py, compare_demo.py, soak.py, chaos.py,
quantization_quality.py, gpu_throughput.py with --json/--out) and carries its provenance (bench/provenance.py);
every block opens with that line, so a figure always says which run, commit, machine and day it comes from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- figures: (\S+) (\S+) -->\n)(.*?)(<!-- /figures -->)", re.S)
# Written before the tools recorded provenance; the renderer says what the file does not.
LEGACY = {"docs/measurements/gpu_h200_torch_throughput.json": "e43cb86"}
GOAL_X_RAW, GOAL_P50_MS, GOAL_INT8 = 0.85, 2.0, 1.6


def provenance_line(doc: dict, path: str) -> str:
    p = doc.get("provenance")
    if p is None:
        return (f"From `{path}`, committed in {LEGACY[path]}; the file records the device and the torch "
                "version, not the commit, machine or date it was measured at.")
    m = p["machine"]
    dirty = " (with uncommitted changes)" if p["dirty"] else ""
    return (f"Measured by `{p['command']}` at commit {p['commit']}{dirty} on {p['date'][:10]}: {m['cores']} cores "
            f"({m['cpu']}), load average {m['load_average_at_start']:.2f} at start, onnxruntime {m['onnxruntime']} "
            f"(`{path}`).")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


BENCH_PATHS = ("raw", "triton", "gateway", "gateway-ensemble", "gateway-w2", "peer", "reference", "raw-int8",
               "gateway-int8")


def _bench_cell(path: str, c: dict | None) -> str:
    if c is None:
        return ""
    if "x_raw" not in c:
        return f"{c['texts_per_s']:.1f}"
    ratio = f"**{c['x_raw']:.2f}**" if path == "gateway" else f"{c['x_raw']:.2f}"
    return f"{c['texts_per_s']:.1f} ({ratio})"


def bench_throughput(doc: dict) -> list[str]:
    t = doc["summary"]["throughput"]
    paths = [p for p in BENCH_PATHS if any(p in cells for cells in t.values())]
    rows = [[load, *(_bench_cell(path, cells.get(path)) for path in paths)] for load, cells in t.items()]
    errors = sum(c["errors"] for cells in t.values() for c in cells.values())
    head = (f"Medians of {doc['rounds_run']} alternating rounds, {doc['seconds_per_run']:g} s per server run "
            f"(longer where the raw rate needs it), {doc['model']}; texts/s (ratio to raw; int8 paths to raw int8); "
            f"errors {errors}:")
    ways = [f"{load} " + ", ".join(f"{w} {v:.1f}" for w, v in cells["raw"]["ways"].items())
            for load, cells in t.items() if "ways" in cells.get("raw", {})]
    tail = ["", "raw is the better of its two ways, texts/s: " + "; ".join(ways) + "."] if ways else []
    return [head, "", *_table(["load", *paths], rows), *tail]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


# gateway / raw goals per model and load (issue 19); the near-free model measures the serving path alone.
GOALS_X_RAW = {"near-free": {"S32": 0.25, "B32": 0.85}}
DEFAULT_GOALS_X_RAW = {"S32": GOAL_X_RAW}
GOAL_X_PEER, GOAL_WORKERS = 3.0, 1.6


def _over(cells: dict, num: str, den: str) -> float | None:
    if num in cells and den in cells and cells[den]["texts_per_s"]:
        return cells[num]["texts_per_s"] / cells[den]["texts_per_s"]
    return None


def _path_goals(doc: dict) -> list[list[str]]:
    """Per load: gateway / raw against its goal, gateway / peer, 2 workers / 1, and direct / ensemble (no goal)."""
    t, near_free = doc["summary"]["throughput"], doc.get("model") == "near-free"
    goals, rows = GOALS_X_RAW.get(doc.get("model", ""), DEFAULT_GOALS_X_RAW), []
    for load, goal in goals.items():
        if load in t and "gateway" in t[load]:
            x = t[load]["gateway"]["x_raw"]
            rows.append([f"gateway >= {goal}x raw, {load}", f"{x:.2f}", _verdict(x >= goal)])
    checks = [("gateway", "peer", "gateway >= {g}x the peer", GOAL_X_PEER if near_free else None),
              ("gateway-w2", "gateway", "2 gateway workers >= {g}x 1", GOAL_WORKERS),
              ("gateway", "gateway-ensemble", "direct path / ensemble (no goal)", None)]
    for num, den, what, goal in checks:
        for load, cells in t.items():
            if (ratio := _over(cells, num, den)) is not None:
                rows.append([f"{what.format(g=goal)}, {load}", f"{ratio:.2f}",
                             _verdict(ratio >= goal) if goal else ""])
    return rows


def _hop(p50: dict) -> str:
    """The encoder step alone over gRPC (bench/hop_latency.py): the floor of any path through Triton."""
    return f"; the encoder step alone {p50['encoder-hop']:.1f} ms" if "encoder-hop" in p50 else ""


def bench_goals(doc: dict) -> list[str]:
    s = doc["summary"]
    rows = _path_goals(doc)
    if "p50_one_short_text_ms" in s:
        p = s["p50_one_short_text_ms"]
        extra = p["gateway"] - p["raw"]
        rows.append([f"p50, 1 client x 1 short text <= raw + {GOAL_P50_MS:g} ms",
                     f"raw {p['raw']:.1f} ms, triton {p['triton']:.1f} ms, gateway {p['gateway']:.1f} ms "
                     f"({extra:+.1f} ms)" + _hop(p), _verdict(extra <= GOAL_P50_MS)])
    if s["int8"]:
        i8 = s["int8"]
        rows.append([f"int8 >= {GOAL_INT8}x fp32 through the gateway, {', '.join(i8)}",
                     ", ".join(f"{v['gateway']:.2f}x" for v in i8.values())
                     + " (raw ONNX Runtime: " + ", ".join(f"{v['raw']:.2f}x" for v in i8.values()) + ")",
                     _verdict(all(v["gateway"] >= GOAL_INT8 for v in i8.values()))])
    return _table(["goal", "measured", ""], rows)


def bench_cpu(doc: dict) -> list[str]:
    s32 = doc["summary"]["throughput"]["S32"]
    gw = {k: v for k, v in s32["gateway"]["cores"].items() if v >= 0.005 and k != "reference"}
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(gw.items(), key=lambda kv: -kv[1]))
    return [f"CPU under S32, cores used (CPU seconds / wall seconds): raw {s32['raw']['cores']['bench']:.2f}; "
            f"gateway path: {parts}."]


def rerank(doc: dict) -> list[str]:
    s = doc["summary"]
    rows = [[name, f"{p['pairs_per_s']:.0f}", f"{p['p50_ms']:.1f} ms" if "p50_ms" in p else "",
             ", ".join(f"{k} {v:.2f}" for k, v in p["cores"].items() if v >= 0.005)] for name, p in s["paths"].items()]
    head = (f"{doc['model']}; {doc['clients']} clients x (1 query + {doc['docs_per_request']} documents); medians "
            f"of {doc['rounds_run']} alternating rounds, {doc['seconds_per_run']:g} s per server run; errors "
            f"{sum(p['errors'] for p in s['paths'].values())}:")
    ratios = [[name, f"**{v:.2f}**"] for name, v in s["ratios"].items()]
    return [head, "", *_table(["path", "pairs/s", "p50", "CPU, cores"], rows), "",
            *_table(["ratio (of the medians above)", ""], ratios)]


def cost(doc: dict) -> list[str]:
    price = doc["compare"]["list_prices_per_1m_usd"]["text-embedding-3-small"]
    r = doc["reembed"]
    rows = [[name, f"{m['texts']:,}", f"{m['tokens']:,}", f"{m['tokens_per_s']:,}", f"${m['cost_per_1m_usd']:.4f}",
             f"{m['cost_per_1m_usd'] / price:.2f}"] for name, m in r["models"].items()]
    return [f"`embeddings-reembed --batch-size {r['batch_size']} --concurrency {r['concurrency']}` through the "
            f"gateway, priced at ${doc['node_hour_price_usd']}/h; text-embedding-3-small lists ${price} per 1M "
            "tokens:", "",
            *_table(["model", "texts", "tokens", "tokens/s", "cost per 1M tokens", "/ text-embedding-3-small"], rows)]


def _label(e: dict) -> str:
    dims = f" (dimensions={e['dimensions']})" if e["dimensions"] else ""
    return f"{e['label']}: {e['model']}{dims}"


def compare_agreement(doc: dict) -> list[str]:
    c = doc["compare"]
    labels = {e["label"]: _label(e) for e in c["endpoints"]}
    rows = [[labels[a["endpoint"]], *(f"{a['overlap@k'][k]:.3f}" for k in ("1", "10", "100")), f"{a['top1']:.3f}",
             f"{a['spearman']:.3f}"] for a in c["agreement"]]
    return _table(["endpoint", "overlap@1", "overlap@10", "overlap@100", "top-1 agreement", "Spearman"], rows)


def compare_quality(doc: dict) -> list[str]:
    rows = [[_label(e), f"{e['quality']['ndcg@10']:.3f}", f"{e['quality']['recall@100']:.3f}",
             str(e["quality"]["queries"])] for e in doc["compare"]["endpoints"]]
    return _table(["endpoint", "nDCG@10", "recall@100", "labelled queries"], rows)


def compare_speed(doc: dict) -> list[str]:
    rows = [[_label(e), f"{e['speed']['tokens_per_s']:,.0f}", f"{e['speed']['inputs_per_s']:.1f}",
             f"{e['speed']['p50_s'] * 1000:.0f} ms", f"{e['speed']['p95_s'] * 1000:.0f} ms",
             str(e["speed"]["requests"]), f"${e['cost_per_1m_tokens_usd']:.5f}"] for e in doc["compare"]["endpoints"]]
    return _table(["endpoint", "tokens/s", "texts/s", "p50", "p95", "requests", "cost per 1M tokens"], rows)


def soak(doc: dict) -> list[str]:
    s = doc["soak"]
    kinds = "/".join(str(s[f"{k}_errors"]) for k in ("connect", "read", "write", "status", "timeout"))
    head = (f"{doc['minutes']:g} minutes, {doc['clients']} clients, single texts (4 short : 1 long, every text "
            f"distinct): {s['requests']:,} requests ({s['requests'] / (s['duration_us'] / 1e6):.1f}/s), p50 "
            f"{s['p50_us'] / 1e3:.0f} ms, p99 {s['p99_us'] / 1e3:.0f} ms; errors: warm-up {doc['warmup']['errors']}, "
            f"soak {s['errors']} (connect/read/write/status/timeout {kinds}).")
    rows = [[name, f"{m['after_warmup']} MB", f"{m['end']} MB", f"{m['end'] - m['after_warmup']:+d} MB"]
            for name, m in doc["rss_mb"].items()]
    return [head, "", *_table(["process", "RSS after warm-up", "RSS at end", "growth"], rows)]


def quantization(doc: dict) -> list[str]:
    rows = [[m["model"], f"{m['float32']:.1f}", f"{m['int8']:.1f}", f"{m['int8'] / m['float32']:.3f}",
             f"{m['binary']:.1f}", f"{m['binary'] / m['float32']:.3f}", " / ".join(str(b) for b in m["bytes"])]
            for m in doc["models"]]
    return [f"Spearman x100 on {doc['pairs']} held-out pairs:", "",
            *_table(["model", "float32", "int8", "int8 / float", "binary", "binary / float",
                     "bytes per vector (float32 / int8 / binary)"], rows)]


def gpu_proxy(doc: dict) -> list[str]:
    by = {}
    for r in doc["rows"]:
        by.setdefault((r["model"], r["dtype"], r["tokens"]), {})[r["batch"]] = r["texts_per_s"]
    rows = [[m, d, str(t), f"{b[32]:,.0f}", f"{b[128]:,.0f}"] for (m, d, t), b in by.items() if d == "float16"]
    return [f"Eager PyTorch encoder only, random weights, {doc['device']}, torch {doc['torch']}; texts/s:", "",
            *_table(["model", "dtype", "tokens per text", "batch 32", "batch 128"], rows)]


def _p50s(r: dict) -> list[str]:
    return [f"{r['p50_ms']:.0f} ms", f"{r['p99_ms']:.0f} ms", f"{r['texts_per_s']:.1f}"]


def batch(doc: dict) -> list[str]:
    """bench_batch.py: online S32 alone and beside a running batch, and the batch's own rate."""
    plan, s, rounds = doc["plan"], doc["summary"], doc["rounds"]
    errors = sum(r[k]["errors"] for r in rounds for k in ("alone", "with_batch"))
    head = (f"{plan['model']}, {plan['load']}; rounds {len(rounds)}, wrk runs of {plan['seconds']:g} s "
            f"(table: the median round by p50 with a batch), batches of {plan['batch_texts']:,} texts, "
            f"{plan['per_line']} per line; errors {errors}:")
    mid = sorted(rounds, key=lambda r: r["with_batch"]["p50_ms"])[len(rounds) // 2]
    rows = [["online alone", *_p50s(mid["alone"]), ""],
            ["online + a batch", *_p50s(mid["with_batch"]), f"{mid['with_batch']['batch_texts_per_s']:.1f}"],
            ["the batch alone (created to completed)", "", "", "", f"{doc['batch_alone']['texts_per_s']:.1f}"],
            ["`embeddings-reembed` alone", "", "", "", f"{doc['reembed_alone']['texts_per_s']:.1f}"]]
    goal = [[f"online p50 under {plan['load']} rises <= 20% while a batch runs",
             f"{s['s32_p50_ms_alone']:.0f} -> {s['s32_p50_ms_with_batch']:.0f} ms ({s['s32_p50_rise']:+.0%})",
             _verdict(s["s32_p50_rise_within_20pct"])]]
    return [head, "", *_table(["", "online p50", "online p99", "online texts/s", "batch texts/s"], rows), "",
            *_table(["goal (medians of rounds)", "measured", ""], goal)]


def _secs(value) -> str:
    return "" if value is None else f"{value:.1f} s"


def chaos(doc: dict) -> list[str]:
    lat, g, k = doc["latency"], doc["graceful_stop"], doc["batch_sigkill"]
    head = (f"{doc['minutes']:g} minutes, {doc['models']}, {doc['clients']} openai clients (default retries) and one "
            f"batch job at a time, a fault every {doc['interval_s']:g} s: {doc['calls']:,} calls, {doc['failed']} "
            f"failed, {doc['wrong']} wrong; p50 / p99 between faults {lat['between_faults']['p50_ms']:.0f} / "
            f"{lat['between_faults']['p99_ms']:.0f} ms, during them {lat['during_faults']['p50_ms']:.0f} / "
            f"{lat['during_faults']['p99_ms']:.0f} ms.")
    faults = [[f["fault"], f["target"], f"{f['at_s']:.0f} s", _secs(f["back_after_s"]), _secs(f["recovery_s"]),
               _secs(f["answering_after_restart_s"]), str(f["failed_calls"])] for f in doc["faults"]]
    data = [f"Graceful stop (SIGTERM to embeddings-serve with {g['requests']} requests in flight, per gateway "
            f"{g['in_flight_per_gateway']}): {g['answered']} answered, {g['lost']} lost. Batch job whose gateway was "
            f"SIGKILLed after {k['lines_written_before_kill']} of {k['lines']} lines: {k['status']}, {k['answered']} "
            f"lines answered, {k['missing']} missing, {k['duplicated']} duplicated, {k['wrong']} wrong."]
    rows = [[name, f"{m['after_warmup']} MB", f"{m['end']} MB"] for name, m in doc["rss_mb"].items()]
    last = (f"`chaos: {doc['calls']} calls, {doc['failed']} failed, {doc['wrong']} wrong, worst recovery "
            f"{doc['worst_recovery_s']:.1f} s, RSS growth {doc['rss_growth_pct']:.1f}%`")
    return [head, "", *_table(["fault", "target", "at", "back after", "answering after", "answering after back",
                               "failed calls"], faults), "",
            *data, "", *_table(["process", "RSS after warm-up", "RSS at end"], rows), "", last]


RENDERERS: dict[str, Callable[[dict], list[str]]] = {
    "bench-throughput": bench_throughput, "bench-goals": bench_goals, "bench-cpu": bench_cpu, "rerank": rerank,
    "cost": cost, "compare-agreement": compare_agreement, "compare-quality": compare_quality,
    "compare-speed": compare_speed, "soak": soak, "quantization": quantization, "gpu-proxy": gpu_proxy,
    "batch": batch,
    "chaos": chaos,
}


def render(name: str, path: str) -> str:
    doc = json.loads((ROOT / path).read_text())
    return "\n".join([provenance_line(doc, path), "", *RENDERERS[name](doc)]) + "\n"


def blocks(text: str) -> list[re.Match]:
    return list(BLOCK.finditer(text))


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2), m.group(3)) + m.group(5), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each block that differs")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = rewrite(text)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new)
    for path in stale:
        print(f"figures: {path} {'differs from' if args.check else 'rewritten from'} its runs", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
