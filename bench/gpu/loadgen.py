"""A closed-loop HTTP load: `clients` connections, each sending its next request as soon as the last answered,
spread over worker processes (standard library only: the lent GPU machine has no wrk, no httpx).

`run_load(url, bodies, clients, seconds)` returns the requests answered 200 within the window (each client's
first answer counts even when late, and the window is then as long as it took), the errors,
latency percentiles and the workers' own CPU seconds. A worker is this file run as a script.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

PATH = "/v1/embeddings"


def _client(url: str, bodies: list[bytes], offset: int, times: tuple[float, float, float], out: list) -> None:
    """Send from `warm` on; count what is sent from `start` and answered by `deadline` (and a first answer)."""
    warm, start, deadline = times
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    i, done, errors, lat = offset, 0, 0, []
    while time.time() < warm:
        time.sleep(0.001)
    while time.time() < deadline:
        body = bodies[i % len(bodies)]
        i += 1
        t0, sent = time.perf_counter(), time.time()
        try:
            conn.request("POST", PATH, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        if sent < start:  # warm-up
            continue
        if time.time() > deadline and done + errors:  # answered after the window: not counted (but a first)
            break
        lat.append((time.perf_counter() - t0) * 1000)
        done, errors = done + ok, errors + (not ok)
    out.append((done, errors, lat, time.time()))


def worker(spec: dict) -> dict:
    bodies = [line.encode() for line in Path(spec["bodies"]).read_text().splitlines()]
    results: list = []
    times = (spec["warm"], spec["start"], spec["deadline"])
    threads = [threading.Thread(target=_client, args=(spec["url"], bodies, k * 7919 + spec["seed"], times, results))
               for k in range(spec["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"ok": sum(r[0] for r in results), "errors": sum(r[1] for r in results),
            "latencies_ms": [x for r in results for x in r[2]], "cpu_s": usage.ru_utime + usage.ru_stime,
            "last": max(r[3] for r in results)}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_load(url: str, bodies: list[str], clients: int, seconds: float, processes: int = 0, warmup_s: float = 0.0,
             on_window=None) -> dict:
    """`bodies`: JSON request bodies, each sent in turn; the clients send for `warmup_s` once every worker is up,
    then the window opens. `on_window(start, end)` (epoch seconds) is called before: the caller's samplers."""
    processes = max(1, min(clients, processes or (os.cpu_count() or 2) // 4 or 1))
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(bodies))
    warm = time.time() + 1.0 + 0.1 * processes  # the workers' start (an interpreter each) before the warm-up
    start = warm + warmup_s
    specs = [{"url": url, "bodies": f.name, "clients": clients // processes + (k < clients % processes),
              "seed": k, "warm": warm, "start": start, "deadline": start + seconds} for k in range(processes)]
    if on_window:
        on_window(start, start + seconds)
    procs = [subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in specs]
    for p, spec in zip(procs, specs):
        p.stdin.write(json.dumps(spec))
        p.stdin.close()
    outs = [json.loads(p.stdout.read()) for p in procs]
    for p in procs:
        p.wait()
    os.unlink(f.name)
    lat = [x for o in outs for x in o["latencies_ms"]]
    # Each client counts at least its first answer, however late: the window then lasts until the last one.
    seconds = max(seconds, max(o["last"] for o in outs) - start)
    return {"requests": sum(o["ok"] for o in outs), "errors": sum(o["errors"] for o in outs), "seconds": seconds,
            "p50_ms": _percentile(lat, 0.5), "p99_ms": _percentile(lat, 0.99),
            "client_cpu_s": sum(o["cpu_s"] for o in outs), "window": (start, start + seconds)}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.stdin.read()))))
