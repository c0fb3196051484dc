"""The Helm chart in deploy/helm/tuneforge renders (with Helm's own Go engine, bundled
by the `helm-python-sdk` wheel: the same code as `helm template`), lints clean, and
every rendered object passes the Kubernetes schema (strict: unknown fields are errors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tuneforge"
KUBERNETES_VERSIONS = ("1.31", kubernetes_validate.latest_version())

OVERRIDES: dict[str, Any] = {
    "replicaCount": 3,
    "trainer": {"namespace": "training", "memoryLimit": "40Gi"},
    "auth": {
        "allowedBuckets": ["shared/models/"],
        "tenantAllowedBuckets": {"acme": ["acme-data"]},
        "tenantHomeBucket": "tenants",
    },
    "s3": {"shareCredentialsWithTrainers": True},
    "extraEnv": {"TUNEFORGE_LOG_FORMAT": "json"},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name="tf", namespace="ml")
    objects = []
    for text in rendered.values():
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def api_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_chart_lints_without_errors() -> None:
    result = helm.lint(CHART)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= 3] == []  # no errors


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", [{}, OVERRIDES], ids=["defaults", "overrides"])
def test_every_rendered_object_passes_the_kubernetes_schema(
    values: dict[str, Any], version: str
) -> None:
    objects = render(values)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for manifest in objects:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_api_deployment_has_replicas_probes_and_requests() -> None:
    objects = render(OVERRIDES)
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    container = api_container(objects)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_disruption_budget_and_service_select_the_api_pods() -> None:
    objects = render()
    (deployment,) = by_kind(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_rbac_is_limited_to_trainer_jobs_and_pods_in_one_namespace() -> None:
    objects = render(OVERRIDES)
    (role,) = by_kind(objects, "Role")
    (binding,) = by_kind(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "training"
    assert by_kind(objects, "ClusterRole") == by_kind(objects, "ClusterRoleBinding") == []
    rules = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "services"): {"create", "get", "delete"},
    }
    (account,) = by_kind(objects, "ServiceAccount")
    (deployment,) = by_kind(objects, "Deployment")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "ml"}
    ]
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == (account["metadata"]["name"])
    )


def test_store_endpoint_and_credentials_come_from_values_and_a_secret() -> None:
    objects = render({"s3": {"endpoint": "https://s3.internal:9000", "credentialsSecret": "creds"}})
    env = {v["name"]: v for v in api_container(objects)["env"]}
    assert env["TUNEFORGE_S3_ENDPOINT_URL"]["value"] == "https://s3.internal:9000"
    for name, key in (
        ("TUNEFORGE_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("TUNEFORGE_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": key}
    assert env["TUNEFORGE_KUBERNETES_S3_SECRET"]["value"] == "creds"
    assert env["TUNEFORGE_LAUNCHER"]["value"] == "kubernetes"


def test_per_tenant_store_secrets_reach_the_server_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = {"acme": "tuneforge-s3-acme", "globex": "tuneforge-s3-globex"}
    objects = render({"s3": {"tenantCredentialsSecrets": secrets}})
    env = {v["name"]: v for v in api_container(objects)["env"]}
    value = env["TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS"]["value"]
    monkeypatch.setenv("TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS", value)
    assert Settings().kubernetes_tenant_s3_secrets == secrets
    assert "TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS" not in {
        v["name"] for v in api_container(render())["env"]
    }


def test_every_setting_the_chart_passes_is_one_the_server_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A misspelt TUNEFORGE_* variable would be ignored silently (extra="ignore")."""
    env = {v["name"]: v for v in api_container(render(OVERRIDES))["env"]}
    known = {f"TUNEFORGE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) - known == set()
    # And they parse, as the server reads them (its environment): valid settings.
    for name in [name for name in os.environ if name.startswith("TUNEFORGE_")]:
        monkeypatch.delenv(name)
    for name, variable in env.items():
        if "value" in variable:
            monkeypatch.setenv(name, variable["value"])
    settings = Settings()
    assert settings.allowed_buckets == ["shared/models/"]
    assert settings.tenant_allowed_buckets == {"acme": ["acme-data"]}
    assert settings.tenant_home_bucket == "tenants"
    assert settings.trainer_shared_credentials is True
    assert settings.launcher == "kubernetes"
    assert settings.kubernetes_namespace == "training"
    assert settings.kubernetes_trainer_memory_limit == "40Gi"
