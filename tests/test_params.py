"""Parameters fitted to the routed model: dropped or translated for `auto` and tiers, reported in
a header and the spend log; a pinned model's unsupported parameter is a 400 naming both."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.params import ParamTable, derived_params, derived_params_apart
from policies import Capabilities, Catalog, Deployment, ModelInfo, ModelSpec
from policies.params import fit_params
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import ANSWER, RunningUpstream

TRANSPORTS = pytest.mark.parametrize("transport", ["openai_http", "litellm"])


def config(store_url: str, upstream: RunningUpstream, transport: str) -> dict[str, Any]:
    """One tier, so that `auto` lands on gpt-4o-mini: a model without reasoning_effort."""

    def model(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "model": model,
            "api_base": upstream.base_url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": transport,
            **extra,
        }

    return gateway_config(
        store_url,
        upstream,
        models=[
            model("mini", "openai/gpt-4o-mini", tier="light"),
            model("o-mini", "openai/o3-mini"),
            # Told it takes reasoning_effort, which litellm (rightly) refuses for this model.
            model("mini-told", "openai/gpt-4o-mini", capabilities={"params": ["reasoning_effort"]}),
        ],
        policy={"tiers": [{"name": "light", "deployments": ["mini"]}]},
    )


@pytest.fixture
async def gw(
    store_url: str, upstream: RunningUpstream, transport: str
) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(config(store_url, upstream, transport)) as running:
        yield running


def sdk(gw: InProcessGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client, max_retries=0
    )


def prompt() -> tuple[str, list[dict[str, Any]]]:
    """A prompt of its own (no cache hit from another test), and the marker that finds it."""
    marker = f"say hello {uuid.uuid4().hex}"
    return marker, [{"role": "user", "content": marker}]


def received(upstream: RunningUpstream, marker: str) -> list[dict[str, Any]]:
    """The bodies the fake upstream received whose messages mention `marker`."""
    return [
        dict(r["body"])
        for r in upstream.fake.requests
        if marker in orjson.dumps(r["body"].get("messages", [])).decode()  # embeddings: none
    ]


@TRANSPORTS
async def test_auto_with_reasoning_effort_on_a_model_without_it_succeeds_and_reports_the_drop(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    marker, messages = prompt()
    raw = await sdk(gw).chat.completions.with_raw_response.create(
        model="auto", messages=messages, reasoning_effort="high"
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert raw.headers["x-rightsize-model"] == "mini"
    assert raw.headers["x-rightsize-dropped-params"] == "reasoning_effort"
    [body] = received(upstream, marker)
    assert "reasoning_effort" not in body
    row = await gw.admin.spend(raw.headers["x-request-id"])
    assert "dropped reasoning_effort (not taken by 'mini')" in row["route_reason"]


@TRANSPORTS
async def test_a_tier_request_streamed_drops_verbosity_and_says_so(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    marker, messages = prompt()
    raw = await sdk(gw).chat.completions.with_raw_response.create(
        model="light", messages=messages, verbosity="low", stream=True
    )
    assert raw.headers["x-rightsize-dropped-params"] == "verbosity"
    text = [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
    assert "".join(text) == ANSWER
    [body] = received(upstream, marker)
    assert "verbosity" not in body


@TRANSPORTS
async def test_a_pinned_model_refuses_a_parameter_it_does_not_take_naming_both(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    marker, messages = prompt()
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(gw).chat.completions.create(
            model="mini", messages=messages, reasoning_effort="high"
        )
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "reasoning_effort"
    assert "'mini'" in error["message"] and "'reasoning_effort'" in error["message"]
    assert "drop_params" not in error["message"]
    assert received(upstream, marker) == []


async def test_max_tokens_reaches_a_direct_o_series_model_as_max_completion_tokens(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(config(store_url, upstream, "openai_http")) as gw:
        marker, messages = prompt()
        raw = await sdk(gw).chat.completions.with_raw_response.create(
            model="o-mini", messages=messages, max_tokens=64
        )
    assert raw.headers["x-rightsize-translated-params"] == "max_tokens=max_completion_tokens"
    [body] = received(upstream, marker)
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


@pytest.mark.parametrize("transport", ["litellm"])
async def test_litellms_drop_params_advice_never_reaches_the_client(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    marker, messages = prompt()
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(gw).chat.completions.create(
            model="mini-told", messages=messages, reasoning_effort="low"
        )
    message = refused.value.body["message"]  # type: ignore[index]
    assert "'mini-told'" in message and "reasoning_effort" in message
    assert "drop_params" not in message and "litellm" not in message
    assert received(upstream, marker) == []


def test_reasoning_effort_becomes_an_anthropic_thinking_budget_where_only_thinking_is_taken() -> (
    None
):
    fitted = fit_params({"reasoning_effort": "medium"}, {"thinking", "max_tokens"})
    assert fitted.payload == {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    assert fitted.translated == (("reasoning_effort", "thinking"),)


def test_a_thinking_budget_becomes_the_reasoning_effort_that_covers_it() -> None:
    thinking = {"type": "enabled", "budget_tokens": 3000}
    fitted = fit_params({"thinking": thinking}, {"reasoning_effort"})
    assert fitted.payload == {"reasoning_effort": "high"}
    low = fit_params({"thinking": {"type": "enabled", "budget_tokens": 1024}}, {"reasoning_effort"})
    assert low.payload == {"reasoning_effort": "low"}


def test_disabled_thinking_on_a_model_without_it_is_dropped() -> None:
    fitted = fit_params({"thinking": {"type": "disabled"}}, {"reasoning_effort"})
    assert fitted.payload == {} and fitted.dropped == ("thinking",)


def test_max_completion_tokens_becomes_max_tokens_where_only_that_is_taken() -> None:
    fitted = fit_params({"max_completion_tokens": 50}, {"max_tokens"})
    assert fitted.payload == {"max_tokens": 50}


def test_the_clients_own_value_for_a_translation_target_wins() -> None:
    fitted = fit_params({"max_tokens": 10, "max_completion_tokens": 50}, {"max_completion_tokens"})
    assert fitted.payload == {"max_completion_tokens": 50} and fitted.dropped == ("max_tokens",)


def test_parameters_of_an_unknown_model_go_as_sent() -> None:
    payload = {"reasoning_effort": "low", "verbosity": "high"}
    assert fit_params(payload, None).payload == payload


def test_parameters_outside_the_fitted_set_are_never_touched() -> None:
    fitted = fit_params({"user": "u1", "metadata": {"a": "b"}}, set())
    assert fitted.payload == {"user": "u1", "metadata": {"a": "b"}} and not fitted.changed


def deployment(model: str, transport: str = "litellm", **caps: Any) -> Deployment:
    spec = ModelSpec(
        name="d", model=model, transport=transport, local=True, capabilities=Capabilities(**caps)
    )
    from gateway.llm import model_info

    [built] = Catalog.build([spec], lambda m: model_info(m) or ModelInfo(price=None)).deployments
    return built


def test_a_model_without_reasoning_does_not_take_reasoning_effort_though_litellm_lists_it() -> None:
    takes = derived_params(deployment("openai/gpt-4o"))
    assert takes is not None
    assert "reasoning_effort" not in takes and "temperature" in takes


def test_a_direct_o_series_model_takes_max_completion_tokens_only() -> None:
    direct = derived_params(deployment("openai/o3-mini", "openai_http"))
    through_litellm = derived_params(deployment("openai/o3-mini"))
    assert direct is not None and through_litellm is not None
    assert "max_tokens" not in direct and "max_completion_tokens" in direct
    assert "max_tokens" in through_litellm  # litellm renames it itself
    assert "reasoning_effort" in direct


def test_gpt_5_takes_verbosity_and_anthropic_takes_thinking() -> None:
    gpt5 = derived_params(deployment("openai/gpt-5-mini"))
    claude = derived_params(deployment("anthropic/claude-sonnet-4-5"))
    assert gpt5 is not None and "verbosity" in gpt5
    assert claude is not None and {"thinking", "reasoning_effort"} <= claude
    assert "verbosity" not in claude


def test_a_model_litellm_cannot_place_has_unknown_parameters() -> None:
    assert derived_params(deployment("no-such-provider-model")) is None


# A process whose deployments are all openai_http never imports litellm for them: a child does


MODELS = [
    ("openai/gpt-4o", "openai_http"),
    ("openai/o3-mini", "openai_http"),
    ("openai/gpt-5-mini", "litellm"),
    ("anthropic/claude-sonnet-4-5", "litellm"),
    ("no-such-provider-model", "openai_http"),
]


def named_deployments() -> list[Deployment]:
    return [
        dataclasses.replace(deployment(model, transport), name=f"d{i}")
        for i, (model, transport) in enumerate(MODELS)
    ]


async def test_the_child_process_derives_what_this_process_would() -> None:
    deployments = named_deployments()
    apart = await derived_params_apart(deployments)
    assert apart == {d.name: derived_params(d) for d in deployments}
    assert apart["d4"] is None and apart["d0"] is not None and "temperature" in apart["d0"]


def test_a_process_without_litellm_resolves_every_deployment_in_one_child_and_stays_without() -> (
    None
):
    script = textwrap.dedent(
        """
        import asyncio, sys
        import orjson
        from tests.test_params import named_deployments
        from gateway.params import ParamTable

        async def main():
            children = 0
            spawn = asyncio.create_subprocess_exec

            async def counted(*args, **kwargs):
                nonlocal children
                children += 1
                return await spawn(*args, **kwargs)

            asyncio.create_subprocess_exec = counted
            deployments = named_deployments()
            table = ParamTable(deployments=deployments)
            found = {d.name: await table.takes(d) for d in deployments}
            print(orjson.dumps({
                "litellm_imported": "litellm" in sys.modules,
                "children": children,
                "found": {n: None if t is None else sorted(t) for n, t in found.items()},
            }).decode())

        asyncio.run(main())
        """
    )
    # The test process itself has litellm loaded (other tests); a fresh interpreter has not.
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reply = orjson.loads(done.stdout.strip().splitlines()[-1])
    expected = {
        d.name: None if (t := derived_params(d)) is None else sorted(t) for d in named_deployments()
    }
    assert reply == {"litellm_imported": False, "children": 1, "found": expected}


async def test_a_failing_child_falls_back_to_deriving_here_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(deployments: object) -> dict[str, frozenset[str] | None]:
        raise RuntimeError("python -m gateway.params exited 1: boom")

    monkeypatch.setattr("gateway.params.derived_params_apart", broken)
    monkeypatch.setattr("gateway.params.litellm_loaded", lambda: False)
    deployments = named_deployments()
    table = ParamTable(deployments=deployments)
    assert await table.takes(deployments[0]) == derived_params(deployments[0])
    assert any("child process failed" in r.getMessage() for r in caplog.records)


async def test_a_pinned_model_drops_the_policys_own_effort_but_refuses_the_clients() -> None:
    table = ParamTable(derive=lambda _: frozenset({"temperature"}))
    pinned = deployment("openai/gpt-4o")
    body = {"reasoning_effort": "low", "temperature": 0.1}
    fitted = await table.fit(pinned, body, pinned_by={"temperature"})  # the policy added effort
    assert fitted.payload == {"temperature": 0.1} and fitted.dropped == ("reasoning_effort",)
    with pytest.raises(InvalidRequest) as refused:
        await table.fit(pinned, body, pinned_by=body)
    assert refused.value.param == "reasoning_effort"


async def test_the_configured_parameter_list_replaces_litellms() -> None:
    table = ParamTable(derive=lambda _: frozenset({"temperature"}))
    told = deployment("openai/gpt-4o", params=["verbosity"])
    assert await table.takes(told) == frozenset({"verbosity"})
    assert await table.takes(deployment("openai/gpt-4o")) == frozenset({"temperature"})
