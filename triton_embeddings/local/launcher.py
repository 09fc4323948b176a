"""Start the `tritonserver` bundled in the `nvidia-pytriton` wheel (the embedded, CPU-capable server).

The wheel ships Triton 2.51 (NGC 24.10) with the Python backend but without the ONNX Runtime backend,
so the embedded target runs encoder and pooler as Python-backend models (see `triton_embeddings.triton_models`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import triton_embeddings
from triton_embeddings.defaults import DEFAULT_REPOSITORY
from triton_embeddings.local.processes import NotReady, ProcessExited, free_port, port_in_use, wait_http
from triton_embeddings.local.supervisor import (
    CONTROL_HEADER,
    ModelControl,
    StubSupervisor,
    restricted_api_args,
    stop_triton,
)

__all__ = ["TritonLaunchError", "TritonServer", "free_port", "libpython_dir", "port_in_use", "main"]


class TritonLaunchError(RuntimeError):
    """Triton could not be started; the message says why in words an operator can act on."""


def _pytriton_dirs() -> tuple[Path, Path]:
    """Return (pytriton's tritonserver folder, the wheel's bundled shared-library folder)."""
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise TritonLaunchError(
            "nvidia-pytriton is not installed; install the serve extra: pip install '.[serve]'"
        ) from exc
    site = Path(pytriton.__file__).resolve().parent.parent
    return site / "pytriton" / "tritonserver", site / "nvidia_pytriton.libs"


# Where the dynamic loader looks when LD_LIBRARY_PATH does not say ({arch}: the interpreter's multiarch triplet).
SYSTEM_LIB_DIRS = ("/usr/local/lib", "/usr/lib/{arch}", "/lib/{arch}", "/usr/lib64", "/lib64", "/usr/lib", "/lib")


def libpython_dir(system_dirs: tuple[str, ...] | None = None) -> Path:
    """The folder of the shared libpython the Python-backend stub links against (its RPATH covers only
    nvidia_pytriton.libs): the interpreter's LIBDIR, else a system folder. Raises when there is none."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if not soname.startswith("libpython") or ".so" not in soname:  # a static build names its .a here
        soname = f"libpython{version}.so.1.0"
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    system = SYSTEM_LIB_DIRS if system_dirs is None else system_dirs
    dirs = [sysconfig.get_config_var("LIBDIR"), *(d.format(arch=arch) for d in system if arch or "{" not in d)]
    for folder in filter(None, dirs):
        if Path(folder, soname).exists():
            return Path(folder)
    raise TritonLaunchError(
        f"the Python backend needs {soname}, which this Python ({sys.executable}) lacks: install "
        f"libpython{version} (Debian/Ubuntu: apt-get install libpython{version}) or use a Python built "
        f"with --enable-shared"
    )


def prepare_backends(cache_dir: Path | None = None) -> Path:
    """Build a backend folder with the Python backend and the stub matching the running Python."""
    triton_dir, _ = _pytriton_dirs()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonLaunchError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    root = Path(cache_dir or Path(tempfile.gettempdir()) / f"embeddings-triton-backends-{os.getuid()}")
    target = root / version / "python"
    if not (target / "triton_python_backend_stub").exists():
        tmp = root / f".{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(triton_dir / "backends" / "python", tmp / "python")
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another process won the race; its copy is identical
            tmp.joinpath("python").rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
    return target.parent


@dataclass
class TritonServer:
    """The embedded Triton as a context manager; `__enter__` returns once every model is ready."""

    model_repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    startup_timeout: float = 180.0
    log_verbose: int = 0
    log_file: Path | None = None  # default: a temporary file, read back to explain a failed start
    inherit_output: bool = False  # True: Triton logs to this process's stdout (the CLI)
    extra_args: list[str] = field(default_factory=list)
    supervise: bool = True  # reload a model whose Python-backend stub crashed (see local/supervisor.py)
    process: subprocess.Popen | None = field(default=None, init=False)
    supervisor: StubSupervisor | None = field(default=None, init=False)
    control_key: str = field(default_factory=lambda: secrets.token_hex(16), init=False, repr=False)
    _watch: tuple | None = field(default=None, init=False, repr=False)
    _log_handle: object = field(default=None, init=False, repr=False)

    @classmethod
    def on_free_ports(cls, model_repository: Path, **kwargs) -> TritonServer:
        """A server on unused loopback ports (tests, benchmarks, ad-hoc servers)."""
        return cls(model_repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), **kwargs)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def control_headers(self, grpc: bool = False) -> dict[str, str]:
        """Headers that unlock the model-repository API (index, load, unload) on this server."""
        return {("triton-grpc-protocol-" if grpc else "") + CONTROL_HEADER: self.control_key}

    def _control_args(self) -> list[str]:
        # Explicit mode (every model loaded at start) so that a crashed stub's model can be reloaded.
        mode = [] if any(a.startswith("--model-control-mode") for a in self.extra_args) else [
            "--model-control-mode=explicit", "--load-model=*"]
        return [*mode, *restricted_api_args(self.control_key)]

    def command(self) -> list[str]:
        triton_dir, _ = _pytriton_dirs()
        return [
            str(triton_dir / "bin" / "tritonserver"),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={prepare_backends()}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--log-verbose={self.log_verbose}",
            *self._control_args(),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        _, libs = _pytriton_dirs()
        env = dict(os.environ)
        lib_paths = [str(libs), str(libpython_dir()), env.get("LD_LIBRARY_PATH")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, lib_paths))
        # The Python-backend stub finds the interpreter (and so this venv's packages) on PATH.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        # model.py files import triton_embeddings.triton_models; the stub does not read .pth files, so an
        # editable install is found only through the folder that holds the package.
        package_parent = str(Path(triton_embeddings.__file__).resolve().parent.parent)
        paths = [package_parent, sysconfig.get_paths()["purelib"], env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        return env

    def check(self) -> None:
        """Fail early, with a clear message, on the mistakes operators make most."""
        libpython_dir()
        repo = Path(self.model_repository)
        if not repo.is_dir():
            raise TritonLaunchError(f"model repository {repo} does not exist; run embeddings-export first")
        if not any(p.joinpath("config.pbtxt").exists() for p in repo.iterdir()):
            raise TritonLaunchError(f"model repository {repo} holds no models (no */config.pbtxt)")
        for name, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            if port_in_use(port, self.host):
                raise TritonLaunchError(f"{name} port {port} on {self.host} is already in use")

    def start(self) -> TritonServer:
        self.check()
        # Never a pipe: nobody drains it while Triton runs, and a full pipe would stall the server.
        self._log_handle = None
        if not self.inherit_output:
            if self.log_file:
                self._log_handle = open(self.log_file, "ab")  # noqa: SIM115 - lives with the process
            else:
                self._log_handle = tempfile.NamedTemporaryFile(prefix="tritonserver-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self.supervisor = StubSupervisor(self.process.pid, ModelControl(self.http_url, self.control_key),
                                             log=lambda m: print(m, file=sys.stderr, flush=True))
            self._watch = self.supervisor.start_thread()
        return self

    def _explain(self) -> str:
        """The lines of Triton's log that say which model failed and why, else the log's tail."""
        if self._log_handle is None:
            return "(see Triton's output above)"
        text = Path(self._log_handle.name).read_text(errors="replace")
        reasons = [line.strip() for line in text.splitlines()
                   if "failed to load" in line or "UNAVAILABLE" in line or "error:" in line]
        return "\n".join(reasons) if reasons else text[-4000:]

    def wait_ready(self) -> None:
        try:
            wait_http(f"{self.http_url}/v2/health/ready", self.startup_timeout, self.process, interval=0.25)
        except ProcessExited as exc:
            raise TritonLaunchError(
                f"tritonserver exited with code {exc.returncode} while starting "
                f"(a model failed to load?):\n{self._explain()}"
            ) from None
        except NotReady:
            raise TritonLaunchError(f"tritonserver was not ready within {self.startup_timeout:.0f}s") from None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self._watch is not None:
            self._watch[1].set()
            self._watch[0].join(timeout=2)
            self._watch = None
        # Every step is a Python-backend model here: once no stub runs, nothing is left to finish.
        stop_triton(self.process, timeout, stubs_gone_grace_s=1.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stubs a killed (or crashed) server left behind
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self.process = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    """`embeddings-triton`'s options; their defaults are TritonServer's."""
    default = {f.name: f.default for f in fields(TritonServer)}
    parser = argparse.ArgumentParser(
        prog="embeddings-triton", description="Serve a model repository with the embedded Triton."
    )
    parser.add_argument("--model-repository", type=Path, default=Path(DEFAULT_REPOSITORY))
    parser.add_argument("--host", default=default["host"], help="address to bind (0.0.0.0 for all)")
    for name, kind in (("http_port", int), ("grpc_port", int), ("metrics_port", int), ("log_verbose", int),
                       ("startup_timeout", float)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default[name],
                            help="(default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        startup_timeout=args.startup_timeout,
        log_verbose=args.log_verbose,
        inherit_output=True,
    )
    stop = {"now": False}

    def _on_signal(signum, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server.start()
    except TritonLaunchError as exc:
        print(f"embeddings-triton: {exc}", file=sys.stderr)
        return 1
    print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
    while not stop["now"] and server.process.poll() is None:
        time.sleep(0.2)
    code = server.process.returncode if server.process.poll() is not None else 0
    print("embeddings-triton: stopping", file=sys.stderr)
    server.stop()
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
