"""The check of a batch input file: one JSON request per line, `{custom_id, method, url, body}`.

Every line is checked before a batch starts. What a line's `body` holds is checked when the line runs, by the
same code as the online endpoint, so that a bad body gets the same error and the rest of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

ENDPOINTS = ("/v1/embeddings", "/v1/rerank")


@dataclass(frozen=True)
class Request:
    """One line of an input file: its index (0-based; errors name 1-based line numbers, as OpenAI's)."""

    index: int
    custom_id: str
    url: str
    body: dict


@dataclass(frozen=True)
class Problem:
    """One entry of a batch's `errors`: OpenAI's `BatchError`."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def wire(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


class FileProblems(Exception):
    """An input file that cannot run: its problems, with line numbers."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems[0].message)
        self.problems = problems


class TooManyRequests(Exception):
    """More lines than a batch may hold (413)."""


def _request(number: int, raw: bytes) -> Request | Problem:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return Problem("invalid_json_line", f"Line {number} is not valid JSON: {e}.", number)
    if not isinstance(obj, dict):
        return Problem("invalid_json_line", f"Line {number} is not a JSON object.", number)
    for field, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        if not isinstance(obj.get(field), kind):
            what = "a string" if kind is str else "an object"
            return Problem("missing_required_parameter", f"Line {number}: '{field}' must be {what}.", number, field)
    if obj["method"].upper() != "POST":
        return Problem("invalid_method", f"Line {number}: 'method' must be POST.", number, "method")
    if obj["url"] not in ENDPOINTS:
        return Problem("invalid_url", f"Line {number}: 'url' must be one of {', '.join(ENDPOINTS)}.", number, "url")
    return Request(number - 1, obj["custom_id"], obj["url"], obj["body"])


def parse(content: bytes, max_requests: int) -> list[Request]:
    """The requests of a file (blank lines skipped); `FileProblems` naming every bad line (at most 100)."""
    requests: list[Request] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(requests) >= max_requests:
            raise TooManyRequests(f"The file has more than {max_requests} requests; at most {max_requests} per batch.")
        got = _request(number, raw)
        if isinstance(got, Request) and got.custom_id in seen:
            got = Problem("duplicate_custom_id", f"Line {number}: custom_id {got.custom_id!r} is used before.",
                          number, "custom_id")
        if isinstance(got, Problem):
            problems.append(got)
        else:
            seen.add(got.custom_id)
            requests.append(got)
    if not requests and not problems:
        problems.append(Problem("empty_file", "The file has no requests."))
    if problems:
        raise FileProblems(problems[:100])
    return requests


def check_endpoint(requests: list[Request], endpoint: str) -> None:
    """Every line is for the batch's endpoint (`FileProblems` naming the others)."""
    wrong = [Problem("mismatched_endpoint", f"Line {r.index + 1}: 'url' is {r.url}, but the batch's endpoint is "
                     f"{endpoint}.", r.index + 1, "url") for r in requests if r.url != endpoint]
    if wrong:
        raise FileProblems(wrong[:100])


def mixed_models(requests: list[Request]) -> list[Problem]:
    """Lines whose model differs from the first line's: allowed (each line runs with its own), but reported."""
    first = requests[0].body.get("model") if requests else None
    where = f"line {requests[0].index + 1}'s {first!r}" if requests else ""
    return [Problem("mixed_models", f"Line {r.index + 1}: model {r.body.get('model')!r} differs from {where}; the "
                    "line runs with its own model.", r.index + 1, "body.model")
            for r in requests if r.body.get("model") != first][:100]
