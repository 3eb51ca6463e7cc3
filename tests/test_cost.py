"""The spend-log cost equals the upstream's usage times the configured price, exactly."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from gateway.llm import litellm
from policies import Price, TokenPrice, Usage
from tests.conftest import PRICE_DIRECT, InProcessGateway
from tests.fake_upstream import ANSWER, CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS

HELLO = [{"role": "user", "content": "Say hello."}]
MILLION = Decimal(1_000_000)


def direct_price(prompt: int, completion: int, cached: int) -> Decimal:
    return (
        (prompt - cached) * Decimal(PRICE_DIRECT["input_per_mtok"])
        + cached * Decimal(PRICE_DIRECT["cached_input_per_mtok"])
        + completion * Decimal(PRICE_DIRECT["output_per_mtok"])
    ) / MILLION


async def complete(gw: InProcessGateway, model: str, stream: bool = False) -> tuple[str, dict]:
    body = {"model": model, "messages": HELLO, "stream": stream}
    response = await gw.client.post(
        "/v1/chat/completions", content=orjson.dumps(body), headers=gw.auth
    )
    assert response.status_code == 200, response.text
    return response.headers.get("x-rightsize-cost-usd", ""), await gw.admin.spend(
        response.headers["x-request-id"]
    )


@pytest.mark.parametrize("model", ["direct-cached", "small-cached"])
async def test_cost_prices_cached_prompt_tokens_at_the_cached_rate(
    gateway: InProcessGateway, model: str
) -> None:
    header, row = await complete(gateway, model)
    expected = direct_price(PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS)
    assert Decimal(header) == expected
    assert Decimal(row["cost_usd"]) == expected
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
        CACHED_TOKENS,
    )


@pytest.mark.parametrize(
    ("model", "stream"),
    [("direct-nousage", False), ("small-nousage", False), ("direct-nousage", True)],
)
async def test_missing_upstream_usage_is_counted_with_the_tokenizer(
    gateway: InProcessGateway, model: str, stream: bool
) -> None:
    _, row = await complete(gateway, model, stream=stream)
    prompt = litellm().token_counter(model="openai/fake-nousage", messages=HELLO)
    completion = litellm().token_counter(model="openai/fake-nousage", text=ANSWER)
    assert row["usage_estimated"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert Decimal(row["cost_usd"]) == direct_price(prompt, completion, 0)


def test_token_price_cost_is_exact_for_prices_with_many_decimals() -> None:
    price = TokenPrice.per_million(
        Price(input_per_mtok=Decimal("0.0375"), output_per_mtok=Decimal("0.15"))
    )
    cost = price.cost(Usage(prompt_tokens=1, completion_tokens=3))
    assert cost == Decimal("0.0000000375") + Decimal("0.00000045")


def test_yaml_float_prices_keep_the_written_digits() -> None:
    price = Price.model_validate({"input_per_mtok": 0.1, "output_per_mtok": 0.3})
    assert price.input_per_mtok == Decimal("0.1") and price.output_per_mtok == Decimal("0.3")


def test_litellm_prices_are_taken_as_published() -> None:
    from gateway.llm import model_info

    info = model_info("openai/gpt-4o-mini")
    assert info is not None and info.price is not None
    assert info.price.input == Decimal("1.5e-07") and info.price.output == Decimal("6e-07")
