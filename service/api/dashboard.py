"""The web dashboard at `/dashboard`: one HTML page and its scripts and styles, shipped inside
the package (service/dashboard/). The page talks to the REST API only, from the same origin."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, route
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from service.api import access

ASSETS = Path(__file__).resolve().parent.parent / "dashboard"
"""The dashboard's files: index.html, app.css and the JavaScript modules under js/."""

PATH = "/dashboard"

# Scripts, styles, fetches and images from this origin only: nothing inline, no CDN. The
# download link and the event streams are same-origin too.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

# Revalidate on every load: a new release must never run with a stale module beside a fresh one.
REVALIDATE = CacheControlHeader(no_cache=True)


# HEAD too (the assets' router answers it already): the server sends HEAD's headers only.
@route(PATH, http_method=["GET", "HEAD"], include_in_schema=False, cache_control=REVALIDATE,
       opt=access.rule("public"))
async def dashboard_page() -> Response[bytes]:
    """The single page; the part after `#` picks what it shows (#/jobs, #/jobs/<id>, ...)."""
    return Response(
        (ASSETS / "index.html").read_bytes(),
        media_type="text/html",
        headers=SECURITY_HEADERS,
    )


ROUTES = [
    dashboard_page,
    create_static_files_router(
        path=f"{PATH}/assets",
        directories=[ASSETS],
        name="dashboard-assets",
        cache_control=REVALIDATE,
        include_in_schema=False,
        opt=access.rule("public"),
    ),
]
"""Route handlers to register on the app."""
