"""Build the bundle the GPU run carries beside the checkout (the lent machine has no network), here.

    python bench/gpu/pack.py            # -> bench/gpu/bundle/ (gitignored; `carry` it)

- triton.tar.xz: the trimmed `tritonserver`, the Python backend and the 3.12 stub from this venv's
  nvidia-pytriton, with the shared libraries they need (the ELF NEEDED closure within nvidia_pytriton.libs),
  laid out as pytriton's own folders so that local/launcher.py finds them (`import pytriton`);
- stub-numpy.tar.xz: numpy 1.26.4 for Python 3.12 (the stub fails every output with numpy 2), tests left out;
- wheels/: cp312 wheels of the gateway's packages the machine lacks, onnx (the export), and small ones of
  the gateway's other imports (in case), at the versions this venv runs. The run extracts only those the
  machine's Python does not have.
Refuses a bundle over 60 MiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from facts import GATEWAY_WHEELS, INSURANCE_WHEELS, MIB, dist_of  # noqa: E402

STUB_PYTHON = "3.12"
STUB_NUMPY = "1.26.4"
EXTRA_WHEELS = ("onnx", "ml-dtypes")  # the export's; onnx needs ml-dtypes
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64")
LIMIT = 60 * MIB


def needed(elf: Path) -> list[str]:
    """The NEEDED entries of one ELF file (readelf, binutils)."""
    out = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def closure(roots: list[Path], libs: Path) -> list[Path]:
    """The libraries of `libs` that `roots` need, directly or through one another."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        for name in needed(todo.pop()):
            if name not in seen and (libs / name).exists():
                seen[name] = libs / name
                todo.append(libs / name)
    return sorted(seen.values())


def triton_members(stub_python: str = STUB_PYTHON) -> list[tuple[Path, str]]:
    """(file, name in the tar) of the trimmed server."""
    import pytriton

    site = Path(pytriton.__file__).resolve().parent.parent
    server, libs = site / "pytriton" / "tritonserver", site / "nvidia_pytriton.libs"
    stub = server / "python_backend_stubs" / stub_python / "triton_python_backend_stub"
    backend = server / "backends" / "python"
    roots = [server / "bin" / "tritonserver", backend / "libtriton_python.so", stub]
    files = [*roots, backend / "triton_python_backend_utils.py", *closure(roots, libs)]
    return [(f, str(f.relative_to(site))) for f in files]


def write_triton(target: Path, stub_python: str = STUB_PYTHON) -> Path:
    with tarfile.open(target, "w:xz", preset=9) as tar:
        info = tarfile.TarInfo("pytriton/__init__.py")  # a shim: `import pytriton` finds the server's folders
        shim = b'"""The trimmed tritonserver of bench/gpu/pack.py (nvidia-pytriton\'s folders, not its package)."""\n'
        info.size = len(shim)
        tar.addfile(info, io.BytesIO(shim))
        for path, name in triton_members(stub_python):
            tar.add(path, name)
    return target


def download(specs: list[str], dest: Path) -> list[Path]:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", STUB_PYTHON, *platforms, "-d", str(dest), *specs], check=True)
    return sorted(dest.glob("*.whl"))


def write_stub_numpy(target: Path, work: Path) -> Path:
    (wheel,) = download([f"numpy=={STUB_NUMPY}"], work / "numpy")
    with zipfile.ZipFile(wheel) as whl, tarfile.open(target, "w:xz", preset=9) as tar:
        for item in whl.infolist():
            if "/tests/" in item.filename or item.is_dir():
                continue
            info = tarfile.TarInfo(item.filename)
            data = whl.read(item)
            info.size, info.mode = len(data), 0o755 if item.filename.endswith(".so") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return target


def pinned(dists) -> list[str]:
    """`dist==version` at the versions this venv runs."""
    return [f"{d}=={importlib.metadata.version(d)}" for d in dists]


def top_levels(wheel: Path) -> list[str]:
    """The import names a wheel provides (its top-level packages and modules, extension modules too)."""
    with zipfile.ZipFile(wheel) as whl:
        names = {n.split("/")[0] for n in whl.namelist()}
    return sorted({n.split(".")[0] for n in names if not n.endswith((".dist-info", ".data", ".libs", "-stubs"))})


def pack(out: Path, reuse: bool = False) -> dict:
    """Build the bundle in `out`; `reuse` keeps the two tar.xz files already there (xz -9 takes minutes)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "wheels").glob("*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        if not (reuse and (out / "triton.tar.xz").exists()):
            write_triton(out / "triton.tar.xz")
        if not (reuse and (out / "stub-numpy.tar.xz").exists()):
            write_stub_numpy(out / "stub-numpy.tar.xz", Path(tmp))
    wheels = download(pinned(GATEWAY_WHEELS + EXTRA_WHEELS + INSURANCE_WHEELS), out / "wheels")
    manifest = {"stub_python": STUB_PYTHON, "stub_numpy": STUB_NUMPY,
                "wheels": {w.name: {"dist": dist_of(w), "modules": top_levels(w)} for w in wheels}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    manifest["bytes"] = size
    if size > LIMIT:
        raise SystemExit(f"the bundle is {size / MIB:.1f} MiB, over {LIMIT / MIB:.0f} MiB")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "bundle")
    parser.add_argument("--reuse", action="store_true", help="keep the tar.xz files already built in --out")
    args = parser.parse_args(argv)
    manifest = pack(args.out, args.reuse)
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size / MIB:8.2f} MiB  {p.relative_to(args.out)}")
    print(f"{manifest['bytes'] / MIB:8.2f} MiB  in all ({len(manifest['wheels'])} wheels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
