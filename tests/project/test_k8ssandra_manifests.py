"""deploy/k8ssandra/ as k8ssandra-operator and the proxy would take it, with nothing started.

Every custom resource (the manifests, and those in the README: K8ssandraCluster, MedusaBackupJob,
MedusaTask, MedusaRestoreJob) is validated against the operator's own CRD schema
(tests/data/k8ssandra/, its version noted there), strictly: an unknown field is an
error, as with ``kubectl apply --validate=strict``, since the API server would otherwise drop a
misspelt field without a word.  The plain objects get the checks that matter for them, and the
pieces are cross-checked: every mount has its volume, every ConfigMap and Secret item exists, every
file the proxy's config names lies on one of the proxy's mounts, Medusa's port and credentials
agree with the proxy's, and the sidecar is the same container as deploy/kubernetes/'s.
(Kubernetes' own schemas: tests/e2e/test_kubernetes_schemas.py.)
"""

from __future__ import annotations

import configparser
import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "k8ssandra"
SCHEMAS = REPO / "tests" / "data" / "k8ssandra"
SECRETS = REPO / "deploy" / "kubernetes" / "secrets.example.yaml"
SIDECAR = REPO / "deploy" / "kubernetes" / "statefulset-sidecar.yaml"
PROXY = "medusa-crypt-proxy"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(name, document) of every manifest in deploy/k8ssandra/ and every object in its README."""
    found = [(f"{p.name}#{i}", d) for p in sorted(DEPLOY.glob("*.yaml")) for i, d in enumerate(load_all(p))]
    readme = (DEPLOY / "README.md").read_text()
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", readme, re.S)):
        found += [(f"README.md#{i}", d) for d in yaml.safe_load_all(block) if isinstance(d, dict) and "kind" in d]
    return found


MANIFESTS = manifests()
# the recipe's cluster (the README's K8ssandraCluster is a fragment to merge into it)
CLUSTERS = [(n, d) for n, d in MANIFESTS if d["kind"] == "K8ssandraCluster" and not n.startswith("README")]
CONFIGMAPS = [(n, d) for n, d in MANIFESTS if d["kind"] == "ConfigMap"]
CUSTOM = [(n, d) for n, d in MANIFESTS if d["kind"] != "ConfigMap"]


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    known = "properties" in out and "additionalProperties" not in out
    if known and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator of the stored CRD schema."""
    validators = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        data = json.loads(path.read_text())
        schema = strict(data["openAPIV3Schema"])
        jsonschema.Draft7Validator.check_schema(schema)
        validators[(data["apiVersion"], data["kind"])] = jsonschema.Draft7Validator(schema)
    return validators


VALIDATORS = crd_validators()


def errors(doc: dict[str, Any]) -> list[str]:
    validator = VALIDATORS[(doc["apiVersion"], doc["kind"])]
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))


def proxy_container(cluster: dict[str, Any]) -> dict[str, Any]:
    init = cluster["spec"]["cassandra"]["initContainers"]
    return next(c for c in init if c["name"] == PROXY)


def secrets() -> dict[str, dict[str, str]]:
    """name -> items of the Secrets the recipe uses (deploy/kubernetes/secrets.example.yaml)."""
    return {d["metadata"]["name"]: d["stringData"] for d in load_all(SECRETS) if d["kind"] == "Secret"}


def config_yaml(configmap: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    return config


def test_the_recipe_has_its_manifests() -> None:
    kinds = sorted({d["kind"] for _, d in MANIFESTS})
    assert kinds == ["ConfigMap", "K8ssandraCluster", "MedusaBackupJob", "MedusaRestoreJob", "MedusaTask"]
    assert {(v, k) for v, k in VALIDATORS} >= {(d["apiVersion"], d["kind"]) for _, d in CUSTOM}
    assert [n for n, _ in CLUSTERS] == ["k8ssandracluster.yaml#0"]
    assert {n.split("#")[0] for n, _ in CONFIGMAPS} == {"configmap.yaml", "configmap-kms.yaml"}


@pytest.mark.parametrize(("name", "doc"), CUSTOM, ids=[n for n, _ in CUSTOM])
def test_custom_resources_match_the_operators_crds(name: str, doc: dict[str, Any]) -> None:
    assert errors(doc) == [], name
    assert DNS_1123.match(doc["metadata"]["name"])


def test_the_crd_check_refuses_what_the_operator_would_not_take() -> None:
    """A misspelt field, a wrong type, an unknown provider: each one is caught."""
    doc = dict(CLUSTERS[0][1])
    cases = [
        (("spec", "cassandra", "initContainers", 0, "restartPolicyy"), "Always", "Additional properties"),
        (("spec", "medusa", "storageProperties", "port"), "8333", "is not of type 'integer'"),
        (("spec", "medusa", "storageProperties", "storageProvider"), "minio", "is not one of"),
        (("spec", "cassandra", "podTemplateSpec"), {}, "Additional properties"),  # cass-operator's, not here
    ]
    for path, value, message in cases:
        broken = copy.deepcopy(doc)
        node: Any = broken
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
        found = errors(broken)
        assert len(found) == 1 and message in found[0], (path, found)


@pytest.mark.parametrize(("name", "doc"), CLUSTERS, ids=[n for n, _ in CLUSTERS])
def test_medusa_goes_through_the_sidecar(name: str, doc: dict[str, Any]) -> None:
    """A native sidecar listed first, so it runs before the operator's medusa-restore."""
    cassandra, medusa = doc["spec"]["cassandra"], doc["spec"]["medusa"]["storageProperties"]
    init = cassandra["initContainers"]
    assert init[0]["name"] == PROXY and init[0]["restartPolicy"] == "Always"
    assert "medusa-restore" not in {c["name"] for c in init}  # the operator appends its own after
    (configmap,) = [d for n, d in CONFIGMAPS if n.startswith("configmap.yaml")]
    listen = config_yaml(configmap)["listen"]
    assert (medusa["storageProvider"], medusa["host"], medusa["port"]) == ("s3_compatible", "127.0.0.1", listen["port"])
    assert medusa["secure"] is ("tls" in config_yaml(configmap))
    assert medusa["credentialsType"] == "credential-based"
    # Medusa's key_file is the `credentials` item of the storage Secret: the proxy's client pair
    creds = configparser.ConfigParser()
    creds.read_string(secrets()[medusa["storageSecretRef"]["name"]]["credentials"])
    clients = config_yaml(configmap)["clients"]
    assert creds["default"]["aws_access_key_id"] == clients[0]["access_key_id"]
    ports = {p["name"]: p["containerPort"] for p in init[0]["ports"]}
    assert ports["s3-proxy"] == listen["port"]


def test_the_jobs_name_the_recipes_datacenter_and_backup() -> None:
    (_, cluster), *_ = CLUSTERS
    datacenters = {dc["metadata"]["name"] for dc in cluster["spec"]["cassandra"]["datacenters"]}
    jobs = [d for _, d in CUSTOM if d["kind"].startswith("Medusa")]
    assert {j["spec"]["cassandraDatacenter"] for j in jobs} <= datacenters
    backups = {j["metadata"]["name"] for j in jobs if j["kind"] == "MedusaBackupJob"}
    assert {j["spec"]["backup"] for j in jobs if j["kind"] == "MedusaRestoreJob"} <= backups


@pytest.mark.parametrize(("name", "doc"), CLUSTERS, ids=[n for n, _ in CLUSTERS])
def test_the_sidecar_is_deploy_kubernetes_one(name: str, doc: dict[str, Any]) -> None:
    """The same container and volumes as the plain StatefulSet recipe, so fixes reach both."""
    (sts,) = [d for d in load_all(SIDECAR) if d["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (reference,) = [c for c in pod["initContainers"] if c["name"] == PROXY]
    assert proxy_container(doc) == reference
    volumes = doc["spec"]["cassandra"]["extraVolumes"]["volumes"]
    mounted = {m["name"] for m in reference["volumeMounts"]}
    assert volumes == [v for v in pod["volumes"] if v["name"] in mounted]


@pytest.mark.parametrize(("name", "doc"), CLUSTERS, ids=[n for n, _ in CLUSTERS])
def test_every_mount_volume_and_item_exists(name: str, doc: dict[str, Any]) -> None:
    container = proxy_container(doc)
    volumes = {v["name"]: v for v in doc["spec"]["cassandra"]["extraVolumes"]["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} == set(volumes)
    configmaps = {d["metadata"]["name"]: d for _, d in CONFIGMAPS}
    known_secrets = secrets()
    for volume in volumes.values():
        if "configMap" in volume:
            data = configmaps[volume["configMap"]["name"]]["data"]
            assert {i["key"] for i in volume["configMap"]["items"]} <= set(data)
        if "secret" in volume:
            items = known_secrets[volume["secret"]["secretName"]]
            assert {i["key"] for i in volume["secret"].get("items", [])} <= set(items)
    for ref in container.get("envFrom", []):
        assert ref["secretRef"]["name"] in known_secrets


def file_paths(node: Any, key: str = "") -> list[str]:
    """Every file path a proxy config names (``*_file``, ``*_files``, ``cache.path``)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in file_paths(v, k)]
    if isinstance(node, list):
        return [p for v in node for p in file_paths(v, key)]
    return [node] if isinstance(node, str) and (key.endswith(("_file", "_files")) or key == "path") else []


@pytest.mark.parametrize(("name", "configmap"), CONFIGMAPS, ids=[n for n, _ in CONFIGMAPS])
def test_configmap_is_a_config_the_proxy_takes(name: str, configmap: dict[str, Any], tmp_path: Path) -> None:
    from proxy.config import parse_config
    from tests.e2e.test_doc_examples import _real_files

    assert (configmap["apiVersion"], configmap["kind"]) == ("v1", "ConfigMap")
    assert DNS_1123.match(configmap["metadata"]["name"])
    assert set(configmap["data"]) == {"config.yaml"}  # medusa.ini is the operator's
    assert all(isinstance(v, str) for v in configmap["data"].values())
    config = config_yaml(configmap)
    parse_config(_real_files(config, tmp_path), environ={})
    # every file it names is on one of the proxy's mounts
    (_, cluster), *_ = CLUSTERS
    mounts = [m["mountPath"] for m in proxy_container(cluster)["volumeMounts"]]
    for path in file_paths(config):
        assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), path
    # the same config as deploy/kubernetes/, but for the KMS variant's encryption section
    (plain,) = [d for d in load_all(REPO / "deploy" / "kubernetes" / "configmap.yaml") if d["kind"] == "ConfigMap"]
    reference = config_yaml(plain)
    if name.startswith("configmap-kms"):
        assert config["encryption"]["format_version"] == 2 and config["encryption"]["kms"]["key_id"]
        assert config["encryption"]["key_files"] == reference["encryption"]["key_files"]
        config, reference = {**config, "encryption": None}, {**reference, "encryption": None}
    assert config == reference
