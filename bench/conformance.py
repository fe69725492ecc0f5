"""Conformance: ceph/s3-tests straight on an upstream and through the proxy in front of it (not a test).

Usage:  python bench/conformance.py [--source PATH_OR_URL] [--commit SHA] [--upstream moto rclone]
                                    [--suite s3tests/functional/test_s3.py ...] [-k EXPR] [-m EXPR]
                                    [--workers N] [--out FILE] [--keep]

Gets ceph/s3-tests at the pinned commit (``--commit``, default ``S3_TESTS_COMMIT``) by cloning
``--source`` (its public GitHub repository by default, or a local clone or git directory),
installs its requirements in a venv of its own (``$TOOL_VENVS_DIR/s3-tests-<commit>``, or
``.venvs/`` in the repository; built once, like tests/support/toolenv.py's), and for each upstream
(default moto, then rclone) runs the suite's ``test_s3.py`` and ``test_headers.py``:

  direct   on a fresh upstream (moto's server mode, ``rclone serve s3``)
  proxy    on another fresh upstream of the same kind, through the proxy in front of it with every
           object encrypted (``encryption.encrypted_patterns: ["*"]``)

The suite's users (main, alt, tenant, iam...) are the upstream's own credentials straight on it
(moto takes any key; rclone is given one ``--auth-key`` per user) and clients of the proxy through
it. Each run's pass set comes from the suite's JUnit XML; printed per upstream: passed directly,
passed through the proxy, and the two differences by test name (``direct-only`` is what the
proxy breaks). JSON goes to ``--out`` (default bench/results/conformance-<time>.json).

Not part of pytest's run: one run of both files takes minutes per target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.servers import (  # noqa: E402 (the repository's harness, importable from here)
    MotoServer,
    ProxyProcess,
    RcloneS3Server,
    S3Server,
    proxy_config,
)

#: ceph/s3-tests at the commit these numbers were measured on (README, "S3 conformance").
S3_TESTS_COMMIT = "8f0ae7b404a3a2fcf7038bf1e6bf29544fe9b6a3"
S3_TESTS_URL = "https://github.com/ceph/s3-tests.git"
SUITE = ["s3tests/functional/test_s3.py", "s3tests/functional/test_headers.py"]
#: Left out by default (``-m``): these wait (10 s to minutes each) for lifecycle expiry,
#: transitions or restores that the server does in the background; neither moto nor rclone
#: does, so they fail directly and through the proxy alike, and they took half the run's time.
WAITING_MARKERS = "not lifecycle_expiration and not lifecycle_transition and not cloud_transition and not cloud_restore"
VENVS_DIR = Path(os.environ.get("TOOL_VENVS_DIR", REPO_ROOT / ".venvs"))

# The suite's users: (config section, access key, secret, user id, display name, email).
USERS = [
    ("s3 main", "mainaccesskey", "main-secret-key", "testid", "M. Tester", "tester@example.com"),
    ("s3 alt", "altaccesskey", "alt-secret-key", "56789abcdef0123456789abcdef0", "john.doe", "john.doe@example.com"),
    ("s3 tenant", "tenantaccesskey", "tenant-secret-key", "9876543210abcdef0123456789", "tenant", "t@example.com"),
    ("iam", "iamaccesskey", "iam-secret-key", "0123456789abcdef0123456789", "iam", "iam@example.com"),
    ("iam root", "iamrootaccesskey", "iam-root-secret", "RGW11111111111111111", "root", "root@example.com"),
    ("iam alt root", "iamaltrootkey", "iam-alt-root-secret", "RGW22222222222222222", "altroot", "alt@example.com"),
]


# Loaded into the suite's pytest (``-p``), for both targets of an upstream alike. The suite's
# bucket clean-up lists versions, which ``rclone serve s3`` answers NotImplemented: there it lists
# the objects instead, and aborts pending uploads. A bucket that still cannot be emptied or deleted
# (rclone keeps the directories of deleted keys and answers BucketNotEmpty; an object a failed test
# left under a legal hold cannot be deleted) is left behind instead of failing the setup and
# teardown of every later test of that worker: one test's failure counts once.
CLEANUP_PLUGIN = """
import contextlib

import s3tests.functional as functional
from botocore.exceptions import ClientError

_list_versions = functional.list_versions
_nuke_prefixed_buckets = functional.nuke_prefixed_buckets


def _objects(client, bucket, batch_size):
    with contextlib.suppress(ClientError):
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": batch_size})
    for page in pages:
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            yield keys


def list_versions(client, bucket, batch_size):
    try:
        yield from _list_versions(client, bucket, batch_size)
    except ClientError as err:
        if err.response["Error"]["Code"] != "NotImplemented":
            raise
        yield from _objects(client, bucket, batch_size)


def nuke_prefixed_buckets(prefix, client=None):
    with contextlib.suppress(Exception):
        _nuke_prefixed_buckets(prefix, client)


functional.list_versions = list_versions
functional.nuke_prefixed_buckets = nuke_prefixed_buckets
"""


@dataclass
class Run:
    target: str
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": sorted(self.passed),
            "failed": sorted(self.failed),
            "skipped": sorted(self.skipped),
            "seconds": round(self.seconds, 1),
        }


def checkout(source: str, commit: str, into: Path) -> Path:
    """ceph/s3-tests at ``commit`` in ``into`` (cloned once; a clone at another commit is moved on)."""
    if not (into / ".git").exists():
        if into.exists():
            shutil.rmtree(into)
        subprocess.run(["git", "clone", "--quiet", source, str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "--quiet", "--force", commit], check=True)
    return into


def suite_venv(src: Path, commit: str) -> Path:
    """The suite's venv with its requirements (and pytest-xdist for --workers), built once."""
    venv = VENVS_DIR / f"s3-tests-{commit[:12]}"
    stamp = venv / ".ready"
    if stamp.exists():
        return venv
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(src / "requirements.txt"), "pytest-xdist"], check=True)
    stamp.write_text(commit + "\n")
    return venv


def suite_config(path: Path, endpoint: str, users: list[tuple[str, ...]]) -> Path:
    host, _, port = endpoint.removeprefix("http://").partition(":")
    lines = [
        "[DEFAULT]",
        f"host = {host}",
        f"port = {port}",
        "is_secure = False",
        "ssl_verify = False",
        "[fixtures]",
        "bucket prefix = s3t-{random}-",
    ]
    for section, access, secret, user_id, display, email in users:
        lines += [
            f"[{section}]",
            f"access_key = {access}",
            f"secret_key = {secret}",
            f"user_id = {user_id}",
            f"display_name = {display}",
            f"email = {email}",
            "api_name = default",
            "tenant = testx",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_suite(venv: Path, src: Path, conf: Path, junit: Path, args: argparse.Namespace) -> None:
    (conf.parent / "conformance_cleanup.py").write_text(CLEANUP_PLUGIN)
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conformance_cleanup"]
    cmd.append(f"--junitxml={junit}")
    if args.workers > 1:
        cmd += ["-n", str(args.workers)]
    if args.k:
        cmd += ["-k", args.k]
    if args.m:
        cmd += ["-m", args.m]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # One attempt per call (the suite's clients set no retries of their own): a 500 counts as
    # it is, on both targets, instead of costing each failing test botocore's back-off.
    env.update(S3TEST_CONF=str(conf), PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(conf.parent), AWS_MAX_ATTEMPTS="1")
    with open(junit.with_suffix(".log"), "w") as out:
        subprocess.run([*cmd, *args.suite], cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)


def outcomes(junit: Path, target: str) -> Run:
    run = Run(target)
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("skipped") is not None:
            run.skipped.add(name)
        elif case.find("failure") is not None or case.find("error") is not None:
            run.failed.add(name)
        else:
            run.passed.add(name)
    return run


def new_upstream(kind: str, workdir: Path) -> S3Server:
    if kind == "moto":
        return MotoServer(workdir).start()
    keys = [arg for _, access, secret, *_ in USERS for arg in ("--auth-key", f"{access},{secret}")]
    server = RcloneS3Server(workdir, extra_args=keys)
    server.access_key, server.secret_key = USERS[0][1], USERS[0][2]
    return server.start()


def measure(kind: str, through_proxy: bool, args: argparse.Namespace, venv: Path, src: Path, work: Path) -> Run:
    target = f"{kind}-{'proxy' if through_proxy else 'direct'}"
    where = work / target
    where.mkdir(parents=True)
    upstream = new_upstream(kind, where / "upstream")
    proxy: ProxyProcess | None = None
    started = time.monotonic()
    try:
        endpoint = upstream.endpoint_url
        if through_proxy:
            clients = [{"access_key_id": u[1], "secret_access_key": u[2]} for u in USERS]
            config = proxy_config(
                upstream,
                where,
                clients=clients,
                encryption={"encrypted_patterns": ["*"]},
                logging={"format": "text", "level": "WARNING"},
            )
            (where / "proxy").mkdir()
            proxy = ProxyProcess(config, where / "proxy")
            endpoint = proxy.endpoint_url
        conf = suite_config(where / "s3tests.conf", endpoint, USERS)
        junit = where / "junit.xml"
        run_suite(venv, src, conf, junit, args)
        run = outcomes(junit, target)
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stop()
    run.seconds = time.monotonic() - started
    print(
        f"{target}: {len(run.passed)} passed, {len(run.failed)} failed, {len(run.skipped)} skipped "
        f"in {run.seconds:.0f} s",
        flush=True,
    )
    return run


TARGETS = ("direct", "proxy")


def print_difference(kind: str, direct: set[str], proxied: set[str]) -> tuple[list[str], list[str]]:
    """Print both pass sets' sizes and their differences; (direct only, proxy only)."""
    lost, gained = sorted(direct - proxied), sorted(proxied - direct)
    print(f"\n== {kind}: {len(direct)} pass directly, {len(proxied)} through the proxy")
    print(f"-- {len(lost)} pass directly but not through the proxy:")
    print("\n".join(f"   {name}" for name in lost))
    print(f"-- {len(gained)} pass through the proxy but not directly:")
    print("\n".join(f"   {name}" for name in gained), flush=True)
    return lost, gained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=S3_TESTS_URL, help="ceph/s3-tests to clone (URL, clone or git dir)")
    parser.add_argument("--commit", default=S3_TESTS_COMMIT)
    parser.add_argument("--upstream", nargs="+", default=["moto", "rclone"], choices=["moto", "rclone"])
    parser.add_argument("--suite", nargs="+", default=SUITE)
    parser.add_argument("-k", default=None, help="pytest -k expression (a subset of the suite)")
    parser.add_argument("-m", default=WAITING_MARKERS, help="pytest -m expression ('' runs every test)")
    parser.add_argument("--workers", type=int, default=4, help="pytest-xdist workers per run")
    parser.add_argument("--targets", nargs="+", default=["direct", "proxy"], choices=["direct", "proxy"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, JUnit XML)")
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("DIRECT_JSON", "PROXY_JSON"),
        help="print the differences of two earlier reports (runs made side by side with --targets)",
    )
    args = parser.parse_args()
    if args.compare:
        reports = [json.loads(path.read_text())["upstreams"] for path in args.compare]
        for kind in reports[0]:
            direct, proxied = (report[kind][target]["passed"] for report, target in zip(reports, TARGETS, strict=True))
            print_difference(kind, set(direct), set(proxied))
        return 0

    src = checkout(args.source, args.commit, VENVS_DIR / f"s3-tests-src-{args.commit[:12]}")
    venv = suite_venv(src, args.commit)
    work = Path(tempfile.mkdtemp(prefix="conformance-"))
    report: dict[str, Any] = {"commit": args.commit, "suite": args.suite, "k": args.k, "m": args.m, "upstreams": {}}
    try:
        for kind in args.upstream:
            if args.targets != ["direct", "proxy"]:  # one target alone (to run targets side by side)
                for target in args.targets:
                    run = measure(kind, target == "proxy", args, venv, src, work)
                    report["upstreams"].setdefault(kind, {})[target] = run.as_json()
                continue
            direct = measure(kind, False, args, venv, src, work)
            proxied = measure(kind, True, args, venv, src, work)
            lost, gained = print_difference(kind, direct.passed, proxied.passed)
            report["upstreams"][kind] = {"direct": direct.as_json(), "proxy": proxied.as_json()}
            report["upstreams"][kind].update(direct_only=lost, proxy_only=gained)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or REPO_ROOT / "bench" / "results" / f"conformance-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
