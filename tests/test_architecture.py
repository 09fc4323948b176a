"""Each room imports only what it may (docs/architecture.md), and no function grows past ~50 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "triton_embeddings"
# Outside the package, held to the same function length.
ALSO_SHORT = [PACKAGE.parent / "deploy" / "render.py", *sorted((PACKAGE.parent / "bench").glob("chaos*.py"))]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
MAX_FUNCTION_LINES = 50


def imports(path: Path) -> set[str]:
    """Every name `path` imports, absolute: `from a import b` gives `a.b` (b may be a module)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:  # relative: resolved against the package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def room(name: str) -> list[Path]:
    target = PACKAGE / name
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


def outside(paths: list[Path], allowed) -> list[str]:
    return [f"{p.relative_to(PACKAGE)}: {m}" for p in paths for m in sorted(imports(p)) if not allowed(m)]


def top(module: str) -> str:
    return module.split(".")[0]


def test_triton_models_import_only_what_triton_runs():
    third_party = {"numpy", "tokenizers", "onnxruntime", "triton_python_backend_utils"}

    def allowed(m: str) -> bool:
        own = within(m, "triton_embeddings.contract", "triton_embeddings.triton_models")
        return top(m) in STDLIB or top(m) in third_party or own

    engine = [p for p in room("triton_models") if p.name == GPU_ENGINE]
    assert outside([p for p in room("triton_models") if p not in engine], allowed) == []
    # The GPU engine may also use PyTorch and transformers, imported when an engine is built: the step
    # still imports on a host without them (nothing changes there).
    assert outside(engine, lambda m: allowed(m) or top(m) in {"torch", "transformers"}) == []
    module_level = {n.names[0].name for n in ast.parse(engine[0].read_text()).body if isinstance(n, ast.Import)}
    module_level |= {n.module for n in ast.parse(engine[0].read_text()).body if isinstance(n, ast.ImportFrom)}
    assert not {top(m) for m in module_level if m} & {"torch", "transformers"}


GPU_ENGINE = "gpu_engine.py"


def test_contract_imports_the_standard_library_only():
    assert outside(room("contract.py"), lambda m: top(m) in STDLIB) == []


def test_gateway_never_imports_the_exporter_or_the_ml_stack():
    banned = ("triton_embeddings.export", "torch", "onnx", "onnxruntime", "sentence_transformers", "transformers",
              "optimum")

    assert outside(room("gateway"), lambda m: not within(m, *banned)) == []


GW = "triton_embeddings.gateway"
WEB = ("fastapi", "starlette", "uvicorn")


def test_gateway_backends_import_neither_http_nor_pipeline_nor_the_error_table():
    """Backends raise their own typed errors (backends/base.py), never the client's (gateway/errors.py)."""
    banned = (f"{GW}.http", f"{GW}.pipeline", f"{GW}.errors", f"{GW}.app", f"{GW}.metrics", *WEB)
    assert outside(room("gateway/backends"), lambda m: not within(m, *banned)) == []


def test_gateway_pipeline_imports_neither_http_nor_the_web_framework():
    """The pipeline takes domain inputs (texts, pairs, options), never wire requests."""
    banned = (f"{GW}.http", f"{GW}.app", *WEB, "pydantic")
    assert outside(room("gateway/pipeline"), lambda m: not within(m, *banned)) == []


def test_gateway_shared_modules_import_no_room_above_the_backends():
    """settings, metrics and the error table sit under every room: none imports http/, pipeline/ or the app."""
    shared = room("gateway/settings.py") + room("gateway/metrics.py") + room("gateway/errors.py")
    banned = (f"{GW}.http", f"{GW}.pipeline", f"{GW}.app", *WEB)
    assert outside(shared, lambda m: not within(m, *banned)) == []


def test_gateway_http_reaches_backends_only_for_their_types():
    """http/ may import the pipeline and the backends' types, never a backend implementation; the app wires them."""
    banned = (f"{GW}.backends.triton", f"{GW}.backends.upstream", f"{GW}.backends.routing", f"{GW}.app")
    assert outside(room("gateway/http"), lambda m: not within(m, *banned)) == []


def test_the_gateway_boundary_checks_see_imports():
    assert f"{GW}.backends.base.BackendError" in imports(PACKAGE / "gateway" / "pipeline" / "admission.py")
    assert f"{GW}.pipeline.embeddings.Texts" in imports(PACKAGE / "gateway" / "http" / "wire.py")
    assert "fastapi.FastAPI" in imports(PACKAGE / "gateway" / "app.py")


def test_gateway_is_three_rooms_and_its_shared_modules():
    """Three rooms, the shared modules, and the process entry points (__main__, workers)."""
    top = {p.name for p in (PACKAGE / "gateway").iterdir() if not p.name.startswith("__pycache__")}
    assert top == {"__init__.py", "__main__.py", "workers.py", "app.py", "settings.py", "metrics.py", "errors.py",
                   "http", "pipeline", "backends", "teams", "batch"}


def test_gateway_teams_import_neither_http_nor_pipeline_nor_the_web_framework():
    """teams/ (keys, quotas, the rate-limit headers) sits beside the pipeline: the HTTP room calls it, it calls
    no room above the backends' types, and its middleware is pure ASGI."""
    banned = (f"{GW}.http", f"{GW}.pipeline", f"{GW}.app", f"{GW}.backends.triton", f"{GW}.backends.upstream",
              f"{GW}.backends.routing", *WEB, "pydantic")
    assert outside(room("gateway/teams"), lambda m: not within(m, *banned)) == []
    assert f"{GW}.teams.quotas.Teams" in imports(PACKAGE / "gateway" / "http" / "routes.py")


def test_worker_processes_start_before_prometheus_client_is_imported():
    """prometheus-client picks its (multiprocess) value store at import: the worker parent must import it only
    after it made the metrics directory, i.e. never at module level, directly or through the app."""
    import subprocess
    import sys

    code = ("import sys, triton_embeddings.gateway.__main__, triton_embeddings.gateway.workers; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
def test_gateway_batch_sits_on_http_and_is_wired_only_by_the_app():
    """batch/ (OpenAI's Batch API) runs lines through the HTTP room's wire code and the pipeline; it never
    imports a backend implementation or the app, and no other room imports it."""
    banned = (f"{GW}.backends", f"{GW}.app")
    assert outside(room("gateway/batch"), lambda m: not within(m, *banned)) == []
    others = room("gateway/http") + room("gateway/pipeline") + room("gateway/backends")
    assert outside(others, lambda m: not within(m, f"{GW}.batch")) == []


def test_the_exporter_and_the_launcher_never_import_the_gateway():
    """embeddings-serve runs each gateway as a process of its own (`python -m triton_embeddings.gateway`)."""
    launcher = [p for name in ("launcher", "processes", "restarts", "serve") for p in room(f"local/{name}.py")]
    assert outside(room("export") + launcher, lambda m: not within(m, "triton_embeddings.gateway")) == []


KINDS = "triton_embeddings.export.kinds"


def test_kinds_import_the_base_never_each_other_nor_the_flow():
    """A new kind is one new module: it builds on `kinds.base` (and the export's helpers), not on another kind."""
    kinds = [p for p in room("export/kinds") if p.stem not in ("__init__", "base")]
    assert {p.stem for p in kinds} >= {"embedding", "rerank"}

    def allowed(m: str) -> bool:
        return not within(m, "triton_embeddings.export.flow") and (not within(m, KINDS) or within(m, KINDS + ".base"))

    assert outside(kinds, allowed) == []


def test_the_flow_and_the_base_know_no_particular_kind():
    """The flow runs any kind through `kinds.base`; the base never reaches up into the flow or a kind."""
    assert outside(room("export/flow.py"), lambda m: not within(m, KINDS) or within(m, KINDS + ".base")) == []
    base = room("export/kinds/base.py")
    assert outside(base, lambda m: not within(m, KINDS, "triton_embeddings.export.flow")) == []


def test_compare_talks_to_endpoints_only_through_their_api():
    """embeddings-compare/-reembed work with any OpenAI-compatible endpoint: no gateway, exporter or Triton code."""
    third_party = {"numpy", "scipy", "openai", "httpx", "tqdm", "matplotlib"}

    def allowed(m: str) -> bool:
        return top(m) in STDLIB or top(m) in third_party or within(m, "triton_embeddings.compare")

    assert outside(room("compare"), allowed) == []


def test_the_boundary_check_sees_imports():
    """The checks above would pass vacuously if `imports` found nothing."""
    assert "triton_embeddings.contract.TokenizerParams" in imports(PACKAGE / "triton_models" / "tokenize.py")
    assert "triton_embeddings.contract" in imports(PACKAGE / "triton_models" / "tokenizer_model.py")
    assert "numpy" in imports(PACKAGE / "triton_models" / "regroup.py")
    assert "triton_embeddings.export.kinds.base" in imports(PACKAGE / "export" / "kinds" / "rerank.py")


def long_functions() -> dict[str, int]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")) + ALSO_SHORT:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found[f"{path.relative_to(PACKAGE.parent).as_posix()}:{node.name}"] = length
    return found


def test_no_function_is_longer_than_50_lines():
    assert all(p.is_file() for p in ALSO_SHORT)
    too_long = long_functions()
    assert too_long == {}, "split these functions"

