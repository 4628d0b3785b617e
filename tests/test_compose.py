"""compose.yaml cannot run here (no Docker engine); check that its structure is what users need."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from devstack.haproxy import find_haproxy

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_services_are_the_real_servers_pinned() -> None:
    services = _compose()["services"]
    assert set(services) == {"minio", "mongodb", "kafka", "hub", "proxy"}
    for name in ("minio", "mongodb", "kafka", "proxy"):
        image = services[name]["image"]
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and tag != "latest", f"{name} image must be pinned: {image}"
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    assert "--replSet" in services["mongodb"]["command"]
    assert "rs.initiate" in " ".join(services["mongodb"]["healthcheck"]["test"])
    kafka_env = services["kafka"]["environment"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in kafka_env


def test_minio_notifies_the_hub_and_the_hub_knows_minio() -> None:
    services = _compose()["services"]
    minio_env, hub_env = services["minio"]["environment"], services["hub"]["environment"]
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENABLE_HUB"] == "on"
    # through the proxy: the shared address, never one replica's
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_HUB"] == "http://proxy:8080/v1/sources/s3/events"
    assert hub_env["HUB_PUBLIC_URL"] == "http://proxy:8080"
    assert minio_env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_HUB"] == hub_env["HUB_WEBHOOK_TOKEN"]
    assert hub_env["HUB_S3_FLAVOR"] == "minio"
    # the ARN MinIO gives a webhook target named HUB
    assert hub_env["HUB_S3_MINIO_WEBHOOK_ARN"] == "arn:minio:sqs::HUB:webhook"
    assert hub_env["HUB_S3_ENDPOINT"] == "http://minio:9000"
    assert minio_env["MINIO_ROOT_USER"] == hub_env["HUB_S3_ACCESS_KEY"]
    assert hub_env["HUB_MONGO_URL"].endswith("replicaSet=rs0")
    assert hub_env["HUB_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_hub_is_built_from_the_repo() -> None:
    hub = _compose()["services"]["hub"]
    assert hub["build"] == "."
    assert set(hub["depends_on"]) == {"mongodb", "kafka", "minio"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "bubblewrap" in dockerfile and '"hub", "serve"' in dockerfile
    assert "fiftyone" not in dockerfile and "calfkit" not in dockerfile  # no SSPL mongod in the image


def test_replicas_behind_a_health_checked_proxy() -> None:
    services = _compose()["services"]
    hub, proxy = services["hub"], services["proxy"]
    assert hub["deploy"]["replicas"] == "${HUB_REPLICAS:-3}"
    assert "ports" not in hub  # reached only through the proxy
    assert proxy["image"].startswith("haproxy:") and proxy["ports"] == ["8080:8080"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    cfg = (ROOT / "deploy/haproxy.cfg").read_text()
    assert "server-template hub" in cfg and "resolvers docker" in cfg  # every replica, by DNS
    assert "option httpchk GET /healthz" in cfg and "option redispatch" in cfg
    checked = subprocess.run([find_haproxy(), "-c", "-f", ROOT / "deploy/haproxy.cfg"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
