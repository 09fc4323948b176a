"""Put the bundle (bench/gpu/pack.py) to use on the lent machine: only what its Python lacks.

- the trimmed Triton, unless `pytriton` is importable (here, the venv's nvidia-pytriton);
- each wheel whose distribution is not installed, extracted into one folder put first on the path;
- numpy 1.26.4 for the Python-backend stub when the machine's numpy is 2 or newer (the stub's path only);
- a bare `libcuda.so` symlink when only `libcuda.so.1` loads (tritonserver and the Python backend open the
  bare name).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from facts import installed


@dataclass
class Unpacked:
    site: Path  # put first on this process's path and the children's PYTHONPATH
    stub_site: Path | None  # numpy < 2 for the stub, first on its PYTHONPATH only
    lib_dir: Path | None  # the libcuda.so symlink, first on LD_LIBRARY_PATH
    extracted: list[str]

    def pythonpath(self, *first: str) -> str:
        return os.pathsep.join([*first, str(self.site), *filter(None, [os.environ.get("PYTHONPATH")])])


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def _numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


def _libcuda_path() -> str | None:
    """Where the loaded libcuda.so.1 lives (from this process's maps), None when it does not load."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libcuda.so" in line:
            return line.split()[-1]
    return None


def _libcuda_link(work: Path) -> Path | None:
    try:
        ctypes.CDLL("libcuda.so")
        return None
    except OSError:
        pass
    real = _libcuda_path()
    if real is None:
        return None  # no driver: a CPU host
    lib_dir = work / "lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    link = lib_dir / "libcuda.so"
    if not link.exists():
        link.symlink_to(real)
    return lib_dir


def _extract_wheels(bundle: Path, site: Path) -> list[str]:
    manifest = json.loads((bundle / "manifest.json").read_text()) if (bundle / "manifest.json").exists() else {}
    done = []
    for wheel, info in manifest.get("wheels", {}).items():
        if not installed(info["dist"]):
            with zipfile.ZipFile(bundle / "wheels" / wheel) as whl:
                whl.extractall(site)
            done.append(wheel)
    return done


def unpack(bundle: Path, work: Path) -> Unpacked:
    """Unpack what is missing into `work`; this process's path and LD_LIBRARY_PATH are set to use it."""
    site = work / "site"
    site.mkdir(parents=True, exist_ok=True)
    extracted = []
    if _missing("pytriton") and (bundle / "triton.tar.xz").exists():
        with tarfile.open(bundle / "triton.tar.xz") as tar:
            tar.extractall(site, filter="fully_trusted")  # our own tar, built by pack.py
        extracted.append("triton.tar.xz")
    extracted += _extract_wheels(bundle, site)
    stub_site = None
    if _numpy_major() >= 2 and (bundle / "stub-numpy.tar.xz").exists():
        stub_site = work / "stub-site"
        with tarfile.open(bundle / "stub-numpy.tar.xz") as tar:
            tar.extractall(stub_site, filter="fully_trusted")
        extracted.append("stub-numpy.tar.xz")
    lib_dir = _libcuda_link(work)
    if lib_dir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib_dir), os.environ.get("LD_LIBRARY_PATH")]))
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return Unpacked(site, stub_site, lib_dir, extracted)
