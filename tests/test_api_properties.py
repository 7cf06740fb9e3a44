"""Property-based tests of the whole API from its own OpenAPI document.

Schemathesis generates requests for every documented operation (valid and invalid inputs),
sends them to the app with a real signed token, and checks: no 5xx, documented status codes,
documented content types, and bodies that match their documented schemas.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="session")
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def signed_in(idp):
    token = idp.token(email="fuzz@example.com", sub="fuzz-user")
    return {"Authorization": f"Bearer {token}"}


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_honours_its_contract(case, signed_in):
    case.call_and_validate(headers=signed_in, checks=CHECKS)
