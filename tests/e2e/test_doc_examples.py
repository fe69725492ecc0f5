"""The Medusa ``[storage]`` examples in the docs work when pasted: each is read by Medusa's own
config loader (in the Medusa venv) and its values are what Medusa's S3 driver can use. Medusa's
ini parser keeps an inline ``;`` comment as part of the value (``50MB   ; ...``), which breaks
it far from the cause, so the docs must put comments on lines of their own.  Sizes the older
Medusa releases read with int() (0.29: multi_part_upload_threshold) must be byte counts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

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
import configparser
written = configparser.ConfigParser(interpolation=None)
written.read(sys.argv[1])
try:  # when the example sets it (Medusa 0.29's own default is a byte count)
    int(written["storage"].get("multi_part_upload_threshold", "0"))
except ValueError:
    problems.append("multi_part_upload_threshold: Medusa 0.29's differential backups need a byte count")
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


YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)
SH_BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)
CONFIG_SECTIONS = {"listen", "tls", "clients", "upstream", "encryption", "cache", "limits", "logging", "timeouts"}


def blocks(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    return [
        (f"{doc.relative_to(REPO)}#{n}", block)
        for doc in DOCS
        for n, block in enumerate(pattern.findall(doc.read_text()))
    ]


def _real_files(node: Any, tmp: Path) -> Any:
    """The example with every file it names replaced by a real one of the right kind."""
    from tests.support.servers import generate_fernet_key_file

    if isinstance(node, dict):
        out = {}
        for name, value in node.items():
            if name.endswith("_files") and isinstance(value, list):
                out[name] = [str(generate_fernet_key_file(tmp / f"k{i}-{name}.key")) for i, _ in enumerate(value)]
            elif name.endswith("_file") and isinstance(value, str):
                path = tmp / f"{name}-{len(list(tmp.iterdir()))}"
                path.write_text("s" * 40)
                path.chmod(0o600)
                out[name] = str(path)
            else:
                out[name] = _real_files(value, tmp)
        return out
    if isinstance(node, list):
        return [_real_files(item, tmp) for item in node]
    return node


@pytest.mark.parametrize(("name", "block"), blocks(YAML_BLOCK), ids=[name for name, _ in blocks(YAML_BLOCK)])
def test_yaml_example_is_valid(name: str, block: str, tmp_path: Path) -> None:
    """Every YAML example parses; a proxy config (or a part of one) is one the proxy accepts,
    with its files in place (a fragment is checked inside a minimal config)."""
    import textwrap

    import yaml

    from proxy.config import parse_config

    documents = list(yaml.safe_load_all(textwrap.dedent(block)))
    assert documents, name
    for data in documents:
        if not (isinstance(data, dict) and set(data) <= CONFIG_SECTIONS):
            continue  # a Kubernetes or Medusa fragment: parsing it is the check
        config: dict[str, Any] = {
            "clients": [{"access_key_id": "medusa", "secret_access_key_file": "f"}],
            "upstream": {"region": "us-east-1"},
            "encryption": {"key_files": ["k"]},
        }
        for section, value in data.items():  # a fragment's sections over the minimal config's
            base = config.get(section)
            config[section] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        config["cache"] = {"path": str(tmp_path / "cache.sqlite")}
        parse_config(_real_files(config, tmp_path), environ={})


def shell_commands() -> list[tuple[str, list[str]]]:
    """Every ``medusa-crypt-proxy ...`` line of the shell examples (continuations joined)."""
    import shlex

    found = []
    for name, block in blocks(SH_BLOCK):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ").removeprefix("sudo ")
            if line.startswith("medusa-crypt-proxy "):
                found.append((name, shlex.split(line, comments=True)[1:]))
    return found


def test_shell_examples_name_real_commands_and_options() -> None:
    """Each command in the docs' shell examples is one the command line accepts as written."""
    from proxy.cli import build_parser

    commands = shell_commands()
    assert any(args[0] == "restore-backup" for _, args in commands)
    parser = build_parser()
    for name, args in commands:
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{name}: medusa-crypt-proxy {' '.join(args)}: rejected (exit {exc.code})")
