"""The Python-backend stub links against the interpreter's shared libpython: the launcher finds it and puts its
folder on LD_LIBRARY_PATH, or refuses to start Triton in one line that says what to install."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.tools import require
from triton_embeddings.local import launcher
from triton_embeddings.local.launcher import TritonLaunchError, TritonServer, libpython_dir, prepare_backends

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
SONAME = f"libpython{VERSION}.so.1.0"


def _config(monkeypatch, **overrides) -> None:
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: overrides.get(name, real(name)))


def test_found_in_the_interpreters_libdir(monkeypatch, tmp_path):
    (tmp_path / SONAME).write_bytes(b"")
    _config(monkeypatch, LIBDIR=str(tmp_path), INSTSONAME=SONAME)
    assert libpython_dir(system_dirs=()) == tmp_path


def test_found_in_a_system_folder_when_libdir_lacks_it(monkeypatch, tmp_path):
    empty, system = tmp_path / "libdir", tmp_path / "usr" / "lib" / "x86_64-linux-gnu"
    empty.mkdir()
    system.mkdir(parents=True)
    (system / SONAME).write_bytes(b"")
    # A static build's INSTSONAME names the .a; the stub still needs the .so.1.0.
    _config(monkeypatch, LIBDIR=str(empty), INSTSONAME=f"libpython{VERSION}.a", MULTIARCH="x86_64-linux-gnu")
    assert libpython_dir(system_dirs=(str(tmp_path / "usr/lib/{arch}"),)) == system


def test_missing_says_in_one_line_what_to_install(monkeypatch, tmp_path):
    _config(monkeypatch, LIBDIR=str(tmp_path))
    with pytest.raises(TritonLaunchError) as raised:
        libpython_dir(system_dirs=(str(tmp_path),))
    message = str(raised.value)
    assert "\n" not in message and SONAME in message
    assert f"apt-get install libpython{VERSION}" in message and "--enable-shared" in message
    monkeypatch.setattr(launcher, "SYSTEM_LIB_DIRS", (str(tmp_path),))
    with pytest.raises(TritonLaunchError, match="--enable-shared"):  # before anything else is checked
        TritonServer(tmp_path / "no-repository").check()


# Runs a CLI with no libpython anywhere; starting Triton or exporting a model would fail loudly instead.
_WITHOUT_LIBPYTHON = """
import subprocess, sys, sysconfig
from triton_embeddings.local import launcher, serve
empty = sys.argv[1]
real = sysconfig.get_config_var
sysconfig.get_config_var = lambda name: empty if name == "LIBDIR" else real(name)
launcher.SYSTEM_LIB_DIRS = (empty,)
def started(*a, **k):
    raise SystemExit("started anyway")
subprocess.Popen = serve.ensure_exported = serve.ensure_reranker = started
cli = launcher.main if sys.argv[2] == "triton" else serve.main
sys.exit(cli(["--model-repository", empty + "/repo"]))
"""


@pytest.mark.parametrize(("cli", "prefix"), [("triton", "embeddings-triton: "), ("serve", "serve: ")])
def test_the_clis_refuse_before_starting_triton(tmp_path, cli, prefix):
    result = subprocess.run([sys.executable, "-c", _WITHOUT_LIBPYTHON, str(tmp_path), cli],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix + "the Python backend needs " + SONAME), result.stderr
    assert f"libpython{VERSION}" in lines[0] and "--enable-shared" in lines[0]
    assert not (tmp_path / "repo").exists()


def _stub_in_the_wheel() -> Path:
    triton_dir, _ = launcher._pytriton_dirs()
    return triton_dir / "python_backend_stubs" / VERSION / "triton_python_backend_stub"


@pytest.mark.parametrize("which", ["wheel", "prepared"])
def test_the_stub_resolves_every_library_in_the_launchers_environment(tmp_path, which):
    """`ldd` of the real stub (as shipped, and the copy Triton runs, which loses the RPATH's $ORIGIN)."""
    shipped = _stub_in_the_wheel()
    stub = shipped if which == "wheel" else prepare_backends(tmp_path) / "python" / shipped.name
    env = TritonServer(tmp_path).environment()
    result = subprocess.run([require("ldd"), str(stub)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "not found" not in result.stdout, result.stdout
    resolved = {line.split("=>")[0].strip(): line.split("=>")[1].split("(")[0].strip()
                for line in result.stdout.splitlines() if "=>" in line}
    assert Path(resolved[SONAME]).resolve() == (libpython_dir() / SONAME).resolve()
