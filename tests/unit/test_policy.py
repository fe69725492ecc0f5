"""The key classification (proxy.policy): known cases, then properties over generated Medusa keys.

The generators follow Medusa 0.31's layout (node_backup.py, index.py, path_maybe_with_parent) and
Cassandra's file names, with hostile names (``data``, ``meta``, ``index``, ...) for hosts,
backups, prefixes, keyspaces and tables. Their oracles are stated in terms of what was generated
(which host, which prefix), not by parsing the key again.
"""

from __future__ import annotations

import string
from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import Encryption
from proxy.policy import Kind, Policy, accepted_names, written_as

E, P, M = Kind.ENCRYPTED, Kind.PLAINTEXT, Kind.MANIFEST
CFID = "0123456789abcdef0123456789abcdef"
OLD_ENCRYPTED = ["*/data/*"]
OLD_PLAINTEXT = ["index/*", "*/index/*", "*/meta/*"]

LAYOUT = Policy()
OLD = Policy(OLD_ENCRYPTED, OLD_PLAINTEXT)

# (key, kind with the default (empty) patterns, kind with the pre-layout default patterns)
CASES: list[tuple[str, Kind, Kind]] = [
    # Node metadata, prefixes of depth 0 to 3.
    ("n1/bk/meta/manifest.json", M, M),
    ("pfx/n1/bk/meta/manifest.json", M, M),
    ("a/b/n1/bk/meta/manifest.json", M, M),
    ("a/b/c/n1/bk/meta/manifest.json", M, M),
    ("n1/bk/meta/schema.cql", P, P),
    ("n1/bk/meta/tokenmap.json", P, P),
    ("n1/bk/meta/server_version.json", P, P),
    ("n1/bk/meta/differential", P, P),
    ("n1/bk/meta/incremental", P, P),
    ("n1/bk/meta/restore_verify_query.json", P, P),
    ("a/b/c/n1/bk/meta/differential", P, P),
    # Unknown files where metadata lives: encrypted unless the old patterns say otherwise.
    ("n1/bk/meta/other.json", E, P),
    ("n1/meta/plain.json", E, P),
    ("n1/bk/meta/manifest.json.bak", E, P),
    ("index/backup_index/bk/unknown.txt", E, P),
    ("index/latest_backup/n1/other.txt", E, P),
    ("index/other/x/y", E, P),
    ("meta/manifest.json", E, E),
    ("bk/meta/manifest.json", E, P),
    ("top", E, E),
    ("", E, E),
    # Backup index and latest-backup markers.
    ("index/backup_index/bk/manifest_n1.json", M, M),
    ("pfx/index/backup_index/bk/manifest_n1.example.com.json", M, M),
    ("a/b/c/index/backup_index/bk/manifest_n1.json", M, M),
    ("index/backup_index/bk/tokenmap_n1.json", P, P),
    ("index/backup_index/bk/schema_n1.cql", P, P),
    ("index/backup_index/bk/started_n1_1767225600.timestamp", P, P),
    ("index/backup_index/bk/finished_n1.example.com_1767225600.timestamp", P, P),
    ("index/backup_index/bk/differential_n1", P, P),
    ("index/backup_index/bk/incremental_n1", P, P),
    ("index/backup_index/bk/started_n1.timestamp", E, P),  # no timestamp: not Medusa's
    ("index/backup_index/bk/manifest_.json", E, P),
    ("index/latest_backup/n1/tokenmap.json", P, P),
    ("index/latest_backup/n1/backup_name.txt", P, P),
    ("pfx/index/latest_backup/n1/backup_name.txt", P, P),
    # Data files: full and differential, prefixes, secondary indexes, DSE, snapshot extras.
    (f"n1/bk/data/ks/t-{CFID}/nb-1-big-Data.db", E, E),
    (f"n1/data/ks/t-{CFID}/nb-1-big-Data.db", E, E),
    (f"a/b/c/n1/data/ks/t-{CFID}/nb-1-big-Data.db", E, E),
    (f"n1/bk/data/ks/t-{CFID}/.t_idx/nb-1-big-Data.db", E, E),
    (f"n1/bk/data/ks/t-{CFID}/manifest.json", E, E),
    (f"n1/bk/data/ks/t-{CFID}/schema.cql", E, E),
    ("n1/bk/data/dse/metadata/nodes/local", E, E),
    ("n1/data/ks/legacy/ks-legacy-ka-1-Data.db", E, E),
    # Hostile names: a backup named data, meta or index.
    ("n1/data/meta/manifest.json", M, E),
    ("n1/data/meta/schema.cql", P, E),
    ("n1/meta/meta/manifest.json", M, M),
    ("n1/index/meta/manifest.json", M, M),
    ("index/backup_index/data/manifest_n1.json", M, E),
    ("index/backup_index/meta/manifest_n1.json", M, M),
    ("index/backup_index/index/tokenmap_n1.json", P, P),
    # ... a host named data, meta or index (without and with a prefix).
    ("data/bk/meta/manifest.json", M, M),
    ("data/bk/meta/tokenmap.json", P, P),
    ("meta/bk/meta/manifest.json", M, M),
    ("index/bk/meta/manifest.json", M, M),
    ("index/backup_index/meta/manifest.json", M, M),  # host index, backup backup_index
    ("index/latest_backup/meta/tokenmap.json", P, P),
    ("index/latest_backup/data/backup_name.txt", P, E),
    ("pfx/meta/bk/meta/manifest.json", M, M),
    ("pfx/index/bk/meta/manifest.json", M, M),
    # Ambiguous: host data under a prefix, or table dir `meta` (pre-2.1) of keyspace bk.
    ("pfx/data/bk/meta/manifest.json", E, E),
    ("pfx/data/bk/meta/schema.cql", E, E),
    ("pfx/data/bk/meta/tokenmap.json", P, E),  # Cassandra writes no tokenmap.json in a table
    ("pfx/data/dse/meta/tokenmap.json", E, E),  # DSE's metadata folder may hold anything
    ("n1/bk/data/ks/meta/manifest.json", E, E),
    ("n1/data/ks/meta/schema.cql", E, E),
    # ... keyspaces and tables named data, meta, index, backup_index, latest_backup.
    (f"n1/bk/data/meta/t-{CFID}/nb-1-big-Data.db", E, E),
    (f"n1/bk/data/index/t-{CFID}/nb-1-big-Data.db", E, E),
    (f"n1/bk/data/ks/meta-{CFID}/manifest.json", E, E),
    (f"n1/bk/data/index/backup_index-{CFID}/manifest_n1.json", E, E),
    ("n1/bk/data/index/backup_index/nb-1-big-Data.db", E, E),
    ("n1/bk/data/index/backup_index/.idx/nb-1-big-Data.db", E, E),
    (f"n1/bk/data/data/data-{CFID}/nb-1-big-Data.db", E, E),
    ("n1/bk/data/ks/meta/ks-meta-ka-1-Data.db", E, E),
    # A prefix ending in data, with an index entry shaped like a secondary index: metadata.
    ("x/data/index/backup_index/.bk/manifest_n1.json", M, E),
    ("x/data/index/latest_backup/n1-nodes/tokenmap.json", P, E),
    # Empty components are not Medusa's.
    ("n1//meta/manifest.json", E, P),
    ("/bk/meta/manifest.json", E, P),
    ("index/backup_index//manifest_n1.json", E, P),
]


@pytest.mark.parametrize(("key", "layout", "old"), CASES)
def test_known_keys(key: str, layout: Kind, old: Kind) -> None:
    assert LAYOUT.kind(key) is layout
    assert OLD.kind(key) is old
    for policy in (LAYOUT, OLD):
        assert policy.encrypts(key) is (policy.kind(key) is E)
        assert policy.is_manifest(key) is (policy.kind(key) is M)


def test_config_defaults_are_layout_only() -> None:
    encryption = Encryption(key_files=["/k"])
    assert list(encryption.encrypted_patterns) == [] and list(encryption.plaintext_patterns) == []
    assert Policy(encryption.encrypted_patterns, encryption.plaintext_patterns) == LAYOUT


def test_constructible_positionally_and_immutable() -> None:
    policy = Policy(["*.db"], ["*/meta/*"])
    assert policy.encrypted_patterns == ("*.db",) and policy.plaintext_patterns == ("*/meta/*",)
    assert policy == Policy(("*.db",), ("*/meta/*",)) and hash(policy) == hash(Policy(("*.db",), ("*/meta/*",)))
    with pytest.raises(AttributeError):
        policy.encrypted_patterns = ()  # type: ignore[misc]


def test_overrides() -> None:
    # Encrypted patterns win over everything, manifests included.
    assert Policy(["*/meta/*"]).kind("n1/bk/meta/manifest.json") is E
    assert Policy(["index/*"]).kind("index/backup_index/bk/manifest_n1.json") is E
    # Plaintext patterns store unknown keys as they are, and never demote a manifest.
    assert Policy((), ["n1/meta/*"]).kind("n1/meta/plain.json") is P
    assert Policy((), ["*"]).kind("n1/bk/meta/manifest.json") is M
    # ... and settle an ambiguity towards metadata: a host named data under a prefix.
    host_data = Policy((), ["pfx/data/*/meta/*"])
    assert host_data.kind("pfx/data/bk/meta/manifest.json") is M
    assert host_data.kind("pfx/data/bk/meta/schema.cql") is P
    # Data stays encrypted if the plaintext pattern does not reach it.
    assert host_data.kind(f"pfx/data/bk/data/ks/t-{CFID}/manifest.json") is E
    # Both: the encrypted pattern wins.
    assert Policy(["*.json"], ["*"]).kind("n1/bk/meta/manifest.json") is E


# --- generated Medusa keys -----------------------------------------------------------------

HOSTILE = [
    "data",
    "meta",
    "index",
    "backup_index",
    "latest_backup",
    "manifest.json",
    "schema.cql",
    "tokenmap.json",
    "server_version.json",
    "differential",
    "incremental",
    "backup_name.txt",
    "manifest_n1.json",
    "tokenmap_n1.json",
    "dse",
    "nodes",
    "metadata",
    ".idx",
    "snapshots",
    "restore_verify_query.json",
    "x-nodes",
]
names = st.one_of(
    st.sampled_from(HOSTILE), st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=10)
)
prefixes = st.lists(names, max_size=3)
# Cassandra identifiers are \w+.
idents = st.one_of(
    st.sampled_from(["data", "meta", "index", "backup_index", "latest_backup", "dse", "nodes", "system_auth"]),
    st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True),
)
VERSIONS = ["ma", "mb", "mc", "md", "me", "na", "nb", "nc", "oa", "da"]
COMPONENTS = [
    "Data.db",
    "Index.db",
    "Filter.db",
    "Statistics.db",
    "Summary.db",
    "CompressionInfo.db",
    "Digest.crc32",
    "Digest.sha1",
    "Digest.adler32",
    "TOC.txt",
    "CRC.db",
    "Partitions.db",
    "Rows.db",
    "SI_idx.db",
    "SAI+aa+t+idx+TermsData.db",
]
generations = st.one_of(
    st.integers(1, 10**6).map(str), st.from_regex(r"[0-9a-z]{4}_[0-9a-z]{4}_[0-9a-z]{18}", fullmatch=True)
)


@st.composite
def data_keys(draw: st.DrawFn) -> str:
    """``[prefix/]<fqdn>/[<backup>/]data/<ks>/<table dir>/[<sub>/]<file>`` as Medusa uploads it."""
    path = [*draw(prefixes), draw(names)]
    if draw(st.booleans()):  # full backup; differential ones sit under <fqdn>/data
        path.append(draw(names))
    if draw(st.booleans()):  # DSE's metadata folder: keyspace dse, any folder and file names
        folder = draw(names)
        sub = [draw(st.sampled_from(["nodes", "x-nodes"]))] if draw(st.booleans()) else []
        return "/".join([*path, "data", "dse", folder, *sub, draw(names)])
    keyspace, table = draw(idents), draw(idents)
    table_dir = draw(st.sampled_from([f"{table}-{CFID}", table]))  # bare: tables from before 2.1
    index = draw(st.one_of(st.none(), idents))
    sub = [f".{index}"] if index is not None else []
    version, generation, component = (
        draw(st.sampled_from(VERSIONS)),
        draw(generations),
        draw(st.sampled_from(COMPONENTS)),
    )
    owner = table if index is None else f"{table}.{index}"
    file = draw(
        st.sampled_from(
            [
                f"{version}-{generation}-{draw(st.sampled_from(['big', 'bti']))}-{component}",
                f"{keyspace}-{owner}-{draw(st.sampled_from(['ka', 'jb', 'ic']))}-{generation}-{component}",
                "manifest.json",  # Cassandra's own snapshot files (uploaded by Medusa before 0.31)
                "schema.cql",
            ]
        )
    )
    return "/".join([*path, "data", keyspace, table_dir, *sub, file])


NODE_META = [
    "schema.cql",
    "tokenmap.json",
    "server_version.json",
    "differential",
    "incremental",
    "restore_verify_query.json",
]


@st.composite
def node_meta(draw: st.DrawFn) -> tuple[str, str, str, list[str], str]:
    prefix, fqdn, backup = draw(prefixes), draw(names), draw(names)
    file = draw(st.sampled_from(["manifest.json", *NODE_META]))
    return "/".join([*prefix, fqdn, backup, "meta", file]), fqdn, backup, prefix, file


def node_meta_ambiguous(fqdn: str, backup: str, prefix: list[str], file: str) -> bool:
    """Host ``data`` under a prefix: also a pre-2.1 table ``meta`` of keyspace ``backup``, whose
    snapshot holds manifest.json and schema.cql; with keyspace dse, any file."""
    return fqdn == "data" and bool(prefix) and (file in ("manifest.json", "schema.cql") or backup == "dse")


@st.composite
def index_keys(draw: st.DrawFn) -> tuple[str, Kind]:
    prefix, fqdn, backup = draw(prefixes), draw(names), draw(names)
    timestamp = draw(st.integers(0, 2**40))
    file, kind = draw(
        st.sampled_from(
            [
                (f"manifest_{fqdn}.json", M),
                (f"tokenmap_{fqdn}.json", P),
                (f"schema_{fqdn}.cql", P),
                (f"started_{fqdn}_{timestamp}.timestamp", P),
                (f"finished_{fqdn}_{timestamp}.timestamp", P),
                (f"differential_{fqdn}", P),
                (f"incremental_{fqdn}", P),
            ]
        )
    )
    if draw(st.booleans()):
        return "/".join([*prefix, "index", "backup_index", backup, file]), kind
    file = draw(st.sampled_from(["tokenmap.json", "backup_name.txt"]))
    return "/".join([*prefix, "index", "latest_backup", fqdn, file]), P


@settings(max_examples=2000)
@given(data_keys())
def test_every_data_file_is_encrypted(key: str) -> None:
    assert LAYOUT.kind(key) is E
    assert OLD.kind(key) is E


@settings(max_examples=1000)
@given(node_meta())
def test_node_metadata(generated: tuple[str, str, str, list[str], str]) -> None:
    key, fqdn, backup, prefix, file = generated
    expected = M if file == "manifest.json" else P
    assert LAYOUT.kind(key) is (E if node_meta_ambiguous(fqdn, backup, prefix, file) else expected)
    # The old patterns: encrypted wherever the key contains /data/, else the same.
    assert OLD.kind(key) is (E if "/data/" in key else expected)


@settings(max_examples=1000)
@given(index_keys())
def test_index_metadata_is_never_ambiguous(generated: tuple[str, Kind]) -> None:
    key, kind = generated
    assert LAYOUT.kind(key) is kind
    assert OLD.kind(key) is (E if "/data/" in key else kind)


@st.composite
def any_keys(draw: st.DrawFn) -> str:
    return "/".join(draw(st.lists(st.one_of(names, st.just("")), max_size=8)))


def looks_like_manifest(key: str) -> bool:
    """What the generators call a manifest: .../meta/manifest.json or index/backup_index/*/manifest_*.json."""
    parts = key.split("/")
    return key.endswith("/meta/manifest.json") or (
        len(parts) >= 4
        and parts[-4:-2] == ["index", "backup_index"]
        and parts[-1].startswith("manifest_")
        and parts[-1].endswith(".json")
    )


METADATA_NAMES = {"manifest.json", *NODE_META, "tokenmap.json", "backup_name.txt"}
INDEX_PREFIXES = ("manifest_", "tokenmap_", "schema_", "started_", "finished_", "differential_", "incremental_")


@settings(max_examples=3000)
@given(any_keys())
def test_any_key(key: str) -> None:
    kind = LAYOUT.kind(key)
    assert kind is LAYOUT.kind(key) is Policy().kind(key)  # deterministic, no state
    assert LAYOUT.encrypts(key) is (kind is E) and LAYOUT.is_manifest(key) is (kind is M)
    if kind is M:
        assert looks_like_manifest(key)
    last = key.rsplit("/", 1)[-1]
    if last not in METADATA_NAMES and not last.startswith(INDEX_PREFIXES):
        assert kind is E  # nothing but Medusa's metadata names is ever stored in the clear
    # The old patterns: encrypted wherever /data/ occurs, else the layout or more plaintext.
    assert OLD.kind(key) is E if "/data/" in key else OLD.kind(key) in (kind, P)


@settings(max_examples=500)
@given(any_keys())
def test_pattern_overrides(key: str) -> None:
    assert Policy(["*"]).kind(key) is E
    everything_plain = Policy((), ["*"]).kind(key)
    assert everything_plain is not E
    if LAYOUT.kind(key) is M:
        assert everything_plain is M  # a plaintext pattern never demotes a manifest
    if everything_plain is M:
        assert looks_like_manifest(key)


pattern_chars = st.text("ab/*?[]!-", max_size=6)


@settings(max_examples=1000)
@given(st.lists(pattern_chars, min_size=1, max_size=3), st.text("ab/-[]*", max_size=8))
def test_patterns_match_like_fnmatchcase(patterns: list[str], key: str) -> None:
    policy = Policy(patterns, ["*"])
    assert policy.encrypts(key) is any(fnmatchcase(key, pattern) for pattern in patterns)


MOVED = (("old-cluster/", "new-cluster/"), ("a/", "b/c/"))


def test_accepted_names_of_a_moved_key() -> None:
    assert accepted_names("new-cluster/h1/data/f", MOVED) == ["new-cluster/h1/data/f", "old-cluster/h1/data/f"]
    assert accepted_names("b/c/x", MOVED) == ["b/c/x", "a/x"]
    assert accepted_names("elsewhere/x", MOVED) == ["elsewhere/x"]


def test_written_as_accepts_only_a_declared_old_name() -> None:
    assert written_as("new-cluster/f", "old-cluster/f", MOVED) == "old-cluster/f"
    # Any other name the trailer gives is not accepted: the object must have been written as
    # the key it is stored under (and its check then fails naming that key).
    assert written_as("new-cluster/f", "other/f", MOVED) == "new-cluster/f"
    assert written_as("elsewhere/f", "old-cluster/f", MOVED) == "elsewhere/f"
