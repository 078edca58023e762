"""Schemathesis against a real ``torpor serve``'s ``/api/v1/openapi.json``: no operation answers a
5xx to anything its schema allows (or to what schemathesis makes of its edges).

Every operation gets ``EXAMPLES`` generated cases, positive and negative ones; an operation with a
``{name}`` in its path also runs each case against ``echo``, a function that exists (else most cases
would only reach the 404), except the one that deletes it; a deploy also runs with ``echo``'s code,
so that its spec gets parsed rather than refused for unknown code. Requests carry ``Authorization: Bearer``
with the server's admin key when it wrote one (``DATA_DIR/admin.key``). Schemathesis's pytest plugin
is not used: its lazy fixture loader fails under pytest 9 (``Function`` has no ``_nodeid``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import EXAMPLES as EXAMPLE_FUNCTIONS
from tests.conftest import TorporServer
from torpor.code import pack_dir

EXAMPLES = 20  # per operation: 24 operations, ~15 s in all on a quiet machine


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorporServer]:
    server = TorporServer(tmp_path_factory.mktemp("fuzz") / "data")
    try:
        server.deploy(EXAMPLE_FUNCTIONS / "echo" / "torpor.yaml")
        yield server
    finally:
        server.stop()


def admin_headers(server: TorporServer) -> dict[str, str]:
    key = server.data_dir / "admin.key"
    return {"Authorization": f"Bearer {key.read_text().strip()}"} if key.is_file() else {}


def check(case: Any, headers: dict[str, str], failures: list[str]) -> None:
    if isinstance(case.query, dict) and "follow" in case.query:
        case.query = {**case.query, "follow": "false"}  # a followed log never ends
    response = case.call(headers=headers, timeout=30)
    if response.status_code >= 500:
        failures.append(f"{case.method} {case.formatted_path} answered {response.status_code}: "
                        f"{response.text[:300]}\n  reproduce: {case.as_curl_command(headers=headers)}")


def test_no_server_errors(fuzzed_server: TorporServer) -> None:
    """Positive and negative cases for every operation; a 5xx is collected with a curl line to
    reproduce it, and the test fails listing them all."""
    headers = admin_headers(fuzzed_server)
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/api/v1/openapi.json", headers=headers)
    failures: list[str] = []
    calls = 0
    code = pack_dir(EXAMPLE_FUNCTIONS / "echo").digest
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        strategy = st.one_of(operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                             operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def fuzz(case: Any) -> None:
            nonlocal calls
            check(case, headers, failures)
            calls += 1
            names = case.path_parameters or {}
            if "name" in names and not (case.method == "DELETE" and case.path == "/api/v1/functions/{name}"):
                case.path_parameters = {**names, "name": "echo"}
                check(case, headers, failures)
                calls += 1
            if (case.method, case.path) == ("POST", "/api/v1/functions") and isinstance(case.body, dict):
                case.body = {**case.body, "code": code}  # code that exists: the spec gets parsed
                check(case, headers, failures)
                calls += 1

        fuzz()
    print(f"schemathesis: {len(operations)} operations, {calls} requests, {len(failures)} 5xx")
    assert len(operations) >= 20
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("name", ["a" * 300, "..", "echo%0A", "%2E%2E"])
def test_names_no_function_can_have_are_404(fuzzed_server: TorporServer, name: str) -> None:
    """Found by the fuzz: a function's logs under a name too long for a file name answered 500
    (the name was looked up on disk); now every such name is 404 in torpor's shape."""
    response = fuzzed_server.http.get(f"/api/v1/functions/{name}/logs",
                                      headers=admin_headers(fuzzed_server))
    assert (response.status_code, response.json()["reason"]) == (404, "not_found")
