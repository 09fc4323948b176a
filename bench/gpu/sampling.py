"""What a measurement window used: per-process CPU (bench/procstat.py) and the GPU's utilization (nvidia-smi,
sampled every 100 ms; none on a host without a driver)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import procstat


class GpuSampler:
    """`nvidia-smi -lms 100` in the background: (time, utilization %, memory MiB) samples."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "100"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def between(self, start: float, end: float) -> dict | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return None
        return {"util_pct": round(sum(s[1] for s in inside) / len(inside), 1),
                "memory_mib": max(s[2] for s in inside), "samples": len(inside)}

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait()


class Window:
    """CPU seconds of each process group over one window [start, end] (epoch seconds), from a thread."""

    def __init__(self, groups: dict[str, list[int]], gpu: GpuSampler):
        self.groups, self.gpu, self.thread = groups, gpu, None
        self.cores: dict[str, float] = {}
        self.span = (0.0, 0.0)

    def open(self, start: float, end: float) -> None:
        self.span = (start, end)
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        start, end = self.span
        time.sleep(max(0.0, start - time.time()))
        before = procstat.cpu_seconds(self.groups)
        time.sleep(max(0.0, end - time.time()))
        after = procstat.cpu_seconds(self.groups)
        self.cores = {k: round((after[k] - before[k]) / (end - start), 2) for k in after}

    def result(self) -> dict:
        if self.thread:
            self.thread.join()
        return {"cores": self.cores, "gpu": self.gpu.between(*self.span)}
