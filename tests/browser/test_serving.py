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


def _raw(service_url: str, method: str, path: str) -> tuple[str, dict[str, str], bytes]:
    """One request on a socket of its own: the status line, the headers and every byte after
    them until the server closes (HEAD must send none)."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(service_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
                     "Connection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, rest


def test_head_answers_the_page_and_assets_like_get_without_a_body(service) -> None:
    for path in ["/dashboard", "/dashboard/assets/app.css", "/dashboard/assets/js/main.js"]:
        get_status, get_headers, body = _raw(service.url, "GET", path)
        head_status, head_headers, rest = _raw(service.url, "HEAD", path)
        assert get_status == head_status == "HTTP/1.1 200 OK", (path, head_status)
        assert rest == b"", path
        assert head_headers["content-length"] == get_headers["content-length"] == str(len(body))
        assert head_headers["cache-control"] == get_headers["cache-control"] == "no-cache"
    # The page's HEAD carries every header of its GET. (Litestar's static files router leaves
    # Content-Type out of an asset's HEAD answer.)
    _, get_headers, _ = _raw(service.url, "GET", "/dashboard")
    _, head_headers, _ = _raw(service.url, "HEAD", "/dashboard")
    for name in ("content-type", "content-security-policy", "x-content-type-options",
                 "referrer-policy"):
        assert head_headers[name] == get_headers[name], name
