"""`rightsize config import`: LiteLLM's own example configs become Rightsize configs that
validate, one test per mapping rule, and nothing of the source is lost without a note.

The fixtures under tests/fixtures/litellm are LiteLLM's examples, each naming its source.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main
from gateway.litellm_import import Imported, import_litellm
from gateway.llm import model_cost_table, model_info
from gateway.settings import build_catalog, load_settings
from policies import PolicyEngine, RoutingRequest

FIXTURES = Path(__file__).parent / "fixtures" / "litellm"
EXAMPLES = sorted(p.name for p in FIXTURES.glob("*.yaml"))


def mode_of(model: str) -> str | None:
    entry = model_cost_table().get(model)
    return entry.get("mode") if isinstance(entry, dict) else None


def source(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((FIXTURES / name).read_text()))


def imported(data: dict[str, Any] | str) -> Imported:
    return import_litellm(source(data) if isinstance(data, str) else data, model_info, mode_of)


def model(result: Imported, name: str) -> dict[str, Any]:
    return next(m for m in result.config["models"] if m["name"] == name)


def notes(result: Imported, where: str) -> list[str]:
    return [n.text for n in result.notes if n.where == where]


def one_model(**entry: Any) -> dict[str, Any]:
    return {"model_list": [{"model_name": "m", **entry}]}


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_litellm_example_imports_into_a_config_that_validates(
    example: str, tmp_path: Path
) -> None:
    out = tmp_path / "rightsize.yaml"
    result = CliRunner().invoke(main, ["config", "import", str(FIXTURES / example), "--out", out])
    assert result.exit_code == 0, result.output
    settings, where = load_settings(out, environ={})
    catalog = build_catalog(settings, model_info, where)
    assert catalog.deployments
    assert "models imported" in result.output  # the summary, on standard error


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_setting_of_an_example_is_carried_or_reported(example: str) -> None:
    data = source(example)
    result = imported(data)
    reported = {n.where for n in result.notes}
    skipped = {w for w in reported if w.startswith("model_list[") and w.endswith("]")}
    carried = {"model_name", "litellm_params.model", "litellm_params.api_base",
                "litellm_params.api_key", "litellm_params.timeout", "model_info.mode"}  # fmt: skip
    for index, entry in enumerate(data.get("model_list") or []):
        where = f"model_list[{index}]"
        if where in skipped:
            continue
        paths = [k for k in entry if k not in ("litellm_params", "model_info")]
        paths += [f"litellm_params.{k}" for k in entry.get("litellm_params") or {}]
        paths += [f"model_info.{k}" for k in entry.get("model_info") or {}]
        for path in paths:
            full = f"{where}.{path}"
            assert path in carried or full in reported, f"{example}: {full} lost silently"
    for section in data:
        if section == "model_list":
            continue
        keys = data[section] if isinstance(data[section], dict) else {}
        for key in keys:
            place = f"{section}.{key}"
            assert any(w == place or w.startswith(place + "[") for w in reported), (
                f"{example}: {place} lost silently"
            )
        if not keys:
            assert section in reported


def test_model_name_is_the_name_clients_send_and_litellm_params_model_the_model() -> None:
    result = imported("aliases_config.yaml")
    assert [(m["name"], m["model"]) for m in result.config["models"]] == [
        ("text-davinci-003", "ollama/zephyr"),
        ("gpt-4", "ollama/llama2"),
        ("gpt-3.5-turbo", "ollama/llama2"),
    ]


def test_an_os_environ_key_becomes_api_key_env_naming_the_variable() -> None:
    result = imported("configs_quick_start.yaml")
    assert model(result, "gpt-4o-1")["api_key_env"] == "AZURE_API_KEY_EU"
    assert model(result, "gpt-4o-2")["api_key_env"] == "AZURE_API_KEY_CA"


def test_an_inline_key_is_never_written_and_the_model_names_a_variable_to_hold_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "rightsize.yaml"
    example = str(FIXTURES / "load_balancer.yaml")
    assert CliRunner().invoke(main, ["config", "import", example, "--out", out]).exit_code == 0
    written = out.read_text()
    assert "sk-uj6F" not in written and "sk-Imn" not in written
    result = imported("load_balancer.yaml")
    assert model(result, "gpt-3.5-turbo-1")["api_key_env"] == "GPT_3_5_TURBO_1_API_KEY"
    [note] = notes(result, "model_list[0].litellm_params.api_key")
    assert "export it as GPT_3_5_TURBO_1_API_KEY" in note


def test_deployments_sharing_a_model_name_become_one_tier_under_that_name() -> None:
    result = imported("configs_load_balancing.yaml")
    zephyrs = [m for m in result.config["models"] if m["model"].startswith("huggingface/")]
    assert {m["tier"] for m in zephyrs} == {"zephyr-beta"}
    assert [m["name"] for m in zephyrs] == ["zephyr-beta-1", "zephyr-beta-2", "zephyr-beta-3"]
    assert [m["api_base"] for m in zephyrs] == [
        "http://0.0.0.0:8001",
        "http://0.0.0.0:8002",
        "http://0.0.0.0:8003",
    ]
    assert "tier" not in model(result, "gpt-3.5-turbo-16k")  # a name used once: a pinned model


def test_an_api_base_read_from_the_environment_is_reported_with_the_override_to_use() -> None:
    result = imported(one_model(litellm_params={"model": "gpt-4o", "api_base": "os.environ/B"}))
    assert "api_base" not in model(result, "m")
    [note] = notes(result, "model_list[0].litellm_params.api_base")
    assert "$B" in note and "RIGHTSIZE_MODELS__<n>__API_BASE" in note


def test_timeout_becomes_timeout_s_and_the_global_timeout_fills_the_others() -> None:
    result = imported("proxy_server_config.yaml")
    assert model(result, "gpt-3.5-turbo-large")["timeout_s"] == 300.0
    assert model(result, "gpt-3.5-turbo")["timeout_s"] == 600.0  # litellm_settings.request_timeout


def test_rpm_and_tpm_are_reported_wherever_the_entry_puts_them() -> None:
    inline = imported("configs_load_balancing.yaml")
    assert notes(inline, "model_list[0].litellm_params.rpm")
    assert notes(inline, "model_list[0].litellm_params.tpm")
    beside = imported("load_balancer.yaml")
    [rpm] = notes(beside, "model_list[0].rpm")
    assert "not carried: 3;" in rpm and "rightsize budgets" in rpm


def test_prices_per_token_become_exact_prices_per_million() -> None:
    info = {"input_cost_per_token": 0.0000015, "output_cost_per_token": 2e-06}
    result = imported(one_model(litellm_params={"model": "openai/mine"}, model_info=info))
    price = model(result, "m")["price"]
    assert Decimal(price["input_per_mtok"]) == Decimal("1.5")
    assert Decimal(price["output_per_mtok"]) == Decimal("2")


def test_a_deployment_litellm_cannot_price_is_priced_as_its_base_model() -> None:
    entry = one_model(
        litellm_params={"model": "azure/my-deployment"}, model_info={"base_model": "gpt-4o"}
    )
    price = model(imported(entry), "m")["price"]
    gpt4o = model_info("gpt-4o")
    assert gpt4o is not None and gpt4o.price is not None
    assert Decimal(price["input_per_mtok"]) == gpt4o.price.input * 1_000_000
    assert Decimal(price["output_per_mtok"]) == gpt4o.price.output * 1_000_000


def test_a_model_with_no_known_price_is_priced_at_zero_and_says_so() -> None:
    result = imported("aliases_config.yaml")
    assert model(result, "text-davinci-003")["price"] == {
        "input_per_mtok": "0",
        "output_per_mtok": "0",
    }
    [note] = notes(result, "model_list[0].litellm_params.model")
    assert "no price is known for 'ollama/zephyr'" in note


def test_a_model_litellm_prices_is_left_to_litellms_price() -> None:
    assert "price" not in model(imported("configs_load_balancing.yaml"), "gpt-4o")


def test_model_info_capabilities_become_capabilities() -> None:
    info = {"supports_vision": True, "supports_function_calling": False, "max_input_tokens": 8192}
    result = imported(one_model(litellm_params={"model": "gpt-4o"}, model_info=info))
    assert model(result, "m")["capabilities"] == {
        "tools": False,
        "vision": True,
        "context_window": 8192,
    }


def test_embedding_models_wildcards_and_modelless_entries_are_reported_not_imported() -> None:
    result = imported("proxy_server_config.yaml")
    names = {m["name"] for m in result.config["models"]}
    assert not {"text-embedding-ada-002", "mistral-embed", "dall-e-2"} & names
    assert "'embedding' model" in notes(result, "model_list[6]")[0]
    assert "wildcard route '*' -> 'openai/*'" in notes(result, "model_list[14]")[0]
    assert "names no model" in notes(result, "model_list[7]")[0]


def test_num_retries_becomes_the_policys_attempts() -> None:
    result = imported("proxy_server_config.yaml")
    assert result.config["policy"] == {"retries": {"max_attempts": 6}}


def test_attempts_reach_the_end_of_the_longest_fallback_chain() -> None:
    # num_retries: 2 would be 3 attempts; the zephyr-beta tier has 3 deployments and gpt-4o.
    result = imported("configs_load_balancing.yaml")
    assert result.config["policy"]["retries"] == {"max_attempts": 4}


def test_a_fallback_to_a_single_model_is_tried_after_the_groups_own_deployments(
    tmp_path: Path,
) -> None:
    out = tmp_path / "rightsize.yaml"
    example = str(FIXTURES / "configs_load_balancing.yaml")
    assert CliRunner().invoke(main, ["config", "import", example, "--out", out]).exit_code == 0
    settings, where = load_settings(out, environ={})
    engine = PolicyEngine(build_catalog(settings, model_info, where), settings.policy, None)
    decision = engine.decide(RoutingRequest(model="zephyr-beta", prompt_tokens=10))
    assert [d.name for d in decision.attempts()] == [
        "zephyr-beta-1",
        "zephyr-beta-2",
        "zephyr-beta-3",
        "gpt-4o",  # litellm_settings.fallbacks: [{"zephyr-beta": ["gpt-4o"]}]
    ]
    pinned = engine.decide(RoutingRequest(model="gpt-4o", prompt_tokens=10))
    assert [d.name for d in pinned.attempts()] == ["gpt-4o"]


def test_a_single_model_with_a_fallback_becomes_a_tier_under_its_name() -> None:
    result = imported(
        {
            "model_list": [
                {"model_name": "main", "litellm_params": {"model": "gpt-4o"}},
                {"model_name": "backup", "litellm_params": {"model": "gpt-4o-mini"}},
            ],
            "router_settings": {"fallbacks": [{"main": ["backup"]}]},
        }
    )
    assert [(m["name"], m.get("tier")) for m in result.config["models"]] == [
        ("main-1", "main"),
        ("backup", "main"),
    ]
    assert result.config["policy"]["selection"] == "order"


def test_a_fallback_to_a_group_is_reported_not_guessed() -> None:
    result = imported(
        {
            "model_list": [
                {"model_name": "main", "litellm_params": {"model": "gpt-4o"}},
                {"model_name": "pool", "litellm_params": {"model": "gpt-4o-mini"}},
                {"model_name": "pool", "litellm_params": {"model": "gpt-4o-mini"}},
            ],
            "litellm_settings": {"fallbacks": [{"main": ["pool"]}]},
        }
    )
    [why] = notes(result, "litellm_settings.fallbacks[0]")
    assert why.startswith("not carried: {'main': ['pool']}") and "tier of its own" in why
    assert "tier" not in model(result, "main")


def test_aliases_and_routing_strategy_are_reported_with_what_to_do_instead() -> None:
    result = imported("configs_load_balancing.yaml")
    [alias] = notes(result, "router_settings.model_group_alias")
    assert "{'gpt-4': 'gpt-4o'}" in alias
    assert notes(result, "router_settings.routing_strategy")


def test_a_master_key_by_environment_is_carried_an_inline_one_never() -> None:
    by_name = imported({"general_settings": {"master_key": "os.environ/PROXY_KEY"}})
    assert by_name.config["auth"] == {"master_key_env": "PROXY_KEY"}
    inline = imported("configs_quick_start.yaml")
    assert "auth" not in inline.config
    [note] = notes(inline, "general_settings.master_key")
    assert "RIGHTSIZE_MASTER_KEY" in note and "sk-1234" not in note


def test_environment_variables_are_reported_by_name_never_by_value() -> None:
    result = imported("load_balancer.yaml")
    assert notes(result, "environment_variables.REDIS_PASSWORD")
    assert all("eYVX71" not in str(n) for n in result.notes)


def test_secrets_in_unmapped_settings_are_not_quoted() -> None:
    result = imported("configs_load_balancing.yaml")
    [password] = notes(result, "router_settings.redis_password")
    assert "<your redis password>" not in password


def test_sections_rightsize_has_no_counterpart_for_are_reported() -> None:
    result = imported("proxy_server_config.yaml")
    assert notes(result, "finetune_settings") and notes(result, "files_settings")


def test_an_unusable_model_name_is_carried_under_a_usable_one() -> None:
    result = imported(
        {"model_list": [{"model_name": "my model", "litellm_params": {"model": "gpt-4o"}}]}
    )
    assert result.config["models"][0]["name"] == "my-model"
    assert notes(result, "model_list[0].model_name")


def test_a_group_counts_only_the_deployments_it_imports() -> None:
    result = imported(
        {
            "model_list": [
                {"model_name": "pool", "litellm_params": {"model": "gpt-4o"}},
                {"model_name": "pool", "litellm_params": {"model": "openai/*"}},
                {"litellm_params": {"model": "gpt-4o-mini"}},  # no model_name at all
            ]
        }
    )
    assert [(m["name"], m.get("tier")) for m in result.config["models"]] == [
        ("pool", None),
        ("model", None),
    ]
    assert "wildcard route" in notes(result, "model_list[1]")[0]
