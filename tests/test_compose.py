"""compose.yaml cannot run here (no Docker engine); check that its structure is what users need."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devstack.haproxy import find_haproxy
from devstack.mongo import hub_role

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_services_are_the_real_servers_pinned() -> None:
    services = _compose()["services"]
    always = {name for name, s in services.items() if not s.get("profiles")}
    assert always == {"minio", "mongodb", "kafka", "hub", "proxy"}
    # the tracing profile (optional): a collector and Jaeger, pinned, the UI on loopback only
    assert {name for name, s in services.items() if "tracing" in s.get("profiles", [])} == {"otel-collector", "jaeger"}
    assert services["jaeger"]["ports"] == ["127.0.0.1:16686:16686"]
    assert services["hub"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
    for name in ("minio", "mongodb", "kafka", "proxy", "otel-collector", "jaeger"):
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
    assert hub_env["HUB_MONGO_URL"].endswith("replicaSet=rs0&authSource=admin")
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
    # the admin API + console, and function URLs on an origin of their own
    assert proxy["image"].startswith("haproxy:") and proxy["ports"] == ["8080:8080", "8081:8081"]
    assert hub["environment"]["HUB_FN_PORT"] == "8081" and "frontend functions" in (ROOT / "deploy/haproxy.cfg").read_text()
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    cfg = (ROOT / "deploy/haproxy.cfg").read_text()
    assert "server-template hub" in cfg and "resolvers docker" in cfg  # every replica, by DNS
    assert "option httpchk GET /healthz" in cfg and "option redispatch" in cfg
    checked = subprocess.run([find_haproxy(), "-c", "-f", ROOT / "deploy/haproxy.cfg"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- issue 16: nothing reachable from elsewhere, nothing built in ----------------------------------
SECRETS = ("HUB_API_TOKEN", "HUB_WEBHOOK_TOKEN", "MONGO_ROOT_PASSWORD", "MONGO_HUB_PASSWORD", "HUB_S3_SECRET_KEY")
SECRET_KEYS = re.compile(r"(TOKEN|PASSWORD|SECRET)", re.IGNORECASE)


def _required(value: str) -> set[str]:
    """The variables ``value`` interpolates with ``${VAR:?message}`` (compose fails when unset)."""
    return set(re.findall(r"\$\{(\w+):\?[^}]+\}", value))


def test_servers_are_published_on_loopback_only() -> None:
    services = _compose()["services"]
    for name in ("mongodb", "kafka", "minio"):
        ports = services[name]["ports"]
        assert ports, name
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
    assert "ports" not in services["hub"]


def test_no_built_in_passwords_or_tokens() -> None:
    text = (ROOT / "compose.yaml").read_text()
    for stale in ("change-me", "hubadmin-secret", ":-change", "password123"):
        assert stale not in text
    services = _compose()["services"]
    required: set[str] = set()
    for name, service in services.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRET_KEYS.search(key) and key not in ("MINIO_NOTIFY_WEBHOOK_ENABLE_HUB",):
                found = _required(str(value))
                assert found, f"{name}.{key} must come from ${{VAR:?message}}, not a literal: {value!r}"
                required |= found
        required |= _required(str(env.get("HUB_MONGO_URL", "")))
    assert required == set(SECRETS), required
    # every secret anywhere in the file is interpolated this way, never with a default (":-")
    for var in SECRETS:
        assert not re.search(rf"\$\{{{var}:-", text), var
        assert not re.search(rf"\$\{{{var}\}}", text), f"{var} without :? would be empty when unset"
    # the message says what to do
    for message in re.findall(r"\$\{\w+:\?([^}]+)\}", text):
        assert message.startswith("set ") and "compose.yaml" in message


def test_mongodb_requires_authentication_with_a_keyfile() -> None:
    services = _compose()["services"]
    mongo, hub = services["mongodb"], services["hub"]
    command = mongo["command"]
    assert "--auth" in command and "--keyFile" in command
    keyfile = command[command.index("--keyFile") + 1]
    assert keyfile.startswith("/data/configdb/") and "mongo-config:/data/configdb" in mongo["volumes"]
    script = " ".join(mongo["entrypoint"])
    assert keyfile in script and "chmod 0400" in script and "docker-entrypoint.sh" in script
    assert "$$" in script  # compose would otherwise interpolate the shell's variables itself
    assert mongo["environment"]["MONGO_INITDB_ROOT_USERNAME"] == "admin"
    url = hub["environment"]["HUB_MONGO_URL"]
    assert url.startswith("mongodb://hub:${MONGO_HUB_PASSWORD:?") and "authSource=admin" in url
    assert hub["environment"]["HUB_MONGO_DB"] == "trigger_hub"
    # the hub user gets the same narrow role as ./scripts/run's (devstack/mongo.py)
    check = " ".join(mongo["healthcheck"]["test"])
    assert "process.env.MONGO_INITDB_ROOT_PASSWORD" in check and "process.env.MONGO_HUB_PASSWORD" in check
    privileges, roles = hub_role("trigger_hub")
    for role in roles:
        assert f"{{role: '{role['role']}', db: '{role['db']}'}}" in check
    for privilege in privileges:
        resource = privilege["resource"]
        actions = ", ".join(f"'{a}'" for a in privilege["actions"])
        assert (f"{{resource: {{db: '{resource['db']}', collection: '{resource['collection']}'}}, "
                f"actions: [{actions}]}}") in check, privilege


def test_keyfile_entrypoint_script_runs(tmp_path: Path) -> None:
    """The entrypoint's shell, as compose hands it over ($$ -> $), with the paths moved here."""
    mongo = _compose()["services"]["mongodb"]
    script = mongo["entrypoint"][2].replace("$$", "$").replace("/data/configdb", str(tmp_path))
    script = script.replace("chown mongodb:mongodb", "true").replace("docker-entrypoint.sh", "echo")
    done = subprocess.run(["bash", "-c", script, "mongodb-keyfile", *mongo["command"]],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == mongo["command"]
    key = (tmp_path / "keyfile")
    assert key.stat().st_mode & 0o777 == 0o400
    assert re.fullmatch(r"[A-Za-z0-9+/=]{1008}", key.read_text())  # mongod: base64, 6 to 1024 chars
    before = key.read_text()
    subprocess.run(["bash", "-c", script, "mongodb-keyfile", "mongod"], check=True, capture_output=True)
    assert key.read_text() == before  # kept across restarts
