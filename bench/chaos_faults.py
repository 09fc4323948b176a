"""The chaos run's faults, in turn: a Python-backend stub SIGKILLed, tritonserver SIGKILLed, a gateway
SIGTERMed, a gateway SIGKILLed, Redis SIGKILLed, 200 idle connections, a 10x burst.

Per component, two moments: back (by its own account: Triton's ready endpoints, a new gateway process's
/health, a new redis-server) and answering (calls through every gateway for the stub's or every model, an
embeddings call on the restarted gateway's port, Redis PING). The goal is answering within 5 s of being back."""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import procstat
from chaos_load import clients
from chaos_stack import wait_for

from triton_embeddings.local.processes import http_ok

ORDER = ("stub", "tritonserver", "gateway-sigterm", "gateway-sigkill", "redis", "idle-connections", "burst")
SETTLE_S = 6.0  # the stack answers this long after a recovery before the next fault (nginx's fail_timeout: 5 s)
RECOVERY_TIMEOUT_S = 180.0


@dataclass
class Fault:
    name: str
    target: str
    at: float
    restarted: float | None = None  # the component is back by its own account (None: nothing was restarted)
    answered: float | None = None
    ended: float | None = None  # a burst's end: its recovery is counted from there

    @property
    def recovery_s(self) -> float | None:
        return None if self.answered is None else self.answered - (self.ended or self.at)

    @property
    def after_restart_s(self) -> float | None:
        return None if self.answered is None or self.restarted is None else self.answered - self.restarted

    def as_dict(self, t0: float) -> dict:
        r = self.recovery_s
        a = self.after_restart_s
        back = None if self.restarted is None else round(self.restarted - self.at, 2)
        return {"fault": self.name, "target": self.target, "at_s": round(self.at - t0, 1),
                "restarted": self.restarted is not None, "back_after_s": back,
                "recovery_s": None if r is None else round(r, 2),
                "answering_after_restart_s": None if a is None else round(a, 2)}


def kill_tree(pid: int, sig: int) -> None:
    """`sig` to a process and its children at once (as a container's processes all get the kill)."""
    for p in [*procstat.children(pid), pid]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _probe(url: str, path: str, body: dict) -> bool:
    try:
        return httpx.post(url + path, json=body, timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def model_probe(url: str, model: str, reranker: str):
    """A check that `model` answers through `url`, with a new text each time (never from the cache)."""
    if model == reranker:
        return lambda: _probe(url, "/v1/rerank", {"model": model, "query": f"q {uuid.uuid4()}", "documents": ["d"]})
    return lambda: _probe(url, "/v1/embeddings", {"model": model, "input": f"probe {uuid.uuid4()}"})


def stubs(triton: int) -> dict[int, str]:
    """pid -> the model of each of tritonserver's Python-backend stubs."""
    return {p: m for p in procstat.children(triton) if (m := procstat.stub_model(p))}


def _new_pid(find, old: int | None):
    """A check that `find()` gives a pid other than `old`."""
    return lambda: (p := find()) is not None and p != old


class Faults:
    """Injects the faults in ORDER on a stack (bench/chaos_stack.py) under load; records each."""

    def __init__(self, serve, nginx, redis, refs, record, load, rng: random.Random):
        self.serve, self.nginx, self.redis, self.refs, self.record = serve, nginx, redis, refs, record
        self.load, self.rng = load, rng  # load: the run's --clients and --rate
        self.done: list[Fault] = []

    def stack_ready(self) -> bool:
        return (self.serve.triton_ready() and all(self.serve.gateway_ready(i) for i in range(len(self.serve.ports)))
                and self.redis.ping() and model_probe(self.nginx.url, next(iter(self.refs.vectors)), "")())

    def settle(self) -> None:
        """Wait until every component answers and SETTLE_S have passed since the last recovery."""
        wait_for(self.stack_ready, RECOVERY_TIMEOUT_S, "the stack")
        last = max((f.answered or f.at for f in self.done), default=0.0)
        time.sleep(max(0.0, last + SETTLE_S - time.monotonic()))

    def inject(self, name: str) -> Fault:
        fault = getattr(self, "fault_" + name.replace("-", "_"))()
        self.done.append(fault)
        return fault

    def _restart(self, fault: Fault, restarted, answers) -> Fault:
        fault.restarted = fault.at + wait_for(restarted, RECOVERY_TIMEOUT_S, f"{fault.name}: restart")
        fault.answered = fault.restarted + wait_for(answers, RECOVERY_TIMEOUT_S, f"{fault.name}: answer")
        return fault

    def _through_gateways(self, models: list[str]):
        """A check that each of `models` answers through every gateway (new texts: never from the cache)."""
        probes = [model_probe(self.serve.gateway_url(i), m, self.refs.reranker)
                  for i in range(len(self.serve.ports)) for m in models]
        return lambda: all(p() for p in probes)

    def fault_stub(self) -> Fault:
        """SIGKILL one stub; back once every instance of its model runs in a new stub and Triton says the model
        is ready (the supervisor's reload); answering once its ensemble answers through every gateway."""
        triton = self.serve.triton_pid()
        pid = self.rng.choice(sorted(stubs(triton)))
        model = stubs(triton)[pid]
        old = {p for p, m in stubs(triton).items() if m == model}
        fault = Fault("stub", model, time.monotonic())
        os.kill(pid, signal.SIGKILL)
        # A surviving stub of the old instances can linger: its unload waits for a request that failed on the
        # killed stub, which the Python backend never releases; the model serves from the new stubs meanwhile.
        new = lambda: {p for p, m in stubs(triton).items() if m == model} - old  # noqa: E731
        return self._restart(fault, lambda: len(new()) >= len(old) and self.serve.model_ready(model),
                             self._through_gateways([model.rsplit("_", 1)[0]]))

    def fault_tritonserver(self) -> Fault:
        """SIGKILL tritonserver; back once a new one is ready (every model loaded); answering once every model
        answers through every gateway."""
        pid = self.serve.triton_pid()
        fault = Fault("tritonserver", "tritonserver", time.monotonic())
        os.kill(pid, signal.SIGKILL)
        return self._restart(fault, lambda: _new_pid(self.serve.triton_pid, pid)() and self.serve.triton_ready(),
                             self._through_gateways([*self.refs.vectors, self.refs.reranker]))

    def _gateway(self, name: str, sig: int) -> Fault:
        """A gateway killed; back once a new process on its port is live (/health); answering once it answers
        an embeddings call."""
        i = self.rng.randrange(len(self.serve.ports))
        pid = self.serve.gateway_pid(i)
        fault = Fault(name, f"gateway :{self.serve.ports[i]}", time.monotonic())
        kill_tree(pid, sig) if sig == signal.SIGKILL else os.kill(pid, sig)
        url = self.serve.gateway_url(i)
        return self._restart(fault, lambda: _new_pid(lambda: self.serve.gateway_pid(i), pid)() and
                             http_ok(url + "/health", 1.0), model_probe(url, next(iter(self.refs.vectors)), ""))

    def fault_gateway_sigterm(self) -> Fault:
        return self._gateway("gateway-sigterm", signal.SIGTERM)

    def fault_gateway_sigkill(self) -> Fault:
        return self._gateway("gateway-sigkill", signal.SIGKILL)

    def fault_redis(self) -> Fault:
        before = len(self.redis.restarts)
        fault = Fault("redis", "redis-server", time.monotonic())
        self.redis.proc.kill()
        self._restart(fault, lambda: len(self.redis.restarts) > before, self.redis.ping)
        fault.restarted = self.redis.restarts[before]
        return fault

    def fault_idle_connections(self, n: int = 200, hold_s: float = 10.0) -> Fault:
        fault = Fault("idle-connections", f"{n} idle connections to nginx", time.monotonic())
        socks = [socket.create_connection(("127.0.0.1", self.nginx.port), timeout=5) for _ in range(n)]
        try:
            fault.answered = fault.at + wait_for(model_probe(self.nginx.url, next(iter(self.refs.vectors)), ""),
                                                 RECOVERY_TIMEOUT_S, "the stack with idle connections open")
            time.sleep(max(0.0, fault.at + hold_s - time.monotonic()))
        finally:
            for s in socks:
                s.close()
        return fault

    def fault_burst(self, factor: int = 10, seconds: float = 5.0) -> Fault:
        """factor x the load's clients for `seconds`; recovered when a call answers after the burst."""
        stop = threading.Event()
        fault = Fault("burst", f"{factor}x clients for {seconds:g} s", time.monotonic())
        threads = clients(self.nginx.url, self.refs, self.record, factor * self.load.clients, stop, seed=99,
                          rate=self.load.rate)
        time.sleep(seconds)
        stop.set()
        end = time.monotonic()
        fault.answered = end + wait_for(model_probe(self.nginx.url, next(iter(self.refs.vectors)), ""),
                                        RECOVERY_TIMEOUT_S, "the stack after the burst")
        for t in threads:
            t.join(RECOVERY_TIMEOUT_S)
        fault.ended = end
        return fault
