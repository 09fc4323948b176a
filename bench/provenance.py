"""Where a measurement came from: the block every committed run under docs/measurements/ carries.

bench/figures.py renders the README's and docs' tables from those files, and refuses a file without it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")


def provenance(tool: str, argv: list[str] | None = None) -> dict:
    """Commit (and whether the tree had uncommitted changes), date, machine and the command line."""
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {
        "tool": tool,
        "command": " ".join([tool, *(sys.argv[1:] if argv is None else argv)]),
        "commit": _git("rev-parse", "--short=7", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "load_average_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "onnxruntime": ort,
        },
    }
