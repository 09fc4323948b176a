"""Soak: a long mixed load through the gateway, driven by wrk, with each process's memory before and after.

    make soak                                    # 10 minutes (not in CI)
    HF_HUB_OFFLINE=1 python bench/soak.py --minutes 1

32 keep-alive clients (wrk, bench/embeddings.lua) send single-text requests, 4 short (10-15 words) to 1 long
(~220 words), every text distinct, to a gateway (default settings, access log off) over the embedded
Triton. After a warm-up run it prints each process's RSS (gateway, tritonserver, each Python-backend stub
by model), again at the end, and the error counts of both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import provenance

from bench import MODEL, ROOT, ensure_repository  # bench/bench.py: sys.path and the export helper
from triton_embeddings.local.launcher import TritonServer
from triton_embeddings.local.processes import free_port, stop_process, wait_http
from triton_embeddings.local.supervisor import live_stubs

LUA = Path(__file__).with_name("embeddings.lua")
WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be have had one "
    "their has but not they all when there can who been more its would up so out into if about some time "
    "than other them only these two may first then could any like new our over such after most also made "
    "many years where before must through back much should well people very still between under last "
    "city world state water music river house school system group number night market science history"
).split()


def write_texts(workdir: Path) -> tuple[Path, Path]:
    """Files of short (10-15 words) and long (200-230 words: near MiniLM's 256 tokens) texts, new each run."""
    rng = random.Random()
    files = (workdir / "short.txt", workdir / "long.txt")
    for file, (low, high), n in zip(files, ((10, 15), (200, 230)), (4096, 1024)):
        file.write_text("".join(" ".join(rng.choices(WORDS, k=rng.randint(low, high))) + "\n" for _ in range(n)))
    return files


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(gateway_pid: int, triton_pid: int) -> dict[str, float]:
    """RSS in MB of the gateway, tritonserver and each stub (named by its model instance)."""
    out = {"gateway": rss_mb(gateway_pid), "tritonserver": rss_mb(triton_pid)}
    for stub in sorted(live_stubs(triton_pid).values(), key=lambda s: s.instance):
        out[f"stub {stub.instance}"] = rss_mb(stub.pid)
    return out


def run_wrk(url: str, seconds: int, clients: int, threads: int, prefix: str, files: tuple[Path, Path]) -> dict:
    """One wrk run, single texts, 4 short : 1 long; returns the JSON line the Lua script's done() prints."""
    env = dict(os.environ, BENCH_SHORT=str(files[0]), BENCH_LONG=str(files[1]), BENCH_API="openai",
               BENCH_MODEL=MODEL, BENCH_PER_REQUEST="1", BENCH_LONG_EVERY="5", BENCH_PREFIX=prefix)
    cmd = [shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s",
           "-s", str(LUA), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))
    return json.loads(line[len("BENCH_RESULT "):])


def errors(run: dict) -> int:
    return run["errors"]


def report(warm: dict, end: dict, warm_run: dict, main_run: dict, minutes: float) -> None:
    kinds = "/".join(str(main_run[f"{k}_errors"]) for k in ("connect", "read", "write", "status", "timeout"))
    print(f"\nsoak: {minutes:.1f} min, wrk {main_run['requests']} requests "
          f"({main_run['requests'] / (main_run['duration_us'] / 1e6):.1f}/s), p50 {main_run['p50_us'] / 1e3:.1f} ms, "
          f"p99 {main_run['p99_us'] / 1e3:.1f} ms, max {main_run['max_us'] / 1e3:.0f} ms")
    print(f"errors: warm-up {errors(warm_run)}, soak {errors(main_run)} (connect/read/write/status/timeout: {kinds})")
    print(f"\n{'process':<44}{'RSS after warm-up':>18}{'RSS at end':>12}{'growth':>9}")
    for name in dict.fromkeys([*warm, *end]):
        a, b = warm.get(name, 0.0), end.get(name, 0.0)
        print(f"{name:<44}{a:>15.0f} MB{b:>9.0f} MB{b - a:>+6.0f} MB")


def soak(args, repo: Path, workdir: Path) -> int:
    triton = TritonServer.on_free_ports(repo, log_file=workdir / "triton.log")
    files = write_texts(workdir)
    with triton:
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT), EMBEDDINGS_TRITON_GRPC_URL=triton.grpc_url,
                   EMBEDDINGS_TRITON_METRICS_URL=triton.metrics_url, EMBEDDINGS_PORT=str(port),
                   EMBEDDINGS_ACCESS_LOG="false", EMBEDDINGS_LOG_LEVEL="warning")
        with open(workdir / "gateway.log", "wb") as log:
            gw = subprocess.Popen([sys.executable, "-m", "triton_embeddings.gateway"], env=env, cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_http(url + "/ready")
                warm_run = run_wrk(url, args.warmup_seconds, args.clients, args.threads, "warm", files)
                warm = memory(gw.pid, triton.process.pid)
                print(f"warm-up done ({args.warmup_seconds} s); soaking {args.minutes:g} min ...", flush=True)
                t0 = time.monotonic()
                main_run = run_wrk(url, int(args.minutes * 60), args.clients, args.threads, "soak", files)
                end = memory(gw.pid, triton.process.pid)
                if gw.poll() is not None:
                    print(f"the gateway exited with {gw.returncode}; log: {workdir / 'gateway.log'}")
                    return 1
            finally:
                stop_process(gw, 15)
    minutes = (time.monotonic() - t0) / 60
    report(warm, end, warm_run, main_run, minutes)
    if args.json:
        doc = {"provenance": args.provenance, "minutes": round(minutes, 1), "clients": args.clients,
               "warmup": warm_run, "soak": main_run,
               "rss_mb": {name: {"after_warmup": round(warm.get(name, 0.0)), "end": round(end.get(name, 0.0))}
                          for name in dict.fromkeys([*warm, *end])}}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if errors(main_run) == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the measured run")
    parser.add_argument("--warmup-seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--repository", type=Path, help="exported model repository (default: export to a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the run's figures and provenance here")
    args = parser.parse_args()
    args.provenance = provenance("bench/soak.py")
    if shutil.which("wrk") is None:
        print("soak: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    repo = ensure_repository(args.repository, Path(tempfile.mkdtemp(prefix="soak-repo-")), MODEL, "fp32")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        return soak(args, repo, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
