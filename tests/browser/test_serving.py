"""How the dashboard ships and is served: from the package, same origin only, with a strict
content security policy."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx

from tests.browser.conftest import ROOT

ASSETS = ROOT / "service" / "dashboard"


def asset_files() -> list[Path]:
    return sorted(p for p in ASSETS.rglob("*") if p.is_file())


def test_every_dashboard_file_is_package_data() -> None:
    """A file the package data globs miss would be absent from an installed jobq."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["service"]
    missed = [str(p.relative_to(ROOT)) for p in asset_files()
              if not any(fnmatch.fnmatch(str(p.relative_to(ROOT / "service")), g) for g in globs)]
    assert asset_files() and missed == []


def test_nothing_loads_from_another_origin() -> None:
    """No CDN: every script, style and request stays on the API's origin."""
    remote = re.compile(r"""(?:src|href|import|from|url\()\s*=?\s*["'(]?\s*(?:https?:)?//""")
    offenders = [str(p.relative_to(ROOT)) for p in asset_files() if remote.search(p.read_text())]
    assert offenders == []


def test_the_page_and_its_assets_are_served(service) -> None:
    page = httpx.get(f"{service.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="/dashboard/assets/js/main.js">' in page.text

    for path, media_type in [("js/main.js", "text/javascript"), ("js/live.js", "text/javascript"),
                             ("app.css", "text/css")]:
        asset = httpx.get(f"{service.url}/dashboard/assets/{path}")
        assert asset.status_code == 200, path
        assert asset.headers["content-type"].startswith(media_type), path
        assert asset.content == (ASSETS / path).read_bytes()

    missing = httpx.get(f"{service.url}/dashboard/assets/no-such.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    outside = httpx.get(f"{service.url}/dashboard/assets/..%2F..%2Fsettings.py")
    assert outside.status_code == 404

    schema = httpx.get(f"{service.url}/schema/openapi.json").json()
    assert not [p for p in schema["paths"] if p.startswith("/dashboard")]
