"""The OpenAPI document (issue 13, item 7): every operation describes its success body and
its errors, errors are problem+json, and statuses every route may answer are declared in one
place (service/api/openapi.py), where authentication adds its own."""

from __future__ import annotations

import pytest

from service.api import openapi
from service.api.app import create_app
from service.settings import Settings

METHODS = ("get", "put", "post", "delete", "patch")


def document() -> dict:
    app = create_app(Settings(database_url="postgresql://unused/unused"))
    openapi.finish(app)
    return app.openapi_schema.to_schema()


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def test_every_operation_describes_its_answers():
    doc = document()
    seen = 0
    for path, method, operation in operations(doc):
        seen += 1
        responses = operation["responses"]
        ok = [code for code in responses if code.startswith("2")]
        assert ok, (method, path)
        for code in ok:
            if code != "204":
                assert responses[code].get("content"), (method, path, code)
        errors = [code for code in responses if code[0] in "45"]
        for code in ("400", "403", "422"):
            assert code in errors, (method, path, code)
        if method != "get":
            assert "415" in errors, (method, path)
        for code in errors:
            content = responses[code]["content"]
            # /api/v2 keeps its own {"error": ...}; the guards in front answer problem+json
            assert openapi.PROBLEM in content or path.startswith("/api/v2"), (path, code)
            for media in content.values():
                assert media["schema"], (path, code)
        assert "500" not in responses
    assert seen >= 35
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}


def test_litestars_own_error_shape_is_gone():
    # Litestar describes its validation errors as {status_code, detail, extra}: not what
    # jobq sends
    for _, _, operation in operations(document()):
        for response in operation["responses"].values():
            for media in (response.get("content") or {}).values():
                assert "status_code" not in str(media["schema"])


def test_statuses_declared_once_reach_every_guarded_operation(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(openapi, "GUARDED", {401: "No valid API key.", 429: "Too many."})
    for path, method, operation in operations(document()):
        has = {"401", "429"} <= set(operation["responses"])
        assert has == (path not in openapi.OPEN), (method, path)


def test_multipart_bodies_and_file_media_are_described():
    paths = document()["paths"]
    for path in ("/api/v1/conversions", "/api/v2/convert"):
        form = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["file"]["items"]["format"] == "binary"
    output = paths["/api/v1/jobs/{job_id}/output"]["get"]["responses"]["200"]["content"]
    assert {"model/gltf-binary", "model/stl", "text/plain"} <= set(output)
