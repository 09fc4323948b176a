"""Soak: a long mixed load through the gateway, driven by wrk, with each process's memory before and after.

    make soak                                    # 10 minutes (not in CI)
    HF_HUB_OFFLINE=1 python bench/soak.py --minutes 1

32 keep-alive clients (wrk, bench/soak.lua) send single-text requests, 4 short (10-15 words) to 1 long
(~220 words), every text distinct, to a gateway (default settings, access log off) over the embedded
Triton. After a warm-up run it prints each process's RSS (gateway, tritonserver, each Python-backend stub
by model), again at the end, and the error counts of both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_gateway import MODEL, ROOT, repository  # the gateway benchmark's helpers

from triton_embeddings.defaults import default_source
from triton_embeddings.local.launcher import TritonServer
from triton_embeddings.local.processes import free_port, stop_process, wait_http
from triton_embeddings.local.supervisor import live_stubs

LUA = Path(__file__).with_name("soak.lua")


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


def run_wrk(url: str, seconds: int, clients: int, threads: int, prefix: str) -> dict:
    """One wrk run; returns the JSON line soak.lua's done() prints."""
    cmd = [shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s",
           "-s", str(LUA), url, "--", MODEL, prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("SOAK "))
    return json.loads(line[len("SOAK "):])


def errors(run: dict) -> int:
    return sum(run[k] for k in ("connect", "read", "write", "status", "timeout"))


def report(warm: dict, end: dict, warm_run: dict, main_run: dict, minutes: float) -> None:
    print(f"\nsoak: {minutes:.1f} min, wrk {main_run['requests']} requests "
          f"({main_run['requests'] / main_run['seconds']:.1f}/s), p50 {main_run['p50_ms']:.1f} ms, "
          f"p99 {main_run['p99_ms']:.1f} ms, max {main_run['max_ms']:.0f} ms")
    print(f"errors: warm-up {errors(warm_run)}, soak {errors(main_run)} "
          f"(connect/read/write/status/timeout: {main_run['connect']}/{main_run['read']}/{main_run['write']}/"
          f"{main_run['status']}/{main_run['timeout']})")
    print(f"\n{'process':<44}{'RSS after warm-up':>18}{'RSS at end':>12}{'growth':>9}")
    for name in dict.fromkeys([*warm, *end]):
        a, b = warm.get(name, 0.0), end.get(name, 0.0)
        print(f"{name:<44}{a:>15.0f} MB{b:>9.0f} MB{b - a:>+6.0f} MB")


def soak(args, repo: Path, workdir: Path) -> int:
    triton = TritonServer.on_free_ports(repo, log_file=workdir / "triton.log")
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
                warm_run = run_wrk(url, args.warmup_seconds, args.clients, args.threads, "warm")
                warm = memory(gw.pid, triton.process.pid)
                print(f"warm-up done ({args.warmup_seconds} s); soaking {args.minutes:g} min ...", flush=True)
                t0 = time.monotonic()
                main_run = run_wrk(url, int(args.minutes * 60), args.clients, args.threads, "soak")
                end = memory(gw.pid, triton.process.pid)
                if gw.poll() is not None:
                    print(f"the gateway exited with {gw.returncode}; log: {workdir / 'gateway.log'}")
                    return 1
            finally:
                stop_process(gw, 15)
    report(warm, end, warm_run, main_run, (time.monotonic() - t0) / 60)
    return 0 if errors(main_run) == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the measured run")
    parser.add_argument("--warmup-seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--repository", type=Path, help="exported model repository (default: export to a temp dir)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("soak: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    repo = repository(args.repository, default_source())
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        return soak(args, repo, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
