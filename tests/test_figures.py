"""Every figure block in README.md and docs/ is what bench/figures.py renders from its committed run.

A cell edited by hand, a run re-measured without re-rendering, or a block quoting a file that is gone fails
here; `python bench/figures.py` rewrites the blocks from docs/measurements/.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Loaded from its file: bench/ on sys.path would make `bench` name bench/bench.py for every later test.
_spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)

MEASUREMENTS = ROOT / "docs" / "measurements"


def _quoted() -> list[tuple[Path, str, str]]:
    return [(doc, m.group(2), m.group(3)) for doc in figures.DOCS for m in figures.blocks(doc.read_text())]


@pytest.mark.parametrize("doc", figures.DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_is_rendered_from_its_run(doc):
    text = doc.read_text()
    rendered = figures.rewrite(text)
    diff = "\n".join(difflib.unified_diff(text.splitlines(), rendered.splitlines(), "doc", "its runs", lineterm=""))
    assert rendered == text, f"{doc.name}: a figure differs from its JSON (python bench/figures.py):\n{diff}"


def test_blocks_name_known_renderers_and_existing_runs():
    quoted = _quoted()
    assert len(quoted) >= 10, quoted
    for doc, name, path in quoted:
        assert name in figures.RENDERERS, f"{doc.name}: unknown figures block {name!r}"
        assert (ROOT / path).is_file(), f"{doc.name}: {path} is not committed"


def test_every_committed_run_is_quoted_and_says_where_it_came_from():
    quoted = {path for _, _, path in _quoted()}
    for run in sorted(MEASUREMENTS.glob("*.json")):
        rel = str(run.relative_to(ROOT))
        assert rel in quoted, f"{rel} is quoted by no figures block"
        doc = json.loads(run.read_text())
        if rel in figures.LEGACY:
            assert "provenance" not in doc
            continue
        p = doc["provenance"]
        assert re.fullmatch(r"[0-9a-f]{7,}", p["commit"]), p
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["date"]), p
        assert p["machine"]["cores"] and p["machine"]["cpu"] and p["tool"] in p["command"], p


def test_a_cell_edited_by_hand_is_caught():
    doc, text = next((d, d.read_text()) for d in figures.DOCS if figures.blocks(d.read_text()))
    block = figures.blocks(text)[0]
    body = block.group(4)
    digit = re.search(r"\d", body.split("\n", 2)[2])  # past the provenance line
    start = block.start(4) + len(body.split("\n", 2)[0]) + 2 + digit.start()
    edited = text[:start] + str((int(text[start]) + 1) % 10) + text[start + 1:]
    assert figures.rewrite(edited) == text != edited


def _bench(x_raw: float, p50_extra: float, int8: float) -> dict:
    cells = {"raw": {"texts_per_s": 100.0, "errors": 0, "cores": {"bench": 2.0}},
             "gateway": {"texts_per_s": 100.0 * x_raw, "x_raw": x_raw, "errors": 0, "cores": {"encoder": 1.6}}}
    return {"summary": {"throughput": {"S32": cells},
                        "p50_one_short_text_ms": {"raw": 7.0, "triton": 9.0, "gateway": 7.0 + p50_extra},
                        "int8": {"S32": {"gateway": int8, "raw": int8}}}}


def test_goal_verdicts_are_computed_from_the_figures():
    met = "\n".join(figures.bench_goals(_bench(0.9, 1.5, 1.7)))
    assert "not met" not in met and met.count("| met |") == 3
    missed = "\n".join(figures.bench_goals(_bench(0.8, 2.5, 1.5)))
    assert missed.count("**not met**") == 3


def _batch_run(p50_alone: float, p50_with: float) -> dict:
    """bench/bench_batch.py's JSON (the shape its --quick run writes), three rounds."""
    round_ = lambda a, b: {"alone": {"p50_ms": a, "p99_ms": 2 * a, "texts_per_s": 80.0, "errors": 0},  # noqa: E731
                           "with_batch": {"p50_ms": b, "p99_ms": 2 * b, "texts_per_s": 60.0, "errors": 0,
                                          "batch_status_at_end": "in_progress", "batch_texts_per_s": 25.0}}
    rise = p50_with / p50_alone - 1
    return {"plan": {"rounds": 3, "seconds": 2.0, "batch_texts": 512, "per_line": 32, "model": "all-MiniLM-L6-v2",
                     "load": "32 clients x 1 short text", "quick": True},
            "rounds": [round_(p50_alone, p50_with), round_(p50_alone + 10, p50_with + 900),
                       round_(p50_alone - 10, p50_with - 20)],
            "batch_alone": {"texts_per_s": 29.4}, "reembed_alone": {"texts_per_s": 24.1},
            "summary": {"s32_p50_ms_alone": p50_alone, "s32_p50_ms_with_batch": p50_with,
                        "s32_p50_rise": rise, "s32_p50_rise_within_20pct": rise <= 0.2}}


def test_the_batch_bench_renders_its_rounds_rates_and_goal():
    met = "\n".join(figures.batch(_batch_run(400.0, 440.0)))
    assert "| online + a batch | 440 ms | 880 ms | 60.0 | 25.0 |" in met  # the median round by p50 with a batch
    assert "| the batch alone (created to completed) |  |  |  | 29.4 |" in met
    assert "| `embeddings-reembed` alone |  |  |  | 24.1 |" in met
    assert "400 -> 440 ms (+10%) | met |" in met
    assert "(+50%) | **not met** |" in "\n".join(figures.batch(_batch_run(400.0, 600.0)))
