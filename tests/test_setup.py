"""The README's set-up section claims what CI runs, and pyproject.toml says the same."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"


def _setup_section() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_the_python_versions_claimed_are_the_one_ci_runs():
    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    claimed = re.search(r"with Python (\d+\.\d+) \(the version CI runs", _setup_section())
    assert claimed and claimed.group(1) == RUNNING
    minor = sys.version_info.minor
    assert Version(f"{RUNNING}.0") in spec and Version(f"3.{minor + 1}.0") not in spec
    assert Version(f"3.{minor - 1}.99") not in spec


def test_the_setup_says_what_a_machine_without_libpython_installs():
    section = _setup_section()
    assert f"apt-get install libpython{RUNNING}" in section and "--enable-shared" in section
    assert f"libpython{RUNNING}.so.1.0" in section


def _torch_install_line(path: str, *args: str) -> str:
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "install", *args], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PATH": path}, timeout=60, check=True).stdout
    return next(line for line in out.splitlines() if "pip install -q torch==" in line)


def test_torch_comes_from_the_cpu_index_without_a_gpu_and_from_the_default_with_one(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    without = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                              if not Path(d, "nvidia-smi").exists())
    assert _torch_install_line(without).endswith("--index-url https://download.pytorch.org/whl/cpu")
    assert "--index-url" not in _torch_install_line(f"{tmp_path}{os.pathsep}{without}")
    assert "--index-url" not in _torch_install_line(without, "TORCH_INDEX=")
    assert "TORCH_INDEX" in _setup_section() and "make install TORCH_INDEX=\n" in (ROOT / ".ci/run").read_text()
