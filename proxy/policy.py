"""Which object keys are encrypted. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Policy:
    """``encrypted_patterns`` win over ``plaintext_patterns``; unmatched keys are encrypted.

    So SSTables under ``.../data/...`` stay encrypted even if a keyspace happens to be called
    ``meta`` or ``index``, and a key nobody thought of is never stored in the clear.
    """

    encrypted_patterns: Sequence[str]
    plaintext_patterns: Sequence[str]

    def encrypts(self, key: str) -> bool:
        if any(fnmatchcase(key, pattern) for pattern in self.encrypted_patterns):
            return True
        return not any(fnmatchcase(key, pattern) for pattern in self.plaintext_patterns)
