"""Pure ASGI: every answer to a request with a limited key carries its `x-ratelimit-*` headers (the state its
request left, or read now when it took no quota: a 404, `/v1/models`), and every answer to a team is counted."""

from __future__ import annotations

from triton_embeddings.gateway.metrics import GatewayMetrics
from triton_embeddings.gateway.teams.headers import ratelimit_headers
from triton_embeddings.gateway.teams.quotas import Teams


class RateLimitHeaders:
    def __init__(self, app, teams: Teams, metrics: GatewayMetrics):
        self.app = app
        self.teams = teams
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state", {})
                key = state.get("quota_key")
                if key is not None and key.limits.any:
                    snapshot = state.get("ratelimit") or await self.teams.peek(key)
                    message["headers"] = [*message.get("headers", []), *ratelimit_headers(snapshot)]
                if "team" in state:
                    self.metrics.team_requests.labels(state["team"], state.get("model_label", "-"),
                                                      str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_with_headers)
