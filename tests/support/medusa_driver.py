"""Drive Cassandra Medusa's own code against an S3 endpoint, with no Cassandra.

Run with the python of the Medusa venv (tests/support/toolenv.py), never the product's:

    <medusa python> tests/support/medusa_driver.py ACTION '<json args>'      (or '-' to read stdin)

It prints exactly one JSON line on stdout (the last line; anything Medusa prints itself is
captured into the result's "output").  Exit status 0 when the action ran (its "ok" may still
be false, e.g. a verify that found errors), 1 on an unexpected exception (the JSON then has
"ok": false, "error" and "traceback").

Everything that talks to storage is unmodified Medusa 0.31: the S3 driver
(S3BaseStorage), Storage/NodeBackup, backup_node.start_backup -> do_backup ->
backup_snapshots -> check_already_uploaded, the index functions, verify.verify,
listing.list_backups, download.download_cmd, purge.main, purge.delete_backup.  Only the
Cassandra side is faked (schema, tokenmap, server version, and a snapshot that is an
existing directory), as Medusa's own tests do.  Like the medusa CLI, gevent monkey-patches
the process first (``"gevent": false`` to skip).

Common args:
  storage: {host, port, secure, bucket, key_file | credentials: {access_key_id,
            secret_access_key}, prefix, fqdn, multi_part_upload_threshold,
            multipart_chunksize, multipart_max_concurrency, concurrent_transfers,
            backup_grace_period_in_days, region, s3_addressing_style, storage_class, ...}
           (any other key goes to medusa.ini's [storage] as is)
  enable_md5_checks: bool (also accepted inside storage)
  medusa_retries: false (default) replaces Medusa's tenacity retries (up to 7 attempts,
           waits up to 120 s) by a single attempt so a failure shows at once instead of
           after minutes; true keeps Medusa's.  botocore's own retries are untouched.
  work_dir: where medusa.ini and the credentials file go (default: a temp dir)
  record_requests: true adds "requests" to the result: [method, path, Content-Encoding,
           x-amz-trailer, whether x-amz-checksum-crc32 was a header] of every HTTP request
           botocore sent (Medusa silences botocore's own log), to tell which kind of upload
           bodies this Medusa's client settings produce.

Actions and their own args -> result:
  backup   backup_name, mode: full|differential, snapshot_dir, [snapshot_tag]
           -> num_files, num_replaced, num_kept (Medusa's counts), uploaded (new files),
              reuploaded, kept, uploaded_files/reuploaded_files/kept_files (sorted
              "ks/table/[.idx/]name"), manifest (parsed), node_backup {started, finished,
              differential}
  verify   backup_name -> ok, output, errors (Medusa's error lines)
  list     -> backups (Medusa's list-backups --output json), latest (latest_backup name)
  download backup_name, [destination] -> destination, files {"ks/table/[.idx/]name": size}
  purge    [max_backup_age], [max_backup_count] -> objects_purged, size_purged,
           objects_within_grace, backups_purged
  delete   backup_names (list) or backup_name, [all_nodes] -> deleted
  version  -> medusa, boto3, botocore versions
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback


def _emit(result: dict) -> None:
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def _parse_argv(argv: list[str]) -> tuple[str, dict]:
    if len(argv) < 2:
        raise SystemExit("usage: medusa_driver.py ACTION [JSON|-]")
    action = argv[1]
    raw = argv[2] if len(argv) > 2 else "{}"
    if raw == "-":
        raw = sys.stdin.read()
    return action, json.loads(raw or "{}")


ACTION, ARGS = _parse_argv(sys.argv) if __name__ == "__main__" else ("", {})

if ARGS.get("gevent", True) and __name__ == "__main__":
    from gevent import monkey  # as medusa/medusacli.py does before anything else

    monkey.patch_all()

import datetime  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402

FAKE_SCHEMA = (
    "CREATE KEYSPACE ks1 WITH replication = {'class': 'SimpleStrategy', "
    "'replication_factor': '1'} AND durable_writes = true;\n"
)


# ------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------


def _bool_str(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


def build_config(args: dict, work_dir: pathlib.Path):
    """Write a medusa.ini and load it with Medusa's own medusa.config.load_config."""
    import configparser

    import medusa.config

    storage = dict(args.get("storage") or {})
    creds = storage.pop("credentials", None)
    if "bucket" in storage:
        storage["bucket_name"] = storage.pop("bucket")
    md5 = storage.pop("enable_md5_checks", args.get("enable_md5_checks", False))
    if creds:
        key_file = work_dir / "medusa-credentials"
        key_file.write_text(
            "[default]\n"
            f"aws_access_key_id = {creds['access_key_id']}\n"
            f"aws_secret_access_key = {creds['secret_access_key']}\n"
        )
        os.chmod(key_file, 0o600)
        storage["key_file"] = str(key_file)
    storage.setdefault("storage_provider", "s3_compatible")
    storage.setdefault("host", "127.0.0.1")
    storage.setdefault("secure", False)
    storage.setdefault("fqdn", "node1.test")
    storage.setdefault("region", "us-east-1")
    storage.setdefault("multi_part_upload_threshold", "5MB")
    storage.setdefault("multipart_chunksize", "5MB")
    storage.setdefault("concurrent_transfers", "1")
    storage.setdefault("backup_grace_period_in_days", "0")

    ini = configparser.ConfigParser(interpolation=None)
    ini["storage"] = {k: _bool_str(v) for k, v in storage.items() if v is not None}
    ini["cassandra"] = {"is_ccm": "0", "resolve_ip_addresses": "False", "use_sudo": "False"}
    ini["checks"] = {"enable_md5_checks": _bool_str(bool(md5))}
    ini["monitoring"] = {"monitoring_provider": "None"}
    ini["grpc"] = {"enabled": "False"}
    ini["kubernetes"] = {"enabled": "False"}
    path = work_dir / "medusa.ini"
    with open(path, "w") as f:
        ini.write(f)
    return medusa.config.load_config({}, path), bool(md5)


def disable_medusa_retries() -> int:
    """Make every tenacity-decorated function in medusa.* try once, without waiting."""
    import tenacity

    count = 0
    seen: set[int] = set()
    for name, module in list(sys.modules.items()):
        if not (name == "medusa" or name.startswith("medusa.")) or module is None:
            continue
        candidates = list(vars(module).values())
        for obj in list(candidates):
            if isinstance(obj, type) and obj.__module__.startswith("medusa"):
                candidates.extend(vars(obj).values())
        for obj in candidates:
            fn = getattr(obj, "__func__", obj)
            r = getattr(fn, "retry", None)
            if isinstance(r, tenacity.BaseRetrying) and id(r) not in seen:
                seen.add(id(r))
                r.stop = tenacity.stop_after_attempt(1)
                r.wait = tenacity.wait_none()
                r.reraise = True
                count += 1
    return count


def record_requests() -> list:
    """Record what botocore sends (one row per request, no secrets: no auth headers, no query)."""
    import urllib.parse

    import botocore.endpoint

    rows: list = []
    send = botocore.endpoint.Endpoint._send

    def recording_send(self, request):
        h = request.headers
        path = urllib.parse.urlsplit(request.url).path
        crc_header = "x-amz-checksum-crc32" in h
        rows.append([request.method, path, h.get("Content-Encoding"), h.get("x-amz-trailer"), crc_header])
        return send(self, request)

    botocore.endpoint.Endpoint._send = recording_send
    return rows


def _import_medusa() -> None:
    """Import the Medusa modules used here (their retry decorators must exist before patching)."""
    import importlib

    for name in ("backup_node", "download", "index", "listing", "purge", "storage", "verify"):
        importlib.import_module(f"medusa.{name}")


# ------------------------------------------------------------------------------------
# the fake Cassandra
# ------------------------------------------------------------------------------------


class FakeSession:
    def __init__(self, fqdn: str, schema: str) -> None:
        self.fqdn = fqdn
        self.schema = schema

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def dump_schema(self) -> str:
        return self.schema

    def tokenmap(self) -> dict:
        return {self.fqdn: {"tokens": [-9223372036854775808], "is_up": True, "rack": "r1", "dc": "dc1"}}

    def get_server_type_and_release_version(self):
        return "cassandra", "4.1.5"


class FakeSnapshot:
    """What Cassandra.Snapshot offers backup_node: find_dirs() over an existing directory.

    Layout, as a real data directory: <root>/<keyspace>/<table>-<cfid>/snapshots/<tag>/...
    (secondary index files in a .<index_name>/ sub-folder of the snapshot directory).
    Nothing is deleted on exit (a real snapshot would be cleared).
    """

    def __init__(self, root: pathlib.Path, tag: str) -> None:
        self.root = root
        self.tag = tag

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def find_dirs(self):
        from medusa.cassandra_utils import Cassandra, CqlSession, SnapshotPath

        return [
            SnapshotPath(pathlib.Path(d), *d.relative_to(self.root).parts[:2])
            for d in sorted(self.root.glob(Cassandra.SNAPSHOT_PATTERN.format(self.tag)))
            if d.is_dir() and d.parts[-4] not in CqlSession.EXCLUDED_KEYSPACES
        ]


class FakeCassandra:
    def __init__(self, fqdn: str, snapshot_root: pathlib.Path, tag: str, schema: str) -> None:
        self.fqdn = fqdn
        self.snapshot_root = snapshot_root
        self.tag = tag
        self.schema = schema
        self.snapshots_created: list[str] = []

    def new_session(self):
        return FakeSession(self.fqdn, self.schema)

    def create_snapshot(self, backup_name, keep_snapshot=False):
        self.snapshots_created.append(backup_name)
        return FakeSnapshot(self.snapshot_root, self.tag)

    def get_snapshot(self, backup_name, keep_snapshot=False):
        return FakeSnapshot(self.snapshot_root, self.tag)

    def snapshot_exists(self, tag):
        return True


# ------------------------------------------------------------------------------------
# actions
# ------------------------------------------------------------------------------------


def _local_rel(path: pathlib.Path) -> str:
    """ks/table/[.idx/]name of a snapshot file .../ks/table/snapshots/tag/[.idx/]name."""
    parts = pathlib.Path(path).parts
    i = len(parts) - 1 - parts[::-1].index("snapshots")
    return "/".join((*parts[i - 2 : i], *parts[i + 2 :]))


def _storage_rel(key: str) -> str:
    """ks/table/[.idx/]name of a storage key .../data/ks/table/[.idx/]name."""
    return key.split("/data/", 1)[1]


def action_backup(config, md5: bool, args: dict) -> dict:
    import medusa.backup_node as backup_node
    from medusa.monitoring import Monitoring
    from medusa.storage import Storage

    name = args["backup_name"]
    mode = args.get("mode", "full")
    if mode not in ("full", "differential"):
        raise ValueError(f"mode must be full or differential, not {mode!r}")
    root = pathlib.Path(args["snapshot_dir"])
    tag = args.get("snapshot_tag")
    if not tag:
        tags = {p.name for p in root.glob("*/*/snapshots/*") if p.is_dir()}
        if len(tags) != 1:
            raise ValueError(f"expected one snapshot tag under {root}, found {sorted(tags)}")
        tag = tags.pop()
    cassandra = FakeCassandra(config.storage.fqdn, root, tag, args.get("schema", FAKE_SCHEMA))

    # Observe (not change) Medusa's upload decision per table.
    decisions = {"uploaded": [], "reuploaded": [], "kept": []}
    original = backup_node.check_already_uploaded

    def spy(*a, **kw):
        needs_backup, needs_reupload, kept = original(*a, **kw)
        decisions["uploaded"] += [_local_rel(p) for p in needs_backup]
        decisions["reuploaded"] += [_local_rel(p) for p in needs_reupload]
        decisions["kept"] += [_storage_rel(mo.path) for mo in kept]
        return needs_backup, needs_reupload, kept

    backup_node.check_already_uploaded = spy
    # start_backup lowers its own CPU/IO priority (ionice idle, nice 19), which only slows
    # tests on a busy machine; it is not storage behaviour.
    backup_node.throttle_backup = lambda: None
    differential = mode == "differential"
    try:
        with Storage(config=config.storage) as storage:
            node_backup = storage.get_node_backup(fqdn=config.storage.fqdn, name=name, differential_mode=differential)
            if node_backup.exists():  # as handle_backup does
                raise OSError(f"Error: Backup {name} already exists")
            info = backup_node.start_backup(
                storage,
                node_backup,
                cassandra,
                differential,
                None,
                datetime.datetime.now(),
                mode,
                md5,
                name,
                config,
                Monitoring(config=config.monitoring),
            )
            manifest = json.loads(node_backup.manifest)
            nb = {
                "started": node_backup.started,
                "finished": node_backup.finished,
                "differential": node_backup.is_differential,
            }
    finally:
        backup_node.check_already_uploaded = original
    num_files, num_replaced, num_kept = info["num_files"], info["num_replaced"], info["num_kept"]
    return {
        "ok": True,
        "backup_name": name,
        "mode": mode,
        "num_files": num_files,
        "num_replaced": num_replaced,
        "num_kept": num_kept,
        "uploaded": num_files - num_replaced,
        "reuploaded": num_replaced,
        "kept": num_kept,
        "uploaded_files": sorted(decisions["uploaded"]),
        "reuploaded_files": sorted(decisions["reuploaded"]),
        "kept_files": sorted(decisions["kept"]),
        "manifest": manifest,
        "node_backup": nb,
    }


def action_verify(config, md5: bool, args: dict) -> dict:
    import medusa.verify

    out = io.StringIO()
    ok, error = True, None
    with contextlib.redirect_stdout(out):
        try:
            medusa.verify.verify(config, args["backup_name"], md5)
        except RuntimeError as e:
            ok, error = False, str(e)
    text = out.getvalue()
    return {
        "ok": ok,
        "error": error,
        "output": text,
        "errors": [line for line in text.splitlines() if line.startswith("  - [")],
    }


def action_list(config, md5: bool, args: dict) -> dict:
    import medusa.listing
    from medusa.storage import Storage

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        medusa.listing.list_backups(config, True, "json")
    backups = json.loads(out.getvalue().strip().splitlines()[-1])
    with Storage(config=config.storage) as storage:
        latest = storage.latest_node_backup(fqdn=config.storage.fqdn)
    return {"ok": True, "backups": backups, "latest": latest.name if latest else None}


def action_download(config, md5: bool, args: dict) -> dict:
    import medusa.download

    dest = args.get("destination") or tempfile.mkdtemp(prefix="medusa-download-")
    dest_path = pathlib.Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    try:
        medusa.download.download_cmd(config, args["backup_name"], dest_path, [], [], False)
    except SystemExit as e:
        return {"ok": False, "error": f"download exited with {e.code}", "destination": dest}
    files = {}
    for p in sorted(dest_path.rglob("*")):
        if p.is_file():
            files[p.relative_to(dest_path).as_posix()] = p.stat().st_size
    return {"ok": True, "destination": str(dest_path), "files": files}


def action_purge(config, md5: bool, args: dict) -> dict:
    import medusa.purge

    try:
        purged, size, within_grace, backups = medusa.purge.main(
            config,
            max_backup_age=int(args.get("max_backup_age", 0)),
            max_backup_count=int(args.get("max_backup_count", 0)),
        )
    except SystemExit as e:
        return {"ok": False, "error": f"purge exited with {e.code}"}
    return {
        "ok": True,
        "objects_purged": purged,
        "size_purged": size,
        "objects_within_grace": within_grace,
        "backups_purged": backups,
    }


def action_delete(config, md5: bool, args: dict) -> dict:
    import medusa.purge

    names = args.get("backup_names") or [args["backup_name"]]
    try:
        medusa.purge.delete_backup(config, names, bool(args.get("all_nodes", False)))
    except SystemExit as e:
        return {"ok": False, "error": f"delete-backup exited with {e.code}"}
    return {"ok": True, "deleted": names}


def action_version(config, md5: bool, args: dict) -> dict:
    from importlib.metadata import version

    return {
        "ok": True,
        "medusa": version("cassandra-medusa"),
        "boto3": version("boto3"),
        "botocore": version("botocore"),
    }


ACTIONS = {
    "backup": action_backup,
    "verify": action_verify,
    "list": action_list,
    "download": action_download,
    "purge": action_purge,
    "delete": action_delete,
    "version": action_version,
}


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def main(action: str, args: dict) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.get("log_level", "INFO")).upper()),
        format="[%(asctime)s] %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for var in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[var]  # they would override Medusa's key_file
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    if action not in ACTIONS:
        _emit({"ok": False, "error": f"unknown action {action!r}; one of {sorted(ACTIONS)}"})
        return 2
    captured = io.StringIO()
    try:
        _import_medusa()
        if not args.get("medusa_retries", False):
            n = disable_medusa_retries()
            logging.debug("disabled tenacity retries on %d Medusa functions", n)
        work_dir = pathlib.Path(args.get("work_dir") or tempfile.mkdtemp(prefix="medusa-drv-"))
        work_dir.mkdir(parents=True, exist_ok=True)
        config, md5 = (None, False) if action == "version" else build_config(args, work_dir)
        requests = record_requests() if args.get("record_requests") else None
        with contextlib.redirect_stdout(captured):
            result = ACTIONS[action](config, md5, args)
        if requests is not None:
            result["requests"] = [[_text(v) for v in row] for row in requests]
    except BaseException as e:  # report everything as JSON
        _emit(
            {
                "ok": False,
                "action": action,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
                "output": captured.getvalue(),
            }
        )
        return 1
    result.setdefault("output", captured.getvalue())
    result["action"] = action
    _emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(ACTION, ARGS))
