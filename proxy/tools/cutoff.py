"""The legacy cutoff after ``migrate``: narrowed to what is left unencrypted, or removed.

Why: ``encryption.legacy_plaintext_before`` lets unencrypted objects written before it be served;
once they are encrypted it only widens what a bucket writer could have planted back then. The
cutoff moves to just after the newest object still needing it, or goes when none does. The
config file is the only place it can live (the bucket is what it guards against), so it is
edited there, one line, and read back through the config loader before it is kept.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from proxy.config import ConfigError, load_config

_LINE = re.compile(r"^(?P<indent>[ \t]*)legacy_plaintext_before[ \t]*:(?P<value>.*)$")


class CutoffEditError(Exception):
    """The config file could not be edited (the reason says why); nothing was changed."""


def narrowed(cutoff: datetime, still_legacy: Iterable[datetime]) -> datetime | None:
    """The cutoff that still serves every object in ``still_legacy`` (their Last-Modified) and
    nothing newer: a second after the newest (S3's times have whole seconds), never later than
    ``cutoff``; None when nothing needs it."""
    newest = max(still_legacy, default=None)
    if newest is None:
        return None
    return min(cutoff, newest.replace(microsecond=0) + timedelta(seconds=1))


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def edit_config(path: str | Path, new: datetime | None, why: str) -> None:
    """Set ``legacy_plaintext_before`` in the config file at ``path`` to ``new`` (None: comment
    it out), keeping every other line; the file is replaced only once it loads with the new value."""
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if _LINE.match(line)]
    if len(found) != 1:
        raise CutoffEditError(f"{path} has {len(found)} legacy_plaintext_before lines where one was expected")
    match = _LINE.match(lines[found[0]])
    assert match is not None
    indent, old = match["indent"], match["value"].split("#")[0].strip()
    today = datetime.now(UTC).date().isoformat()
    if new is None:
        lines[found[0]] = f"{indent}# legacy_plaintext_before: {old}  # removed by migrate on {today}: {why}\n"
    else:
        lines[found[0]] = (
            f'{indent}legacy_plaintext_before: "{rfc3339(new)}"  # narrowed by migrate on {today} from {old}: {why}\n'
        )
    edited = "".join(lines)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(edited)
        os.chmod(temp, path.stat().st_mode & 0o7777)
        try:
            loaded = load_config(temp).encryption.legacy_plaintext_before
        except ConfigError as err:
            raise CutoffEditError(f"{path} would not load once edited: {'; '.join(err.problems)}") from None
        if loaded != new:
            raise CutoffEditError(f"{path} edited gives legacy_plaintext_before {loaded}, not {new}")
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
