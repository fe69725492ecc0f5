"""The offline tools' command line: work on stored objects without the daemon."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from proxy.config import ConfigError

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.objects.passthrough import PassthroughService
    from proxy.objects.service import ObjectService

    Service = PassthroughService | ObjectService


@contextlib.contextmanager
def _files(source: str, target: str) -> Iterator[tuple[str, str]]:
    """Paths for ``source`` and ``target``, where ``-`` is standard input or output: stdin is
    spooled to a temporary file (decryption reads the trailer at the end first), stdout gets
    the output only once it is complete (and so verified)."""
    with tempfile.TemporaryDirectory(prefix="medusa-crypt-proxy-") as spool:
        if source == "-":
            source = os.path.join(spool, "input")
            with open(source, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        yield source, os.path.join(spool, "output") if target == "-" else target
        if target == "-":
            with open(os.path.join(spool, "output"), "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()


def cmd_encrypt(args: argparse.Namespace) -> int:
    from proxy.keyfiles import load_key_ring
    from proxy.tools.files import encrypt_file

    keyring = load_key_ring(args.key_file)
    with _files(args.input, args.output) as (source, target):
        encrypt_file(keyring, source, target, args.object_key)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from proxy.format.errors import FormatError
    from proxy.keyfiles import load_key_ring
    from proxy.tools.files import decrypt_file

    keyring = load_key_ring(args.key_file)
    try:
        with _files(args.input, args.output) as (source, target):
            decrypt_file(keyring, source, target, args.object_key)
    except FormatError as exc:
        print(f"medusa-crypt-proxy: {args.input}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from proxy.format.errors import FormatError
    from proxy.tools.files import inspect_file

    try:
        info = inspect_file(args.input)
    except FormatError as exc:
        print(f"medusa-crypt-proxy: {args.input}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, sort_keys=True))
    # A damaged object (its trailer unreadable, or the old format's layout impossible) fails the
    # command, so that scripts notice; the description above still says what was found.
    return (
        1 if info.get("trailer_error") or info.get("seed_layout_error") or info["classification"] == "tampered" else 0
    )


def cmd_verify_bucket(args: argparse.Namespace) -> int:
    import asyncio

    from proxy.config import load_upstream_config
    from proxy.keyfiles import load_key_ring
    from proxy.tools.verify_bucket import load_options, verify_bucket
    from proxy.upstream import Upstream

    try:
        upstream_config = load_upstream_config(args.config)
        options = load_options(args.config)
    except ConfigError as err:
        return _config_problems(err)
    keyring = load_key_ring(args.key_file) if args.key_file else None

    async def run() -> bool:
        upstream = Upstream(upstream_config)
        await upstream.start()
        try:
            report = await verify_bucket(
                upstream, args.bucket, prefix=args.prefix, backup=args.backup, keyring=keyring, options=options
            )
        finally:
            await upstream.close()
        return report.ok

    return 0 if asyncio.run(run()) else 1


def _config_problems(err: ConfigError) -> int:
    """One line per problem of a config file on stderr; the exit code for a bad config."""
    for problem in err.problems:
        print(f"medusa-crypt-proxy: config error: {problem}", file=sys.stderr)
    return 2


@contextlib.asynccontextmanager
async def _service_in_process(config: Config, **encryption: Any) -> AsyncIterator[Service]:
    """The proxy's own service, started in this process on a cache of its own (an offline tool must
    not depend on, or write into, a daemon's), with ``encryption`` settings replaced."""
    from proxy.metrics import Metrics
    from proxy.objects import build_service
    from proxy.upstream import Upstream

    with tempfile.TemporaryDirectory(prefix="medusa-crypt-proxy-tool-") as cache_dir:
        local = config.model_copy(
            update={
                "encryption": config.encryption.model_copy(update=encryption),
                "cache": config.cache.model_copy(update={"path": cache_dir + "/cache.db"}),
            }
        )
        upstream = Upstream(local.upstream)
        await upstream.start()
        service = build_service(local, upstream, Metrics())
        await service.start()
        try:
            yield service
        finally:
            await service.close()
            await upstream.close()


def cmd_restore_backup(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from proxy.config import load_config
    from proxy.tools.restore_backup import RestoreError, restore_backup

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _config_problems(err)
    say = _progress_printer()

    async def run() -> bool:
        async with _service_in_process(config) as service:
            report = await restore_backup(
                service,
                args.bucket,
                args.fqdn,
                args.backup,
                Path(args.destination),
                prefix=args.prefix,
                tables=args.table or (),
                concurrency=args.concurrency,
                say=say,
            )
        summary = f"{report.restored} restored, {report.skipped} already there, {len(report.problems)} failed"
        say(f"{args.backup}: {report.files} files: {summary} ({report.bytes} bytes read)")
        for problem in report.problems:
            print(f"medusa-crypt-proxy: restore-backup: {problem}", file=sys.stderr)
        return report.ok

    try:
        return 0 if asyncio.run(run()) else 1
    except (RestoreError, OSError) as exc:
        print(f"medusa-crypt-proxy: restore-backup: {exc}", file=sys.stderr)
        return 1


def _rewrite_bucket(
    args: argparse.Namespace,
    tool: str,
    work: Callable[..., Awaitable[Any]],
    cannot_start: tuple[type[Exception], ...] = (),
) -> int:
    """Run ``rotate`` or ``migrate`` (``work(service, bucket, ..., say=)``) on the service in process;
    ``cannot_start``: the errors that say, in one line, why it cannot.

    Format version 2 whatever the daemon writes: what is re-encrypted gets a data key, so the
    next rotation is a copy. Exit 0 when the report is ok, 1 when it lists problems, 2 when the
    config is not usable for it.
    """
    import asyncio

    from proxy.config import load_config
    from proxy.objects.service import ObjectService

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _config_problems(err)
    if not config.encryption.enabled:
        print(f"medusa-crypt-proxy: {tool}: encryption is not enabled in this config", file=sys.stderr)
        return 2
    options = {"prefix": args.prefix, "dry_run": args.dry_run, "concurrency": args.concurrency}

    async def run() -> bool:
        async with _service_in_process(config, format_version=2) as service:
            assert isinstance(service, ObjectService)
            report = await work(service, args.bucket, **options, say=_progress_printer())
        return bool(report.ok)

    try:
        return 0 if asyncio.run(run()) else 1
    except cannot_start as exc:
        print(f"medusa-crypt-proxy: {tool}: {exc}", file=sys.stderr)
        return 2


def cmd_rotate(args: argparse.Namespace) -> int:
    from proxy.tools.rotate import rotate

    return _rewrite_bucket(args, "rotate", functools.partial(rotate, reencrypt=args.re_encrypt))


def cmd_migrate(args: argparse.Namespace) -> int:
    from proxy.tools.migrate import MigrateError, migrate

    config_path = None if args.keep_config else args.config
    return _rewrite_bucket(args, "migrate", functools.partial(migrate, config_path=config_path), (MigrateError,))


def _progress_printer() -> Callable[[str], None]:
    """Lines to stderr; on a terminal the ``progress:`` lines overwrite each other (a bar)."""
    tty = sys.stderr.isatty()

    def say(line: str) -> None:
        if tty and line.startswith("progress:"):
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif tty:
            print(f"\r\033[K{line}", file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    return say


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "encrypt",
        help="encrypt a file exactly as the proxy would store it",
        description="Encrypt a file exactly as the proxy would store it under --object-key, with the first "
        "--key-file; no daemon needed.",
    )
    p.add_argument("--key-file", action="append", required=True, help="Fernet key file (first encrypts)")
    p.add_argument("--object-key", required=True, help="the S3 key the object will be stored under")
    p.add_argument("input", help="the file to read, - for standard input")
    p.add_argument("output", help="the file to write, - for standard output")
    p.set_defaults(func=cmd_encrypt)

    p = sub.add_parser(
        "decrypt",
        help="decrypt an object downloaded from the bucket",
        description="Decrypt an object downloaded from the bucket with any of the --key-file keys; the "
        "plaintext is written only once the whole object has verified. No daemon needed.",
    )
    p.add_argument("--key-file", action="append", required=True, help="Fernet key file (repeatable)")
    p.add_argument("--object-key", help="check the object was stored under this S3 key")
    p.add_argument("input", help="the file to read, - for standard input")
    p.add_argument("output", help="the file to write, - for standard output")
    p.set_defaults(func=cmd_decrypt)

    p = sub.add_parser(
        "verify-bucket",
        help="check a bucket's backups against its manifests (key optional)",
        description="Check every backup in a bucket against its Medusa manifests (sizes and ETags as the "
        "bucket reports them); with --key-file also each manifest's MAC and each object's trailer.",
    )
    p.add_argument("--config", required=True, help="config file (only its upstream section is used)")
    p.add_argument("--bucket", required=True, help="the bucket Medusa's bucket_name names")
    p.add_argument("--prefix", default="", help="Medusa's storage prefix, with its trailing slash")
    p.add_argument("--backup", help="only this backup")
    p.add_argument(
        "--key-file",
        action="append",
        help="also verify manifest MACs, trailers and plaintext sizes/ETags (the config's "
        "encryption.seed_key_files, legacy_plaintext_before and accept_moved apply)",
    )
    p.set_defaults(func=cmd_verify_bucket)

    p = sub.add_parser(
        "restore-backup",
        help="download one node's backup decrypted and verified, laid out as medusa download does (no daemon)",
        description="Download one node's backup from the bucket, decrypted and verified against its manifest "
        "(sizes and MD5s), into a directory laid out as medusa download lays it out; no daemon needed. "
        "Resumable: a rerun skips the files already verified.",
    )
    p.add_argument("--config", required=True, help="the proxy's config file (upstream and encryption sections)")
    p.add_argument("--bucket", required=True, help="the bucket Medusa's bucket_name names")
    p.add_argument("--fqdn", required=True, help="the node whose backup it is (Medusa's storage fqdn)")
    p.add_argument("--backup", required=True, help="the backup's name")
    p.add_argument("--prefix", default="", help="Medusa's storage prefix, with its trailing slash")
    p.add_argument("--table", action="append", help="only this keyspace or keyspace.table (repeatable; default: all)")
    p.add_argument("--concurrency", type=int, default=4, help="files downloaded at once (default 4)")
    p.add_argument(
        "destination",
        help="directory to restore into (created if missing); a rerun into it resumes, skipping verified files",
    )
    p.set_defaults(func=cmd_restore_backup)

    p = sub.add_parser(
        "rotate",
        help="move every object and manifest to the primary key (server-side copies where it can)",
        description="Re-wrap the data key of every object under --prefix that the primary key (the config's "
        "first key file) does not wrap: objects of format 2 with at least 5 MiB of data by a server-side "
        "multipart copy plus a new trailer (bytes sent: about the trailer's), the others by re-encryption; "
        "then reseal the manifests naming them. Idempotent and resumable; ends with the key ids in use.",
    )
    p.add_argument("--config", required=True, help="the proxy's config file (upstream and encryption sections)")
    p.add_argument("--bucket", required=True, help="the bucket Medusa's bucket_name names")
    p.add_argument("--prefix", default="", help="only keys under this prefix (Medusa's storage prefix, with its /)")
    p.add_argument("--dry-run", action="store_true", help="list what would be rotated and the bytes it would send")
    p.add_argument("--concurrency", type=int, default=4, help="objects rotated at once (default 4)")
    p.add_argument(
        "--re-encrypt",
        action="store_true",
        help="re-encrypt instead of copying, so every object rotated gets a new data key (a compromised key)",
    )
    p.set_defaults(func=cmd_rotate)

    p = sub.add_parser(
        "migrate",
        help="encrypt, in place, the unencrypted backups written before the proxy; then narrow the cutoff",
        description="Encrypt every unencrypted object and manifest under --prefix written before "
        "encryption.legacy_plaintext_before: each original is copied server side to "
        "medusa-crypt-proxy-migration/<key>, written encrypted under its own key in its own parts (the size and ETag "
        "Medusa recorded stay what it sees), read back and compared, and only then is the copy deleted; "
        "manifests are rewritten and sealed. Resumable. Then the cutoff in --config is narrowed to what "
        "is still unencrypted in the bucket, or removed (when the config's clients reach this bucket only).",
    )
    p.add_argument("--config", required=True, help="the proxy's config file (its cutoff is edited when done)")
    p.add_argument("--bucket", required=True, help="the bucket Medusa's bucket_name names")
    p.add_argument("--prefix", default="", help="only keys under this prefix (a host's <fqdn>/, or Medusa's prefix)")
    p.add_argument("--dry-run", action="store_true", help="list what would be encrypted; change nothing")
    p.add_argument("--concurrency", type=int, default=4, help="objects encrypted at once (default 4)")
    p.add_argument("--keep-config", action="store_true", help="only say what the cutoff can become; do not edit")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "inspect",
        help="show an object's format, key id, sizes and ETag (no key)",
        description="Print what a stored object is (format, key id, stored and plaintext sizes, ETag) as "
        "JSON, without any key; exits 1 for a damaged object.",
    )
    p.add_argument("input", help="a stored object, as downloaded from the bucket")
    p.set_defaults(func=cmd_inspect)
