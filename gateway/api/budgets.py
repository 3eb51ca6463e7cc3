"""Admin API for budgets, usage and reports (master key), mounted under /admin."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.admin import AdminGateway, NoSuch, TeamArchived
from gateway.errors import InvalidRequest
from gateway.http import json_response
from gateway.state import Gateway
from ledger.budgets import Budget, budget_id
from ledger.ledger import usage_json
from ledger.periods import Period
from ledger.reports import GROUPINGS, cost_report, routing_report, savings_report, to_csv

router = APIRouter(prefix="/admin", tags=["budgets"])


class BudgetIn(BaseModel):
    """A budget for a team or for one key; at least one limit."""

    model_config = ConfigDict(extra="forbid")

    team: str | None = None
    key_id: str | None = None
    period: Period
    limit_usd: Decimal | None = Field(default=None, ge=0, decimal_places=12)
    limit_tokens: int | None = Field(default=None, ge=0)
    limit_requests: int | None = Field(default=None, ge=0)
    mode: Literal["hard", "soft"] = "hard"
    soft_at_percent: int | None = Field(default=None, ge=1, le=100)
    alert_percents: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_subject_some_limit(self) -> BudgetIn:
        if (self.team is None) == (self.key_id is None):
            raise ValueError("give exactly one of team or key_id")
        if self.limit_usd is None and self.limit_tokens is None and self.limit_requests is None:
            raise ValueError("give at least one of limit_usd, limit_tokens, limit_requests")
        if any(not 1 <= p <= 1000 for p in self.alert_percents):
            raise ValueError("alert_percents are percentages between 1 and 1000")
        return self

    def budget(self) -> Budget:
        return Budget(
            scope="team" if self.team is not None else "key",
            subject=self.team if self.team is not None else str(self.key_id),
            period=self.period,
            limit_usd=self.limit_usd,
            limit_tokens=self.limit_tokens,
            limit_requests=self.limit_requests,
            mode=self.mode,
            soft_at_percent=self.soft_at_percent,
            alert_percents=tuple(sorted(set(self.alert_percents))),
        )


@router.put("/budgets")
async def put_budget(body: BudgetIn, gateway: AdminGateway) -> Response:
    """Create or replace the budget of a team or key for one period."""
    budget = body.budget()
    if budget.scope == "team":
        if budget.subject not in {t.name for t in await gateway.store.list_teams()}:
            await _refuse_archived(gateway, budget.subject)
            raise NoSuch(f"team {budget.subject!r} does not exist", param="team")
    elif budget.subject not in {k.id for k in await gateway.store.list_keys()}:
        raise NoSuch(f"key {budget.subject!r} does not exist", param="key_id")
    await gateway.ledger.budgets.put(budget)
    gateway.ledger.forget_budgets()
    return json_response(budget_json(budget))


@router.get("/budgets")
async def list_budgets(
    gateway: AdminGateway, team: str | None = None, key_id: str | None = None
) -> Response:
    found = await gateway.ledger.budgets.find()
    if team is not None:
        keys = {k.id for k in await gateway.store.list_keys(team)}
        found = [b for b in found if (b.scope, b.subject) == ("team", team) or b.subject in keys]
    if key_id is not None:
        found = [b for b in found if (b.scope, b.subject) == ("key", key_id)]
    return json_response({"data": [budget_json(b) for b in found]})


@router.get("/budgets/{id_}")
async def get_budget(id_: str, gateway: AdminGateway) -> Response:
    budget = await gateway.ledger.budgets.get(id_)
    if budget is None:
        raise NoSuch(f"budget {id_!r} does not exist")
    return json_response(budget_json(budget))


@router.delete("/budgets/{id_}")
async def delete_budget(id_: str, gateway: AdminGateway) -> Response:
    budget = await gateway.ledger.budgets.get(id_)
    if budget is not None and budget.scope == "team":
        await _refuse_archived(gateway, budget.subject)
    if not await gateway.ledger.budgets.delete(id_):
        raise NoSuch(f"budget {id_!r} does not exist")
    gateway.ledger.forget_budgets()
    return json_response({"id": id_, "deleted": True})


@router.get("/teams/{team}/usage")
async def team_usage(team: str, gateway: AdminGateway) -> Response:
    """Spent, reserved and remaining in the current window of each budget of a team and its keys."""
    return json_response({"team": team, "data": await team_usage_rows(gateway, team)})


async def _refuse_archived(gateway: Gateway, team: str) -> None:
    """A deleted team's budgets are the record of what it was allowed: they stay as they are."""
    archived = await gateway.store.archived_team(team)
    if archived is not None:
        raise TeamArchived(
            f"team {team!r} is the archive of team {archived.name!r}, deleted "
            f"{archived.deleted_at.isoformat()}: its budgets are read-only",
            param="team",
        )


async def team_usage_rows(gateway: Gateway, team: str) -> list[dict[str, Any]]:
    if team not in {t.name for t in await gateway.store.list_teams()}:
        if await gateway.store.archived_team(team) is not None:
            raise NoSuch(
                f"team {team!r} was deleted: it has no current windows; its spend is in "
                f"/admin/reports/costs?team={team}"
            )
        raise NoSuch(f"team {team!r} does not exist")
    keys = {k.id for k in await gateway.store.list_keys(team)}
    budgets = [
        b
        for b in await gateway.ledger.budgets.find()
        if (b.scope, b.subject) == ("team", team) or (b.scope == "key" and b.subject in keys)
    ]
    return [usage_json(u, team=team) for u in await gateway.ledger.usage(budgets)]


ReportFormat = Literal["json", "csv"]


@router.get("/reports/costs")
async def costs(
    gateway: AdminGateway,
    start: date,
    end: date,
    group_by: Annotated[str, Query()] = "team",
    team: str | None = None,
    format: ReportFormat = "json",
) -> Response:
    """Spend-log totals per group over [start, end] (calendar days in the ledger's zone)."""
    groups = _groups(group_by)
    report = await cost_report(
        gateway.store.engine,
        gateway.ledger.zone,
        start,
        end,
        groups,
        team=team,
        local=[d for d in gateway.catalog.deployments if d.local],
    )
    return _report_response(report, format, "costs")


@router.get("/reports/savings")
async def savings(
    gateway: AdminGateway,
    start: date,
    end: date,
    team: str | None = None,
    reference: str | None = None,
    format: ReportFormat = "json",
) -> Response:
    """Actual cost against every request priced at a reference model, per team and day."""
    name = reference or gateway.settings.ledger.savings_reference_model
    deployment = gateway.catalog.get(name) if name else None
    if deployment is None:
        raise InvalidRequest(
            "Name a configured model as `reference` (or set ledger.savings_reference_model)",
            param="reference",
        )
    report = await savings_report(
        gateway.store.engine,
        gateway.ledger.zone,
        start,
        end,
        deployment,
        team=team,
        local=[d for d in gateway.catalog.deployments if d.local],
        catalog=gateway.catalog.deployments,
    )
    return _report_response(report, format, "savings")


@router.get("/reports/routing")
async def routing(
    gateway: AdminGateway,
    start: date,
    end: date,
    team: str | None = None,
    format: ReportFormat = "json",
) -> Response:
    """Requests, cache hits and cost per tier, the demand histogram, judged quality per pair
    of tiers at the thresholds in force, and token-budget coverage."""
    report = await routing_report(
        gateway.store.engine,
        gateway.ledger.zone,
        start,
        end,
        team=team,
        thresholds={t.name: t.min_demand for t in gateway.policy.spec.tiers},
    )
    return _report_response(report, format, "routing")


def _groups(group_by: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPINGS]
    if unknown or not groups:
        raise InvalidRequest(
            f"group_by takes a comma-separated list of {', '.join(GROUPINGS)}", param="group_by"
        )
    return groups


def _report_response(report: dict[str, Any], format: str, name: str) -> Response:
    if format == "csv":
        return Response(
            to_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}.csv"'},
        )
    return json_response(report)


def budget_json(budget: Budget) -> dict[str, Any]:
    return {
        "id": budget.id,
        "scope": budget.scope,
        "team": budget.subject if budget.scope == "team" else None,
        "key_id": budget.subject if budget.scope == "key" else None,
        "period": budget.period.value,
        "limit_usd": None if budget.limit_usd is None else _money(budget.limit_usd),
        "limit_tokens": budget.limit_tokens,
        "limit_requests": budget.limit_requests,
        "mode": budget.mode,
        "soft_at_percent": budget.soft_at_percent,
        "alert_percents": list(budget.alert_percents),
    }


def _money(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


__all__ = ["budget_id", "router"]
