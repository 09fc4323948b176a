"""`make bench`: the serving path against the raw ONNX Runtime ceiling, side by side in one run.

    HF_HUB_OFFLINE=1 python bench/bench.py [--quick] [--model all-mpnet-base-v2] [--repository DIR] [--peer URL]

Loads (every text distinct, the gateway's cache off):
  S32  32 clients x 1 short text    B32  4 clients x 32 short texts
  L32  32 clients x 1 long text     M32  32 clients x 1 text, 4 short : 1 long
  (short: 10-15 words; long: ~256 tokens, the model's max length.)

Paths, measured in alternating rounds (raw, triton, gateway, reference, peer, raw, ...), so a noisy
neighbour hits every path of a round alike:
  raw        in-process ONNX Runtime on the same model.onnx and pooler (triton_embeddings.export.kinds.embedding),
             all texts sorted by length, batches of 32, ONNX Runtime on every core: the ceiling
  triton     the ensemble over Triton's HTTP/JSON endpoint (binary output), driven by wrk
  gateway    the OpenAI-compatible gateway (POST /v1/embeddings, base64), driven by wrk
  reference  the seed design (bench/reference_server.py: FastAPI + sentence-transformers), driven by wrk
  peer       --peer URL: any other OpenAI-compatible server, driven by wrk
Servers are driven by `wrk` (Debian package) with bench/embeddings.lua, one client thread. Throughput
is clients x texts per request / mean latency (Little's law for a closed loop; unlike completions per
window it does not lose the batch in flight when the window ends); a run lasts long enough for each client
to complete about 5 requests at the raw rate (longer than --seconds for slow models), and a run in which
the clients still completed fewer than 4 requests each falls back to completions per second. Between
runs the bench waits until the servers are idle again, so work left in flight never slows the next path.
CPU is per process: cores used (CPU seconds / wall seconds) from /proc/<pid>/stat. Triton's per-model
metrics say how the encoder batched. Then: p50 latency of one client sending one short text, against raw
one-text latency and against the encoder step alone over gRPC (bench/hop_latency.py: the floor of any path
through Triton); and the int8 export served through the same Triton and gateway, against fp32 on S32 and
L32.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # procstat, also when imported as bench.bench
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import procstat  # noqa: E402
from hop_latency import encoder_hop_ms  # noqa: E402
from near_free import NAME as NEAR_FREE  # noqa: E402
from near_free import near_free_folder  # noqa: E402
from provenance import provenance  # noqa: E402
from raw_ceiling import Ceiling  # noqa: E402

from triton_embeddings.defaults import DEFAULT_MODEL  # noqa: E402
from triton_embeddings.local.models import HUB_IDS, model_source  # noqa: E402
from triton_embeddings.local.processes import free_port, stop_process, wait_http  # noqa: E402

MODEL = DEFAULT_MODEL
LUA = ROOT / "bench" / "embeddings.lua"
# The gateway's paths: `gateway` tokenizes itself (the direct path, what `make serve` runs); `gateway-ensemble`
# sends every request through the ensemble; `gateway-w2` is the direct path with EMBEDDINGS_WORKERS=2.
GATEWAYS = {"gateway": {}, "gateway-ensemble": {"EMBEDDINGS_MODEL_REPOSITORY": ""},
            "gateway-w2": {"EMBEDDINGS_WORKERS": "2"}}
TRITON_PATHS = ("triton", *GATEWAYS, "gateway-int8")
VOCAB = (
    "the server model batch token request latency throughput vector search index query document cluster "
    "gpu memory queue embedding semantic similarity language network cloud private data cost scale "
    "inference engine dynamic length padding sentence paragraph context window retrieval answer question "
    "customer support ticket invoice contract policy report summary weather travel music history science"
).split()


@dataclass(frozen=True)
class Load:
    name: str
    clients: int
    per_request: int
    long_every: int  # 0 short only, 1 long only, 5: every 5th text long
    label: str


LOADS = [
    Load("S32", 32, 1, 0, "32 clients x 1 short text"),
    Load("B32", 4, 32, 0, "4 clients x 32 short texts"),
    Load("L32", 32, 1, 1, "32 clients x 1 long text"),
    Load("M32", 32, 1, 5, "32 clients x 1 text, 4 short : 1 long"),
]


def make_texts(n_short: int = 512, n_long: int = 128, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    short = [" ".join(rng.choices(VOCAB, k=rng.randint(10, 15))) for _ in range(n_short)]
    long = [" ".join(rng.choices(VOCAB, k=rng.randint(240, 250))) for _ in range(n_long)]
    return short, long


def load_texts(load: Load, short: list[str], long: list[str], n: int, prefix: str) -> list[str]:
    """The texts the Lua script would send for `load`, in the same shape (for the raw path)."""
    out = []
    for k in range(1, n + 1):
        pool = long if load.long_every and k % load.long_every == 0 else short
        out.append(f"{prefix}-1-{k} {pool[k % len(pool)]}")
    return out


# ---- servers ------------------------------------------------------------------------------------------
@dataclass
class Stack:
    """Triton (fp32 and, optionally, int8 ensembles), the gateway, the reference server; their processes."""

    triton: object
    gateways: dict[str, tuple[str, subprocess.Popen]]  # path -> (url, process)
    reference: tuple[str, subprocess.Popen] | None

    @property
    def gateway_url(self) -> str:
        return self.gateways["gateway"][0]

    @property
    def procs(self) -> list[subprocess.Popen]:
        return [p for _, p in self.gateways.values()] + ([self.reference[1]] if self.reference else [])

    def pids(self) -> dict[str, list[int]]:
        """Process groups whose CPU the table reports (a gateway with workers: the parent and its workers)."""
        groups = procstat.triton_groups(self.triton.process.pid)
        for path, (_, proc) in self.gateways.items():
            groups[path] = [proc.pid, *procstat.children(proc.pid)]
        if self.reference:
            groups["reference"] = [self.reference[1].pid]
        return groups


def spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def combined_repository(repos: list[Path], work: Path) -> Path:
    """One repository linking every model folder of `repos`: Triton serves it, and the gateways' direct path
    reads the tokenizers from it (EMBEDDINGS_MODEL_REPOSITORY is one folder)."""
    combined = work / "served"
    combined.mkdir(exist_ok=True)
    for repo in repos:
        for model in repo.resolve().iterdir():
            if (model / "config.pbtxt").exists() and not (combined / model.name).exists():
                (combined / model.name).symlink_to(model, target_is_directory=True)
    return combined


def _gateway(path: str, triton, repo: Path, work: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), EMBEDDINGS_TRITON_GRPC_URL=triton.grpc_url,
               EMBEDDINGS_TRITON_METRICS_URL="", EMBEDDINGS_PORT=str(port), EMBEDDINGS_CACHE="none",
               EMBEDDINGS_ACCESS_LOG="false", EMBEDDINGS_LOG_LEVEL="warning", EMBEDDINGS_MODEL_REPOSITORY=str(repo))
    env.update(GATEWAYS[path])
    proc = spawn([sys.executable, "-m", "triton_embeddings.gateway"], env, work / f"{path}.log")
    return f"http://127.0.0.1:{port}", proc


def start_stack(repos: list[Path], work: Path, source: str, reference: bool,
                gateways: tuple[str, ...] | list[str] = ("gateway",)) -> Stack:
    from triton_embeddings.local.launcher import TritonServer

    repo = combined_repository(repos, work)
    triton = TritonServer.on_free_ports(repo, log_file=work / "triton.log").start()
    stack = Stack(triton, {}, None)
    try:
        for path in gateways:
            stack.gateways[path] = _gateway(path, triton, repo, work)
        if reference:
            port = free_port()
            renv = dict(os.environ, PYTHONPATH=str(ROOT), REFERENCE_MODEL=source)
            cmd = [sys.executable, "-m", "uvicorn", "bench.reference_server:app", "--port", str(port),
                   "--log-level", "warning", "--no-access-log"]
            stack.reference = (f"http://127.0.0.1:{port}", spawn(cmd, renv, work / "reference.log"))
        for url, proc in stack.gateways.values():
            wait_http(url + "/ready", 180, proc)
        if stack.reference:
            wait_http(stack.reference[0] + "/docs", 180, stack.reference[1])
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for p in stack.procs:
        stop_process(p)
    stack.triton.stop()


# ---- measurements -------------------------------------------------------------------------------------
@dataclass
class Run:
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cores: dict[str, float]  # process group -> cores used
    triton: dict[str, float] = field(default_factory=dict)  # per-model metric deltas
    wall_s: float = 0.0
    model: str = ""
    ways: dict[str, float] = field(default_factory=dict)  # the raw path: texts/s of each way (raw_ceiling.py)


def wrk(url: str, api: str, model: str, load: Load, seconds: float, prefix: str, files: tuple[Path, Path],
        groups: dict[str, list[int]], metrics_url: str | None) -> Run:
    """One wrk run; CPU of every process group and Triton's metrics, before and after."""
    env = dict(os.environ, BENCH_SHORT=str(files[0]), BENCH_LONG=str(files[1]), BENCH_API=api, BENCH_MODEL=model,
               BENCH_PER_REQUEST=str(load.per_request), BENCH_LONG_EVERY=str(load.long_every), BENCH_PREFIX=prefix)
    cmd = [shutil.which("wrk") or "wrk", "-t1", f"-c{load.clients}", f"-d{seconds:g}s", "--timeout", "120s",
           "-s", str(LUA), url]
    before, m0, t0 = procstat.cpu_seconds(groups), procstat.triton_metrics(metrics_url), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    after, m1 = procstat.cpu_seconds(groups), procstat.triton_metrics(metrics_url)
    lines = [line for line in out.splitlines() if line.startswith("BENCH_RESULT ")]
    if status != 0 or not lines:
        raise RuntimeError(f"wrk failed on {url}:\n{out[-2000:]}")
    res = json.loads(lines[-1].split(" ", 1)[1])
    cores = {k: (after[k] - before[k]) / wall for k in after}
    cores["wrk"] = (usage.ru_utime + usage.ru_stime) / wall
    rate = texts_per_second(load, res)
    procstat.wait_idle(groups)  # requests still in flight when wrk stopped must not slow the next run
    return Run(rate, res["p50_us"] / 1000, res["p99_us"] / 1000, res["errors"], cores, procstat.delta(m0, m1), wall,
               model)


def window(seconds: float, load: Load, raw: Run | None) -> float:
    """A server run's seconds: `seconds`, or long enough for every client to complete about 5 requests at
    the raw rate (Little's law needs 4; mpnet serves L32 at ~3 texts/s, 32 requests in flight)."""
    if raw is None or not raw.texts_per_s > 0:
        return seconds
    return max(seconds, round(5 * load.clients * load.per_request / raw.texts_per_s))


def texts_per_second(load: Load, res: dict) -> float:
    """Little's law (clients x texts per request / mean latency) once every client completed a few requests;
    before that the mean covers only the fast early ones, so completions per second instead."""
    if res["requests"] >= 4 * load.clients:
        return load.clients * load.per_request / (res["mean_us"] / 1e6)
    return res["requests"] * load.per_request / (res["duration_us"] / 1e6) if res["requests"] else float("nan")


def raw_run(ceiling: Ceiling, texts: list[str]) -> Run:
    """The ceiling: every text at once, sorted by length, batches of 32, in-process; the better of its two ways."""
    ways = ceiling.run(texts)
    best = max(ways, key=lambda w: ways[w][0])
    return Run(ways[best][0], 0.0, 0.0, 0, {"bench": ways[best][1]}, ways={w: v[0] for w, v in ways.items()})


def raw_latency_ms(pipeline, texts: list[str]) -> float:
    samples = []
    for t in texts:
        t0 = time.perf_counter()
        pipeline.embed_batch([t])
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


# ---- rounds -------------------------------------------------------------------------------------------
@dataclass
class Plan:
    loads: list[Load]
    paths: list[str]
    seconds: float
    rounds: int
    raw_texts: dict[str, int]  # load name -> texts the raw path embeds per round
    int8_loads: tuple[str, ...] = ("S32", "L32")
    model: str = MODEL
    full_windows: bool = True  # lengthen slow loads' runs (window()); off for warm-up and --quick


def path_target(stack: Stack, path: str, model: str, peer: tuple[str, str] | None) -> tuple[str, str, str]:
    """(url, api, model) of a served path."""
    if path == "triton":
        return stack.triton.http_url, "triton", model
    if path == "reference":
        return stack.reference[0], "openai", model
    if path == "peer":
        return peer[0], "openai", peer[1]
    if path.startswith("gw:"):  # a --compare-repository model, through the same gateway
        return stack.gateway_url, "openai", path[3:]
    if path in stack.gateways:
        return stack.gateways[path][0], "openai", model
    return stack.gateway_url, "openai", model + ("-int8" if path == "gateway-int8" else "")


def one_round(r: int, plan: Plan, stack: Stack, raw: dict, files, peer, log) -> dict:
    """Every load on every path once; returns {(load, path): Run}."""
    out: dict = {}
    groups = stack.pids()
    short, long = (Path(f).read_text().splitlines() for f in files)
    for load in plan.loads:
        paths = list(plan.paths)
        if "int8" in raw and load.name in plan.int8_loads:
            paths += ["raw-int8", "gateway-int8"]
        for path in paths:
            prefix = f"r{r}{load.name}{path}"
            if path.startswith("raw"):
                texts = load_texts(load, short, long, plan.raw_texts[load.name], prefix)
                res = raw_run(raw["int8" if path == "raw-int8" else "fp32"], texts)
            else:
                url, api, model = path_target(stack, path, plan.model, peer)
                metrics = stack.triton.metrics_url if path in TRITON_PATHS or path.startswith("gw:") else None
                base = out.get((load.name, "raw-int8" if path == "gateway-int8" else "raw"))
                seconds = window(plan.seconds, load, base) if plan.full_windows else plan.seconds
                res = wrk(url, api, model, load, seconds, prefix, files, groups, metrics)
            out[(load.name, path)] = res
            log(f"round {r + 1} {load.name:<4} {path:<13} {res.texts_per_s:8.1f} texts/s  errors {res.errors}")
    return out


def latency_round(r: int, plan: Plan, stack: Stack, raw: dict, files) -> dict:
    """p50 of one client sending one short text at a time, and raw one-text latency."""
    load = Load("P1", 1, 1, 0, "1 client x 1 short text")
    short = Path(files[0]).read_text().splitlines()
    out = {"raw": raw_latency_ms(raw["fp32"], [f"lat{r}-{k} {short[k]}" for k in range(100)])}
    hop = encoder_hop_ms(stack.triton.grpc_url, Path(stack.triton.model_repository), plan.model,
                         [f"hop{r}-{k} {short[k]}" for k in range(100)])
    if hop is not None:
        out["encoder-hop"] = hop
    for path in ["triton", "gateway"] + [p for p in plan.paths if p.startswith("gw:")]:
        url, api, model = path_target(stack, path, plan.model, None)
        out[path] = wrk(url, api, model, load, plan.seconds, f"lat{r}{path}", files, {}, None).p50_ms
    return out


# ---- report -------------------------------------------------------------------------------------------
def _med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def _cores(runs: list[Run]) -> str:
    keys = sorted({k for r in runs for k in r.cores}, key=lambda k: (k == "wrk", k))
    parts = [(k, _med(r.cores.get(k, 0.0) for r in runs)) for k in keys]
    return " ".join(f"{k} {v:.2f}" for k, v in parts if v >= 0.005)


def throughput_table(rounds: list[dict], plan: Plan) -> list[str]:
    lines = [f"{'load':<5}{'path':<14}{'texts/s':>9}{'x raw':>7}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}  "
             "CPU, cores used per process"]
    for load in plan.loads:
        paths = list(dict.fromkeys(k[1] for r in rounds for k in r if k[0] == load.name))
        for path in paths:
            runs = [r[(load.name, path)] for r in rounds]
            base = "raw-int8" if path == "raw-int8" else "raw"
            ratio = _med(r.texts_per_s for r in runs) / _med(r[(load.name, base)].texts_per_s for r in rounds)
            ratio_s = "" if path == base else f"{ratio:.2f}"
            p50, p99 = _med(r.p50_ms for r in runs), _med(r.p99_ms for r in runs)
            lat = "" if path.startswith("raw") else f"{p50:9.1f}{p99:9.1f}"
            lines.append(f"{load.name:<5}{path:<14}{_med(r.texts_per_s for r in runs):9.1f}{ratio_s:>7}"
                         f"{lat or ' ' * 18}{sum(r.errors for r in runs):7d}  {_cores(runs)}")
    return lines


def _per(d: dict, model: str, num: str, den: str, scale: float = 1.0) -> float:
    n, m = d.get(f"{model}:{num}", 0.0), d.get(f"{model}:{den}", 0.0)
    return n / m * scale if m else float("nan")


def triton_table(rounds: list[dict], plan: Plan) -> list[str]:
    """How Triton batched: texts per request and per execution, compute and queue time, per step."""
    lines = [f"{'load':<5}{'path':<14}{'step':<10}{'texts/req':>10}{'texts/exec':>11}{'ms/exec':>9}"
             f"{'ms/text':>9}{'queue ms/req':>13}{'CPU ms/text':>12}"]
    for (load, path), runs in _triton_runs(rounds, plan).items():
        model = runs[0].model
        for step in ("ensemble", "tokenizer", "encoder", "pooler"):
            lines.append(f"{load:<5}{path:<14}{step:<10}" + _step_row(runs, model, step))
    return lines


def _step_row(runs: list[Run], model: str, step: str) -> str:
    name = model if step == "ensemble" else f"{model}_{step}"

    def m(num: str, den: str, scale: float = 1.0) -> float:
        return _med(_per(r.triton, name, num, den, scale) for r in runs)

    def cpu_ms_per_text(r: Run) -> float:
        texts = r.triton.get(f"{model}:nv_inference_count", 0.0)
        return r.cores.get(step, 0.0) * r.wall_s / texts * 1000 if texts else float("nan")

    compute = "nv_inference_compute_infer_duration_us"
    row = (f"{m('nv_inference_count', 'nv_inference_request_success'):10.1f}"
           f"{m('nv_inference_count', 'nv_inference_exec_count'):11.1f}"
           f"{m(compute, 'nv_inference_exec_count', 1e-3):9.1f}{m(compute, 'nv_inference_count', 1e-3):9.2f}"
           f"{m('nv_inference_queue_duration_us', 'nv_inference_request_success', 1e-3):13.2f}")
    return row if step == "ensemble" else row + f"{_med(cpu_ms_per_text(r) for r in runs):12.2f}"


def _triton_runs(rounds: list[dict], plan: Plan) -> dict:
    out: dict = {}
    for load in plan.loads:
        for (name, path) in rounds[0]:
            if name == load.name and (path in TRITON_PATHS or path.startswith("gw:")):
                out[(load.name, path)] = [r[(load.name, path)] for r in rounds]
    return out


def summarize(rounds: list[dict], latency: list[dict], plan: Plan) -> dict:
    """The run's figures as docs quote them (bench/figures.py): medians of rounds, and ratios of those
    medians, so that every ratio in a table is its own two cells divided."""
    out: dict = {"throughput": {}, "int8": {}}
    for load in plan.loads:
        paths = list(dict.fromkeys(k[1] for r in rounds for k in r if k[0] == load.name))
        cells = {}
        for path in paths:
            runs = [r[(load.name, path)] for r in rounds]
            cells[path] = {"texts_per_s": round(_med(x.texts_per_s for x in runs), 1),
                           "p50_ms": round(_med(x.p50_ms for x in runs), 1),
                           "errors": sum(x.errors for x in runs),
                           "cores": {k: round(_med(x.cores.get(k, 0.0) for x in runs), 2)
                                     for k in sorted({k for x in runs for k in x.cores})}}
        for path in ("raw", "raw-int8"):
            if path in cells:
                runs = [r[(load.name, path)] for r in rounds]
                cells[path]["ways"] = {w: round(_med(x.ways[w] for x in runs), 1) for w in runs[0].ways}
        for path, cell in cells.items():
            base = cells.get("raw-int8" if path == "gateway-int8" else "raw")
            if base and path not in ("raw", "raw-int8"):
                cell["x_raw"] = round(cell["texts_per_s"] / base["texts_per_s"], 2)
        out["throughput"][load.name] = cells
        if "gateway-int8" in cells:
            out["int8"][load.name] = {
                "gateway": round(cells["gateway-int8"]["texts_per_s"] / cells["gateway"]["texts_per_s"], 2),
                "raw": round(cells["raw-int8"]["texts_per_s"] / cells["raw"]["texts_per_s"], 2)}
    if latency:
        out["p50_one_short_text_ms"] = {k: round(_med(x[k] for x in latency), 1) for k in latency[0]}
    return out


# Goals of gateway / raw per model and load (issue 19); the near-free model measures the serving path alone.
RAW_GOALS = {NEAR_FREE: {"S32": 0.25, "B32": 0.85}}
DEFAULT_RAW_GOALS = {"S32": 0.85}


def _ratio(cells: dict, num: str, den: str) -> float | None:
    if num in cells and den in cells and cells[den]["texts_per_s"]:
        return cells[num]["texts_per_s"] / cells[den]["texts_per_s"]
    return None


def path_lines(summary: dict, model: str) -> list[str]:
    """Each load's ratios between paths: against raw (with its goal), direct / ensemble, 2 workers / 1, peer."""
    lines, goals = [], RAW_GOALS.get(model, DEFAULT_RAW_GOALS)
    for load, cells in summary["throughput"].items():
        if ways := cells.get("raw", {}).get("ways"):
            lines.append(f"raw, {load}: the better of " + ", ".join(f"{w} {v:.1f}" for w, v in ways.items()))
        if "gateway" in cells:
            goal = f" (goal >= {goals[load]})" if load in goals else ""
            lines.append(f"gateway / raw, {load}: {cells['gateway']['x_raw']:.2f}{goal}")
        pairs = [("gateway", "gateway-ensemble", "direct path / ensemble", ""),
                 ("gateway-w2", "gateway", "2 gateway workers / 1", " (goal >= 1.6)"),
                 ("gateway", "peer", "gateway / peer", " (goal >= 3)" if model == NEAR_FREE else "")]
        for num, den, what, goal in pairs:
            if (ratio := _ratio(cells, num, den)) is not None:
                lines.append(f"{what}, {load}: {ratio:.2f}{goal}")
    return lines


def summary_lines(summary: dict, model: str = MODEL) -> list[str]:
    lines = []
    if "p50_one_short_text_ms" in summary:
        p50 = summary["p50_one_short_text_ms"]
        lines.append(f"p50, 1 client x 1 short text: raw {p50['raw']:.1f} ms, triton {p50['triton']:.1f} ms, "
                     f"gateway {p50['gateway']:.1f} ms: gateway = raw {p50['gateway'] - p50['raw']:+.1f} ms "
                     "(goal <= +2 ms)")
        if "encoder-hop" in p50:
            lines.append(f"p50, the encoder step alone over gRPC (token ids, no gateway): {p50['encoder-hop']:.1f} ms"
                         f" = raw {p50['encoder-hop'] - p50['raw']:+.1f} ms, the floor of any path through Triton")
        lines += [f"p50, 1 client x 1 short text, {k}: {v:.1f} ms" for k, v in p50.items() if k.startswith("gw:")]
    lines += path_lines(summary, model)
    for load, ratio in summary["int8"].items():
        lines.append(f"int8 / fp32, {load}: through the gateway {ratio['gateway']:.2f} (goal >= 1.6), "
                     f"raw {ratio['raw']:.2f}")
    return lines


def report(rounds: list[dict], summary: dict, plan: Plan, header: list[str]) -> str:
    out = header + ["", f"medians of {len(rounds)} alternating round(s), {plan.seconds:g} s per server run", ""]
    out += throughput_table(rounds, plan) + ["", "Triton per-model metrics (deltas over each run):"]
    out += triton_table(rounds, plan) + [""] + summary_lines(summary, plan.model)
    return "\n".join(out)


# ---- main ---------------------------------------------------------------------------------------------
def ensure_repository(given: Path | None, work: Path, name: str, precision: str) -> Path:
    if given is not None:
        return given
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions

    repo = work / precision
    model = name.removesuffix("-int8")
    print(f"exporting {name} ({precision}) into {repo} ...", file=sys.stderr, flush=True)
    opts = ExportOptions(name=name, precision=precision, source_label=HUB_IDS.get(model, model))
    export_model(source_of(model, work), repo, opts, log=lambda _: None)
    return repo


def source_of(model: str, work: Path) -> str:
    """The folder or hub id a model is exported from; the near-free model is built here."""
    if model == NEAR_FREE:
        return str(near_free_folder())
    return model_source(model)


def ensemble_name(repo: Path) -> str:
    return next(p.name for p in sorted(repo.iterdir())
                if (p / "config.pbtxt").exists() and 'platform: "ensemble"' in (p / "config.pbtxt").read_text())


def raw_pipeline(repo: Path, name: str = MODEL, threads: int = 0):
    """The repository's own tokenizer step, encoder and pooler, in-process (raw_ceiling.raw_pipeline)."""
    import raw_ceiling

    return raw_ceiling.raw_pipeline(repo, name, threads)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round: proves the bench works (CI)")
    p.add_argument("--model", default=MODEL, choices=[*sorted(HUB_IDS), NEAR_FREE],
                   help="the seed model to serve and compare (its packaged copy when installed, else its hub id); "
                   f"{NEAR_FREE}: 1 layer, hidden 32, MiniLM's tokenizer (bench/near_free.py), the serving path alone")
    p.add_argument("--repository", type=Path, help="repository holding MODEL (default: export to a temp dir)")
    p.add_argument("--int8-repository", type=Path, help="repository holding MODEL-int8 (default: export one)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 line")
    p.add_argument("--no-reference", action="store_true", help="skip the seed-style reference server")
    p.add_argument("--peer", help="another OpenAI-compatible server (base URL) to add to the table")
    p.add_argument("--peer-model", help="model name to send to --peer (default: MODEL)")
    p.add_argument("--compare-repository", type=Path, action="append", default=[],
                   help="another exported model (any name), served by the same Triton and gateway: path gw:<name>")
    p.add_argument("--loads", default="S32,B32,L32,M32", help="comma-separated loads")
    p.add_argument("--gateways", help="comma-separated gateway paths (default: gateway,gateway-ensemble; "
                   f"with {NEAR_FREE} also gateway-w2): " + ", ".join(GATEWAYS))
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3; --quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per server run (default 10; --quick 2)")
    p.add_argument("--threads", type=int, default=0, help="raw ONNX Runtime threads (0: every core, as Triton)")
    p.add_argument("--json", type=Path, help="also write every run's figures here")
    args = p.parse_args(argv)
    default = "gateway,gateway-ensemble" + (",gateway-w2" if args.model == NEAR_FREE else "")
    args.gateways = [g for g in (args.gateways or default).split(",") if g]
    if "gateway" not in args.gateways or set(args.gateways) - set(GATEWAYS):
        p.error(f"--gateways: a comma-separated list of {', '.join(GATEWAYS)}, gateway included")
    if args.model == NEAR_FREE:
        args.no_int8 = True  # quantizing a model that costs nothing measures nothing
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    return args


def make_plan(args) -> Plan:
    loads = [ld for ld in LOADS if ld.name in args.loads.split(",")]
    paths = ["raw", "triton", *args.gateways] + ([] if args.no_reference else ["reference"])
    paths += ["peer"] if args.peer else []
    paths += [f"gw:{ensemble_name(r)}" for r in args.compare_repository]
    raw_texts = {"S32": 128, "B32": 128, "L32": 16, "M32": 40} if args.quick else \
        {"S32": 1024, "B32": 1024, "L32": 128, "M32": 320}
    return Plan(loads, paths, args.seconds, args.rounds, raw_texts, model=args.model, full_windows=not args.quick)


def machine(prov: dict) -> str:
    m = prov["machine"]
    return (f"machine: {m['cores']} cores ({m['cpu']}), load average {m['load_average_at_start']:.2f} at start; "
            f"onnxruntime {m['onnxruntime']}; client: wrk, 1 thread; commit {prov['commit']}"
            + (" with uncommitted changes" if prov["dirty"] else ""))


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # so that the servers are stopped on SIGTERM too


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    plan = make_plan(args)
    prov = provenance("bench/bench.py", argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        files = (work / "short.txt", work / "long.txt")
        short, long = make_texts()
        files[0].write_text("\n".join(short) + "\n")
        files[1].write_text("\n".join(long) + "\n")
        name = plan.model
        repos = [ensure_repository(args.repository, work, name, "fp32")]
        raw = {"fp32": Ceiling(repos[0], name, args.threads)}
        if not args.no_int8:
            repos.append(ensure_repository(args.int8_repository, work, name + "-int8", "int8"))
            raw["int8"] = Ceiling(repos[1], name + "-int8", args.threads)
        repos += args.compare_repository
        stack = start_stack(repos, work, source_of(name, work), not args.no_reference, args.gateways)
        try:
            rss0 = procstat.rss_of(stack.pids())
            rounds, latency = measure(args, plan, stack, raw, files)
            rss1 = procstat.rss_of(stack.pids())
        finally:
            stop_stack(stack)
            for ceiling in raw.values():
                ceiling.close()
    summary = summarize(rounds, latency, plan)
    print(report(rounds, summary, plan, [machine(prov)]))
    print(rss_line(rss0, rss1, "models loaded", "end of the run"))
    if args.json:
        doc = _as_json(rounds, latency, summary, plan, prov) | {"rss_mb": {"models_loaded": rss0, "end": rss1}}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if any(run.errors for r in rounds for run in r.values()) else 0


def measure(args, plan: Plan, stack: Stack, raw: dict, files) -> tuple[list[dict], list[dict]]:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    peer = (args.peer.rstrip("/").removesuffix("/v1/embeddings"), args.peer_model or plan.model) if args.peer else None
    warm = Plan(plan.loads, plan.paths, 1.0, 1, {k: 32 for k in plan.raw_texts}, model=plan.model, full_windows=False)
    one_round(-1, warm, stack, raw, files, peer, lambda _: None)  # warm every path and shape
    rounds, latency = [], []
    for r in range(plan.rounds):
        rounds.append(one_round(r, plan, stack, raw, files, peer, log))
        latency.append(latency_round(r, plan, stack, raw, files))
    return rounds, latency


def rss_line(before: dict[str, float], after: dict[str, float], first: str, then: str) -> str:
    parts = [f"{k} {before[k]:.0f} -> {after.get(k, 0):.0f}" for k in before if before[k]]
    return f"RSS MB ({first} -> {then}): " + ", ".join(parts)


def _as_json(rounds: list[dict], latency: list[dict], summary: dict, plan: Plan, prov: dict) -> dict:
    return {
        "provenance": prov,
        "model": plan.model,
        "rounds_run": plan.rounds,
        "seconds_per_run": plan.seconds,
        "summary": summary,
        "rounds": [{f"{k[0]}/{k[1]}": vars(v) for k, v in r.items()} for r in rounds],
        "latency_p50_ms": latency,
    }


if __name__ == "__main__":
    sys.exit(main())
