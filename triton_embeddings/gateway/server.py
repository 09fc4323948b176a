"""Where local/serve.py imports the server from; the server itself is http/server.py."""

from triton_embeddings.gateway.http.server import make_server

__all__ = ["make_server"]
