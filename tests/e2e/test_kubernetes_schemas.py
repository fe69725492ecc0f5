"""The deploy/ manifests against Kubernetes' own schemas (kubernetes-validate --strict, offline).

The plain objects of deploy/k8ssandra/ and deploy/kubernetes/ as they are; the K8ssandraCluster
(a custom resource, checked against the operator's CRD in tests/project/test_k8ssandra_manifests.py)
as the pod the operator renders from it: its initContainers and extraVolumes, then the
operator's own containers (only named here).  Native sidecars (an init container's
``restartPolicy``) need Kubernetes 1.29 (on by default; 1.28 behind a feature gate): 1.27's
schema refuses the field, which is what an older API server does with it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAIN = [
    REPO / "deploy" / "k8ssandra" / "configmap.yaml",
    REPO / "deploy" / "k8ssandra" / "configmap-kms.yaml",
    REPO / "deploy" / "kubernetes" / "configmap.yaml",
    REPO / "deploy" / "kubernetes" / "secrets.example.yaml",
    REPO / "deploy" / "kubernetes" / "statefulset-sidecar.yaml",
]
CLUSTER = REPO / "deploy" / "k8ssandra" / "k8ssandracluster.yaml"


def rendered_pod(cluster: dict[str, Any]) -> dict[str, Any]:
    """The Cassandra pod k8ssandra-operator makes of the cluster (its own containers only named)."""
    cassandra = cluster["spec"]["cassandra"]
    storage_secret = cluster["spec"]["medusa"]["storageProperties"]["storageSecretRef"]["name"]
    operator_init = [{"name": "server-config-init", "image": "cass-config-builder"}]
    operator_init.append({"name": "medusa-restore", "image": "medusa"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{cluster['metadata']['name']}-dc1-default-sts-0"},
        "spec": {
            "securityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999},  # cass-operator's
            "initContainers": cassandra["initContainers"] + operator_init,
            "containers": [{"name": "cassandra", "image": "cassandra"}, {"name": "medusa", "image": "medusa"}],
            "volumes": cassandra["extraVolumes"]["volumes"]
            + [{"name": storage_secret, "secret": {"secretName": storage_secret}}],
        },
    }


def validate(tool: str, version: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "--strict", "--kubernetes-version", version, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_manifests_validate_strictly(kubernetes_validate: str, version: str, tmp_path: Path) -> None:
    pod = tmp_path / "rendered-pod.yaml"
    pod.write_text(yaml.safe_dump(rendered_pod(yaml.safe_load(CLUSTER.read_text()))))
    files = [*PLAIN, pod]
    done = validate(kubernetes_validate, version, files)
    assert done.returncode == 0, done.stdout + done.stderr
    documents = sum(1 for f in files for d in yaml.safe_load_all(f.read_text()) if d)
    minor = version.rsplit(".", 1)[0]
    assert done.stdout.count("passed for resource") == documents, done.stdout
    assert f"against version {minor}" in done.stdout
    assert "pod/demo-dc1-default-sts-0" in done.stdout


def test_native_sidecar_needs_a_recent_kubernetes(kubernetes_validate: str, tmp_path: Path) -> None:
    pod = tmp_path / "rendered-pod.yaml"
    pod.write_text(yaml.safe_dump(rendered_pod(yaml.safe_load(CLUSTER.read_text()))))
    done = validate(kubernetes_validate, "1.27.0", [pod])
    assert done.returncode != 0
    assert "'restartPolicy' was unexpected" in done.stdout + done.stderr
