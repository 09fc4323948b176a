"""The comparison written out: report.json, report.md, agreement.png and cost.png."""

from __future__ import annotations

import json
import time
from pathlib import Path

from triton_embeddings.compare.cost import PRICES_PER_1M, PRICES_READ_ON
from triton_embeddings.compare.run import Comparison, EndpointResult


def _endpoint_json(r: EndpointResult) -> dict:
    ep, s = r.endpoint, r.speed
    return {
        "label": ep.label, "base_url": ep.base_url, "model": ep.model, "dimensions": ep.dimensions,
        "vector_length": int(r.docs.vectors.shape[1]),
        "tokens": round(r.docs.tokens + r.queries.tokens),
        "texts_fetched_now": r.docs.fetched + r.queries.fetched,
        "speed": None if s is None else {
            "requests": s.requests, "inputs": s.inputs, "tokens": s.tokens, "wall_s": s.wall_s,
            "tokens_per_s": s.tokens_per_s, "inputs_per_s": s.inputs_per_s, "p50_s": s.p50_s, "p95_s": s.p95_s,
            "retries": s.retries, "concurrency": s.concurrency},
        "cost_per_1m_tokens_usd": r.cost.per_1m, "cost_basis": r.cost.basis,
        "quality": None if r.quality is None else {
            "ndcg@10": r.quality.ndcg10, "recall@100": r.quality.recall100, "queries": r.quality.queries},
    }


def to_json(c: Comparison) -> dict:
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "corpus_texts": len(c.inputs.corpus), "queries": c.inputs.query_source,
        "labelled": c.inputs.qrels is not None,
        "endpoints": [_endpoint_json(r) for r in c.results],
        "list_prices_per_1m_usd": PRICES_PER_1M, "list_prices_read": PRICES_READ_ON,
        "agreement": [{"reference": a, "endpoint": b, "overlap@k": {str(k): v for k, v in ag.overlap.items()},
                       "top1": ag.top1, "spearman": ag.spearman, "pairs": ag.pairs}
                      for a, b, ag in c.agreements],
    }


def _fmt(value, pattern: str, missing: str = "–") -> str:
    return missing if value is None else format(value, pattern)


def _speed_rows(c: Comparison) -> list[str]:
    rows = ["| endpoint | tokens | tokens/s | texts/s | p50 | p95 | requests | retried 429/5xx | cost per 1M tokens |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in c.results:
        s = r.speed
        cost = f"${r.cost.per_1m:.4g} ({r.cost.basis})" if r.cost.per_1m is not None else r.cost.basis
        rows.append(
            f"| {r.endpoint.name} | {r.docs.tokens + r.queries.tokens:,.0f} | "
            f"{_fmt(s and s.tokens_per_s, ',.0f')} | {_fmt(s and s.inputs_per_s, ',.1f')} | "
            f"{_fmt(s and s.p50_s * 1000, '.0f')} ms | {_fmt(s and s.p95_s * 1000, '.0f')} ms | "
            f"{_fmt(s and s.requests, 'd')} | {_fmt(s and s.retries, 'd')} | {cost} |")
    return rows


def to_markdown(c: Comparison, plots: dict[str, str]) -> str:
    names = {r.endpoint.label: r.endpoint.name for r in c.results}
    lines = ["# Embedding endpoints compared", "",
             f"Corpus: {len(c.inputs.corpus)} texts. Queries: {c.inputs.query_source}. "
             f"Reference: {c.results[0].endpoint.name}.", "",
             "| endpoint | base URL | vector length |", "|---|---|---:|"]
    lines += [f"| {r.endpoint.name} | {r.endpoint.base_url} | {r.docs.vectors.shape[1]} |" for r in c.results]
    if c.agreements:
        ks = list(c.agreements[0][2].overlap)
        lines += ["", "## Agreement with the reference (no labels needed)", "",
                  "| endpoint | " + " | ".join(f"overlap@{k}" for k in ks) + " | top-1 agreement | Spearman |",
                  "|---|" + "---:|" * (len(ks) + 2)]
        lines += [f"| {names[b]} | " + " | ".join(f"{ag.overlap[k]:.3f}" for k in ks) +
                  f" | {ag.top1:.3f} | {ag.spearman:.3f} |" for _, b, ag in c.agreements]
    if c.inputs.qrels is not None:
        lines += ["", "## Retrieval quality against the labels", "",
                  "| endpoint | nDCG@10 | recall@100 | labelled queries |", "|---|---:|---:|---:|"]
        lines += [f"| {r.endpoint.name} | {r.quality.ndcg10:.3f} | {r.quality.recall100:.3f} | "
                  f"{r.quality.queries} |" for r in c.results]
    lines += ["", "## Speed and cost", "", *_speed_rows(c), "",
              "Speed is measured over every call that filled the vector cache for the endpoint (a re-run served "
              "from the cache reports the original calls). Latency is per request, retries included."]
    lines += ["", "Cloud list prices for reference (USD per 1M tokens, read " + PRICES_READ_ON + "): " +
              ", ".join(f"{m} ${p:g}" for m, p in PRICES_PER_1M.items()) + "."]
    lines += ["", *[f"![{title}]({name})" for title, name in plots.items()], ""]
    return "\n".join(lines)


def plot_agreement(c: Comparison, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for _, b, ag in c.agreements:
        ks = list(ag.overlap)
        name = next(r.endpoint.name for r in c.results if r.endpoint.label == b)
        ax.plot(ks, [ag.overlap[k] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (nearest neighbours)")
    ax.set_ylabel(f"overlap@k with {c.results[0].endpoint.name}")
    ax.set_title("Retrieval agreement with the reference")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(c: Comparison, path: Path) -> None:
    import matplotlib.pyplot as plt

    priced = [r for r in c.results if r.cost.per_1m is not None]
    shown = {r.endpoint.model for r in priced}
    listed = [(f"{m} (list price)", p) for m, p in PRICES_PER_1M.items() if m not in shown]
    names = [r.endpoint.name for r in priced] + [n for n, _ in listed]
    values = [r.cost.per_1m for r in priced] + [p for _, p in listed]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    colors = ["tab:blue"] * len(priced) + ["tab:gray"] * len(listed)
    bars = ax.barh(names, values, color=colors)
    ax.bar_label(bars, labels=[f"${v:.4g}" for v in values], padding=3, fontsize=8)
    if values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("USD per 1M tokens")
    ax.set_title("Cost per 1M tokens")
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(c: Comparison, out: Path) -> dict[str, Path]:
    """Write every output into `out`; returns their paths by kind."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "cost": out / "cost.png"}
    plots = {}
    if c.agreements:
        paths["agreement"] = out / "agreement.png"
        plot_agreement(c, paths["agreement"])
        plots["Agreement by k"] = "agreement.png"
    plot_cost(c, paths["cost"])
    plots["Cost per 1M tokens"] = "cost.png"
    paths["json"].write_text(json.dumps(to_json(c), indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(c, plots))
    return paths
