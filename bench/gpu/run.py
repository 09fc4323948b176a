"""The GPU run of issue 20, in one call: facts, models, exports, the stack, every path measured, one JSON.

    python bench/gpu/run.py --out "$OUT"            # the lent GPU machine (bench/gpu/README.md)
    python bench/gpu/run.py --quick --out /tmp/q    # here, on the CPU: the same code, tiny shapes, seconds

1. checks the issue's facts about the machine (facts.py), before the bundle is put on the path;
2. unpacks what the machine lacks from the bundle (unpack.py, built here by pack.py);
3. builds random-weight models of the measured shapes (shapes.py) and exports them with `embeddings-export`
   (embedded target, in parallel); on a GPU the export verifies the GPU engine fp16 against sentence-transformers;
4. measures the raw in-process ceiling (the same GPU engine, sorted batches) and its fidelity against
   sentence-transformers fp32 on the same device;
5. starts Triton (all models), the gateway and the seed-style server (seed_server.py), and measures both at
   each length and load with a closed-loop HTTP load (loadgen.py): texts/s, tokens/s, latency, GPU
   utilization, per-process CPU;
6. writes `gpu_run.json` under --out after every measurement (a run cut short keeps what it measured), and
   `logs.txt`: the tails of the exports', Triton's, the gateway's and the seed server's logs.
In --quick mode the encoder is told `engine: torch`, so Triton serves through the GPU engine's CPU fallback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT / "bench"), str(ROOT)]

import facts  # noqa: E402
import shapes  # noqa: E402


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    lengths: tuple[int, ...]
    loads: dict = field(default_factory=dict)  # name -> (texts per request, concurrent clients)
    seconds: float = 4.0  # one measurement's window
    warmup_s: float = 1.0
    max_batch_size: int = 256  # the export's: the encoder's rows per run
    encoder_instances: int = 0  # the export's (0: its default, 2 on the embedded target)
    http_lengths: tuple[int, ...] = ()  # the lengths measured over HTTP (default: all)
    engine: str = "auto"  # the encoder config's `engine`
    budget_s: float = 440.0  # past this, measurements are skipped (the device call's limit is 8 minutes)
    bar: float = 0.999  # fidelity: min cosine vs sentence-transformers fp32 (fp16 on a GPU)


# mpnet first (the goals are set on it), batch loads first (the gateway-vs-ceiling goal): what the time
# budget cuts comes last.
FULL = Plan(("mpnet-base", "minilm-l6", "bge-large"), (50, 512), {"batch": (128, 8), "single": (1, 64)},
            seconds=3.0, warmup_s=0.5)
QUICK = Plan(("tiny",), (16, 64), {"batch": (16, 2), "single": (1, 4)}, seconds=1.0, warmup_s=0.3,
             max_batch_size=64, encoder_instances=1, http_lengths=(16,), engine="torch", budget_s=120.0, bar=0.9999)


class Record:
    """The run's JSON, rewritten after each step."""

    def __init__(self, out: Path, data: dict):
        self.path, self.data, self.t0 = out / "gpu_run.json", data, time.monotonic()
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def add(self, key: str, value) -> None:
        self.data.setdefault(key, []).append(value)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- models and exports -------------------------------------------------------------------------------
def set_engine(repo: Path, name: str, engine: str) -> None:
    """Rewrite the exported encoder config's `engine` parameter."""
    from triton_embeddings import contract as c
    from triton_embeddings.export import triton_config as tc

    path = repo / f"{name}{c.ENCODER_SUFFIX}" / "config.pbtxt"
    config = tc.parse(path.read_text())
    config.parameters["engine"].string_value = engine
    path.write_text(tc.render(config))


def _export_in_process(args: list[str]) -> tuple[int, str]:
    """`embeddings-export ARGS` in this process (one model: no second interpreter to start)."""
    import contextlib
    import io

    from triton_embeddings.export import cli

    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        try:
            return cli.main(args), out.getvalue()
        except Exception as exc:  # noqa: BLE001 - recorded like a failed CLI run
            return 1, f"{out.getvalue()}{type(exc).__name__}: {exc}\n"


def export_all(plan: Plan, work: Path, env: dict, rec: Record) -> tuple[Path, dict[str, Path], list[str]]:
    """Build each shape and export it with the CLI (several: side by side, an interpreter each); the repository,
    every built model's folder and the names of those exported (a failed export leaves the seed-style server)."""
    repo, sources, runs, exported = work / "repository", {}, {}, []
    for name in plan.models:
        sources[name] = shapes.build(shapes.SHAPES[name], work / "models")
        args = [str(sources[name]), "--name", name, "--repository", str(work / f"repo-{name}"),
                "--max-batch-size", str(plan.max_batch_size), "--encoder-instances", str(plan.encoder_instances)]
        runs[name] = args if len(plan.models) == 1 else subprocess.Popen(
            [sys.executable, "-m", "triton_embeddings.export", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
    for name, run in runs.items():
        if isinstance(run, list):
            code, out = _export_in_process(run)
        else:
            out = run.communicate()[0]
            code = run.returncode
        (work / f"export-{name}.log").write_text(out)
        rec.add("exports", {"model": name, "rc": code, "log_tail": out[-3000:]})
        log(f"export {name}: rc {code}")
        if code != 0:
            continue
        exported.append(name)
        repo.mkdir(exist_ok=True)
        for model in (work / f"repo-{name}").iterdir():
            model.rename(repo / model.name)
        if plan.engine != "auto":
            set_engine(repo, name, plan.engine)
    return repo, sources, exported


# ---- the raw ceiling and fidelity, in this process -----------------------------------------------------
def pipeline(repo: Path, name: str):
    """The tokenizer and GPU engine of an exported model, pooling as its ensemble says (TorchPipeline)."""
    from triton_embeddings import contract as c
    from triton_embeddings.export import triton_config as tc
    from triton_embeddings.export.kinds.embedding import TorchPipeline
    from triton_embeddings.triton_models.gpu_engine import TorchEncoder
    from triton_embeddings.triton_models.tokenize import TextTokenizer

    params = c.EnsembleParams.from_config(tc.load(repo / name / "config.pbtxt"))
    tok_dir = repo / f"{name}{c.TOKENIZER_SUFFIX}"
    tokenizer = TextTokenizer.from_config(tc.load(tok_dir / "config.pbtxt"), tok_dir / "1")
    engine = TorchEncoder(repo / f"{name}{c.ENCODER_SUFFIX}" / "1" / c.TORCH_WEIGHTS)
    return TorchPipeline(tokenizer, engine, params.pooling_mode, params.normalize)


def fidelity(pipe, reference_model, texts: list[str], bar: float) -> dict:
    """The engine (fp16 on a GPU) against sentence-transformers fp32 on the same device, on the same texts."""
    from triton_embeddings.export.kinds.embedding import cosine

    cos = cosine(pipe.embed(texts), reference_model.encode(texts, batch_size=32))
    return {"texts": len(texts), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "bar": bar,
            "passed": bool(cos.min() >= bar), "engine_dtype": str(pipe.engine.dtype), "device": str(pipe.engine.device),
            "attention": pipe.engine.attention}


def raw_ceiling(pipe, texts: list[str], tokens: int, plan: Plan, gpu) -> dict:
    """Every text at once, sorted by length, in the encoder's batches, repeated for the window."""
    pipe.embed(texts[: plan.max_batch_size], batch_size=plan.max_batch_size)  # warm this shape
    t0, c0, n = time.time(), time.process_time(), 0
    while time.time() - t0 < plan.seconds or n == 0:
        pipe.embed(texts, batch_size=plan.max_batch_size)
        n += len(texts)
    wall = time.time() - t0
    return {"texts_per_s": n / wall, "tokens_per_s": n * tokens / wall, "p50_ms": None, "p99_ms": None,
            "errors": 0, "cores": {"bench": round((time.process_time() - c0) / wall, 2)},
            "gpu": gpu.between(t0, t0 + wall)}


def measure_raw(plan: Plan, repo: Path, name: str, source: Path, rec: Record, gpu) -> tuple[list[str], object]:
    """Fidelity and the raw ceiling of one model; a few texts and the engine's vectors for them."""
    from sentence_transformers import SentenceTransformer

    pipe = pipeline(repo, name)
    reference = SentenceTransformer(str(source), device=str(pipe.engine.device))
    vocab = shapes.SHAPES[name].dims["vocab_size"]
    probe = shapes.texts(8, plan.lengths[0], vocab, seed=4)
    probe_vectors = pipe.embed(probe)
    for tokens in plan.lengths:
        fid = fidelity(pipe, reference, shapes.texts(64, tokens, vocab, seed=1), plan.bar)
        rec.add("fidelity", {"model": name, "tokens": tokens, **fid})
        log(f"fidelity {name} L{tokens}: min cosine {fid['min_cosine']:.6f} (bar {plan.bar})")
        result = raw_ceiling(pipe, shapes.texts(4 * plan.max_batch_size, tokens, vocab, seed=2), tokens, plan, gpu)
        rec.add("results", {"model": name, "tokens": tokens, "load": "batch", "path": "raw", **result})
        log(f"raw {name} L{tokens}: {result['texts_per_s']:.0f} texts/s, {result['tokens_per_s']:.0f} tok/s")
    del pipe, reference
    _free_gpu()
    return probe, probe_vectors


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the stack: Triton and the gateway, the seed-style server ------------------------------------------
@dataclass
class Stack:
    triton: object
    procs: dict[str, subprocess.Popen]
    urls: dict[str, str]  # path -> base URL of the servers that are up

    def groups(self) -> dict[str, list[int]]:
        import procstat

        groups = procstat.triton_groups(self.triton.process.pid) if self.triton.process else {}
        return {**groups, **{k: [p.pid] for k, p in self.procs.items()}}

    def stop(self) -> None:
        from triton_embeddings.local.processes import stop_process

        for proc in self.procs.values():
            stop_process(proc)
        self.triton.stop()


def _triton(repo: Path, work: Path, stub_site: Path | None):
    """The server over `repo` on free ports, not yet started."""
    from triton_embeddings.local.launcher import TritonServer

    class BundledTriton(TritonServer):
        """The launcher's server, with numpy < 2 first on the Python-backend stub's path when shipped."""

        def environment(self) -> dict[str, str]:
            env = super().environment()
            if stub_site:
                env["PYTHONPATH"] = os.pathsep.join([str(stub_site), env["PYTHONPATH"]])
            return env

    return BundledTriton.on_free_ports(repo, log_file=work / "triton.log", startup_timeout=300)


def _spawn(cmds: dict, work: Path) -> dict[str, subprocess.Popen]:
    procs = {}
    for name, (cmd, env) in cmds.items():
        with open(work / f"{name}.log", "ab") as out:
            procs[name] = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
    return procs


def start_stack(repo: Path, work: Path, sources: dict[str, Path], exported: list[str], unpacked, env: dict,
                rec: Record) -> Stack:
    """The seed-style server, and Triton with the gateway when a model was exported, started side by side; a
    server that does not come up is recorded (with its log's tail) and left out."""
    from triton_embeddings.local.processes import free_port, wait_http

    triton = _triton(repo, work, unpacked.stub_site)
    ports = {"gateway": free_port(), "seed": free_port()}
    genv = dict(env, EMBEDDINGS_TRITON_GRPC_URL=triton.grpc_url, EMBEDDINGS_TRITON_METRICS_URL="",
                EMBEDDINGS_PORT=str(ports["gateway"]), EMBEDDINGS_CACHE="none", EMBEDDINGS_ACCESS_LOG="false",
                EMBEDDINGS_LOG_LEVEL="warning")
    senv = dict(env, SEED_MODELS=";".join(f"{n}={p}" for n, p in sources.items()))
    cmds = {"seed": ([sys.executable, "-m", "uvicorn", "seed_server:app", "--app-dir", str(HERE), "--port",
                      str(ports["seed"]), "--log-level", "warning", "--no-access-log"], senv)}
    if exported:
        cmds["gateway"] = ([sys.executable, "-m", "triton_embeddings.gateway"], genv)
    stack = Stack(triton, _spawn(cmds, work), {})
    failed = []
    if exported:
        try:
            triton.start()  # while the gateway and the seed server start
        except Exception as exc:  # noqa: BLE001 - the seed-style server is still measured
            failed.append(("triton", exc))
    for name, proc in stack.procs.items():
        try:
            if name == "gateway" and failed:
                raise RuntimeError("Triton did not start")
            wait_http(f"http://127.0.0.1:{ports[name]}/ready", 300, proc)
            stack.urls[name] = f"http://127.0.0.1:{ports[name]}"
        except Exception as exc:  # noqa: BLE001 - recorded, the other paths go on
            failed.append((name, exc))
    for name, exc in failed:
        tail = (work / f"{name}.log").read_text(errors="replace")[-4000:] if (work / f"{name}.log").exists() else ""
        rec.add("failures", {"server": name, "error": f"{type(exc).__name__}: {exc}", "log_tail": tail})
        log(f"{name} did not start: {type(exc).__name__}: {exc}\n{tail}")
    return stack


# ---- HTTP measurements --------------------------------------------------------------------------------
def bodies(model: str, texts: list[str], per_request: int) -> list[str]:
    return [json.dumps({"model": model, "input": texts[i : i + per_request]})
            for i in range(0, len(texts) - per_request + 1, per_request)]


def http_path(stack: Stack, path: str, model: str, tokens: int, load: tuple[int, int], plan: Plan, gpu) -> dict:
    from loadgen import run_load
    from sampling import Window

    per_request, clients = load
    texts = shapes.texts(max(256, 4 * clients * per_request), tokens, shapes.SHAPES[model].dims["vocab_size"], seed=3)
    window = Window(stack.groups(), gpu)
    res = run_load(stack.urls[path], bodies(model, texts, per_request), clients, plan.seconds,
                   warmup_s=plan.warmup_s, on_window=window.open)
    texts_per_s = res["requests"] * per_request / res["seconds"]
    used = window.result()
    used["cores"]["load generator"] = round(res["client_cpu_s"] / res["seconds"], 2)
    return {"texts_per_s": texts_per_s, "tokens_per_s": texts_per_s * tokens, "p50_ms": res["p50_ms"],
            "p99_ms": res["p99_ms"], "errors": res["errors"], "requests": res["requests"], "clients": clients,
            "per_request": per_request, "window_s": round(res["seconds"], 2), **used}


def agreement(url: str, model: str, texts: list[str], vectors) -> float:
    """Min cosine between a server's vectors and the raw engine's for the same texts."""
    import urllib.request

    import numpy as np

    from triton_embeddings.export.kinds.embedding import cosine

    req = urllib.request.Request(url + "/v1/embeddings", json.dumps({"model": model, "input": texts}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = json.loads(resp.read())["data"]
    served = np.array([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float32)
    return float(cosine(served, vectors).min())


def agreements(stack: Stack, probes: dict, rec: Record) -> dict[str, float]:
    out = {}
    for name, (texts, vectors) in probes.items():
        for path, url in stack.urls.items():
            try:
                out[f"{path} {name}"] = agreement(url, name, texts, vectors)
            except Exception as exc:  # noqa: BLE001 - recorded; the measurements go on
                rec.add("failures", {"measurement": f"{path} {name} vectors", "error": f"{type(exc).__name__}: {exc}"})
    return out


def measure_http(plan: Plan, stack: Stack, models: list[str], exported: list[str], rec: Record, gpu) -> None:
    for name in models:
        for tokens in plan.http_lengths or plan.lengths:
            for load_name, load in plan.loads.items():
                for path in [p for p in ("gateway", "seed") if p in stack.urls and (p == "seed" or name in exported)]:
                    what = f"{path} {name} L{tokens} {load_name}"
                    if rec.elapsed() > plan.budget_s:
                        rec.add("skipped", f"{what}: over the {plan.budget_s:.0f}s budget")
                        continue
                    try:
                        result = http_path(stack, path, name, tokens, load, plan, gpu)
                    except Exception as exc:  # noqa: BLE001 - recorded; the other measurements go on
                        rec.add("failures", {"measurement": what, "error": f"{type(exc).__name__}: {exc}"})
                        log(f"{what} failed: {type(exc).__name__}: {exc}")
                        continue
                    rec.add("results", {"model": name, "tokens": tokens, "load": load_name, "path": path, **result})
                    log(f"{what}: {result['texts_per_s']:.0f} texts/s, {result['tokens_per_s']:.0f} tok/s, "
                        f"p50 {result['p50_ms']:.1f} ms, {result['errors']} errors, GPU {result['gpu']}")


# ---- the run ------------------------------------------------------------------------------------------
def summary(results: list[dict]) -> list[str]:
    """The run's table: one row per model, length, load and path."""
    lines = ["| model | tokens | load | path | texts/s | tokens/s | p50 ms | errors | GPU util % | CPU cores |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gpu = r.get("gpu") or {}
        cores = ", ".join(f"{k} {v:g}" for k, v in r["cores"].items() if v >= 0.05)
        p50 = f"{r['p50_ms']:.1f}" if r.get("p50_ms") is not None else "-"
        lines.append(f"| {r['model']} | {r['tokens']} | {r['load']} | {r['path']} | {r['texts_per_s']:,.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {p50} | {r['errors']} | {gpu.get('util_pct', '-')} | {cores} |")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu_run.json goes (the device's $OUT)")
    parser.add_argument("--bundle", type=Path, default=HERE / "bundle", help="pack.py's bundle")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds per path (CPU, CI)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--models", default="",
                        help=f"comma-separated shapes instead of the plan's ({', '.join(shapes.SHAPES)})")
    parser.add_argument("--seconds", type=float, default=0.0, help="one measurement's window instead of the plan's")
    return parser.parse_args(argv)


def plan_of(args) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.models:
        plan = replace(plan, models=tuple(args.models.split(",")))
    if args.seconds:
        plan = replace(plan, seconds=args.seconds)
    unknown = set(plan.models) - set(shapes.SHAPES)
    if unknown:
        raise SystemExit(f"unknown shapes {sorted(unknown)}: known {sorted(shapes.SHAPES)}")
    return plan


def run(args, plan: Plan, rec: Record, work: Path) -> None:
    from sampling import GpuSampler
    from unpack import unpack

    unpacked = unpack(args.bundle, work)
    rec.data["unpacked"] = unpacked.extracted
    env = dict(os.environ, PYTHONPATH=unpacked.pythonpath(str(ROOT)), TOKENIZERS_PARALLELISM="false")
    repo, sources, exported = export_all(plan, work, env, rec)
    gpu = GpuSampler()
    try:
        probes = {}
        for name in exported:
            try:
                probes[name] = measure_raw(plan, repo, name, sources[name], rec, gpu)
            except Exception as exc:  # noqa: BLE001 - recorded; Triton and the seed server are still measured
                rec.add("failures", {"measurement": f"raw {name}", "error": f"{type(exc).__name__}: {exc}"})
                log(f"raw {name} failed: {type(exc).__name__}: {exc}")
        stack = start_stack(repo, work, sources, exported, unpacked, env, rec)
        log(f"servers up after {rec.elapsed():.0f}s: {sorted(stack.urls)}")
        try:
            rec.data["served_vs_raw_min_cosine"] = agreements(stack, probes, rec)
            measure_http(plan, stack, list(sources), exported, rec, gpu)
        finally:
            stack.stop()
    finally:
        gpu.stop()


def save_logs(work: Path, out: Path, tail: int = 20_000) -> None:
    """The tails of the servers' and exports' logs, in one file beside the JSON (one device call: no rerun)."""
    parts = [f"===== {p.name} (last {tail} characters)\n{p.read_text(errors='replace')[-tail:]}"
             for p in sorted(work.glob("*.log"))]
    (out / "logs.txt").write_text("\n".join(parts))


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    from provenance import provenance

    checked = facts.check(args.bundle, log)  # before the bundle is on the path
    rec = Record(args.out, {"provenance": provenance("bench/gpu/run.py", argv), "plan": asdict(plan),
                            "facts": checked})
    with tempfile.TemporaryDirectory(prefix="gpu-run-", dir=args.work) as tmp:
        try:
            run(args, plan, rec, Path(tmp))
        except Exception as exc:
            rec.data["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            rec.save()
            save_logs(Path(tmp), args.out)
            print("\n".join(summary(rec.data.get("results", []))))
    return 0 if not rec.data.get("failures") else 1


if __name__ == "__main__":
    raise SystemExit(main())
