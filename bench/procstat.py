"""Per-process CPU and memory from /proc, and Triton's per-model metrics, for bench/bench.py."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
STEPS = ("tokenizer", "encoder", "pooler")
# Counters of Triton's per-model metrics worth a delta (durations in microseconds).
COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)
_LINE = re.compile(r'^(nv_inference_\w+)\{model="([^"]+)",version="[^"]*"\} ([0-9.eE+-]+)$')


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields after the command name, from field 3 (state)


def cpu_of(pid: int) -> float:
    """utime + stime of one process, in seconds (0 once it is gone)."""
    try:
        fields = _stat(pid)
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_of(groups: dict[str, list[int]]) -> dict[str, float]:
    """Resident memory of each process group, MB."""
    return {name: sum(rss_mb(p) for p in pids) for name, pids in groups.items()}


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_of(p) for p in pids) for name, pids in groups.items()}


def wait_idle(groups: dict[str, list[int]], below: float = 0.1, timeout: float = 60.0) -> None:
    """Wait until the processes together use less than `below` cores (0.25 s samples, twice in a row)."""
    deadline, quiet = time.monotonic() + timeout, 0
    last = sum(cpu_seconds(groups).values())
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.25)
        now = sum(cpu_seconds(groups).values())
        quiet = quiet + 1 if now - last < below * 0.25 else 0
        last = now


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def stub_model(pid: int) -> str:
    """The model folder a triton_python_backend_stub serves (from its command line)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    for arg in args:
        if arg.endswith(b"model.py"):
            return Path(arg.decode(errors="replace")).parent.parent.name
    return ""


def triton_groups(triton_pid: int) -> dict[str, list[int]]:
    """tritonserver itself, and its Python-backend stubs grouped by step (all models together)."""
    groups: dict[str, list[int]] = {"triton": [triton_pid], **{s: [] for s in STEPS}}
    for child in children(triton_pid):
        model = stub_model(child)
        for step in STEPS:
            if model.endswith("_" + step):
                groups[step].append(child)
    return groups


def stub_pids(triton_pid: int) -> dict[str, int]:
    """Model name -> its stub's pid."""
    return {m: c for c in children(triton_pid) if (m := stub_model(c))}


def triton_metrics(url: str | None) -> dict[str, float]:
    """`model:counter` -> value, for the counters worth a delta."""
    if not url:
        return {}
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in COUNTERS:
            out[f"{m.group(2)}:{m.group(1)}"] = float(m.group(3))
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
