"""Local models' cost: GPU-hours over measured throughput, explicit prices, and no silent zero."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.store import SpendRecord
from policies import Catalog, GpuCost, ModelSpec, ThroughputWindow
from policies.local_cost import busy_seconds
from tests.conftest import MASTER_KEY, InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream

GPU_HOUR = "3.60"  # 0.001 USD per GPU-second: the arithmetic below stays readable
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


def gpu_cost(**extra: Any) -> dict[str, Any]:
    return {"usd_per_gpu_hour": GPU_HOUR, "gpus": 2, "expected_tokens_per_s": "1000", **extra}


def local_models(upstream: RunningUpstream, **gpu: Any) -> list[dict[str, Any]]:
    def local(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "model": "openai/fake-ok",
            "api_base": upstream.base_url,
            "transport": "openai_http",
            "local": True,
            **extra,
        }

    return [
        local("gpu-local", tier="light", gpu_cost=gpu_cost(**gpu)),
        local("priced-local", price={"input_per_mtok": "0.05", "output_per_mtok": "0.1"}),
        local("unpriced-local"),
    ]


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "model": "openai/m", **fields})


# --- the arithmetic ---------------------------------------------------------------------------


def test_busy_time_counts_overlapping_requests_once() -> None:
    assert busy_seconds([(0.0, 2.0), (1.0, 3.0), (10.0, 11.0), (10.5, 10.7)]) == Decimal(4)


def test_expected_throughput_prices_until_the_window_has_enough_busy_time() -> None:
    window = ThroughputWindow(GpuCost.model_validate(gpu_cost(min_measured_s=5)))
    window.observe(0.0, 2.0, 1000)  # 2 busy s: not enough measured
    # expected: 1000 tokens/s over 2 GPUs = 500 per GPU-second; 0.001 USD / 500 per token
    assert window.usd_per_token(2.0) == Decimal("0.000002")
    window.observe(2.0, 6.0, 3000)  # 6 busy s x 2 GPUs, 4000 tokens: 333.3 per GPU-second
    assert window.usd_per_token(6.0) == Decimal("0.001") / (Decimal(4000) / Decimal(12))


def test_requests_older_than_the_window_leave_it() -> None:
    window = ThroughputWindow(GpuCost.model_validate(gpu_cost(window_s=60, min_measured_s=0)))
    window.observe(0.0, 1.0, 100)
    window.observe(100.0, 101.0, 400)
    assert window.measured(101.0).tokens == 400


# --- configuration ----------------------------------------------------------------------------


def test_a_local_model_without_any_price_is_unpriced_not_free() -> None:
    catalog = Catalog.build([spec(local=True)], lambda _: None)
    assert catalog.get("m").pricing == "unpriced"  # type: ignore[union-attr]
    assert [d.name for d in catalog.unpriced] == ["m"]


def test_a_gpu_priced_model_starts_at_its_expected_price() -> None:
    catalog = Catalog.build([spec(local=True, gpu_cost=gpu_cost())], lambda _: None)
    deployment = catalog.get("m")
    assert deployment is not None and deployment.pricing == "gpu_hour"
    assert deployment.price.output == deployment.price.input == Decimal("0.000002")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gpu_cost": gpu_cost()}, "set local: true"),
        (
            {
                "local": True,
                "gpu_cost": gpu_cost(),
                "price": {"input_per_mtok": 1, "output_per_mtok": 1},
            },
            "either price or gpu_cost",
        ),
        ({"local": True, "gpu_cost": gpu_cost(gpus=0)}, "greater than or equal to 1"),
    ],
)
def test_gpu_cost_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


# --- the gateway ------------------------------------------------------------------------------


@pytest.fixture
async def gateway(store_url: str, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    config = gateway_config(store_url, upstream, models=local_models(upstream))
    async with in_process_gateway(config) as gw:
        yield gw


async def test_an_unpriced_local_model_is_warned_of_at_start(
    upstream: RunningUpstream, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(
        f"sqlite:///{tmp_path / 'r.db'}", upstream, models=local_models(upstream)
    )
    with caplog.at_level(logging.WARNING, logger="rightsize"):
        async with in_process_gateway(config):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'unpriced-local' has no price" in w for w in warnings), warnings
    assert not any("'gpu-local'" in w or "'priced-local'" in w for w in warnings)


async def test_a_gpu_priced_request_costs_its_busy_gpu_seconds_once_measured(
    upstream: RunningUpstream, tmp_path: Any
) -> None:
    models = local_models(upstream, min_measured_s=0)
    config = gateway_config(f"sqlite:///{tmp_path / 'r.db'}", upstream, models=models)
    async with in_process_gateway(config) as gw:
        response = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "gpu-local", "messages": [{"role": "user", "content": "hi"}]},
            headers=gw.auth,
        )
        assert response.status_code == 200, response.text
        row = await gw.admin.spend(response.headers["x-request-id"])
    # One request alone in its window: it bought its upstream time on both GPUs.
    busy = Decimal(str(row["upstream_ms"])) / 1000
    assert row["prompt_tokens"] + row["completion_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
    # (busy time is measured to the microsecond: 1 us on 2 GPUs is 2e-9 USD)
    expected = busy * 2 * Decimal("0.001")
    assert Decimal(row["cost_usd"]) == pytest.approx(expected, abs=Decimal("2e-9"))
    assert Decimal(row["cost_usd"]) > 0


async def test_before_measurement_a_request_costs_its_tokens_at_the_expected_price(
    gateway: InProcessGateway,
) -> None:
    response = await gateway.client.post(
        "/v1/chat/completions",
        json={"model": "gpu-local", "messages": [{"role": "user", "content": "hi"}]},
        headers=gateway.auth,
    )
    row = await gateway.admin.spend(response.headers["x-request-id"])
    tokens = PROMPT_TOKENS + COMPLETION_TOKENS
    assert Decimal(row["cost_usd"]) == tokens * Decimal("0.000002")


# --- the reports, by hand from the rows ---------------------------------------------------------


def row(deployment: str, team: str, at: datetime, upstream_s: float, tokens: int) -> SpendRecord:
    return SpendRecord(
        request_id=f"r-{deployment}-{at.timestamp()}",
        created_at=at,
        status=200,
        team=team,
        deployment=deployment,
        prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2,
        cost_usd=Decimal("0.000001") * tokens,  # what request time recorded: not the report's
        upstream_ms=upstream_s * 1000,
    )


async def test_cost_report_prices_gpu_hours_over_the_periods_busy_time(
    gateway: InProcessGateway,
) -> None:
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    rows = [
        row("gpu-local", "search", noon, 2.0, 1000),  # [0, 2)
        row("gpu-local", "ads", noon + timedelta(seconds=1), 2.0, 500),  # [1, 3): overlaps
        row("gpu-local", "search", noon + timedelta(seconds=10), 1.0, 300),  # [10, 11)
        row("unpriced-local", "search", noon, 1.0, 700),
        row("priced-local", "search", noon, 1.0, 400),
    ]
    # No GPU work: a prompt-cache hit and a request refused before the call.
    hit = row("gpu-local", "search", noon + timedelta(seconds=20), 0.0, 999)
    hit.cache_hit = True
    refused = row("gpu-local", "search", noon + timedelta(seconds=30), 0.0, 0)
    refused.status, refused.upstream_ms = 429, None
    rows += [hit, refused]
    await gateway.app.state.gateway.store.insert_spend(rows)  # type: ignore[union-attr]
    day = noon.date().isoformat()
    params = {"start": day, "end": day, "group_by": "model"}

    report = await _report(gateway, "costs", params)
    local = {r["deployment"]: r for r in report["local"]}

    # By hand: busy [0,3) and [10,11) = 4 s, on 2 GPUs = 8 GPU-seconds at 0.001 USD each;
    # 1800 tokens / 8 GPU-s = 225 tokens per GPU-second.
    gpu = local["gpu-local"]
    assert (gpu["pricing"], gpu["requests"], gpu["tokens"]) == ("gpu_hour", 3, 1800)
    assert (gpu["busy_gpu_seconds"], gpu["tokens_per_gpu_s"]) == ("8", "225.000")
    assert Decimal(gpu["cost_usd"]) == Decimal("0.008")
    assert Decimal(gpu["recorded_cost_usd"]) == Decimal("0.0018")
    assert "3.6 USD per GPU-hour x 2 GPU(s)" in gpu["derivation"]

    unpriced = local["unpriced-local"]
    assert (unpriced["pricing"], unpriced["cost_usd"], unpriced["tokens"]) == (
        "unpriced",
        None,
        700,
    )
    assert "unpriced" in unpriced["derivation"]

    priced = local["priced-local"]
    assert priced["pricing"] == "price" and priced["cost_usd"] == priced["recorded_cost_usd"]

    # One team's share: its tokens at the period's rate, 1300 x 0.001 / 225.
    mine = await _report(gateway, "costs", {**params, "team": "search"})
    share = {r["deployment"]: r for r in mine["local"]}["gpu-local"]
    assert Decimal(share["cost_usd"]) == (Decimal("1300") * Decimal("0.001") / 225).quantize(
        Decimal("1e-12")
    )


async def test_savings_report_lists_local_spend_and_the_unpriced(
    gateway: InProcessGateway,
) -> None:
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    await gateway.app.state.gateway.store.insert_spend(  # type: ignore[union-attr]
        [row("unpriced-local", "search", noon, 1.0, 700)]
    )
    day = noon.date().isoformat()
    params = {"start": day, "end": day, "reference": "priced-local"}
    report = await _report(gateway, "savings", params)
    local = {r["deployment"]: r for r in report["local"]}
    assert local["unpriced-local"]["cost_usd"] is None
    assert local["unpriced-local"]["requests"] == 1
    assert "unpriced" in report["method"]


async def _report(gateway: InProcessGateway, name: str, params: dict[str, str]) -> dict[str, Any]:
    response = await gateway.client.get(f"/admin/reports/{name}", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return dict(response.json())


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 500), st.integers(0, 3000)),
        max_size=60,
    ),
    st.integers(0, 12_000),
)
def test_the_windows_running_busy_time_equals_the_union_of_its_requests(
    requests: list[tuple[int, int, int]], now_ms: int
) -> None:
    # Milliseconds as floats, in any arrival order; the window keeps what ended after now - 3 s.
    window = ThroughputWindow(GpuCost.model_validate(gpu_cost(window_s=3, min_measured_s=0)))
    served = [(start / 1000, (start + length) / 1000, n) for start, length, n in requests]
    for start, end, n in served:
        window.observe(start, end, n)
    measured = window.measured(now_ms / 1000)
    kept = [(s, e) for s, e, _ in served if e >= now_ms / 1000 - 3]
    expected = busy_seconds(_whole_groups(kept, [(s, e) for s, e, _ in served]))
    assert abs(measured.busy_s - expected) <= Decimal("0.000002")


def _whole_groups(
    kept: list[tuple[float, float]], every: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The merged groups of all requests that still hold a kept request: a group leaves the
    window as a whole once its last request has ended before the cutoff."""
    groups: list[list[float]] = []
    for s, e in sorted(every):
        if groups and s <= groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], e)
        else:
            groups.append([s, e])
    return [(s, e) for s, e in groups if any(s <= ks and ke <= e for ks, ke in kept)]
