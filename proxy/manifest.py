"""Medusa's manifests, both ways. Pure.

Medusa writes, for every backed-up file, ``{"path", "MD5", "size"}`` with the plaintext values it
saw through the proxy. In the bucket the proxy stores ``size``/``MD5`` of the *stored* (encrypted)
object and keeps Medusa's values as ``source_size``/``source_MD5`` (the seed document's fields),
so the bucket's manifests describe the bucket's own objects and can be checked without the key.
On the way back the proxy restores exactly the bytes Medusa wrote.

The text is walked, not loaded: the sections and their ``objects`` lists are scanned here and
each entry is decoded on its own (``json``'s C scanner), so a manifest of a million SSTables
never becomes a million live Python objects. Everything outside the entries that change is
copied byte for byte. Limits: nesting depth ``MAX_DEPTH``; the caller bounds the size.

An entry is rewritten only when restoring it gives back its exact text; a manifest that already
carries ``source_size`` *and* ``source_MD5`` in an entry cannot be stored for a byte-exact
restore and is refused (``NotAManifest``), so the caller stores it another way.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import re
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.format.seed import source_md5_hex

_MANIFEST_KEY = re.compile(r"(^|/)meta/manifest\.json$|(^|/)index/backup_index/[^/]+/manifest_[^/]+\.json$")

SOURCE_SIZE = "source_size"
SOURCE_MD5 = "source_MD5"
#: Deepest nesting accepted (Medusa's manifests have 4: list, section, objects, entry).
MAX_DEPTH = 32
#: Bytes per piece of a restored manifest handed out while streaming it.
PIECE = 256 << 10

_WS = re.compile(r"[ \t\n\r]*")
#: json's C scanners: (text, pos) -> (value, end), StopIteration when there is no value; and
#: (text, pos after the opening quote) -> (string, end).
_DECODE: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_SCANSTRING: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_CONTAINERS = (dict, list)
_HEX_MD5 = re.compile(r"[0-9a-f]{32}")


class NotAManifest(ValueError):
    """The text is not a Medusa manifest within the limits (the reason says why)."""


def is_manifest_key(key: str) -> bool:
    """``.../meta/manifest.json`` and ``index/backup_index/<backup>/manifest_<fqdn>.json``."""
    return _MANIFEST_KEY.search(key) is not None


@dataclass(frozen=True, slots=True)
class Stored:
    """What the bucket holds for one object: its stored size and upstream ETag (unquoted)."""

    size: int
    etag: str


# --- the walk --------------------------------------------------------------------------------


def _ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _depth(value: Any) -> int:
    """Nesting depth of a decoded value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH + 1:
            return level
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children if isinstance(child, _CONTAINERS))
    return deepest


def _value(text: str, pos: int, level: int) -> tuple[Any, int]:
    """One JSON value at ``pos`` (at nesting ``level``) and the position after it."""
    try:
        value, end = _DECODE(text, pos)
    except StopIteration:
        raise NotAManifest(f"not JSON: expected a value at character {pos}") from None
    except RecursionError:
        raise NotAManifest(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise NotAManifest(f"not JSON: {exc}") from None
    if isinstance(value, _CONTAINERS):
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, _CONTAINERS):
                if level + _depth(value) - 1 > MAX_DEPTH:
                    raise NotAManifest(f"nested deeper than {MAX_DEPTH} levels")
                break
    return value, end


def _expect(text: str, pos: int, char: str, what: str) -> int:
    if not text.startswith(char, pos):
        raise NotAManifest(f"expected {char!r} {what} at character {pos}")
    return _ws(text, pos + 1)


def iter_entries(text: str) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Every object entry of a manifest: ``(start, end, entry)`` with ``text[start:end]`` its JSON.

    A manifest is a JSON array of sections (objects), each with one ``"objects"`` list of entries
    (objects with a string ``path``), as Medusa writes it. NotAManifest (raised when the walk gets
    there) for anything else, or nested deeper than ``MAX_DEPTH``.
    """
    for start, end, entry in _walk(text, False):
        assert isinstance(entry, dict)
        yield start, end, entry


def _walk(text: str, restoring: bool) -> _Walk:
    """The walk of ``iter_entries``; ``restoring`` gives, for an entry the proxy rewrote in its
    canonical shape, its restored text (a str) instead of the decoded entry."""
    pos = _expect(text, _ws(text, 0), "[", "to open the manifest")
    if text.startswith("]", pos):
        pos = _ws(text, pos + 1)
    else:
        while True:
            pos = yield from _section(text, pos, restoring)
            if text.startswith(",", pos):
                pos = _ws(text, pos + 1)
                continue
            pos = _expect(text, pos, "]", "after a section")
            break
    if pos != len(text):
        raise NotAManifest(f"extra data at character {pos}")
    return pos


_Walk = Generator[tuple[int, int, "dict[str, Any] | str"], None, int]

#: An entry as the proxy rewrites a Medusa entry, with plain ASCII strings, short integers and a
#: hex MD5 (or multipart ETag) in source_MD5. Its restored text is ``{"path": P, "MD5": M,
#: "size": S}``, exactly ``json.dumps`` of the restored entry: a fast path of the restore that
#: decodes nothing (the same walk accepts it; anything else takes the general path).
_STRING = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
_INT = r"(?:0|[1-9][0-9]{0,17})"
_REWRITTEN = re.compile(
    rf'\{{"path": ({_STRING}), "MD5": {_STRING}, "size": {_INT}, "source_size": ({_INT}), '
    rf'"source_MD5": ("[0-9a-f]{{32}}(?:-[1-9][0-9]{{0,4}})?")\}}'
)


def _section(text: str, pos: int, restoring: bool) -> _Walk:
    pos = _expect(text, pos, "{", "to open a section")
    objects = False
    if not text.startswith("}", pos):
        while True:
            if not text.startswith('"', pos):
                raise NotAManifest(f"expected a key in a section at character {pos}")
            try:
                name, pos = _SCANSTRING(text, pos + 1)
            except ValueError as exc:
                raise NotAManifest(f"not JSON: {exc}") from None
            pos = _expect(text, _ws(text, pos), ":", "after a key")
            if name == "objects":
                if objects:
                    raise NotAManifest("a section has two objects lists")
                objects = True
                pos = yield from _objects(text, pos, restoring)
            else:
                _, pos = _value(text, pos, 3)
            pos = _ws(text, pos)
            if text.startswith(",", pos):
                pos = _ws(text, pos + 1)
                continue
            if not text.startswith("}", pos):
                raise NotAManifest(f"expected ',' or '}}' in a section at character {pos}")
            break
    if not objects:
        raise NotAManifest("a section has no objects list")
    return _ws(text, pos + 1)


def _objects(text: str, pos: int, restoring: bool) -> _Walk:
    pos = _expect(text, pos, "[", "to open an objects list")
    if text.startswith("]", pos):
        return pos + 1
    fast = _REWRITTEN.match if restoring else None
    while True:
        match = fast(text, pos) if fast is not None else None
        if match is not None:
            end = match.end()
            yield pos, end, f'{{"path": {match[1]}, "MD5": {match[3]}, "size": {match[2]}}}'
        else:
            entry, end = _value(text, pos, 4)
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise NotAManifest(f"an entry is not an object with a string path at character {pos}")
            yield pos, end, entry
        pos = _ws(text, end)
        if text.startswith(",", pos):
            pos = _ws(text, pos + 1)
            continue
        if not text.startswith("]", pos):
            raise NotAManifest(f"expected ',' or ']' in an objects list at character {pos}")
        return pos + 1


def check(text: str) -> int:
    """The number of entries of a manifest; NotAManifest when it is not one."""
    return sum(1 for _ in iter_entries(text))


def iter_paths(text: str) -> Iterator[str]:
    for _, _, entry in iter_entries(text):
        yield entry["path"]


# --- rewrite and restore ------------------------------------------------------------------


def _make_dumps() -> Callable[[dict[str, Any]], str]:
    """``json.dumps`` with its defaults, its C encoder made once (it is made per call otherwise:
    half the cost of a small entry). Identical output; no cycle check (decoded JSON has none)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return json.dumps
    encode = make(None, None, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)

    def dumps(entry: dict[str, Any]) -> str:
        return "".join(encode(entry, 0))

    return dumps


_dumps = _make_dumps()


def _medusa_md5(value: Any) -> Any:
    """``source_MD5`` as Medusa compares it: the seed's base64 MD5 in hex; anything else as written.

    Medusa's own values are ETags as the proxy reported them, multipart ones included
    (``<hex>-<parts>``), which are no MD5 and must come back byte for byte.
    """
    if isinstance(value, str) and _HEX_MD5.fullmatch(value):
        return value
    try:
        return source_md5_hex(value)
    except (ValueError, AttributeError):
        return value


def _restored(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry with both source fields as Medusa wrote it (changed in place)."""
    entry["size"] = entry.pop(SOURCE_SIZE)
    entry["MD5"] = _medusa_md5(entry.pop(SOURCE_MD5))
    return entry


def _restores(entry: dict[str, Any]) -> bool:
    return SOURCE_SIZE in entry and SOURCE_MD5 in entry


def rewrite_into(text: str, stored: Mapping[str, Stored], out: bytearray) -> int:
    """Append the manifest as the bucket keeps it to ``out``; return how many entries changed.

    Entries whose object is in ``stored`` (the encrypted ones) get the stored size and ETag, and
    Medusa's values move to ``source_size``/``source_MD5``; an entry whose text would not come
    back exactly is left as it is. NotAManifest when ``text`` is not a manifest, or when an entry
    already has both source fields (restoring would change it).
    """
    last = changed = 0
    for start, end, entry in iter_entries(text):
        if _restores(entry):
            raise NotAManifest(
                f"entry {entry['path']!r} already has {SOURCE_SIZE} and {SOURCE_MD5}: it would not read back as written"
            )
        found = stored.get(entry["path"])
        if found is None or SOURCE_SIZE in entry or SOURCE_MD5 in entry or "size" not in entry or "MD5" not in entry:
            continue
        new = {**entry, "MD5": found.etag, "size": found.size, SOURCE_SIZE: entry["size"], SOURCE_MD5: entry["MD5"]}
        rewritten = _dumps(new)
        if _dumps(_restored(new)) != text[start:end]:
            continue
        out += text[last:start].encode()
        out += rewritten.encode()
        last = end
        changed += 1
    out += text[last:].encode()
    return changed


def _slices(text: str, start: int, end: int) -> Iterator[str]:
    if end - start <= PIECE:
        yield text[start:end]
        return
    for at in range(start, end, PIECE):
        yield text[at : min(end, at + PIECE)]


def restore_pieces(text: str) -> Iterator[bytes]:
    """The manifest as Medusa wrote it, in pieces of about ``PIECE`` bytes.

    Entries with both source fields get them back in ``size``/``MD5`` (the old in-Medusa
    encryption wrote ``source_MD5`` in base64: Medusa compares ``MD5`` with hex ETags, so it is
    given back in hex); everything else is copied. NotAManifest (from the walk, possibly after
    pieces were handed out) when ``text`` is not a manifest: check it first when unsure.
    """

    def pieces() -> Iterator[str]:
        last = 0
        for start, end, entry in _walk(text, True):
            if isinstance(entry, str):
                yield from _slices(text, last, start)
                yield entry
                last = end
            elif _restores(entry):
                yield from _slices(text, last, start)
                yield _dumps(_restored(entry))
                last = end
        yield from _slices(text, last, len(text))

    pending: list[str] = []
    size = 0
    for piece in pieces():
        pending.append(piece)
        size += len(piece)
        if size >= PIECE:
            yield "".join(pending).encode()
            pending, size = [], 0
    if pending:
        yield "".join(pending).encode()


def restored_digest(text: str) -> tuple[int, str]:
    """Length and hex MD5 of the restored manifest, without keeping it."""
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    for piece in restore_pieces(text):
        size += len(piece)
        md5.update(piece)
    return size, md5.hexdigest()


# --- whole-document helpers (tests, small manifests) ----------------------------------------


def _text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def object_paths(body: bytes) -> list[str] | None:
    """The object keys a manifest names, or None when the body is not a manifest."""
    text = _text(body)
    try:
        return None if text is None else list(iter_paths(text))
    except NotAManifest:
        return None


def rewrite(body: bytes, stored: Mapping[str, Stored]) -> bytes | None:
    """The manifest as the bucket keeps it, or None when nothing changes or it cannot be rewritten."""
    text = _text(body)
    if text is None:
        return None
    out = bytearray()
    try:
        changed = rewrite_into(text, stored, out)
    except NotAManifest:
        return None
    return bytes(out) if changed else None


def restore(body: bytes) -> bytes:
    """The manifest as Medusa wrote it: source values back in ``size``/``MD5``; a body that is
    not a manifest comes back unchanged."""
    text = _text(body)
    if text is None:
        return body
    try:
        return b"".join(restore_pieces(text))
    except NotAManifest:
        return body


def stored_entries(body: bytes) -> list[dict[str, Any]]:
    """Every object entry of a manifest text (empty when it is not one)."""
    text = _text(body)
    try:
        return [] if text is None else [entry for _, _, entry in iter_entries(text)]
    except NotAManifest:
        return []
