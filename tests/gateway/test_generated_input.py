"""Generated requests (schemathesis, from the gateway's own /openapi.json) against a real gateway process over the
real Triton serving MiniLM and the tiny reranker, keys on: valid and invalid bodies, parameters and uploads on
every operation. No answer is a 5xx, what the document forbids is refused with a 4xx, every status is documented,
and every answer's content type, body and headers are those the document declares."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import DEFAULT_MODEL, RERANK_MODEL
from tests.gw_helpers import running_gateway
from triton_embeddings.gateway.app import create_app
from triton_embeddings.gateway.settings import Settings

pytestmark = pytest.mark.slow

KEY = "sk-generated-input"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
EXAMPLES = 200  # per operation, positive and negative cases together
BATCH_LINE = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": DEFAULT_MODEL, "input": "x"}})


@pytest.fixture(scope="module")
def gateway(mixed_triton, tmp_path_factory):
    d = tmp_path_factory.mktemp("generated_input")
    with running_gateway(d, triton_grpc_url=mixed_triton.grpc_url, triton_metrics_url=mixed_triton.metrics_url,
                         api_keys=json.dumps([KEY]), metrics_require_auth=True, shutdown_delay_s=0,
                         batch_store=f"sqlite:///{d}/batch.db", batch_poll_s=0.2, batch_max_requests=8) as gw:
        yield gw


@pytest.fixture(scope="module")
def existing(gateway) -> dict[str, str]:
    """Ids the valid cases name: a file to delete, a file the other file routes and the batches read, a batch."""
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as c:
        files = [c.post("/v1/files", files={"file": ("in.jsonl", BATCH_LINE.encode())},
                        data={"purpose": "batch"}).json()["id"] for _ in range(2)]
        batch = c.post("/v1/batches", json={"input_file_id": files[1], "endpoint": "/v1/embeddings",
                                            "completion_window": "24h"}).json()["id"]
    return {"file_id": files[0], "input_file_id": files[1], "batch_id": batch}


def narrowed(spec: dict, ids: dict[str, str]) -> dict:
    """The document with `model` and the ids narrowed to served ones, so that valid cases reach Triton and the
    store; invalid cases still send anything else."""
    schemas = spec["components"]["schemas"]
    schemas["EmbeddingRequest"]["properties"]["model"] = {"type": "string", "enum": [DEFAULT_MODEL]}
    schemas["RerankRequest"]["properties"]["model"] = {"type": "string", "enum": [RERANK_MODEL]}
    schemas["BatchCreateRequest"]["properties"]["input_file_id"] = {"type": "string", "enum": [ids["input_file_id"]]}
    tei = spec["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][1]
    tei["properties"]["model"] = {"anyOf": [{"type": "string", "enum": [RERANK_MODEL]}, {"type": "null"}]}
    upload = schemas["Body_create_file_v1_files_post"]["properties"]
    upload["purpose"] = {"type": "string", "enum": ["batch"]}
    upload["file"] = {**upload["file"], "enum": [BATCH_LINE]}  # a JSONL file the check accepts
    served = {"model_id": [DEFAULT_MODEL, RERANK_MODEL], "file_id": [ids["input_file_id"]],
              "batch_id": [ids["batch_id"]]}
    for operations in spec["paths"].values():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in served:
                    names = [ids["file_id"]] if method == "delete" else served[parameter["name"]]
                    parameter["schema"] = {"type": "string", "enum": names}
    return spec


@pytest.fixture(scope="module")
def api_schema(gateway, existing):
    spec = httpx.get(gateway.url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(narrowed(spec, existing))
    schema.config.update(base_url=gateway.url)
    return schema


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
# One test per operation of the document (the same app, built here without serving); the live document must list
# the same ones (schemathesis' own pytest loader for a fixture's schema does not run under pytest 9).
OPERATIONS = [(method.upper(), path) for path, operations in create_app(Settings()).openapi()["paths"].items()
              for method in operations]


def test_the_document_is_valid_openapi_and_lists_every_operation(api_schema):
    api_schema.validate()
    listed = [(op.method.upper(), op.path) for op in map(_ok, api_schema.get_all_operations())]
    assert sorted(listed) == sorted(OPERATIONS)


def _ok(result):
    return result.ok()


def cases(operation):
    """Valid and invalid cases (an operation with nothing to get wrong: valid ones only)."""
    valid = operation.as_strategy(GenerationMode.POSITIVE)
    if not (operation.body or any(True for _ in operation.iter_parameters())):
        return valid
    return st.one_of(valid, operation.as_strategy(GenerationMode.NEGATIVE))


def generated(api_schema, method: str, path: str, headers: dict, examples: int) -> list[int]:
    """Send `examples` generated requests to one operation, each checked; the statuses answered."""
    statuses = []

    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=cases(api_schema[path][method]))
    def send(case):
        response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)
        statuses.append(response.status_code)

    send()
    return statuses


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_generated_requests_with_the_key(api_schema, method, path):
    """Valid cases are answered (they reached Triton or the store: a 200, or 409 for cancelling the finished batch),
    invalid ones are refused; the key is accepted throughout."""
    statuses = generated(api_schema, method, path, AUTH, EXAMPLES)
    print(f"{method} {path}: {len(statuses)} requests, {sorted(Counter(statuses).items())}")  # shown with -s
    assert {200, 409} & set(statuses) and 401 not in statuses, statuses


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_generated_requests_without_a_key(api_schema, method, path):
    """Without a key every route behind the key check (/metrics too: metrics_require_auth) answers 401, or 400 for
    a key-like name in the query string; /health and /ready answer."""
    statuses = generated(api_schema, method, path, {}, 10)
    print(f"{method} {path} without a key: {len(statuses)} requests, {sorted(Counter(statuses).items())}")
    assert set(statuses) <= ({200} if path in ("/health", "/ready") else {400, 401}), statuses
    assert path in ("/health", "/ready") or 401 in statuses
