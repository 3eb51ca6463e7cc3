"""Start-up stays fast: what the CLI and the serving process import, checked in fresh processes.

Each check runs in a subprocess, since this test process has long imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ("sklearn", "torch", "sentence_transformers", "transformers")

# Two tiers over direct HTTP, priced from litellm's model map (no price in the configuration).
OPENAI_HTTP_ONLY = """
from gateway.settings import Settings

def settings(tmp):
    return Settings.model_validate({
        "store": {"url": f"sqlite:///{tmp}/gateway.db"},
        "spend_log": {"fallback_file": f"{tmp}/unwritten.jsonl", "journal_dir": f"{tmp}/journal"},
        "models": [
            {"name": name, "model": f"openai/{name}", "api_base": "http://127.0.0.1:9/v1",
             "transport": "openai_http", "tier": tier}
            for name, tier in (("gpt-4o-mini", "light"), ("gpt-4o", "standard"))
        ],
    })

ENV = {"RIGHTSIZE_KEY_SECRET": "startup-test"}
"""


def run_python(code: str, tmp_path: Path) -> Any:
    """Run `code` in a fresh interpreter; it prints one JSON value, returned here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIGHTSIZE_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**env, "STARTUP_TMP": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,  # a busy shared host imports slowly
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def loaded(names: tuple[str, ...]) -> str:
    return f"[n for n in {names!r} if n in sys.modules]"


def test_building_the_app_with_only_openai_http_deployments_does_not_import_litellm(
    tmp_path: Path,
) -> None:
    found = run_python(
        OPENAI_HTTP_ONLY
        + f"""
import json, os, sys
from gateway.app import create_app

app = create_app(settings(os.environ["STARTUP_TMP"]), environ=ENV)
print(json.dumps({loaded(("litellm",))}))
""",
        tmp_path,
    )
    assert found == []


def test_a_serving_process_without_litellm_deployments_loads_neither_litellm_nor_training_libraries(
    tmp_path: Path,
) -> None:
    found = run_python(
        OPENAI_HTTP_ONLY
        + f"""
import asyncio, json, os, sys
from gateway.app import create_app

async def serve_once():
    app = create_app(settings(os.environ["STARTUP_TMP"]), environ=ENV)
    async with app.router.lifespan_context(app):  # store, providers, cache, ledger
        assert app.state.gateway.router.estimate("Prove that sqrt(2) is irrational.")

asyncio.run(serve_once())
print(json.dumps({loaded(("litellm", *TRAINING))}))
""",
        tmp_path,
    )
    assert found == []


def test_counting_a_budgeted_requests_tokens_for_an_openai_model_does_not_import_litellm(
    tmp_path: Path,
) -> None:
    # The hold counts every budgeted prompt, and answers without usage are counted too.
    found = run_python(
        f"""
import json, sys
from gateway.usage import count_usage

messages = [
    {{"role": "system", "content": "Be brief."}},
    {{"role": "user", "content": [{{"type": "text", "text": "What is this?"}},
                                  {{"type": "image_url", "image_url": {{"url": "https://x/y.png"}}}}]}},
]
for model in ("openai/gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"):
    assert count_usage(model, messages, "A cat.").prompt_tokens > 0
print(json.dumps({loaded(("litellm",))}))
""",
        tmp_path,
    )
    assert found == []


def test_help_imports_neither_litellm_nor_the_app_nor_numpy(tmp_path: Path) -> None:
    found = run_python(
        f"""
import contextlib, io, json, sys
from gateway.cli import main

with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["--help"])
print(json.dumps({loaded(("litellm", "fastapi", "gateway.app", "numpy"))}))
""",
        tmp_path,
    )
    assert found == []


def test_help_lists_the_router_and_ledger_commands_as_they_describe_themselves_unimported(
    tmp_path: Path,
) -> None:
    result = run_python(
        """
import json, sys
import click
from click.testing import CliRunner
from gateway.cli import main

lazy = CliRunner().invoke(main, ["--help"], terminal_width=120).output
imported = [m for m in ("router.cli", "gateway.cli.budgets") if m in sys.modules]
context = click.Context(main)
for name in main.list_commands(context):
    main.get_command(context, name)
loaded = CliRunner().invoke(main, ["--help"], terminal_width=120).output
print(json.dumps({"imported": imported, "lazy": lazy, "loaded": loaded}))
""",
        tmp_path,
    )
    assert result["imported"] == []
    assert result["lazy"] == result["loaded"]


def test_a_serving_process_freezes_what_start_up_built_and_collects_young_objects_seldom(
    tmp_path: Path,
) -> None:
    # Unfrozen, each full collection walks the app, the router and every import on the loop.
    found = run_python(
        OPENAI_HTTP_ONLY
        + """
import asyncio, gc, json, os

from gateway.app import create_app

def young_collections(live):
    # young collections while `live` container objects are made and kept (in-flight work)
    before = gc.get_stats()[0]["collections"]
    kept = [[] for _ in range(live)]
    return gc.get_stats()[0]["collections"] - before

async def collectable(freeze_gc):
    app = create_app(settings(os.environ["STARTUP_TMP"]), environ=ENV, freeze_gc=freeze_gc)
    async with app.router.lifespan_context(app):
        scanned = {id(o) for o in gc.get_objects()}
        gateway = app.state.gateway
        found = [id(o) in scanned for o in (app, gateway, gateway.router, gateway.spend)]
        return found, young_collections(5_000)

unfrozen, unfrozen_collections = asyncio.run(collectable(False))
frozen, frozen_collections = asyncio.run(collectable(True))
print(json.dumps({
    "unfrozen": unfrozen, "frozen": frozen, "count": gc.get_freeze_count(),
    "collections": [unfrozen_collections, frozen_collections],
}))
""",
        tmp_path,
    )
    assert found["unfrozen"] == [True] * 4
    assert found["frozen"] == [False] * 4
    assert found["count"] > 10_000
    # 5,000 objects alive at once (about 70 requests in flight): CPython's default threshold
    # walks them in several young collections, a serving process's in none.
    unfrozen_collections, frozen_collections = found["collections"]
    assert unfrozen_collections >= 5
    assert frozen_collections == 0


def test_fitting_parameters_to_a_deployment_that_lists_them_does_not_import_litellm(
    tmp_path: Path,
) -> None:
    # capabilities.params is the way for an openai_http-only process to stay without litellm.
    found = run_python(
        f"""
import asyncio, json, sys
from gateway.params import ParamTable
from policies import Catalog, ModelInfo, ModelSpec

spec = ModelSpec(name="m", model="openai/gpt-4o", transport="openai_http", local=True,
                 capabilities={{"params": ["temperature", "max_tokens"]}})
[deployment] = Catalog.build([spec], lambda _: ModelInfo(price=None)).deployments
body = {{"messages": [], "temperature": 0.2, "reasoning_effort": "low"}}
fitted = asyncio.run(ParamTable().fit(deployment, body))
assert fitted.dropped == ("reasoning_effort",), fitted
print(json.dumps({loaded(("litellm",))}))
""",
        tmp_path,
    )
    assert found == []
