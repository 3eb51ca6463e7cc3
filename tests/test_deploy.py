"""deploy/: the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate bundles
them, offline), the kustomize base as rendered, the compose file's shape, the shipped
configurations, and an image runtime without the training extras."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import load_settings
from tests.replicas_support import HAPROXY_CFG, REPO

BASE = REPO / "deploy" / "kubernetes" / "base"
COMPOSE = REPO / "deploy" / "compose.yaml"
# The oldest Kubernetes release still supported upstream when this was written, and the newest
# the schemas' package knows: the manifests use nothing newer or removed.
KUBERNETES_VERSIONS = ["1.32.0", kubernetes_validate.utils.latest_version()]
KINDS = {
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Job",
    "PodDisruptionBudget",
    "Service",
    "ServiceAccount",
}


def _manifests() -> list[dict[str, Any]]:
    """Every resource file of the base, and the ConfigMap its generator makes."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((BASE / name).read_text()) for name in kustomization["resources"]]
    for generator in kustomization["configMapGenerator"]:
        data = {name: (BASE / name).read_text() for name in generator["files"]}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return docs


def _rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # kubectl is no Debian package; the files themselves are validated without it.
        pytest.skip("SKIPPED LOUDLY: kubectl is not installed: the base is not rendered")
    out = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_manifest_is_valid_against_the_schemas(version: str) -> None:
    docs = _manifests()
    assert {d["kind"] for d in docs} == KINDS
    for doc in docs:
        # strict: a field the schema does not have (a typo) fails too.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_kustomize_base_renders_valid_manifests_with_probes_and_secrets_by_name() -> None:
    docs = _rendered()
    assert {d["kind"] for d in docs} == KINDS  # no Secret: referenced by name only
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    by_kind = {d["kind"]: d for d in docs}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    [gateway] = pod["containers"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["image"] == "rightsize:0.1.0"
    # The generated ConfigMap (hashed name) is the one mounted.
    config_map = by_kind["ConfigMap"]["metadata"]["name"]
    assert config_map.startswith("rightsize-config-")
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {config_map}
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in gateway["env"] if "valueFrom" in e}
    assert secrets == {"rightsize-secrets"}
    # Draining then finishing requests fits in the grace period.
    config = yaml.safe_load(by_kind["ConfigMap"]["data"]["rightsize.yaml"])
    server = config["server"]
    assert pod["terminationGracePeriodSeconds"] > server["drain_s"] + server["shutdown_timeout_s"]
    assert config["store"]["migrate_on_start"] is False
    job = by_kind["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate"]
    hpa, pdb = by_kind["HorizontalPodAutoscaler"]["spec"], by_kind["PodDisruptionBudget"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == by_kind["Deployment"]["metadata"]["name"]
    assert pdb["selector"] == by_kind["Deployment"]["spec"]["selector"]


@pytest.mark.parametrize(
    "config",
    [
        BASE / "rightsize.yaml",
        REPO / "deploy" / "compose" / "rightsize.yaml",
        REPO / "deploy" / "compose" / "local-plus-remote.yaml",
    ],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_the_shipped_gateway_configurations_are_valid(config: Path) -> None:
    settings, _ = load_settings(str(config))
    assert settings.server.drain_s == 5 and settings.server.shutdown_timeout_s == 30


def test_compose_migrates_once_then_runs_two_replicas_behind_haproxy() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "gateway-1", "gateway-2", "lb", "vllm"}
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert gateway["environment"]["RIGHTSIZE_STORE__MIGRATE_ON_START"] == "false"
        assert gateway["stop_grace_period"] == "40s"
    assert (
        "./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["lb"]["volumes"]
    )
    lines = HAPROXY_CFG.read_text().splitlines()
    servers = [line.split()[2] for line in lines if line.strip().startswith("server ")]
    assert servers == ["gateway-1:4000", "gateway-2:4000"]
    assert services["vllm"]["profiles"] == ["gpu"]


# Imports of these raise ImportError: the image installs none of them (deploy/Dockerfile).
_WITHOUT_TRAINING = """
import sys
for name in ("torch", "sentence_transformers", "sklearn", "onnxruntime", "onnx", "transformers"):
    sys.modules[name] = None
from gateway.cli import main
main(["route", "Prove that there are infinitely many primes.", "--config", sys.argv[1], "--json"])
"""


def test_the_gateway_routes_without_the_training_extras() -> None:
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-not-used", "HOME": str(REPO)}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO)
    routed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAINING, str(BASE / "rightsize.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert routed.returncode == 0, routed.stderr[-2000:]
    route = json.loads(routed.stdout)
    assert 0 <= route["estimate"]["reasoning_demand"] <= 1  # the shipped router ran
    assert route["decision"]["deployment"] in {"gpt-4o-mini", "gpt-4o"}
