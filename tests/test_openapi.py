"""/openapi.json describes exactly the routes the app registers, and schemathesis drives every
documented operation against a running service: no 5xx beyond the documented 503s, every
error in the documented shape, every status documented."""

from __future__ import annotations

import asyncio
import os

import jsonschema
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import running_service
from service.core.lifecycle import Lifecycle
from service.http import HttpContext, make_app
from service.openapi import document
from tests.test_service import settings_for

# Endless by design: a valid request would never end; its errors are covered in tests/test_stream.py.
NOT_FUZZED = {"/options/stream"}
# Statuses whose body is not an error: /readyz's 503 is the readiness report.
NOT_ERRORS = {("/readyz", "503")}
# The long form (make test-long) tries many more inputs per operation.
EXAMPLES = int(os.environ.get("RELIABILITY_SCHEMA_EXAMPLES", "10"))


def _registered() -> set[tuple[str, str]]:
    app = make_app(HttpContext(None, Lifecycle()))  # type: ignore[arg-type]  # routes only, nothing served
    # Not the catch-all ("*"): it answers what no route takes (JSON 404/405, CORS preflights).
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method not in ("HEAD", "*") and r.resource}


def test_document_lists_exactly_the_registered_routes() -> None:
    """A new route must be documented (and a removed one dropped) for this test to pass."""
    doc = document()
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert documented == _registered()
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")) and (path, status) not in NOT_ERRORS:
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, path


async def test_schemathesis_finds_no_5xx_and_only_documented_errors() -> None:
    """Every documented operation, fuzzed by schemathesis against the real service (short form in CI)."""
    doc = document()
    error_schema = doc["components"]["schemas"]["Error"]
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if op.path not in NOT_FUZZED]
    assert len(operations) == len(doc["paths"]) - len(NOT_FUZZED)

    async with running_service(settings_for(None)) as svc:
        base = f"http://127.0.0.1:{svc.http_port}"
        async with asyncio.timeout(120):
            problems = await asyncio.to_thread(_fuzz, operations, base, error_schema)
        async with asyncio.timeout(10):
            served = await asyncio.to_thread(requests.get, f"{base}/openapi.json", timeout=5)
        assert served.json() == doc
    assert not problems, problems[:5]


def _fuzz(operations: list, base: str, error_schema: dict) -> list[str]:
    problems: list[str] = []
    session = requests.Session()
    strategy = st.sampled_from(operations).flatmap(lambda op: op.as_strategy())

    @given(case=strategy)
    @settings(max_examples=EXAMPLES * len(operations), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: schemathesis.Case) -> None:
        resp = case.call(base_url=base, session=session, timeout=10)
        status = resp.status_code
        documented = case.operation.definition.raw["responses"]
        where = f"{case.method} {resp.request.url} → {status}"
        if status >= 500 and str(status) not in documented:
            problems.append(f"undocumented server error: {where}")
        if str(status) not in documented:
            problems.append(f"undocumented status: {where}")
        if status >= 400 and (case.operation.path, str(status)) not in NOT_ERRORS:
            try:
                jsonschema.validate(resp.json(), error_schema)
            except (ValueError, jsonschema.ValidationError) as exc:
                problems.append(f"error not in the documented shape: {where}: {str(exc)[:200]}")

    check()
    return problems
