"""Gateway worker processes behind one port (`EMBEDDINGS_WORKERS`).

Each worker is a whole gateway (its own event loop, Triton client and batcher) that binds the port with
SO_REUSEPORT, so the kernel spreads new connections over the workers. The parent only supervises: it restarts
a worker that dies (with backoff) and passes SIGTERM/SIGINT on, so every worker drains as one gateway does.

Across workers, `/metrics` is one view: prometheus-client's multiprocess mode, in a directory made here
(PROMETHEUS_MULTIPROC_DIR) before any worker imports prometheus_client; any worker's `/metrics` sums them all.
Per worker: the in-memory cache, the batcher, `max_in_flight` and `max_connections` (docs/gateway.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from contextlib import contextmanager

from triton_embeddings.gateway.settings import Settings

log = logging.getLogger("gateway.workers")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # a worker that keeps dying is restarted ever later (at most every 5 s)
STABLE_S = 30.0  # a worker that ran this long before dying is restarted at the shortest backoff again
PR_SET_PDEATHSIG = 1


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port) that other workers may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies; its own process group, so Ctrl-C reaches the parent alone
    (which passes it on once: a second SIGINT during the drain would cut it)."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _worker(settings: Settings) -> None:
    """In the forked child: one gateway on the shared port, until it is told to stop."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent()
    from triton_embeddings.gateway.app import create_app  # after MULTIPROC_ENV is set
    from triton_embeddings.gateway.http.server import make_server

    sock = reuseport_socket(settings.host, settings.port)
    make_server(create_app(settings), settings).run(sockets=[sock])


def _spawn(settings: Settings) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _worker(settings)
        except BaseException:  # noqa: BLE001 - a worker's crash is the parent's to report and restart
            logging.getLogger("gateway").exception("worker failed")
            code = 1
        os._exit(code)
    return pid


class Workers:
    """The parent: `count` workers kept running until SIGTERM/SIGINT, then drained."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pids: dict[int, tuple[int, float]] = {}  # pid -> (restarts of that slot so far, its start time)
        self.stopping: int | None = None

    def _signal(self, signum, frame) -> None:
        self.stopping = signum
        for pid in self.pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self, pid: int, status: int) -> None:
        from prometheus_client import multiprocess

        restarts, started = self.pids.pop(pid, (0, 0.0))
        multiprocess.mark_process_dead(pid)
        if self.stopping is None:
            log.warning("worker %d exited (status %d); restarting it", pid, os.waitstatus_to_exitcode(status))
            restarts = 0 if time.monotonic() - started > STABLE_S else restarts
            time.sleep(BACKOFF_S[min(restarts, len(BACKOFF_S) - 1)])
            self._start(restarts + 1)

    def _start(self, restarts: int = 0) -> None:
        self.pids[_spawn(self.settings)] = (restarts, time.monotonic())

    def run(self) -> None:
        for _ in range(self.settings.workers):
            self._start()
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        log.info("%d gateway workers on %s:%d", self.settings.workers, self.settings.host, self.settings.port)
        while self.pids:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            self._reap(pid, status)


@contextmanager
def metrics_directory():
    """PROMETHEUS_MULTIPROC_DIR for the workers (made here unless set), removed afterwards unless it was given.
    Entered before prometheus_client is first imported: it picks its value store at import."""
    own = MULTIPROC_ENV not in os.environ
    if own:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="gateway-metrics-")
    try:
        yield os.environ[MULTIPROC_ENV]
    finally:
        if own:
            shutil.rmtree(os.environ.pop(MULTIPROC_ENV), ignore_errors=True)
