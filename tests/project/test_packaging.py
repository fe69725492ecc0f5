"""What a release is built from: the runtime dependencies pinned for the image, the license."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_constraints_pin_every_runtime_dependency() -> None:
    """The Dockerfile installs with constraints.txt, which pins (==) each of pyproject's
    dependencies: an image built twice from one commit gets the same versions."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {
        re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in project["dependencies"]
    }
    pinned = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pinned[name.lower().replace("_", "-")] = version
    assert wanted <= set(pinned), wanted - set(pinned)
    assert "-c constraints.txt" in (REPO / "Dockerfile").read_text()


def test_license_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
