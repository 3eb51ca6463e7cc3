"""Must-show (issue 24): without the master key, no admin route gives data. Every route under
/admin is enumerated from the app, so a route added later is covered without editing this test.
The admin page's shell and assets answer anyone, but with the packaged bytes only.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastapi.routing
import pytest
from fastapi.routing import APIRoute

from gateway.api import admin_ui
from tests.conftest import MASTER_KEY, InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

TEAM = "team-zq7"  # a name that cannot occur in the page's code by chance
WRONG_KEYS: list[dict[str, str]] = [
    {},
    {"authorization": "Bearer wrong-master-key"},
    {"authorization": f"Bearer {MASTER_KEY}x"},
    {"authorization": f"Basic {MASTER_KEY}"},
    {"x-api-key": "wrong-master-key"},
]
QUERY = {"start": "2026-01-01", "end": "2026-12-31", "team": TEAM}


@pytest.fixture
async def seeded(store_url: str, upstream: RunningUpstream) -> AsyncIterator[Any]:
    config = gateway_config(store_url, upstream, ledger={"savings_reference_model": "direct"})
    async with in_process_gateway(config) as gw:
        await gw.admin.team(TEAM)
        key = await gw.admin.key(TEAM)
        budget = {"team": TEAM, "period": "monthly", "limit_usd": "3.25"}
        response = await gw.client.put("/admin/budgets", json=budget, headers=gw.admin.headers)
        assert response.status_code == 200, response.text
        body = {"model": "direct", "messages": [{"role": "user", "content": "Hi"}]}
        team_auth = {"authorization": f"Bearer {key['key']}"}
        answer = await gw.client.post("/v1/chat/completions", json=body, headers=team_auth)
        assert answer.status_code == 200, answer.text
        await gw.admin.spend(answer.headers["x-request-id"])
        yield gw, key


@dataclass(frozen=True)
class AdminRoute:
    path: str
    methods: frozenset[str]
    module: str


def admin_routes(app: Any) -> list[AdminRoute]:
    """Every route of the app under /admin, included routers flattened."""
    # FastAPI >= 0.16x keeps included routers as nodes; iter_route_contexts flattens them.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    found: list[AdminRoute] = []
    for item in flatten(app.routes) if flatten else app.routes:
        route = getattr(item, "original_route", item)
        path = getattr(item, "path", None)
        if isinstance(route, APIRoute) and path and path.startswith("/admin"):
            found.append(AdminRoute(path, frozenset(route.methods), route.endpoint.__module__))
    assert len(found) > 15, found  # the enumeration itself works
    return found


def is_page(route: AdminRoute) -> bool:
    return route.module == admin_ui.__name__


def packaged_assets() -> dict[str, bytes]:
    folder = resources.files("gateway") / "admin_ui" / "assets"
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith((".js", ".css"))}


def urls(route: AdminRoute, key: dict[str, Any]) -> list[str]:
    """The route's path with its parameters filled with things that exist."""
    if route.path == "/admin/ui/assets/{name}":
        return [f"/admin/ui/assets/{name}" for name in packaged_assets()]
    values = {
        "name": TEAM,
        "team": TEAM,
        "key_id": key["id"],
        "id_": f"team:{TEAM}:monthly",
    }
    missing = set(re.findall(r"{(\w+)}", route.path)) - values.keys()
    assert not missing, f"{route.path}: teach this test a value for {missing}"
    return [route.path.format(**values)]


def leaks(text: str, key: dict[str, Any]) -> list[str]:
    return [s for s in (TEAM, key["id"], key["key_hint"], "3.25") if s in text]


async def test_every_admin_api_route_refuses_a_missing_or_wrong_master_key(
    seeded: tuple[InProcessGateway, dict[str, Any]],
) -> None:
    gw, key = seeded
    checked = 0
    for route in admin_routes(gw.app):
        if is_page(route):
            continue
        for method in sorted(route.methods):
            for url in urls(route, key):
                for headers in WRONG_KEYS:
                    response = await gw.client.request(
                        method, url, params=QUERY, json={"team": TEAM}, headers=headers
                    )
                    where = f"{method} {url} with {headers}"
                    assert response.status_code == 401, f"{where}: {response.text}"
                    assert response.json()["error"]["type"] == "authentication_error", where
                    assert not leaks(response.text, key), where
                    checked += 1
    assert checked >= 5 * 15


async def test_the_same_admin_reads_answer_with_the_master_key(
    seeded: tuple[InProcessGateway, dict[str, Any]],
) -> None:
    # The refusals above are the key's doing: with it, each read answers and shows the data.
    gw, key = seeded
    for route in admin_routes(gw.app):
        if is_page(route) or "GET" not in route.methods:
            continue
        for url in urls(route, key):
            response = await gw.client.get(url, params=QUERY, headers=gw.admin.headers)
            assert response.status_code == 200, f"GET {url}: {response.text}"


async def test_the_admin_page_and_its_assets_hold_no_data_whoever_asks(
    seeded: tuple[InProcessGateway, dict[str, Any]],
) -> None:
    gw, key = seeded
    index = (resources.files("gateway") / "admin_ui" / "index.html").read_bytes()
    expected = {"/admin/ui": index}
    expected |= {f"/admin/ui/assets/{n}": body for n, body in packaged_assets().items()}
    page_routes = [r for r in admin_routes(gw.app) if is_page(r)]
    assert {u for r in page_routes for u in urls(r, key)} == set(expected)
    for url, body in expected.items():
        for headers in [*WRONG_KEYS, gw.admin.headers]:
            response = await gw.client.get(url, headers=headers)
            assert response.status_code == 200, url
            assert response.content == body, url  # the packaged file, the same for anyone
            assert not leaks(response.text, key), url
            assert "script-src 'self'" in response.headers["content-security-policy"]


async def test_the_asset_route_serves_only_packaged_files(
    seeded: tuple[InProcessGateway, dict[str, Any]],
) -> None:
    gw, _ = seeded
    for name in ["../app.py", "..%2Fapp.py", "index.html", "chart.js.LICENSE.md", "x.js"]:
        response = await gw.client.get(f"/admin/ui/assets/{name}")
        assert response.status_code == 404, name
