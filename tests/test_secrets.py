"""Provider keys and the gateway's own secrets never reach a tenant or the log, even when an
upstream echoes them back in its error body."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.scrub import REDACTED, Redactor, redact_logs
from tests.conftest import InProcessGateway, gateway_config, gateway_env, in_process_gateway
from tests.fake_upstream import RunningUpstream

# Shaped like no known credential: only the list of configured secrets can catch it.
UPSTREAM_KEY = "upstream-key-5f1c0de9a7b2"
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(tmp_path: Path, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    """Two deployments on the echoing fake upstream, one per transport, making up the tier
    `echo`: a request for the tier fails on one, is logged, and falls back to the other."""
    config = gateway_config(f"sqlite:///{tmp_path / 'r.db'}", upstream)
    for name, transport in (("direct-echo", "openai_http"), ("small-echo", "litellm")):
        config["models"].append(
            {
                "name": name,
                "model": "openai/fake-echo",
                "api_base": upstream.base_url,
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "transport": transport,
                "tier": "echo",
                "price": {"input_per_mtok": "1", "output_per_mtok": "1"},
            }
        )
    env = {**gateway_env(), "FAKE_UPSTREAM_KEY": UPSTREAM_KEY}
    async with in_process_gateway(config, env) as gw:
        yield gw


def echoed(upstream: RunningUpstream) -> str:
    """The Authorization header the fake upstream last received (and echoed)."""
    return str(upstream.fake.requests[-1]["auth"])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["direct-echo", "small-echo"])
async def test_echoed_provider_key_never_reaches_the_client(
    gateway: InProcessGateway, upstream: RunningUpstream, model: str, stream: bool
) -> None:
    body = {"model": model, "messages": HELLO, "stream": stream}
    response = await gateway.client.post("/v1/chat/completions", json=body, headers=gateway.auth)
    assert echoed(upstream) == f"Bearer {UPSTREAM_KEY}"  # the upstream did see the key
    assert response.status_code == 502, response.text
    assert UPSTREAM_KEY not in response.text
    assert REDACTED in response.json()["error"]["message"]  # the error itself is still relayed


async def test_echoed_provider_key_never_reaches_the_log(
    gateway: InProcessGateway,
    upstream: RunningUpstream,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level: litellm's own included
    body = {"model": "echo", "messages": HELLO}
    response = await gateway.client.post("/v1/chat/completions", json=body, headers=gateway.auth)
    assert response.status_code == 502
    assert echoed(upstream) == f"Bearer {UPSTREAM_KEY}"
    assert any("falling back" in r.getMessage() for r in caplog.records)  # with the upstream text
    assert all(UPSTREAM_KEY not in record.getMessage() for record in caplog.records)
    assert UPSTREAM_KEY not in caplog.text  # tracebacks included
    out, err = capfd.readouterr()  # handlers of their own (litellm's) and prints
    assert UPSTREAM_KEY not in out + err


def test_configured_secrets_are_cut_wherever_they_appear() -> None:
    redact = Redactor(["master-7q2", b"hmac-secret-x9", None, ""])
    text = redact("got master-7q2 and hmac-secret-x9 in 'master-7q2'")
    assert text == f"got {REDACTED} and {REDACTED} in '{REDACTED}'"


@pytest.mark.parametrize(
    "text",
    [
        "headers: {'authorization': 'Basic dXNlcjpwYXNz'}",
        '{"x-api-key": "anthropic-private-value"}',
        "Api-Key: azure-private-value",
        "api_key=some-private-value&x=1",
    ],
)
def test_credential_header_values_are_cut_though_not_configured(text: str) -> None:
    clean = Redactor()(text)
    assert "private-value" not in clean and "dXNlcjpwYXNz" not in clean
    assert REDACTED in clean


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token Bearer eyJhbGciOi.payload.sig was refused", "eyJhbGciOi.payload.sig"),
        ("Incorrect API key provided: sk-proj-AbC123xyz789", "sk-proj-AbC123xyz789"),
        ("key sk-ant-api03-Zz9_Yy8-Xx7 invalid", "sk-ant-api03-Zz9_Yy8-Xx7"),
    ],
)
def test_bearer_tokens_and_sk_keys_are_cut_though_not_configured(text: str, secret: str) -> None:
    assert secret not in Redactor()(text)


def test_text_without_secrets_is_unchanged() -> None:
    text = "Upstream deployment 'x' failed (status 500): model overloaded, retry in 2s"
    assert Redactor(["master-7q2"])(text) == text


def test_log_records_of_any_logger_are_redacted_with_their_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redact_logs(Redactor(["log-secret-3e8"]))
    library = logging.getLogger("some.library")
    library.warning("calling with %s", "log-secret-3e8")
    try:
        raise RuntimeError("upstream said log-secret-3e8")
    except RuntimeError:
        library.exception("failed")
    uvicorn_style: Any = ("127.0.0.1:5", "GET", "/x?k=log-secret-3e8", "1.1", 200)
    logging.getLogger("uvicorn.access").warning('%s - "%s %s HTTP/%s" %d', *uvicorn_style)
    assert "log-secret-3e8" not in caplog.text
    assert caplog.records[0].getMessage() == f"calling with {REDACTED}"
    assert "RuntimeError" in caplog.text  # the traceback is kept, redacted
    assert caplog.records[2].args[2] == f"/x?k={REDACTED}"  # formatters reading args still work
