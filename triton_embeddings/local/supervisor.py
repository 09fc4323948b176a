"""Reload a model whose Python-backend stub died; run `tritonserver` under that watch in a container.

Triton 2.51's Python backend never restarts a stub that dies (OOM killer, segfault): every request to
that model then fails with "Stub process '<instance>' is not healthy", while the server's and the model's
ready endpoints keep answering 200. The watch here reads the process table: a stub that vanished while its
model is still READY crashed, and the model is reloaded through the model-control API (explicit mode),
which starts new stubs; ensembles over it are reloaded with it.

The model-control API is restricted to a key made at each start, so clients that reach Triton cannot
load or unload models (a load can carry files, i.e. code for the Python backend).

Standard library only: the production image runs it as its entry point:

    python3 -m triton_embeddings.local.supervisor -- tritonserver --model-repository=/models \
        --model-control-mode=explicit --load-model=* ...
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STUB = "triton_python_backend_stub"
# Clients must send this header (gRPC: `triton-grpc-protocol-` + it) to use the model-repository API.
CONTROL_HEADER = "triton-embeddings-control"
RETRY_FAILED_LOAD_S = 5.0


@dataclass(frozen=True)
class Stub:
    """One running stub process: the model it serves and its instance name (`<model>_<group>_<index>`)."""

    pid: int
    model: str
    instance: str


def _stub_of(pid: int, parent_pid: int, proc: Path) -> Stub | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    if state == "Z" or int(ppid) != parent_pid or not argv[0].endswith(STUB.encode()) or len(argv) < 9:
        return None
    # argv: stub, <repo>/<model>/<version>/model.py, shm region, 2 sizes, parent pid, lib dir, ipc, instance
    model, instance = Path(argv[1].decode()).parent.parent.name, argv[8].decode()
    if instance == model:  # the short-lived stub that auto-completes a config while a model loads
        return None
    return Stub(pid, model, instance)


def live_stubs(parent_pid: int, proc: Path = Path("/proc")) -> dict[str, Stub]:
    """Instance name -> stub, for the running (not zombie) stub children of `parent_pid`."""
    found = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stub := _stub_of(int(entry.name), parent_pid, proc)) is not None:
            found[stub.instance] = stub
    return found


def restricted_api_args(key: str) -> list[str]:
    """tritonserver flags that put the model-repository API (index, load, unload) behind `key`."""
    return [
        f"--http-restricted-api=model-repository:{CONTROL_HEADER}={key}",
        f"--grpc-restricted-protocol=model-repository:{CONTROL_HEADER}={key}",
    ]


class ModelControl:
    """Triton's model-repository HTTP API, with the restriction key."""

    def __init__(self, http_url: str, key: str, timeout_s: float = 300.0):
        self.http_url = http_url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s

    def _post(self, path: str, body: dict, timeout: float) -> bytes:
        req = urllib.request.Request(
            self.http_url + path, data=json.dumps(body).encode(), method="POST",
            headers={CONTROL_HEADER: self.key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (our own loopback URL)
            return resp.read()

    def ready_models(self) -> set[str]:
        index = json.loads(self._post("/v2/repository/index", {"ready": True}, 5.0) or b"[]")
        return {m["name"] for m in index if m.get("state") == "READY"}

    def reload(self, model: str) -> None:
        """Unload, then load: a plain load of an unchanged model keeps its (dead) instances."""
        self._post(f"/v2/repository/models/{model}/unload", {}, self.timeout_s)
        self._post(f"/v2/repository/models/{model}/load", {}, self.timeout_s)


class StubSupervisor:
    """Watches one tritonserver's stubs; `check()` reloads the models whose stubs crashed."""

    def __init__(self, triton_pid: int, control: ModelControl, log: Callable[[str], None] = print,
                 proc: Path = Path("/proc")):
        self.triton_pid = triton_pid
        self.control = control
        self.log = log
        self.proc = proc
        self.known: dict[str, Stub] = {}
        self.restarts: Counter[str] = Counter()
        self._retry: dict[str, float] = {}  # model -> when to try a failed reload again

    def check(self) -> list[str]:
        """One look at the process table; returns the models reloaded."""
        live = live_stubs(self.triton_pid, self.proc)
        gone = [s for name, s in self.known.items() if name not in live]
        self.known = live
        due = [m for m, at in self._retry.items() if time.monotonic() >= at]
        if not gone and not due:
            return []
        ready = self.control.ready_models()
        crashed = sorted({s.model for s in gone if s.model in ready} | set(due))
        for stub in gone:
            if stub.model in crashed:
                self.log(f"supervisor: stub {stub.instance} (pid {stub.pid}) died; reloading {stub.model}")
        for model in crashed:
            self._reload(model)
        return crashed

    def _reload(self, model: str) -> None:
        t0 = time.monotonic()
        self.restarts[model] += 1
        try:
            self.control.reload(model)
        except (urllib.error.URLError, OSError) as e:
            self._retry[model] = time.monotonic() + RETRY_FAILED_LOAD_S
            self.log(f"supervisor: reloading {model} failed ({e}); trying again in {RETRY_FAILED_LOAD_S:g} s")
            return
        self._retry.pop(model, None)
        self.known.update(live_stubs(self.triton_pid, self.proc))
        self.log(f"supervisor: {model} reloaded in {time.monotonic() - t0:.1f} s")

    def run(self, stop: threading.Event, interval_s: float = 0.25) -> None:
        """Check every `interval_s` until `stop` is set; errors are logged, never fatal."""
        while not stop.wait(interval_s):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - a watch must outlive any one failed look
                self.log(f"supervisor: check failed: {type(e).__name__}: {e}")

    def start_thread(self, interval_s: float = 0.25) -> tuple[threading.Thread, threading.Event]:
        """Learn the running stubs now, then check them in a daemon thread; set the event to stop it."""
        self.known = live_stubs(self.triton_pid, self.proc)
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop, interval_s), name="stub-supervisor", daemon=True)
        thread.start()
        return thread, stop


def stop_triton(process: subprocess.Popen, timeout_s: float, stubs_gone_grace_s: float | None) -> bool:
    """SIGINT, then wait for the exit. With `stubs_gone_grace_s`, SIGKILL once no stub has run for that
    long: after a stub crash the Python backend never releases a request that failed on it, and Triton
    would wait out its whole exit timeout for that request ("Found 1 live models"). True: it was killed."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    gone_since = None
    while process.poll() is None and time.monotonic() < deadline:
        if stubs_gone_grace_s is not None and not live_stubs(process.pid):
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since >= stubs_gone_grace_s:
                break
        else:
            gone_since = None
        time.sleep(0.1)
    killed = process.poll() is None
    if killed:
        process.kill()
    process.wait()
    return killed


def _http_url(args: list[str]) -> str:
    """Triton's HTTP endpoint on loopback, from its flags (`--http-port=N` or `--http-port N`)."""
    opts = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            opts[name] = value if eq else (args[i + 1] if i + 1 < len(args) else "")
    host = opts.get("http-address", "127.0.0.1")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{opts.get('http-port', '8000')}"


def main(argv: list[str] | None = None) -> int:
    """`supervisor -- tritonserver ARGS`: run Triton, reload models whose stubs crash, pass signals on."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    if not command or "--model-control-mode=explicit" not in command:
        print("supervisor: usage: supervisor -- tritonserver ... --model-control-mode=explicit --load-model=*",
              file=sys.stderr)
        return 2
    key = secrets.token_hex(16)
    process = subprocess.Popen([*command, *restricted_api_args(key)])
    supervisor = StubSupervisor(process.pid, ModelControl(_http_url(command), key),
                                log=lambda m: print(m, file=sys.stderr, flush=True))
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    thread, stop_watch = supervisor.start_thread()
    while process.poll() is None and not stopping.wait(0.5):
        pass
    stop_watch.set()
    thread.join(timeout=5)
    # Other steps (onnxruntime) may still finish requests when the stubs are gone: a grace of seconds.
    stop_triton(process, timeout_s=60, stubs_gone_grace_s=5.0 if supervisor.restarts else None)
    code = process.returncode
    return 0 if code < 0 and stopping.is_set() else (code if code >= 0 else 128 - code)


if __name__ == "__main__":
    sys.exit(main())
