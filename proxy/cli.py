"""Command line: ``serve``, ``demo``, ``keygen``, ``check-config`` and the offline tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from proxy import __version__
from proxy.config import Config, ConfigError, load_config

log = logging.getLogger("proxy.cli")

EXIT_CONFIG = 2


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(f"medusa-crypt-proxy: config error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _preflight(config: Config) -> list[str]:
    """What would stop the daemon, found before it starts: one readable line each."""
    from proxy.keyfiles import load_key_ring

    problems = []
    if config.encryption.enabled:
        for what, files in (("key", config.encryption.key_files), ("seed key", config.encryption.seed_key_files)):
            for path in files:  # each one: every bad file in one run
                try:
                    load_key_ring([path])
                except (OSError, ValueError) as exc:
                    problems.append(f"{what} error: {exc}")
        cache_dir = Path(config.cache.path).parent
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"cache: cannot create {cache_dir}: {exc.strerror}")
        else:
            if not os.access(cache_dir, os.W_OK):
                problems.append(f"cache: {cache_dir} is not writable")
    for path in (config.tls.cert_file, config.tls.key_file) if config.tls else ():
        if not os.access(path, os.R_OK):
            problems.append(f"tls: cannot read {path}")
    return problems


def _warnings(config: Config) -> list[str]:
    """What is allowed but probably a mistake: one readable line each."""
    cutoff = config.encryption.legacy_plaintext_before
    if config.encryption.enabled and cutoff is not None and cutoff > datetime.now(UTC):
        return [
            f"warning: encryption.legacy_plaintext_before ({cutoff.isoformat()}) is in the future: "
            "unencrypted objects written until then, by anyone, will be served"
        ]
    return []


def _ready_to_start(config: Config) -> bool:
    """Print every preflight problem and warning, one line each; True when there is no problem."""
    problems = _preflight(config)
    for line in problems + _warnings(config):
        print(f"medusa-crypt-proxy: {line}", file=sys.stderr)
    return not problems


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.daemon.server import run, serve
    from proxy.logs import setup_logging

    config = _load(args.config)
    if not _ready_to_start(config):
        return EXIT_CONFIG
    setup_logging(args.log_format or config.logging.format, args.log_level or config.logging.level)
    run(serve(config, config_path=args.config))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from proxy.keyfiles import load_key_ring

    config = _load(args.config)

    if not _ready_to_start(config):
        return EXIT_CONFIG
    if config.encryption.enabled:
        ring = load_key_ring(config.encryption.key_files)
        key_ids = ", ".join(key.key_id_hex for key in ring.keys)
        print(f"keys: {key_ids} (primary {ring.primary.key_id_hex})")
        cutoff = config.encryption.legacy_plaintext_before
        print(
            "unencrypted objects under encrypted keys: "
            + (f"served when written before {cutoff.isoformat()}" if cutoff else "refused")
        )
    if args.check_upstream:
        from proxy.daemon.server import run

        problems: list[str] = []
        run(_check_upstream(config, problems))
        if problems:
            for line in problems:
                print(f"medusa-crypt-proxy: upstream: {line}", file=sys.stderr)
            return EXIT_CONFIG
    print(
        f"config ok: listening on {config.listen.host}:{config.listen.port}, "
        f"{len(config.clients)} client credential(s), upstream "
        f"{config.upstream.endpoint_url or 'AWS S3'}"
    )
    return 0


async def _check_upstream(config: Config, problems: list[str]) -> None:
    """Reach the bucket with the proxy's own credentials: each bucket a client is limited to must
    answer HeadBucket, or, when none is named, ListBuckets must answer. Prints what answered."""
    from proxy.s3.errors import S3Error
    from proxy.upstream import Upstream

    upstream = Upstream(config.upstream.model_copy(update={"max_attempts": 1}))
    await upstream.start()
    try:
        buckets = sorted({bucket for client in config.clients for bucket in client.buckets})
        for bucket in buckets:
            try:
                await upstream.call("head_bucket", Bucket=bucket)
                print(f"upstream: bucket {bucket} reachable")
            except S3Error as err:
                problems.append(f"bucket {bucket}: {err.code} ({err.message})")
        if not buckets:
            try:
                listed = await upstream.call("list_buckets")
                print(f"upstream: reachable, {len(listed.get('Buckets', []))} bucket(s) listed")
            except S3Error as err:
                problems.append(f"ListBuckets: {err.code} ({err.message})")
    finally:
        await upstream.close()


def cmd_keygen(args: argparse.Namespace) -> int:
    from proxy.keyfiles import generate_key_file

    try:
        key_id = generate_key_file(args.out)
    except FileExistsError:
        print(f"medusa-crypt-proxy: {args.out} exists; refusing to overwrite a key", file=sys.stderr)
        return 1
    print(key_id)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.daemon.demo import run_demo

    return run_demo(args.port, args.workdir)


def cmd_tls_selfsigned(args: argparse.Namespace) -> int:
    from proxy.daemon.tls import make_self_signed

    cert, key = make_self_signed(args.out)
    print(f"certificate: {cert}\nprivate key: {key}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medusa-crypt-proxy",
        description="An S3 proxy that encrypts Cassandra Medusa backups client-side.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below; COMMAND --help for its own"
    )

    p = sub.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy: S3 on listen.host:listen.port (with /healthz, /readyz, /metrics) in front of "
        "the upstream bucket, until SIGTERM or SIGINT (drain first); SIGHUP reloads clients and keys.",
    )
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--log-format", choices=["json", "text"], help="override logging.format")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "check-config",
        help="validate a config file and its keys, then exit",
        description="Validate a config file, its key files and secret files, and the cache directory; print "
        "one line per problem and exit 2, or a summary and exit 0.",
    )
    p.add_argument("--config", required=True, help="YAML config file to check")
    p.add_argument(
        "--check-upstream",
        action="store_true",
        help="also reach the bucket with the upstream credentials (HeadBucket of each client's buckets)",
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "keygen",
        help="write a new Fernet key file (mode 0600) and print its key id",
        description="Write a new Fernet key file (mode 0600; an existing file is never overwritten) and print "
        "its key id. Back the file up outside the bucket: backups written with it need it to be restored.",
    )
    p.add_argument("out", help="path of the new key file")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "demo",
        help="run the proxy in front of an embedded local S3 server",
        description="Run the proxy in front of an embedded, in-memory S3 server (moto) with a throwaway key "
        "and credentials, printing a Medusa [storage] section and an aws command that work against it.",
    )
    p.add_argument("--port", type=int, default=8333, help="the proxy's port on 127.0.0.1 (default 8333)")
    p.add_argument("--workdir", help="where to keep the demo's key, config and cache")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "tls-selfsigned",
        help="make a self-signed loopback certificate",
        description="Make a self-signed certificate for localhost, 127.0.0.1 and ::1 (EC P-256, two years) "
        "for the config's tls: section; refuses to overwrite existing files.",
    )
    p.add_argument("--out", required=True, help="directory for tls.crt and tls.key (0600)")
    p.set_defaults(func=cmd_tls_selfsigned)

    _add_offline_tools(sub)
    from proxy.tools import stale_uploads

    stale_uploads.register(sub)  # abort-stale-uploads
    return parser


def _add_offline_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """encrypt / decrypt / inspect: disaster recovery without the daemon."""
    from proxy.tools import files_cli

    files_cli.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from proxy.format.errors import FormatError
        from proxy.s3.errors import S3Error

        if not isinstance(exc, OSError | ValueError | FormatError | S3Error):
            raise
        # What an operator can fix (a missing file or directory, a bad key file, a damaged
        # object, a port in use, a bucket unreachable or refusing): one line naming it, no
        # traceback. Messages carry no key material.
        print(f"medusa-crypt-proxy {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
