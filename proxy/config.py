"""Configuration: one YAML file, validated by pydantic, every field overridable from the environment.

Environment overrides use the prefix ``MCP_`` and ``__`` between nesting levels, for example
``MCP_LISTEN__PORT=9000`` or ``MCP_UPSTREAM__ENDPOINT_URL=http://127.0.0.1:9000``. Values are parsed
as YAML scalars, so lists can be written as ``MCP_ENCRYPTION__KEY_FILES='[/a.key, /b.key]'``.
Secrets are read from files (``*_file`` fields) so that they need not sit in the config itself.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "MCP_"

log = logging.getLogger("proxy.config")


class ConfigError(Exception):
    """An invalid configuration: ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(path: str, what: str) -> str:
    """A secret from a file; warn (once, without the secret) if group/other can access the file."""
    try:
        mode = os.stat(path).st_mode
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{what} file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s file %s is accessible by group/other (mode %o); chmod 600 it", what, path, stat.S_IMODE(mode))
    return value


class Listen(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8333, ge=0, le=65535)
    # Host names under which ``bucket.<name>`` means virtual-host addressing.
    virtual_host_suffixes: list[str] = Field(default_factory=lambda: ["localhost"])


class TLS(_Model):
    cert_file: str
    key_file: str


class ClientCredential(_Model):
    """SigV4 credentials a client (Medusa) signs its requests with, and what it may touch.

    ``buckets`` empty (the default) means every bucket the upstream credentials reach; ``prefix``
    empty (the default) means every key. A request outside them is refused with AccessDenied.
    """

    access_key_id: str = Field(min_length=1)
    secret_access_key: str | None = Field(default=None, repr=False)
    secret_access_key_file: str | None = None
    buckets: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    prefix: str = ""

    @model_validator(mode="after")
    def _load_secret(self) -> ClientCredential:
        if (self.secret_access_key is None) == (self.secret_access_key_file is None):
            raise ValueError("give exactly one of secret_access_key and secret_access_key_file")
        if self.secret_access_key_file is not None:
            secret = _read_secret(self.secret_access_key_file, "secret_access_key")
            object.__setattr__(self, "secret_access_key", secret)
        return self

    @property
    def secret(self) -> str:
        assert self.secret_access_key is not None
        return self.secret_access_key


class Upstream(_Model):
    """The real bucket's endpoint; credentials come from the AWS chain unless given here."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    access_key_id: str | None = None
    secret_access_key: str | None = Field(default=None, repr=False)
    secret_access_key_file: str | None = None
    session_token: str | None = Field(default=None, repr=False)
    profile: str | None = None
    verify_tls: bool = True
    # Every upstream request is bounded three ways (docs/OPERATIONS.md, "Timeouts"): connecting
    # (connect_timeout); silence, i.e. no byte received, or none of a streamed body taken, for
    # read_timeout; and, for requests without a streamed body, the whole call including the
    # fast path's fallback and botocore's retries (request_timeout; long_request_timeout for
    # CompleteMultipartUpload, CopyObject and UploadPartCopy, which S3 may work on for minutes).
    # Streamed bodies (PUT and UploadPart above 1 MiB, GET bodies) have no total bound: a slow but
    # moving transfer is not cut, a stopped one is after read_timeout.
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=120.0, gt=0)
    request_timeout: float = Field(default=300.0, gt=0)
    long_request_timeout: float = Field(default=1800.0, gt=0)
    max_pool_connections: int = Field(default=64, ge=1)
    max_attempts: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _load_secret(self) -> Upstream:
        if self.secret_access_key_file is not None:
            if self.secret_access_key is not None:
                raise ValueError("give only one of secret_access_key and secret_access_key_file")
            secret = _read_secret(self.secret_access_key_file, "upstream secret_access_key")
            object.__setattr__(self, "secret_access_key", secret)
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        return self


class Kms(_Model):
    """AWS KMS as the provider of data keys (format version 2): credentials from the AWS chain
    (IRSA, instance role, environment) unless given here."""

    key_id: str  # the KMS key new data keys are generated under (ARN, id or alias/...)
    region: str | None = None  # default: upstream.region
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = Field(default=None, repr=False)
    request_timeout: float = Field(default=10.0, gt=0)
    # Unwrapped data keys are kept in memory (never on disk) this long, at most this many.
    cache_seconds: float = Field(default=300.0, ge=0)
    cache_entries: int = Field(default=1024, ge=0)

    @model_validator(mode="after")
    def _pair(self) -> Kms:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        return self


class MovedPrefix(_Model):
    from_prefix: str
    to_prefix: str


class Encryption(_Model):
    enabled: bool = True
    key_files: list[str] = Field(default_factory=list)
    # The object format new objects are written in (docs/FORMAT.md): 1, every object's keys
    # derived from the master key; 2, envelope keys (a random data key per object or upload,
    # wrapped by the primary key in the trailer). Readers take both, whatever this says.
    format_version: Literal[1, 2] = 1
    # With format version 2, data keys from AWS KMS (GenerateDataKey/Decrypt) instead of being
    # wrapped by the local primary key; needed too to read objects whose keys a KMS wrapped.
    kms: Kms | None = None
    # Keys of the old in-Medusa Fernet encryption (key_secret_base64 written to a file), so
    # backups made with it stay restorable through the proxy. Read only, never used to write.
    seed_key_files: list[str] = Field(default_factory=list)
    # Which keys are encrypted follows Medusa's key layout (proxy/policy.py): its metadata and
    # index files are stored as they are, manifests rewritten, everything else encrypted. These
    # glob patterns (fnmatch, ``*`` crosses ``/``) override it: a key matching an
    # ``encrypted_patterns`` entry is always encrypted; otherwise a key matching a
    # ``plaintext_patterns`` entry is stored as it is (a manifest stays a rewritten manifest).
    # Empty by default. The pre-layout defaults, ["*/data/*"] and ["index/*", "*/index/*",
    # "*/meta/*"], still work when set explicitly (docs/OPERATIONS.md, section 10).
    encrypted_patterns: list[str] = Field(default_factory=list)
    plaintext_patterns: list[str] = Field(default_factory=list)
    # Objects under an encrypting key that are not verified objects of ours (plaintext, or the
    # seed's old format) are served only when the upstream's Last-Modified is before this time:
    # the operator declares them older than encryption. None (the default) refuses them all.
    legacy_plaintext_before: datetime | None = None
    # Backups moved outside the proxy: an object stored under ``to_prefix + rest`` whose trailer
    # names ``from_prefix + rest`` is accepted. Anything else under another name is refused.
    accept_moved: list[MovedPrefix] = Field(default_factory=list)

    @property
    def moved_prefixes(self) -> tuple[tuple[str, str], ...]:
        """``accept_moved`` as (from_prefix, to_prefix) pairs (``proxy.policy.accepted_names``)."""
        return tuple((m.from_prefix, m.to_prefix) for m in self.accept_moved)

    @model_validator(mode="before")
    @classmethod
    def _replaced_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "serve_legacy_plaintext" in data:
            raise ValueError(
                "serve_legacy_plaintext was replaced by legacy_plaintext_before: the RFC 3339 time "
                "before which unencrypted objects are served (see docs/SECURITY.md)"
            )
        return data

    @field_validator("legacy_plaintext_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, for example 2026-11-01T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _need_keys(self) -> Encryption:
        if self.enabled and not self.key_files:
            raise ValueError("key_files: at least one key file is needed when encryption is enabled")
        return self


class Cache(_Model):
    path: str = "/var/lib/medusa-crypt-proxy/cache.sqlite"


class Limits(_Model):
    max_concurrent_requests: int = Field(default=256, ge=1)
    drain_timeout: float = Field(default=30.0, ge=0)
    max_clock_skew_seconds: int = Field(default=900, ge=1)
    crypto_threads: int = Field(default=2, ge=1)
    # Client connections (docs/OPERATIONS.md, "Timeouts"): a request head must be complete this
    # long after its first byte, or the connection is closed.
    header_timeout: float = Field(default=60.0, gt=0)
    # An idle connection (before its first request, between requests) is closed after this.
    keepalive_timeout: float = Field(default=75.0, gt=0)
    # No request body byte received, or no response byte taken by the client, for this long: the
    # request fails (400 RequestTimeout while reading; the connection is cut while answering).
    body_timeout: float = Field(default=120.0, gt=0)
    # Largest manifest rewritten and authenticated (held in memory, about twice its size); a
    # larger body named like a manifest is stored as an ordinary encrypted object.
    max_manifest_bytes: int = Field(default=64 << 20, ge=1)


class Logging(_Model):
    format: Literal["json", "text"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Model):
    listen: Listen = Field(default_factory=Listen)
    tls: TLS | None = None
    clients: list[ClientCredential] = Field(min_length=1)
    upstream: Upstream = Field(default_factory=Upstream)
    encryption: Encryption
    cache: Cache = Field(default_factory=Cache)
    limits: Limits = Field(default_factory=Limits)
    logging: Logging = Field(default_factory=Logging)

    def client_secret(self, access_key_id: str) -> str | None:
        for client in self.clients:
            if client.access_key_id == access_key_id:
                return client.secret
        return None


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``MCP_A__B=value`` variables onto the nested mapping from the file."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            node[path[-1]] = raw
    return data


def _format_error(err: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "config"
    msg = "unknown field" if err.get("type") == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}"


def parse_config(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    """Validate a mapping (from YAML) with environment overrides applied."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["config: the top level must be a mapping"])
    environ = os.environ if environ is None else environ
    data = _apply_env(data, environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_from_env(_format_error(e), e["loc"], environ) for e in exc.errors()]
        raise ConfigError(problems + _unreadable_files(data, problems)) from None


def _from_env(problem: str, loc: tuple[Any, ...], environ: Mapping[str, str]) -> str:
    """``problem``, naming the environment variable its value came from, if one did."""
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(str(part).upper() for part in loc[:depth])
        if name in environ:
            return f"{problem} (set by {name})"
    return problem


def _unreadable_files(data: Mapping[str, Any], problems: list[str]) -> list[str]:
    """Key and secret files the config names that cannot be read, found even when other problems
    stop validation before their own checks run: every problem in one run."""
    named: list[tuple[str, Any]] = []
    encryption = data.get("encryption")
    if isinstance(encryption, dict):
        for field in ("key_files", "seed_key_files"):
            files = encryption.get(field)
            if isinstance(files, list):
                named += [(f"encryption.{field}.{i}", path) for i, path in enumerate(files)]
    for section, entries in (("clients", data.get("clients")), ("upstream", [data.get("upstream")])):
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict) and isinstance(entry.get("secret_access_key_file"), str):
                where = f"clients.{i}" if section == "clients" else "upstream"
                named.append((f"{where}.secret_access_key_file", entry["secret_access_key_file"]))
    found = []
    for where, path in named:
        if isinstance(path, str) and not os.access(path, os.R_OK) and not any(path in p for p in problems):
            reason = "no such file" if not os.path.exists(path) else "not readable"
            found.append(f"{where}: cannot read {path}: {reason}")
    return found


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None


def load_upstream_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Upstream:
    """Only the ``upstream`` section: offline tools that need the bucket but not the keys."""
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(["config: the top level must be a mapping"])
    data = _apply_env(data, os.environ if environ is None else environ)
    try:
        return Upstream.model_validate(data.get("upstream") or {})
    except ValidationError as exc:
        raise ConfigError([f"upstream.{_format_error(e)}" for e in exc.errors()]) from None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file; every problem becomes one line of ConfigError."""
    return parse_config(_read_yaml(path), environ)
