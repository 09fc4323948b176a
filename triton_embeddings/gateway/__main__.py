"""`embeddings-gateway`: run the gateway with uvicorn, configured from `EMBEDDINGS_*` environment variables."""

from __future__ import annotations

import argparse
import logging

from triton_embeddings.gateway.settings import Settings


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (see `http.server.GatewayServer` for the drain), then close the Triton client;
    with `workers` > 1, as that many processes on one port (workers.py)."""
    if settings.workers > 1:
        from triton_embeddings.gateway import workers

        with workers.metrics_directory():  # before anything imports prometheus_client
            _log_settings(settings)
            workers.Workers(settings).run()
        return
    _log_settings(settings)
    from triton_embeddings.gateway.app import create_app
    from triton_embeddings.gateway.http.server import make_server

    make_server(create_app(settings), settings).run()


def _log_settings(settings: Settings) -> None:
    from triton_embeddings.gateway.http.middleware import setup_logging

    setup_logging(settings.log_level)
    logging.getLogger("gateway").info("settings: %s", settings.model_dump_json())  # SecretStr prints as ****


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m triton_embeddings.gateway",
        description="OpenAI-compatible embeddings gateway over Triton. Every setting is an EMBEDDINGS_* "
        "environment variable; the flags below override the common ones.",
    )
    parser.add_argument("--host", help="listen address (EMBEDDINGS_HOST)")
    parser.add_argument("--port", type=int, help="listen port (EMBEDDINGS_PORT, default 8080)")
    parser.add_argument("--triton-grpc-url", help="Triton gRPC host:port (EMBEDDINGS_TRITON_GRPC_URL)")
    parser.add_argument("--triton-metrics-url", help="Triton metrics URL (EMBEDDINGS_TRITON_METRICS_URL)")
    parser.add_argument("--print-settings", action="store_true", help="print the settings (secrets redacted)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "print_settings"}
    settings = Settings(**overrides)
    if args.print_settings:
        print(settings.model_dump_json(indent=2))
        return
    run(settings)


if __name__ == "__main__":
    main()
