"""``legacy_plaintext_before`` as an operator meets it: check-config says what it means."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.functional.test_cli import cli, write_config


def config_with(tmp_path: Path, encryption: str) -> Path:
    key = tmp_path / "k.key"
    if not key.exists():
        cli("keygen", str(key))
    return write_config(
        tmp_path,
        f"""
clients: [{{access_key_id: medusa, secret_access_key: s}}]
upstream: {{endpoint_url: "http://127.0.0.1:9"}}
cache: {{path: {tmp_path / "cache.sqlite"}}}
encryption: {{key_files: [{key}]{encryption}}}
""",
    )


def test_default_refuses_unencrypted_objects(tmp_path: Path) -> None:
    done = cli("check-config", "--config", str(config_with(tmp_path, "")))
    assert done.returncode == 0, done.stderr
    assert "unencrypted objects under encrypted keys: refused" in done.stdout


def test_past_cutoff_is_reported(tmp_path: Path) -> None:
    path = config_with(tmp_path, ', legacy_plaintext_before: "2026-01-01T00:00:00Z"')
    done = cli("check-config", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "served when written before 2026-01-01T00:00:00+00:00" in done.stdout
    assert done.stderr == ""


def test_future_cutoff_warns(tmp_path: Path) -> None:
    path = config_with(tmp_path, ', legacy_plaintext_before: "2999-01-01T00:00:00Z"')
    done = cli("check-config", "--config", str(path))
    assert done.returncode == 0
    assert done.stderr.count("\n") == 1 and "is in the future" in done.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (", serve_legacy_plaintext: true", "serve_legacy_plaintext was replaced by legacy_plaintext_before"),
        (', legacy_plaintext_before: "2026-01-01T00:00:00"', "give a time zone"),
        (", legacy_plaintext_before: yesterday", "legacy_plaintext_before"),
    ],
)
def test_bad_settings_give_one_line(tmp_path: Path, setting: str, message: str) -> None:
    done = cli("check-config", "--config", str(config_with(tmp_path, setting)))
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
