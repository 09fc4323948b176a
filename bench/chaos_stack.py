"""The chaos run's stack on loopback: the models it serves (exported once, cached), Redis (restarted as Docker
would), `embeddings-serve --gateways 2` (which restarts Triton and the gateways) and the shipped nginx config
in front; the processes of each part, found again after every restart."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import procstat
import redis

from deploy.render import render_nginx
from triton_embeddings.local.models import HUB_IDS, cache_dir, model_source
from triton_embeddings.local.processes import http_ok, stop_process

ROOT = Path(__file__).resolve().parent.parent
RERANKER = "tiny-reranker"
CACHE = cache_dir() / "chaos"
GATEWAYS = 2
# As compose runs the gateways, plus what the run needs: the Redis cache, one batch store for both gateways,
# a short batch lease (a killed runner's job is taken over within seconds) and requests held while Triton is away.
GATEWAY_ENV = {"EMBEDDINGS_WORKERS": "2", "EMBEDDINGS_CACHE": "redis", "EMBEDDINGS_ACCESS_LOG": "false",
               "EMBEDDINGS_LOG_LEVEL": "warning", "EMBEDDINGS_UNAVAILABLE_HOLD_S": "60",
               "EMBEDDINGS_BATCH_LEASE_S": "6", "EMBEDDINGS_BATCH_POLL_S": "0.5", "EMBEDDINGS_BATCH_RETRIES": "8"}


def _cached(name: str, build) -> Path:
    """CACHE/name, built once by `build(folder)` (a half-built folder is never used)."""
    done = CACHE / name
    if done.exists():
        return done
    tmp = CACHE / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    print(f"chaos: building {name} (once, cached in {CACHE}) ...", flush=True)
    build(tmp)
    os.replace(tmp, done)
    return done


def cross_encoder_folder() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import build_cross_encoder

    return _cached("tiny-cross-encoder", lambda f: build_cross_encoder(f / "model"))


def _export_embedding(name: str):
    def build(folder: Path) -> None:
        from triton_embeddings.export.exporter import export_model
        from triton_embeddings.export.options import ExportOptions

        export_model(model_source(name), folder, ExportOptions(name=name, source_label=HUB_IDS[name]),
                     log=lambda _: None)
    return build


def _export_reranker(folder: Path) -> None:
    from triton_embeddings.export.options import ExportOptions
    from triton_embeddings.export.rerank_exporter import export_reranker

    export_reranker(str(cross_encoder_folder() / "model"), folder, ExportOptions(name=RERANKER), log=lambda _: None)


def repository(models: list[str], work: Path) -> Path:
    """One folder linking the exported models and the reranker (each exported once into CACHE)."""
    repos = [_cached(f"repo-{m}", _export_embedding(m)) for m in models]
    repos.append(_cached(f"repo-{RERANKER}", _export_reranker))
    served = work / "repository"
    served.mkdir()
    for repo in repos:
        for model in repo.iterdir():
            if (model / "config.pbtxt").exists():
                (served / model.name).symlink_to(model.resolve(), target_is_directory=True)
    return served


class Redis:
    """redis-server on a fixed port, nothing persisted (a cache); restarted 1 s after it dies, as Docker's
    `restart: always` would."""

    def __init__(self, binary: str, work: Path):
        self.binary, self.work, self.port = binary, work, service_port()
        self.proc: subprocess.Popen | None = None
        self.restarts: list[float] = []
        self._stop = threading.Event()

    def _start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.work)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self.proc.poll() is not None:
                time.sleep(1.0)
                self.restarts.append(time.monotonic())
                self._start()
            time.sleep(0.1)

    def __enter__(self) -> Redis:
        self._start()
        wait_for(self.ping, 10, "redis-server")
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        time.sleep(0.2)
        stop_process(self.proc, 10, signal.SIGTERM)


def wait_for(check, timeout: float, what: str) -> float:
    """Poll `check` every 50 ms until true; the seconds it took."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - t0


@dataclass
class Serve:
    """`embeddings-serve --gateways 2` and its ports."""

    proc: subprocess.Popen
    ports: list[int]
    triton_http: int
    log: Path
    env: dict = field(default_factory=dict)

    def gateway_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def triton_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.triton_http}/v2/health/ready", 1.0)

    def model_ready(self, model: str) -> bool:
        return http_ok(f"http://127.0.0.1:{self.triton_http}/v2/models/{model}/ready", 1.0)

    def gateway_ready(self, i: int) -> bool:
        return http_ok(self.gateway_url(i) + "/ready", 1.0)

    def triton_pid(self) -> int | None:
        return _first(procstat.children(self.proc.pid), b"tritonserver")

    def gateway_pid(self, i: int) -> int | None:
        port = str(self.ports[i]).encode()
        return next((p for p in procstat.children(self.proc.pid) if _is_gateway(p) and _port_of(p) == port), None)

    def gateway_pids(self) -> list[int | None]:
        return [self.gateway_pid(i) for i in range(len(self.ports))]


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(i.split(b"=", 1) for i in items if b"=" in i)


def _is_gateway(pid: int) -> bool:
    return b"triton_embeddings.gateway" in _cmdline(pid)


def _port_of(pid: int) -> bytes | None:
    """A gateway's port: from its command line (--port N) or its EMBEDDINGS_PORT."""
    args = _cmdline(pid)
    if b"--port" in args and args.index(b"--port") + 1 < len(args):
        return args[args.index(b"--port") + 1]
    return _environ(pid).get(b"EMBEDDINGS_PORT")


def _first(pids: list[int], name: bytes) -> int | None:
    return next((p for p in pids if any(Path(a.decode(errors="replace")).name.encode() == name
                                        for a in _cmdline(p)[:1])), None)


def service_port(count: int = 1) -> int:
    """The first of `count` free ports below the kernel's ephemeral range, as a deployment's fixed ports are:
    a server restarted on an ephemeral port can find it taken by an outgoing connection meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        base = rng.randrange(10_000, low - count)
        if all(_free(base + i) for i in range(count)):
            return base


def start_serve(repo: Path, models: list[str], redis_port: int, work: Path) -> Serve:
    base = service_port(GATEWAYS)
    http, grpc, metrics = service_port(), service_port(), service_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDINGS_")}
    env.update(GATEWAY_ENV, EMBEDDINGS_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
               EMBEDDINGS_BATCH_STORE=f"sqlite:///{work / 'batch.sqlite3'}", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "triton_embeddings.local.serve", "--model-repository", str(repo), "--models",
           *models, "--reranker", str(repo / f"{RERANKER}_encoder"), "--reranker-name", RERANKER,
           "--gateways", str(GATEWAYS), "--port", str(base), "--triton-http-port", str(http),
           "--triton-grpc-port", str(grpc), "--triton-metrics-port", str(metrics)]
    log = work / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Serve(proc, [base + i for i in range(GATEWAYS)], http, log, env)


def _free(port: int) -> bool:
    from triton_embeddings.local.processes import port_in_use

    return not port_in_use(port)


@dataclass
class Nginx:
    proc: subprocess.Popen
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid, *procstat.children(self.proc.pid)]


def start_nginx(binary: str, upstreams: list[int], work: Path) -> Nginx:
    """The shipped nginx.conf rendered for the gateways' loopback ports (access log off: a long run)."""
    workdir = work / "nginx"
    workdir.mkdir(mode=0o755)
    work.chmod(0o755)
    port = service_port()
    conf = render_nginx(workdir, listen=f"127.0.0.1:{port}", upstreams=[f"127.0.0.1:{p}" for p in upstreams],
                        access_log=Path("/dev/null"))
    with open(workdir / "error.log", "wb") as out:
        proc = subprocess.Popen([binary, "-e", "stderr", "-c", str(conf), "-g", "daemon off;"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Nginx(proc, port, workdir)
