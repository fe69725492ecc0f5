"""Where ``restore-backup`` puts a manifest's files: as ``medusa download`` does."""

from __future__ import annotations

from pathlib import Path

from proxy.tools.restore_backup import backup_files

MANIFEST = [
    {
        "keyspace": "ks1",
        "columnfamily": "t1-aa",
        "objects": [
            {
                "path": "pre/node1/data/ks1/t1-aa/nb-1-big-Data.db",
                "size": 10,
                "MD5": "0cc175b9c0f1b6a831c399e269772661",
            },
            {
                "path": "pre/node1/data/ks1/t1-aa/.t1_idx/nb-1-big-Index.db",
                "size": 3,
                "MD5": "ZZ6fbq1eWDhO6xDXsyZycg==",
            },
        ],
    },
    {"keyspace": "ks2", "columnfamily": "t2-bb", "objects": [{"path": "p/x", "size": 5, "MD5": "abc-2"}]},
]


def test_files_go_where_medusa_download_puts_them() -> None:
    files = backup_files(MANIFEST, Path("/d"))
    assert [(f.key, f.target, f.size, f.md5) for f in files] == [
        (
            "pre/node1/data/ks1/t1-aa/nb-1-big-Data.db",
            Path("/d/ks1/t1-aa/nb-1-big-Data.db"),
            10,
            "0cc175b9c0f1b6a831c399e269772661",
        ),
        (
            "pre/node1/data/ks1/t1-aa/.t1_idx/nb-1-big-Index.db",
            Path("/d/ks1/t1-aa/.t1_idx/nb-1-big-Index.db"),
            3,
            "659e9f6ead5e58384eeb10d7b3267272",  # base64 MD5s become hex
        ),
        ("p/x", Path("/d/ks2/t2-bb/x"), 5, "abc-2"),  # a multipart ETag is kept as it is
    ]


def test_tables_restrict_by_keyspace_or_table() -> None:
    assert [f.key for f in backup_files(MANIFEST, Path("/d"), ["ks2"])] == ["p/x"]
    assert len(backup_files(MANIFEST, Path("/d"), ["ks1.t1-aa"])) == 2
    assert backup_files(MANIFEST, Path("/d"), ["ks1.other"]) == []
