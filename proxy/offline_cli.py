"""The offline tools' command line: work on stored objects without the daemon."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_encrypt(args: argparse.Namespace) -> int:
    from proxy.keyfiles import load_key_ring
    from proxy.offline import encrypt_file

    encrypt_file(load_key_ring(args.key_file), args.input, args.output, args.object_key)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from proxy.format.errors import FormatError
    from proxy.keyfiles import load_key_ring
    from proxy.offline import decrypt_file

    try:
        decrypt_file(load_key_ring(args.key_file), args.input, args.output, args.object_key)
    except FormatError as exc:
        print(f"medusa-crypt-proxy: {args.input}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from proxy.format.errors import FormatError
    from proxy.offline import inspect_file

    try:
        info = inspect_file(args.input)
    except FormatError as exc:
        print(f"medusa-crypt-proxy: {args.input}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


def cmd_verify_bucket(args: argparse.Namespace) -> int:
    import asyncio

    from proxy.config import ConfigError, load_upstream_config
    from proxy.keyfiles import load_key_ring
    from proxy.upstream import Upstream
    from proxy.verify_bucket import load_options, verify_bucket

    try:
        upstream_config = load_upstream_config(args.config)
        options = load_options(args.config)
    except ConfigError as err:
        for problem in err.problems:
            print(f"medusa-crypt-proxy: config error: {problem}", file=sys.stderr)
        return 2
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("encrypt", help="encrypt a file exactly as the proxy would store it")
    p.add_argument("--key-file", action="append", required=True, help="Fernet key file (first encrypts)")
    p.add_argument("--object-key", required=True, help="the S3 key the object will be stored under")
    p.add_argument("input")
    p.add_argument("output")
    p.set_defaults(func=cmd_encrypt)

    p = sub.add_parser("decrypt", help="decrypt an object downloaded from the bucket")
    p.add_argument("--key-file", action="append", required=True, help="Fernet key file (repeatable)")
    p.add_argument("--object-key", help="check the object was stored under this S3 key")
    p.add_argument("input")
    p.add_argument("output")
    p.set_defaults(func=cmd_decrypt)

    p = sub.add_parser("verify-bucket", help="check a bucket's backups against its manifests (key optional)")
    p.add_argument("--config", required=True, help="config file (only its upstream section is used)")
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="", help="Medusa's storage prefix, with its trailing slash")
    p.add_argument("--backup", help="only this backup")
    p.add_argument(
        "--key-file",
        action="append",
        help="also verify manifest MACs, trailers and plaintext sizes/ETags (the config's "
        "encryption.seed_key_files, legacy_plaintext_before and accept_moved apply)",
    )
    p.set_defaults(func=cmd_verify_bucket)

    p = sub.add_parser("inspect", help="show an object's format, key id, sizes and ETag (no key)")
    p.add_argument("input")
    p.set_defaults(func=cmd_inspect)
