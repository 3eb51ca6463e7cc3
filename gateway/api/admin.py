"""Admin API under /admin (master key): teams, virtual keys, the spend log."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from gateway.auth import bearer_token, check_master_key
from gateway.errors import GatewayError, InvalidRequest
from gateway.http import json_response
from gateway.reload import Snapshots
from gateway.state import Gateway, gateway_of
from gateway.store import ApiKey, Conflict, Missing, SpendRecord, Store, Team
from gateway.store.store import ArchivedTeam
from ledger.ledger import Ledger
from policies import LatencyClass

if TYPE_CHECKING:
    from gateway.workers import SupervisorLink

log = logging.getLogger("rightsize.admin")
TEAM_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Exists(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "already_exists"


class NoSuch(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class TeamArchived(GatewayError):
    """409: a deleted team's id; its budgets and spend are read-only history."""

    status = 409
    type = "invalid_request_error"
    code = "team_archived"


class CacheUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "cache_unavailable"


_LATENCY_DOC = (
    "Default latency class of requests without an x-rightsize-latency header: "
    "interactive, batch or background; null: the key's team's, then the policy's."
)


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TEAM_NAME)
    latency_class: LatencyClass | None = Field(default=None, description=_LATENCY_DOC)


class LatencyClassIn(BaseModel):
    """PATCH body of a team or key: its default latency class (null clears it)."""

    model_config = ConfigDict(extra="forbid")

    latency_class: LatencyClass | None = Field(description=_LATENCY_DOC)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team: str
    name: str | None = Field(default=None, max_length=128)
    allowed_models: list[str] | None = Field(
        default=None, description="Names the key may send as `model`: models, tiers or auto."
    )
    latency_class: LatencyClass | None = Field(default=None, description=_LATENCY_DOC)


def _gateway(request: Request) -> Gateway:
    gateway = gateway_of(request)
    check_master_key(
        gateway.master_key, bearer_token(request.headers), gateway.settings.auth.master_key_env
    )
    return gateway


AdminGateway = Annotated[Gateway, Depends(_gateway)]
router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/teams", status_code=201)
async def create_team(body: TeamIn, gateway: AdminGateway) -> Response:
    try:
        team = await open_team(gateway.store, gateway.ledger, body.name, body.latency_class)
    except Conflict as exc:
        raise Exists(str(exc), param="name") from None
    return json_response(team_json(team), status=201)


@router.patch("/teams/{name}")
async def update_team(name: str, body: LatencyClassIn, gateway: AdminGateway) -> Response:
    """Set the team's default latency class."""
    try:
        team = await gateway.store.set_team_latency_class(name, body.latency_class)
    except Missing as exc:
        raise NoSuch(str(exc)) from None
    gateway.keys.forget(team=name)
    return json_response(team_json(team))


@router.get("/teams")
async def list_teams(gateway: AdminGateway, archived: bool = False) -> Response:
    """The teams; `?archived=true`: the deleted ones instead, by id (their spend and budgets)."""
    if archived:
        found = await gateway.store.archived_teams()
        return json_response({"data": [archived_team_json(t) for t in found]})
    return json_response({"data": [team_json(t) for t in await gateway.store.list_teams()]})


@router.delete("/teams/{name}")
async def delete_team(name: str, gateway: AdminGateway) -> Response:
    """Delete a team: its spend rows and budgets are archived under a new id, its keys go."""
    # Revoking first drops the keys from this process's key cache at once: a request with one
    # of them must not be charged to a new team of the same name (other workers: within 5 s).
    for key in await gateway.store.list_keys(name):
        if key.revoked_at is None:
            await gateway.keys.revoke(key.id)
    try:
        archived = await archive_team(gateway.store, gateway.ledger, name)
    except Missing as exc:
        raise NoSuch(str(exc)) from None
    # A team created again under the same name must not inherit the old team's answers.
    await _drop_cached_answers(gateway, name)
    return json_response({"name": name, "deleted": True, "archived_id": archived.id})


async def open_team(
    store: Store, ledger: Ledger, name: str, latency_class: str | None = None
) -> Team:
    """Create a team that starts clean, whatever a deleted team of that name left behind: spend
    rows logged after its deletion and leftover budgets go to its archive, counters its
    in-flight requests rebuilt after the deletion are dropped."""
    if name in {t.name for t in await store.list_teams()}:
        raise Conflict(f"team {name!r} already exists")
    await _forget_counters(ledger, name, "created")
    team = await store.create_team(
        name, relabel=[ledger.budgets.archive_team], latency_class=latency_class
    )
    ledger.forget_budgets()
    return team


async def archive_team(store: Store, ledger: Ledger, name: str) -> ArchivedTeam:
    """Delete a team, archiving its spend rows and budgets under its new id in one transaction,
    then drop its counters and this process's cached budgets."""
    archived = await store.delete_team(name, relabel=[ledger.budgets.archive_team])
    ledger.forget_budgets()
    await _forget_counters(ledger, name, "archived")
    return archived


async def _forget_counters(ledger: Ledger, name: str, done: str) -> None:
    """Drop the counters of the team's name, best effort: deleting and creating a team both do
    it, so the counters of an old team survive only when both ran while the counters were
    unreachable (Redis down), and each such miss is logged. The admin API keeps working in an
    outage of the counters."""
    try:
        await ledger.counters.forget(_team_counters(name))
    except Exception as exc:
        log.warning("team %s %s, but its ledger counters could not be dropped: %r", name, done, exc)


def _team_counters(name: str) -> str:
    # The prefix of every counter of the team's budgets (Budget.counter); a key's counters are
    # named by its id, which is never reused.
    return f"team:{name}:"


@router.post("/keys", status_code=201)
async def create_key(body: KeyIn, gateway: AdminGateway) -> Response:
    if body.allowed_models is not None:
        known = set(gateway.policy.names())
        unknown = [m for m in body.allowed_models if m not in known]
        if unknown:
            raise InvalidRequest(
                f"Unknown models in allowed_models: {', '.join(unknown)}", param="allowed_models"
            )
    try:
        issued = await gateway.keys.issue(
            body.team, body.name, body.allowed_models, body.latency_class
        )
    except Missing as exc:
        raise NoSuch(str(exc), param="team") from None
    return json_response({**key_json(issued.key), "key": issued.secret}, status=201)


@router.get("/keys")
async def list_keys(gateway: AdminGateway, team: str | None = None) -> Response:
    return json_response({"data": [key_json(k) for k in await gateway.store.list_keys(team)]})


@router.patch("/keys/{key_id}")
async def update_key(key_id: str, body: LatencyClassIn, gateway: AdminGateway) -> Response:
    """Set the key's default latency class."""
    try:
        key = await gateway.store.set_key_latency_class(key_id, body.latency_class)
    except Missing as exc:
        raise NoSuch(str(exc)) from None
    gateway.keys.forget(key_id=key_id)
    return json_response(key_json(key))


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, gateway: AdminGateway) -> Response:
    try:
        key = await gateway.keys.revoke(key_id)
    except Missing as exc:
        raise NoSuch(str(exc)) from None
    return json_response(key_json(key))


@router.get("/spend")
async def spend(
    gateway: AdminGateway,
    request_id: str | None = None,
    team: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
) -> Response:
    rows = await gateway.store.spend(request_id=request_id, team=team, limit=min(limit, 1000))
    return json_response({"data": [spend_json(r) for r in rows]})


# Local engines (local_backend/)


@router.get("/local-engines")
async def local_engines(gateway: AdminGateway) -> Response:
    """Each local engine replica as this process's probes last saw it (empty: no engines)."""
    found = gateway.local.report() if gateway.local is not None else []
    return json_response(
        {
            "data": [
                {
                    "deployment": r.deployment,
                    "replica": str(URL(r.replica).with_user(None)),
                    "healthy": r.healthy,
                    "spilled": r.spilled,
                    "waiting": r.waiting,
                    "running": r.running,
                    "kv_cache_usage": r.kv_usage,
                    "reading_age_s": None if r.age_s is None else round(r.age_s, 3),
                    "in_flight": r.in_flight,
                }
                for r in found
            ]
        }
    )


# Prompt cache (gateway/cache)


@router.get("/cache")
async def cache_stats(gateway: AdminGateway) -> Response:
    return json_response(gateway.cache.stats())


@router.delete("/cache/teams/{team}")
async def invalidate_team_cache(team: str, gateway: AdminGateway) -> Response:
    """Drop every cached answer of a team (exact store and semantic index)."""
    try:
        deleted = await gateway.cache.invalidate_team(team)
    except Exception as exc:
        raise CacheUnavailable(f"The cache store could not be cleared: {exc!r}") from None
    return json_response({"team": team, "deleted": deleted})


# Hot reload (gateway/reload.py)


@router.post("/reload")
async def reload(request: Request, _: AdminGateway) -> Response:
    """Re-read the configuration file and the router artifact; 400 with the reason (and the
    running configuration untouched) when they do not load. Under `serve --workers N`, the
    other workers are then asked to reload too (through the supervisor: gateway/workers.py)."""
    snapshots: Snapshots = request.app.state.snapshots
    result = await snapshots.reload("POST /admin/reload")
    supervisor: SupervisorLink | None = request.app.state.supervisor
    asked = supervisor.ask_reload() if supervisor is not None else 0
    if asked:
        log.info("POST /admin/reload: the supervisor asked to reload %d other worker(s)", asked)
    return json_response({**result.body(), "other_workers_asked": asked})


async def _drop_cached_answers(gateway: Gateway, team: str) -> None:
    try:
        await gateway.cache.invalidate_team(team)
    except Exception:
        log.warning("team %s deleted, but its cached answers could not be dropped", team)


def team_json(team: Team) -> dict[str, Any]:
    return {
        "name": team.name,
        "created_at": team.created_at.isoformat(),
        "latency_class": team.latency_class,
    }


def archived_team_json(team: ArchivedTeam) -> dict[str, Any]:
    return {
        "id": team.id,
        "name": team.name,
        "created_at": team.created_at.isoformat(),
        "deleted_at": team.deleted_at.isoformat(),
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "team": key.team,
        "name": key.name,
        "key_hint": key.key_hint,
        "allowed_models": list(key.allowed_models) if key.allowed_models is not None else None,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "latency_class": key.latency_class,
    }


def spend_json(record: SpendRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "created_at": record.created_at.isoformat(),
        "team": record.team,
        "key_id": record.key_id,
        "requested_model": record.requested_model,
        "deployment": record.deployment,
        "tier": record.tier,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "usage_estimated": record.usage_estimated,
        "cost_usd": str(record.cost_usd),
        "upstream_ms": record.upstream_ms,
        "overhead_ms": record.overhead_ms,
        "stream": record.stream,
        "cache_hit": record.cache_hit,
        "saved_usd": str(record.saved_usd),
        "status": record.status,
        "error_type": record.error_type,
        "route_reason": record.route_reason,
        "attempts": record.attempts,
        "reasoning_demand": record.reasoning_demand,
        "token_budget_p50": record.token_budget_p50,
        "token_budget_p90": record.token_budget_p90,
        "category": record.category,
        "router_artifact": record.router_artifact,
        "config_hash": record.config_hash,
        "api": record.api,
        "cache_creation_tokens": record.cache_creation_tokens,
        "latency_class": record.latency_class,
    }
