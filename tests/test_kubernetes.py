"""The Kubernetes manifests (deploy/kubernetes: a kustomize base and a production overlay)
validate against the Kubernetes schemas (kubernetes-validate, offline) and say what the
operations contract needs: probes, shutdown timing, settings from a ConfigMap and a Secret."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy/kubernetes/base"
OVERLAY = ROOT / "deploy/kubernetes/overlays/production"
K8S_VERSION = kubernetes_validate.latest_version()


def _base_resources() -> list[dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def _built(overlay: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _by_kind(docs) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _validate(docs) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises with the reason


def test_the_base_validates_against_the_kubernetes_schemas():
    docs = _base_resources()
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Deployment", "Job", "Service", "Ingress",
                                         "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    _validate(docs)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_the_production_overlay_builds_and_validates():
    docs = _built(OVERLAY)
    _validate(docs)
    kinds = _by_kind(docs)
    assert all(d["metadata"]["namespace"] == "sonicus" for d in docs)
    web = kinds[("Deployment", "sonicus-web")]
    assert web["spec"]["replicas"] == 3
    assert web["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "registry.example.com/sonicus:")
    assert kinds[("ConfigMap", "sonicus-config")]["data"]["PUBLIC_BASE_URL"].startswith("https://")


def _container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_probes_and_shutdown_fit_the_operations_contract():
    kinds = _by_kind(_base_resources())
    web = kinds[("Deployment", "sonicus-web")]
    container = _container(web)
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/ready"
    # preStop, then gunicorn's graceful timeout (30 s), all inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + 30 < web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    worker = kinds[("Deployment", "sonicus-worker")]
    assert _container(worker)["livenessProbe"]["exec"]["command"][-2:] == [
        "sonicus.healthcheck", "worker"]
    # a running job (timeout 120 s) may finish after SIGTERM
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 120
    ingress = kinds[("Ingress", "sonicus")]["metadata"]["annotations"]
    assert int(ingress["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_sockets_go_to_the_socket_process_type():
    kinds = _by_kind(_base_resources())
    ws = kinds[("Deployment", "sonicus-ws")]
    container = _container(ws)
    assert {e["name"]: e["value"] for e in container["env"]}["SONICUS_PROCESS"] == "ws"
    assert container["command"] == _container(kinds[("Deployment", "sonicus-web")])["command"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + 30 < ws["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    paths = {p["path"]: p["backend"]["service"]["name"]
             for p in kinds[("Ingress", "sonicus")]["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {"/ws/": "sonicus-ws", "/": "sonicus-web"}
    assert kinds[("Service", "sonicus-ws")]["spec"]["selector"]["app.kubernetes.io/component"] \
        == "ws"


def test_every_setting_comes_from_the_configmap_or_the_secret():
    docs = _base_resources()
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            sources = [next(iter(s)) for s in container["envFrom"]]
            assert sources == ["configMapRef", "secretRef"], doc["metadata"]["name"]
            names = {e["name"] for e in container.get("env", [])}
            # only which process type this is, where it listens, and its database connections
            # (tests/test_database_connections.py adds them up)
            assert names <= {"SONICUS_BIND", "SONICUS_PROCESS", "SONICUS_WS_BIND",
                             "DATABASE_POOL_SIZE", "DATABASE_MAX_OVERFLOW",
                             "IDEMPOTENCY_POOL_SIZE", "IDEMPOTENCY_MAX_OVERFLOW",
                             "IDEMPOTENCY_CONNECTIONS_MAX_OPEN",
                             "IDEMPOTENCY_CONNECTIONS_KEEP_IDLE"}, names
    config = _by_kind(docs)[("ConfigMap", "sonicus-config")]["data"]
    assert not {"SECRET_KEY", "DATABASE_URL", "STRIPE_API_KEY", "METRICS_TOKEN"} & set(config)
