"""The SPA's typed client, checked against the API as served: TypeScript types generated from
this app's OpenAPI document with openapi-typescript, then ``clients/typescript/src`` checked
with ``tsc --strict``. Needs Node and ``npm ci`` in ``clients/typescript`` (``make test`` and
``.ci/run`` do it); skipped only where there is no Node at all."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node is not installed")


def _run(*args, cwd):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def generated_types(app, tmp_path_factory):
    """``api.d.ts`` generated from the document this app serves."""
    assert (BIN / "tsc").exists() and (BIN / "openapi-typescript").exists(), \
        "run `npm ci` in clients/typescript (make test does)"
    folder = tmp_path_factory.mktemp("openapi")
    document = folder / "openapi.json"
    document.write_text(json.dumps(app.test_client().get("/api/openapi.json").json))
    _run(str(BIN / "openapi-typescript"), str(document), "-o", str(folder / "api.d.ts"),
         cwd=folder)
    generated = (folder / "api.d.ts").read_text()
    assert "startSession: {" in generated and "PackagePageEnvelope" in generated
    return folder / "api.d.ts"


def _project(tmp_path, generated_types) -> Path:
    work = tmp_path / "client"
    shutil.copytree(CLIENT / "src", work / "src", ignore=shutil.ignore_patterns("api.d.ts"))
    shutil.copy(generated_types, work / "src" / "api.d.ts")
    shutil.copy(CLIENT / "tsconfig.json", work / "tsconfig.json")
    return work


def test_typescript_client_type_checks_against_the_served_document(tmp_path, generated_types):
    """``client.ts`` also asserts what the types must say (pagination, error extras, enums)
    and, with ``@ts-expect-error``, what they must refuse: the check has teeth."""
    work = _project(tmp_path, generated_types)
    _run(str(BIN / "tsc"), "-p", str(work / "tsconfig.json"), "--strict", cwd=work)
