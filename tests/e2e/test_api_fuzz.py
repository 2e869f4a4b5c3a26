"""A fuzz run over the whole API: no request, however odd, gets a server error.

schemathesis sends a real server, over HTTP, requests built from its OpenAPI schema for
every operation: the documented examples, boundary, wrong-typed and missing values of
every field and undeclared media types (coverage), then random requests, valid and
invalid (fuzzing). Every answer must be anything but a 5xx (its `not_a_server_error`
check). The budget is fixed and the run derandomized: the same requests, in about a
minute, every time.

The operations are generated at collection, before any server runs, so the schema is
loaded from the application itself; `test_the_fuzzed_schema_is_the_one_served` proves
it is the very document the server answers at `/openapi.json`. (schemathesis can also
load a schema from a fixture, but that loader does not run under pytest 9.2.)
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from core.settings import Settings
from router.app import create_app
from tests.e2e.conftest import PROFILE, ApiServer, ServerFactory

if PROFILE != "embedded":
    pytest.skip(
        "the schema is the same in every profile: the fuzz run covers the embedded one",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow

# Random requests per operation in the fuzzing phase (coverage generates its own set).
MAX_EXAMPLES = 5

APP_SCHEMA = create_app(Settings(engine="espeak")).openapi()
schema = schemathesis.openapi.from_dict(APP_SCHEMA)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])


@pytest.fixture(scope="module")
def fuzzed_server(server_factory: ServerFactory) -> ApiServer:
    """A server of its own: the voices and tasks the fuzzer makes stay out of the others."""
    return server_factory()


def test_the_fuzzed_schema_is_the_one_served(fuzzed_server: ApiServer) -> None:
    served = httpx.get(f"{fuzzed_server.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == APP_SCHEMA


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: schemathesis.Case, fuzzed_server: ApiServer) -> None:
    case.call_and_validate(base_url=fuzzed_server.url, checks=[not_a_server_error], timeout=60)
