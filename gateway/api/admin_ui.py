"""The admin page at /admin/ui: a static shell and its bundled assets, no data in them.

Everything the page shows it fetches from the admin JSON API with the master key as a bearer
header, so these routes need no key: a caller without one gets the same bytes as anyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.errors import GatewayError

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Only files from this package run on the page, and it talks only to this origin. Chart.js
# sets canvas sizes through inline styles, hence 'unsafe-inline' for styles (never scripts).
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


class AssetNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


@dataclass(frozen=True, slots=True)
class AdminAssets:
    """The page's files, read once at start-up from the package."""

    index: bytes
    assets: dict[str, bytes]

    @classmethod
    def load(cls) -> AdminAssets:
        root = resources.files("gateway") / "admin_ui"
        folder = root / "assets"
        assets = {
            f.name: f.read_bytes()
            for f in folder.iterdir()
            if f.is_file() and _media_type(f.name) is not None
        }
        return cls(index=(root / "index.html").read_bytes(), assets=assets)


def admin_ui_router(files: AdminAssets) -> APIRouter:
    """GET /admin/ui (the page) and GET /admin/ui/assets/{name} (its scripts and styles)."""
    router = APIRouter(prefix="/admin/ui", include_in_schema=False)

    @router.get("")
    async def page() -> Response:
        return _file(files.index, "index.html")

    @router.get("/assets/{name}")
    async def asset(name: str) -> Response:
        body = files.assets.get(name)
        if body is None:
            raise AssetNotFound(f"No admin page asset {name!r}")
        return _file(body, name)

    return router


def _file(body: bytes, name: str) -> Response:
    media_type = _media_type(name) or "application/octet-stream"
    return Response(body, media_type=media_type, headers=_HEADERS)


def _media_type(name: str) -> str | None:
    suffix = name[name.rfind(".") :] if "." in name else ""
    return _MEDIA_TYPES.get(suffix)
