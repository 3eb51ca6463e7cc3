"""The `rightsize` command line: admin verbs on the store, and start-up validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main


def config(tmp_path: Path) -> Path:
    path = tmp_path / "rightsize.yaml"
    path.write_text(f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\n")
    return path


def test_teams_and_keys_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = str(config(tmp_path))
    env = {"RIGHTSIZE_KEY_SECRET": "s"}
    assert runner.invoke(main, ["teams", "create", "search", "--config", cfg]).exit_code == 0
    duplicate = runner.invoke(main, ["teams", "create", "search", "--config", cfg])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    created = runner.invoke(main, ["keys", "create", "--team", "search", "--config", cfg], env=env)
    assert created.exit_code == 0, created.output
    secret = next(
        line.split()[-1] for line in created.output.splitlines() if line.startswith("key:")
    )
    key_id = next(
        line.split()[-1] for line in created.output.splitlines() if line.startswith("key id")
    )
    assert secret.startswith("rs-")
    listed = runner.invoke(main, ["keys", "list", "--config", cfg, "--json"])
    assert key_id in listed.output and secret not in listed.output
    revoked = runner.invoke(main, ["keys", "revoke", key_id, "--config", cfg])
    assert revoked.exit_code == 0
    assert (
        '"revoked_at": null'
        not in runner.invoke(main, ["keys", "list", "--config", cfg, "--json"]).output
    )
    assert runner.invoke(main, ["teams", "delete", "search", "--config", cfg]).exit_code == 0
    assert "(none)" in runner.invoke(main, ["teams", "list", "--config", cfg]).output


def test_serve_with_an_invalid_config_exits_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: 99999\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{path}:2: server.port" in result.stderr


def test_serve_refuses_a_model_whose_key_variable_is_unset(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\n"
        "models:\n  - name: m\n    model: openai/gpt-4o-mini\n"
        "    api_key_env: RS_TEST_UNSET_VARIABLE\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "RS_TEST_UNSET_VARIABLE" in result.stderr


POLICY_CONFIG = """\
store: {{url: "sqlite:///{db}"}}
models:
  - {{name: small, model: openai/small, local: true}}
  - {{name: big, model: openai/big, local: true}}
  - {{name: thinker, model: openai/thinker, local: true}}
policy:
  tiers:
    - {{name: light, deployments: [small]}}
    - {{name: standard, deployments: [big], min_demand: 0.4}}
    - {{name: reasoning, deployments: [thinker], min_demand: 0.7}}
"""


def test_route_prints_the_decision_with_every_candidate(tmp_path: Path) -> None:
    import json

    cfg = tmp_path / "policy.yaml"
    cfg.write_text(POLICY_CONFIG.format(db=tmp_path / "rs.db"))
    result = CliRunner().invoke(
        main, ["route", "Translate 'hello' to French.", "--config", str(cfg), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert 0 <= report["estimate"]["reasoning_demand"] <= 1
    decision = report["decision"]
    assert decision["deployment"] in {"small", "big", "thinker"}
    assert {c["deployment"] for c in decision["candidates"]} == {"small", "big", "thinker"}
    assert decision["reason"].startswith("demand ")


def test_calibrate_writes_thresholds_that_give_the_requested_shares(tmp_path: Path) -> None:
    import json

    import yaml

    from gateway.settings import load_settings
    from policies.calibrate import shares_of
    from router import Router

    cfg = tmp_path / "policy.yaml"
    cfg.write_text(POLICY_CONFIG.format(db=tmp_path / "rs.db"))
    import random

    rng = random.Random(7)
    words = ("prove derive explain list translate summarise compute why how integral matrix "
             "poem story function bug proof lemma capital river tax contract energy sort "
             "graph prime limit essay email table regex").split()  # fmt: skip
    # Varied words, lengths and digits: distinct demands, as in real traffic.
    prompts = [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) + f" {rng.randint(1, 999)}?"
        for _ in range(400)
    ]
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    out = tmp_path / "calibrated.yaml"
    result = CliRunner().invoke(main, [
        "calibrate", "--config", str(cfg), "--traffic", str(traffic),
        "--max-share", "reasoning=0.2,standard=0.5", "--output", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    settings, _ = load_settings(out, environ={})
    thresholds = {t.name: t.min_demand for t in settings.policy.tiers}
    router = Router.load()
    demands = [e.reasoning_demand for e in router.estimate_batch(prompts)]
    shares = shares_of(demands, thresholds)
    assert abs(shares["reasoning"] - 0.2) <= 0.02 and abs(shares["standard"] - 0.5) <= 0.02
    assert yaml.safe_load(out.read_text())["models"][0]["name"] == "small"


# `serve` with uvicorn.run replaced: prints the keep-alive uvicorn was given and numpy's BLAS
# thread count in the process that would serve. The process starts at three BLAS threads
# (whatever the host's cores), standing in for the library's default. For several workers,
# run() plays a fresh worker: back to three, then the worker factory uvicorn would call.
SERVE_AND_REPORT = """\
import os
import sys

import threadpoolctl
import uvicorn

import gateway.workers
from gateway.cli import main


def blas_threads():
    return sorted({i["num_threads"] for i in threadpoolctl.threadpool_info()
                   if i["user_api"] == "blas"})


def run(app, **kwargs):
    if kwargs.get("factory"):
        threadpoolctl.threadpool_limits(limits=3, user_api="blas")
        # A real worker is a fresh process that imports prometheus-client with the metrics
        # directory set; this one imported it before: it plays a worker of its own registry.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        from gateway.app import app_from_env
        app_from_env()
    print("KEEPALIVE", kwargs["timeout_keep_alive"])
    print("BLAS", blas_threads())


def supervise(self):  # several workers: the supervisor would spawn workers from its config
    config = self.config
    run(config.app, factory=config.factory, timeout_keep_alive=config.timeout_keep_alive)


uvicorn.run = run
uvicorn.Config.bind_socket = lambda self: None
gateway.workers.Supervisor.run = supervise
threadpoolctl.threadpool_limits(limits=3, user_api="blas")
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    ("workers", "server_yaml", "blas", "keep_alive"),
    [
        (1, "", [1], 75),
        (2, "", [1], 75),
        (1, "server: {blas_threads: 2, keep_alive_s: 30}\n", [2], 30),
        (2, "server: {blas_threads: null, keep_alive_s: 30}\n", [3], 30),
    ],
)
def test_serve_passes_keep_alive_and_holds_numpy_blas_threads(
    tmp_path: Path, workers: int, server_yaml: str, blas: list[int], keep_alive: int
) -> None:
    path = tmp_path / "rightsize.yaml"
    path.write_text(f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\n" + server_yaml)
    serve = ["serve", "--config", str(path), "--workers", str(workers)]
    result = subprocess.run(
        [sys.executable, "-c", SERVE_AND_REPORT, *serve],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"BLAS {blas}" in result.stdout, result.stdout + result.stderr
    # uvicorn's own default (5 s) equals the SDKs' idle expiry: a reused connection can meet
    # the server closing it (docs/benchmarks.md).
    assert f"KEEPALIVE {keep_alive}\n" in result.stdout
