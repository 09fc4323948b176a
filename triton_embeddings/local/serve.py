"""The whole stack locally, one command: export if needed, the embedded Triton, then the gateway on :8080.

    python -m triton_embeddings.local.serve            # what `make serve` runs; Ctrl-C stops both
    python -m triton_embeddings.local.serve --models all-MiniLM-L6-v2 all-mpnet-base-v2   # the seed's line-up
    python -m triton_embeddings.local.serve --reranker cross-encoder/ms-marco-MiniLM-L6-v2   # + /v1/rerank
    python -m triton_embeddings.local.serve --gateways 2   # gateway processes on :8080 and :8081

Triton and each gateway (`python -m triton_embeddings.gateway`) are child processes, restarted when they exit
with Docker's backoff (local/restarts.py). Gateway settings still come from `EMBEDDINGS_*` variables; the
Triton URLs, address and model repository are the ones started here. SIGTERM drains the gateways, then
stops Triton; Ctrl-C the same without the gateways' 5 s delay.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from triton_embeddings.contract import EMBEDDING_KIND, RERANK_KIND, steps_of
from triton_embeddings.defaults import DEFAULT_MODEL, DEFAULT_REPOSITORY
from triton_embeddings.local import models as seed


def missing_weights(repository: Path, name: str, kind: str = EMBEDDING_KIND) -> list[Path]:
    """The exported files (not in git) that `repository` lacks for the model `name` of `kind`: every file its
    declared steps (contract.steps_of) keep in their version folders."""
    steps = steps_of(kind).steps
    needed = [repository / s.model(name) / "1" / f for s in steps for f in s.files]
    return [p for p in needed if not p.exists()]


def ensure_reranker(repository: Path, source: str, name: str | None = None, exporter=None) -> bool:
    """Export the cross-encoder `source` beside the embedding model when its weights are missing."""
    name = name or Path(source.rstrip("/")).name
    missing = missing_weights(repository, name, RERANK_KIND)
    if not missing:
        return False
    print(f"serve: {repository} lacks {missing[0].relative_to(repository)}; exporting reranker {name} ...", flush=True)
    if exporter is None:
        from triton_embeddings.export.options import ExportOptions
        from triton_embeddings.export.rerank_exporter import export_reranker

        def exporter(src: str, repo: Path, model_name: str) -> None:
            print(export_reranker(src, repo, ExportOptions(name=model_name)).summary(), flush=True)

    exporter(source, repository, name)
    return True


def default_source(name: str = DEFAULT_MODEL) -> str:
    """The packaged copy of a seed model when installed (offline hosts), else its hub id."""
    return seed.model_source(name)


def ensure_exported(repository: Path, name: str, source: str | None, exporter=None) -> bool:
    """Export `source` as `name` into `repository` when its weights are missing; True if it exported."""
    missing = missing_weights(repository, name)
    if not missing:
        return False
    print(f"serve: {repository} lacks {missing[0].relative_to(repository)}; exporting {name} ...", flush=True)
    if exporter is None:
        from triton_embeddings.export.exporter import export_model
        from triton_embeddings.export.options import ExportOptions

        def exporter(src: str, repo: Path, model_name: str) -> None:
            label = seed.HUB_IDS.get(model_name, src)
            result = export_model(src, repo, ExportOptions(name=model_name, source_label=label))
            print(result.summary(), flush=True)

    exporter(source or default_source(name), repository, name)
    return True


class Stopped(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM reached serve; `signum` is passed on to the gateways."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame) -> None:
    raise Stopped(signum)


def curl_example(port: int, model: str) -> str:
    return (
        f"curl -s http://127.0.0.1:{port}/v1/embeddings -H 'Content-Type: application/json' \\\n"
        f'  -d \'{{"model": "{model}", "input": ["Hello, world!"]}}\''
    )


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="embeddings-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-repository", type=Path, default=Path(DEFAULT_REPOSITORY))
    p.add_argument("--models", nargs="+", metavar="NAME", default=None,
                   help=f"models to serve, each exported when missing (default {DEFAULT_MODEL}); the seed's "
                        f"{seed.MPNET} and {seed.MINILM} come from their offline packages when installed")
    p.add_argument("--name", help="one model to serve (same as --models NAME)")
    p.add_argument("--model", help="sentence-transformers folder or hub id to export for a single model")
    p.add_argument("--reranker", help="also serve this cross-encoder (folder or hub id) on /v1/rerank; "
                                      "exported when missing")
    p.add_argument("--reranker-name", help="the reranker's model name (default: last part of --reranker)")
    p.add_argument("--host", default="127.0.0.1", help="gateway address (default %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="gateway port (default %(default)s)")
    p.add_argument("--gateways", type=_positive, default=1, metavar="N",
                   help="gateway processes, on ports --port .. --port+N-1 (default %(default)s)")
    p.add_argument("--triton-http-port", type=int, default=8000)
    p.add_argument("--triton-grpc-port", type=int, default=8001)
    p.add_argument("--triton-metrics-port", type=int, default=8002)
    return p


def gateway_ports(args) -> list[int]:
    """`--gateways N` serve on --port .. --port+N-1."""
    return [args.port + i for i in range(args.gateways)]


def gateway_env(args, triton, port: int) -> dict[str, str]:
    """This process's environment, the Triton started here and the gateway's address; the gateway runs the
    package serve runs (the folder holding it first on PYTHONPATH)."""
    import triton_embeddings

    package_parent = str(Path(triton_embeddings.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env.update({
        "EMBEDDINGS_HOST": args.host,
        "EMBEDDINGS_PORT": str(port),
        "EMBEDDINGS_TRITON_GRPC_URL": triton.grpc_url,
        "EMBEDDINGS_TRITON_METRICS_URL": triton.metrics_url,
        "EMBEDDINGS_MODEL_REPOSITORY": str(Path(args.model_repository).resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")])),
    })
    return env


def _announce(args, ports: list[int]) -> None:
    where = f"http://{args.host}:{ports[0]}" + (f" .. :{ports[-1]}" if len(ports) > 1 else "")
    what = "the gateway" if len(ports) == 1 else f"the {len(ports)} gateways"
    print(f"\nserve: gateway{'s' if len(ports) > 1 else ''} on {where} (Ctrl-C stops Triton and {what}). "
          f"Try:\n\n{curl_example(ports[0], args.name)}\n", flush=True)


def _shutdown(children: list, signum: int) -> None:
    """No more restarts; the gateways get `signum` together (they drain), then Triton stops."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # one stop at a time: a second signal would cut the drain
    for supervised in children:
        supervised.halt()
    gateways, triton = children[1:], children[:1]
    threads = [threading.Thread(target=g.child.stop, args=(signum,)) for g in gateways]
    if gateways:
        print(f"serve: stopping {len(gateways)} gateway{'s' * (len(gateways) > 1)} ...", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for supervised in triton:
        print("serve: stopping Triton ...", flush=True)
        supervised.child.stop()


def _serve(args, triton) -> None:
    """Triton, then the gateways in front of it, each restarted when it exits, until Ctrl-C or SIGTERM."""
    from triton_embeddings.local.restarts import Supervised, TritonChild, gateway_child

    children: list[Supervised] = []
    signum = signal.SIGINT
    try:
        print(f"serve: starting Triton (gRPC {triton.grpc_url}) ...", flush=True)
        children.append(Supervised(TritonChild(triton)).start())
        for port in gateway_ports(args):
            children.append(Supervised(gateway_child(args.host, port, gateway_env(args, triton, port))).start())
        _announce(args, gateway_ports(args))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
    finally:
        _shutdown(children, signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from triton_embeddings.local.launcher import TritonLaunchError, TritonServer, libpython_dir, port_in_use

    try:
        libpython_dir()  # before exporting: without it no model would load
    except TritonLaunchError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 1
    for port in gateway_ports(args):
        if port_in_use(port, args.host):
            print(f"serve: gateway port {port} on {args.host} is already in use (use --port)", file=sys.stderr)
            return 1
    names = args.models or [args.name or DEFAULT_MODEL]
    if args.model and len(names) > 1:
        print("serve: --model names the source of one model; with several, each comes from its name", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # which signal stopped serve is passed on to the gateways
    args.name = names[0]  # the curl example's model
    try:
        for name in names:
            ensure_exported(args.model_repository, name, args.model)
        if args.reranker:
            ensure_reranker(args.model_repository, args.reranker, args.reranker_name)
    except KeyboardInterrupt:
        return 130
    triton = TritonServer(
        args.model_repository,
        http_port=args.triton_http_port,
        grpc_port=args.triton_grpc_port,
        metrics_port=args.triton_metrics_port,
    )
    from triton_embeddings.local.restarts import ChildFailed

    try:
        _serve(args, triton)
    except (TritonLaunchError, ChildFailed) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    print("serve: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
