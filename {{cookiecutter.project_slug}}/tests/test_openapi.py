"""The OpenAPI document tells the truth: each route lists every status it can answer, with its
body and headers, and schemathesis, running all of its checks against the served process (real
Redis), finds no answer the document does not describe and no server error.

schemathesis runs two of its phases here: fuzzing (examples drawn from the document) and coverage
(each constraint's edges, plus the methods a path does not declare, OPTIONS among them). Two
checks act only on coverage cases: `unsupported_method` (a method the path does not declare gets
405 with `Allow`) and `allow_header_conformance` (ST205: that `Allow` lists every declared method).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import FunctionType
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from .helpers import PASSWORD, add_user
from .served import Served, serve
from .test_processes import Service, bearer, stop

# Every operation of this template and the statuses it can answer (routes added later are held
# to the general rules of `test_error_answers_are_documented_alike` and to schemathesis).
STATUSES = {
    ("get", "/health/live"): {"200"},
    ("get", "/health/ready"): {"200", "503"},
    ("post", "/auth/token"): {"200", "400", "401", "413", "422", "429", "503"},
    ("post", "/auth/refresh"): {"200", "400", "401", "413", "422", "503"},
    ("post", "/auth/logout"): {"204", "400", "401", "429", "503"},
    ("post", "/auth/logout-all"): {"204", "400", "401", "429", "503"},
    ("get", "/me"): {"200", "400", "401", "429", "503"},
    ("get", "/items"): {"200", "400", "401", "403", "429", "503"},
    ("post", "/items"): {"201", "400", "401", "403", "413", "422", "429", "503"},
}
REQUIRED_HEADERS = {
    "401": {"WWW-Authenticate"},
    "403": {"WWW-Authenticate"},
    "429": {"Retry-After", "RateLimit", "RateLimit-Policy"},
    "503": {"Retry-After"},
}
USER = "schemathesis"
EXAMPLES = 50  # per operation
# HEAD is served on the probes (/health/live, /health/ready) but not documented: RFC 9110 makes
# it GET without the body, and an operation of its own would promise a JSON body it never has.
UNDOCUMENTED_METHODS = {"head"}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_every_route_lists_the_statuses_it_can_answer(app: FastAPI) -> None:
    document = app.openapi()
    listed = {(method, path): set(op["responses"]) for method, path, op in operations(document)}
    assert {route: listed.get(route) for route in STATUSES} == STATUSES
    assert not {method for method, _ in listed} & UNDOCUMENTED_METHODS


def test_error_answers_are_documented_alike(app: FastAPI) -> None:
    """Errors have one body, `{"detail": ...}`, but for the token endpoint's RFC 6749 errors
    (either body, by grant, at its 400 and 401); 422 lists problems without the input; a route
    that needs a token lists 400 (two Authorization headers), 401, 429 and 503 with their
    headers."""
    document = app.openapi()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's 422, which echoes the input
    assert set(schemas["ValidationProblem"]["properties"]) == {"loc", "msg", "type"}
    for method, path, operation in operations(document):
        responses = operation["responses"]
        if operation.get("security"):
            assert {"400", "401", "429", "503"} <= set(responses), (method, path)
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= set(responses), (method, path)
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                bodies = {part["$ref"] for part in schema.get("anyOf", [schema])}
                models = {"InvalidRequest" if status == "422" else "Error"}
                if (method, path) == ("post", "/auth/token") and status in {"400", "401"}:
                    models.add("TokenError")
                expected = {f"#/components/schemas/{model}" for model in models}
                assert bodies == expected, (method, path, status)
                headers = response.get("headers", {})
                required = {name for name, header in headers.items() if header["required"]}
                assert required == REQUIRED_HEADERS.get(status, set()), (method, path, status)


@pytest.fixture(scope="module")
def served_api(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One `serve` process for every schemathesis example, with limits no example reaches."""
    with serve(redis_url, key_files, tmp_path_factory.mktemp("openapi")) as process:
        # A user who may read and write: so the /items examples get past 403.
        add_user(process.settings, USER, scopes=["read", "write"])
        yield process
        # Every example is answered by now; no answer may have come from a crash.
        assert "Traceback" not in stop(process.service, process.log)


EXAMPLES_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run
    database=None,  # nothing written into the project
    deadline=None,  # a shared machine's timing is no test
    suppress_health_check=[HealthCheck.too_slow],
)


def with_real_credentials(case: schemathesis.Case[Any], service: Service) -> dict[str, str]:
    """Make `case` one that gets past authentication; return the headers it needs.

    Made-up credentials only ever get a 401; these make the 200s and 204s part of the run."""
    if "security" in case.operation.definition.raw:
        return bearer(service.login(USER)["access_token"])  # fresh: logout ends its session
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and case.operation.path == "/auth/token":
        case.body = {"username": USER, "password": PASSWORD}
    elif positive and case.operation.path == "/auth/refresh":
        case.body = {"refresh_token": service.login(USER)["refresh_token"]}
    return {}


def test_the_served_api_answers_as_its_document_says(
    served_api: Served,
) -> None:
    """Examples that fit the document and examples that do not, for each operation the served
    process documents, half of them with real credentials; every answer goes through every
    check schemathesis has.

    Not `schema.parametrize()`: the document exists only once the process runs, and
    `schemathesis.pytest.from_fixture` fails on pytest 9.2. The `ignored_auth` check does not
    apply: it knows API-key and HTTP schemes, and this service's is OAuth2 (password flow);
    examples without credentials get the documented 401 here, and test_auth_flows covers more.
    """
    service = served_api.service
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    for operation in (op for methods in schema.values() for op in methods.values()):
        cases = st.one_of([operation.as_strategy(mode) for mode in GenerationMode])

        @EXAMPLES_SETTINGS
        @hypothesis.given(case=cases, real_credentials=st.booleans())
        def answers_as_documented(case: schemathesis.Case[Any], real_credentials: bool) -> None:
            headers = with_real_credentials(case, service) if real_credentials else {}
            case.call_and_validate(base_url=service.url, headers=headers, checks=all_checks())

        answers_as_documented()


def all_checks() -> list[schemathesis.CheckFunction]:
    """Every check schemathesis has, named rather than left to its defaults (which may change).
    All are functions of one answer; a check of a whole run (a class) would need its engine,
    so a version that brings one fails here rather than have it skipped unseen."""
    load_all_checks()
    registered = CHECKS.get_all()
    checks: list[schemathesis.CheckFunction] = [
        check for check in registered if isinstance(check, FunctionType)
    ]
    assert len(checks) == len(registered), registered
    names = {check.__name__ for check in checks}
    assert {"unsupported_method", "allow_header_conformance"} <= names, names
    return checks


def test_the_served_api_answers_every_coverage_case_as_documented(
    served_api: Served,
) -> None:
    """schemathesis's coverage phase for each operation: every boundary value, missing and
    malformed parameter, wrong content type and undeclared method (each path's undeclared
    methods once), half of them with real credentials, through every check."""
    service = served_api.service
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    checks = all_checks()
    methods_tried: set[str] = set()
    for operation in (op for methods in schema.values() for op in methods.values()):
        generation = schema.config.generation_for(operation=operation, phase="coverage")
        cases = schema.iter_coverage_cases(
            operation, generation_modes=list(GenerationMode), generation_config=generation
        )
        for index, case in enumerate(cases):
            headers = with_real_credentials(case, service) if index % 2 else {}
            case.call_and_validate(base_url=service.url, headers=headers, checks=checks)
            methods_tried.add(case.method.upper())
    # The undeclared methods were sent, so the two checks above had something to judge.
    assert {"OPTIONS", "PUT", "DELETE"} <= methods_tried, methods_tried
