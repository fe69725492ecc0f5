"""The Medusa ``[storage]`` examples in the docs work when pasted: each is read by Medusa's own
config loader (in the Medusa venv) and its values are what Medusa's S3 driver can use. Medusa's
ini parser keeps an inline ``;`` comment as part of the value (``50MB   ; ...``), which breaks
it far from the cause, so the docs must put comments on lines of their own."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.toolenv import medusa_python

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "deploy").glob("*/README.md"))]
INI_BLOCK = re.compile(r"```ini\n(.*?)```", re.S)

# Run by Medusa's python: parse the file as `medusa` would, then use the values as its S3 driver does.
CHECK = r"""
import json, pathlib, sys
from medusa.config import parse_config
from medusa.storage.abstract_storage import AbstractStorage
storage = dict(parse_config({}, pathlib.Path(sys.argv[1]))["storage"])
problems = [f"{k} = {v!r}: an inline comment" for k, v in storage.items() if v and ";" in v]
for name in ("multi_part_upload_threshold", "multipart_chunksize", "transfer_max_bandwidth"):
    try:
        AbstractStorage._human_size_to_bytes(storage[name])
    except (KeyError, ValueError) as exc:
        problems.append(f"{name}: {exc}")
for name in ("port", "concurrent_transfers"):
    if not str(storage.get(name, "0")).strip().isdigit():
        problems.append(f"{name} = {storage.get(name)!r} is not a number")
for name in ("secure", "ssl_verify"):
    if storage.get(name) not in (None, "True", "False", "true", "false"):
        problems.append(f"{name} = {storage.get(name)!r} is not a boolean")
if any(c.isspace() for c in storage.get("key_file") or ""):
    problems.append(f"key_file = {storage['key_file']!r} is not a path")
print(json.dumps({"problems": problems, "storage_provider": storage.get("storage_provider")}))
"""


def storage_examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for n, block in enumerate(INI_BLOCK.findall(doc.read_text())):
            if block.lstrip().startswith("[storage]"):
                found.append((f"{doc.relative_to(REPO)}#{n}", block))
    return found


EXAMPLES = storage_examples()


def test_the_docs_have_storage_examples() -> None:
    names = {name.split("#")[0] for name, _ in EXAMPLES}
    assert {"README.md", "docs/OPERATIONS.md", "deploy/kubernetes/README.md", "deploy/systemd/README.md"} <= names


@pytest.mark.parametrize(("name", "block"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_storage_example_loads_in_medusa(name: str, block: str, tmp_path: Path) -> None:
    ini = tmp_path / "medusa.ini"
    ini.write_text(block)
    result = subprocess.run([medusa_python(), "-c", CHECK, str(ini)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    checked = json.loads(result.stdout.strip().splitlines()[-1])
    assert checked["problems"] == [], f"{name}: {checked['problems']}"
    assert checked["storage_provider"] == "s3_compatible"
