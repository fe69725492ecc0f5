"""Which object keys are encrypted, stored as they are, or rewritten as Medusa manifests. Pure.

One function decides, so that a PUT and the GET of the same key can never disagree (two
classifiers did: ``<fqdn>/data/meta/manifest.json``, a backup named ``data``, was encrypted on PUT
and read back as a manifest, so GET returned ciphertext).

Keys are parsed from the right against the layout Medusa 0.31 writes (``medusa/storage/
node_backup.py``, ``medusa/index.py``, ``AbstractStorage.path_maybe_with_parent``), because the
``prefix`` of Medusa's storage config is unknown to the proxy and may have any depth:

- ``[prefix/]<fqdn>/<backup>/meta/<file>``: ``manifest.json`` is a MANIFEST; ``schema.cql``,
  ``tokenmap.json``, ``server_version.json``, ``differential``, ``incremental`` and
  ``restore_verify_query.json`` are PLAINTEXT.
- ``[prefix/]index/backup_index/<backup>/<file>``: ``manifest_<fqdn>.json`` is a MANIFEST;
  ``tokenmap_<fqdn>.json``, ``schema_<fqdn>.cql``, ``started_<fqdn>_<n>.timestamp``,
  ``finished_<fqdn>_<n>.timestamp``, ``differential_<fqdn>`` and ``incremental_<fqdn>`` (older
  Medusa; 0.31 still looks it up) are PLAINTEXT.
- ``[prefix/]index/latest_backup/<fqdn>/<file>``: ``tokenmap.json`` and ``backup_name.txt`` are
  PLAINTEXT.
- Everything else is ENCRYPTED, in particular every data file: ``[prefix/]<fqdn>/[<backup>/]
  data/<keyspace>/<table dir>/[<sub>/]<file>``, where ``<sub>`` is a secondary index (``.<name>``)
  or DSE's ``nodes`` folder, and a key nobody thought of.

A key can fit a metadata shape and a data shape at once. The data reading needs ``data`` with
at least one component before it, three or four components before the end, and a file name that
Cassandra can put in a table directory. Cassandra puts only SSTable components there (named
``<descriptor>-<Component>.<ext>``, never like one of Medusa's metadata files), plus
``manifest.json`` and ``schema.cql`` in every snapshot. (Medusa 0.31 skips those two,
``NEVER_BACKED_UP`` in ``backup_node.py``; older versions uploaded them.) DSE's metadata folder is
stored as table ``dse/<folder>`` and may hold any name. So a metadata key is ENCRYPTED instead
when such a data reading exists: its file is ``manifest.json`` or ``schema.cql``, or its keyspace
is ``dse``. The remaining ambiguities:

- ``<X>/data/<B>/meta/manifest.json`` and ``.../schema.cql`` (``X`` being one or more
  components): the manifest and schema of a host named ``data`` under a Medusa prefix, or the
  snapshot files of a table whose directory is the bare name ``meta``. Table directories are
  ``<name>-<32 hex cfid>`` only for tables created since Cassandra 2.1; Medusa keeps the bare
  name of older ones (``Cassandra._columnfamily_path``), so the cfid cannot settle it. Such keys
  are ENCRYPTED: Medusa still reads them back through the proxy, but the manifest is not
  rewritten and cannot be read without the key. With no prefix (``data/<B>/meta/...``) there is
  nothing before ``data``, so the key is metadata.
- ``<X>/data/dse/meta/<file>``: every meta file of a backup named ``dse`` of that host is
  ENCRYPTED too (DSE's metadata folder named ``meta``).
- ``.../data/index/backup_index/<B>/<file>`` and ``.../data/index/latest_backup/<F>/<file>``, a
  prefix ending in ``data`` with ``B``/``F`` starting with ``.`` or ending in ``nodes``, are
  metadata: as data they would be a table file named like an index file, which Cassandra does
  not write and the keyspace is not ``dse``.
- Medusa's layout is assumed to have no empty components and backup names without ``/``; a key
  with an empty fqdn or backup name is not metadata (ENCRYPTED).

The configured patterns (``fnmatch``, ``*`` crosses ``/``) are overrides, checked first: a key
matching ``encrypted_patterns`` is ENCRYPTED; else a key matching ``plaintext_patterns`` is what
the layout's metadata shape says (MANIFEST or PLAINTEXT, also where the key is ambiguous: that
is how an operator with a host named ``data`` and no table directory ``meta`` gets its manifests
rewritten), or PLAINTEXT when it has none; else the layout decides. A plaintext pattern never
demotes a MANIFEST: it is stored readable either way, and a manifest passed through unrewritten
would hand Medusa the bucket's stored sizes. So the pre-layout default patterns, set
explicitly, still give a consistent result: every data file is ENCRYPTED (all contain
``/data/``), Medusa's metadata is PLAINTEXT/MANIFEST unless its key contains ``/data/`` (then
ENCRYPTED, as those patterns always said), other keys under ``meta/`` or ``index/`` stay
PLAINTEXT.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import translate


class Kind(enum.Enum):
    """How the proxy stores an object: encrypted, as it is, or as a rewritten Medusa manifest."""

    ENCRYPTED = "encrypted"
    PLAINTEXT = "plaintext"
    MANIFEST = "manifest"


# <fqdn>/<backup>/meta/<file>: node_backup.py's NodeBackup paths.
_META_FILES = {
    "manifest.json": Kind.MANIFEST,
    "schema.cql": Kind.PLAINTEXT,
    "tokenmap.json": Kind.PLAINTEXT,
    "server_version.json": Kind.PLAINTEXT,
    "differential": Kind.PLAINTEXT,
    "incremental": Kind.PLAINTEXT,
    "restore_verify_query.json": Kind.PLAINTEXT,
}
# index/backup_index/<backup>/<file>: index.py, and storage/__init__.py's INDEX_BLOB_*_PATTERN.
_INDEX_MANIFEST = re.compile(r"manifest_.+\.json")
_INDEX_PLAINTEXT = re.compile(
    r"tokenmap_.+\.json|schema_.+\.cql|(?:started|finished)_.+_[0-9]+\.timestamp|(?:differential|incremental)_.+"
)
# index/latest_backup/<fqdn>/<file>: index.py's set_latest_backup_in_index.
_LATEST_FILES = frozenset({"tokenmap.json", "backup_name.txt"})
# The files besides SSTable components that Cassandra writes into a table's snapshot directory.
_SNAPSHOT_FILES = frozenset({"manifest.json", "schema.cql"})
# Medusa's keyspace for DSE's metadata folder (cassandra_utils.py, DseSnapshot.find_dirs).
_DSE_KEYSPACE = "dse"


def _metadata_kind(parts: Sequence[str]) -> Kind | None:
    """The kind of the Medusa metadata file the key names, or None when it names none."""
    if len(parts) < 4:
        return None
    file, parent, grandparent, top = parts[-1], parts[-2], parts[-3], parts[-4]
    if parent == "meta" and grandparent and top and file in _META_FILES:
        return _META_FILES[file]
    if top != "index" or not parent:
        return None
    if grandparent == "backup_index":
        if _INDEX_MANIFEST.fullmatch(file):
            return Kind.MANIFEST
        return Kind.PLAINTEXT if _INDEX_PLAINTEXT.fullmatch(file) else None
    if grandparent == "latest_backup" and file in _LATEST_FILES:
        return Kind.PLAINTEXT
    return None


def _may_be_data(parts: Sequence[str]) -> bool:
    """Whether the key can also be a data file: ``<fqdn>/.../data/<ks>/<table>/[<sub>/]<file>``
    with a file name Cassandra (or DSE's metadata folder) can give it."""
    n = len(parts)
    for depth in (3, 4):
        at = n - 1 - depth
        if at < 1 or parts[at] != "data":
            continue
        if depth == 4 and not (parts[-2].startswith(".") or parts[-2].endswith("nodes")):
            continue
        if parts[-1] in _SNAPSHOT_FILES or parts[at + 1] == _DSE_KEYSPACE:
            return True
    return False


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """All patterns as one regex, so that a listing page of keys costs one match per key."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns))


@dataclass(frozen=True)
class Policy:
    """Classify object keys by Medusa's layout, with the configured patterns as overrides.

    ``encrypted_patterns`` are checked first, then ``plaintext_patterns``, then the layout; see
    the module docstring for the rules and the ambiguities they settle.
    """

    encrypted_patterns: Sequence[str] = ()
    plaintext_patterns: Sequence[str] = ()
    _encrypted: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _plaintext: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Tuples: the policy stays immutable even when built from the config's lists.
        object.__setattr__(self, "encrypted_patterns", tuple(self.encrypted_patterns))
        object.__setattr__(self, "plaintext_patterns", tuple(self.plaintext_patterns))
        object.__setattr__(self, "_encrypted", _compile(self.encrypted_patterns))
        object.__setattr__(self, "_plaintext", _compile(self.plaintext_patterns))

    def kind(self, key: str) -> Kind:
        """How ``key`` is stored; the same answer on every request, so PUT and GET agree."""
        if self._encrypted is not None and self._encrypted.match(key):
            return Kind.ENCRYPTED
        parts = key.split("/")
        metadata = _metadata_kind(parts)
        if self._plaintext is not None and self._plaintext.match(key):
            return metadata or Kind.PLAINTEXT
        if metadata is None or _may_be_data(parts):
            return Kind.ENCRYPTED
        return metadata

    def encrypts(self, key: str) -> bool:
        """Whether the body of ``key`` is stored encrypted."""
        return self.kind(key) is Kind.ENCRYPTED

    def is_manifest(self, key: str) -> bool:
        """Whether ``key`` is a Medusa manifest, stored in the clear and rewritten."""
        return self.kind(key) is Kind.MANIFEST


def accepted_names(key: str, moved: Iterable[tuple[str, str]]) -> list[str]:
    """``key`` and the names an object stored under it may have been written as: backups moved
    outside the proxy, ``encryption.accept_moved`` as (from_prefix, to_prefix) pairs."""
    return [key] + [old + key[len(new) :] for old, new in moved if key.startswith(new)]


def written_as(key: str, written: str, moved: Iterable[tuple[str, str]]) -> str:
    """The name an object stored under ``key`` must have been written under, given the name its
    trailer gives (``written``): that one when it is accepted, else ``key`` itself."""
    return written if written in accepted_names(key, moved) else key
