"""Incremental decoder for ``Content-Encoding: aws-chunked`` request bodies.

The HTTP layer has already removed any ``Transfer-Encoding: chunked`` framing; what is fed here
is the aws-chunked stream itself, in pieces of any size (down to one byte). Three forms exist:

* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``: ``<hex>;chunk-signature=<sig>\\r\\n<data>\\r\\n`` ... and a
  final ``0;chunk-signature=<sig>\\r\\n\\r\\n``; each signature chains from the previous one,
  starting with the seed signature of the Authorization header (Java SDK, minio-go).
* ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``: ``<hex>\\r\\n<data>\\r\\n`` ... ``0\\r\\n<name>:<value>\\r\\n\\r\\n``
  (what boto3 and the AWS CLI send over https by default).
* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``: signed chunks, then trailers and a final
  ``x-amz-trailer-signature:<sig>`` line.

Memory: at most one framing line (``max_line`` bytes) is buffered. Unsigned payload bytes are
returned as soon as they arrive (as memoryviews of the fed buffers, no copy). A signed chunk is
held back until its signature has been checked, so up to one chunk (``max_chunk_size``, clients use
64 KiB to 1 MiB) is held in memory: releasing unverified bytes would defeat the signature.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable

from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import EMPTY_SHA256, AuthResult, PayloadMode, sign, signatures_equal

TRAILER_SIGNATURE = "x-amz-trailer-signature"
DEFAULT_MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_LINE = 4096
MAX_TRAILERS = 16


class _State(enum.Enum):
    HEADER = 1  # reading "<hex>[;ext]\r\n"
    DATA = 2  # reading chunk data
    DATA_CRLF = 3  # reading the "\r\n" after chunk data
    TRAILER = 4  # after the last chunk: trailer lines until an empty line
    DONE = 5


def _framing(message: str) -> S3Error:
    return S3Error.invalid_request(message)


def _incomplete(message: str) -> S3Error:
    return S3Error.of("IncompleteBody", message)


def _bad_trailer(message: str) -> S3Error:
    return S3Error.of("MalformedTrailerError", message)


def _bad_signature(auth: AuthResult, string_to_sign: str, provided: str) -> S3Error:
    return S3Error.of(
        "SignatureDoesNotMatch",
        AWSAccessKeyId=auth.access_key_id,
        StringToSign=string_to_sign,
        SignatureProvided=provided,
    )


class AwsChunkedDecoder:
    """Feed aws-chunked bytes, get payload bytes; ``finish()`` returns the trailing headers.

    Every framing, signature or length problem raises :class:`S3Error` (``IncompleteBody``,
    ``InvalidRequest``, ``MalformedTrailerError``, ``SignatureDoesNotMatch``).
    """

    def __init__(
        self,
        auth: AuthResult | None,
        mode: PayloadMode | str,
        decoded_length: int | None,
        expected_trailer_names: Iterable[str] = (),
        *,
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self.mode = mode if isinstance(mode, PayloadMode) else PayloadMode(mode)
        if not self.mode.streaming:
            raise ValueError(f"{self.mode.value} is not an aws-chunked payload mode")
        if self.mode.signed_chunks and auth is None:
            raise ValueError("signed aws-chunked bodies need the request's AuthResult")
        self._auth = auth
        self._signed = self.mode.signed_chunks
        self._decoded_length = decoded_length
        self._expected = {n.strip().lower() for n in expected_trailer_names if n.strip()}
        self._max_chunk = max_chunk_size
        self._max_line = max_line

        self._state = _State.HEADER
        self._line = bytearray()
        self._remaining = 0  # data bytes left in the current chunk
        self._crlf = 0  # bytes of the post-data CRLF already seen
        self._previous = auth.seed_signature if auth is not None else ""
        self._chunk_signature = ""
        self._hasher: hashlib._Hash | None = None
        self._held: list[memoryview] = []
        self._declared = 0  # sum of chunk sizes announced so far
        self._trailer_lines: list[str] = []
        self._trailers: dict[str, str] = {}
        self._trailer_signature: str | None = None

    # -- public ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview | bytes]:
        """Consume the next piece of the body; return the payload bytes it completed."""
        if not isinstance(data, bytes):
            data = bytes(data)  # we keep views on it: it must not change under us
        view = memoryview(data)
        out: list[memoryview | bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state is _State.DATA:
                pos = self._take_data(view, pos, end, out)
            elif state is _State.DATA_CRLF:
                pos = self._take_crlf(data, pos, out)
            elif state is _State.DONE:
                raise _framing("aws-chunked: data after the end of the body")
            else:
                pos = self._take_line(view, data, pos, end, state)
        return out

    def _take_data(self, view: memoryview, pos: int, end: int, out: list[memoryview | bytes]) -> int:
        """Payload bytes of the current chunk (held back until its signature checks, if signed)."""
        take = min(self._remaining, end - pos)
        piece = view[pos : pos + take]
        self._remaining -= take
        if self._hasher is not None:
            self._hasher.update(piece)
            self._held.append(piece)
        else:
            out.append(piece)
        if self._remaining == 0:
            self._state = _State.DATA_CRLF
        return pos + take

    def _take_crlf(self, data: bytes, pos: int, out: list[memoryview | bytes]) -> int:
        """One byte of the CRLF after a chunk's data; the chunk ends with it."""
        if data[pos] != b"\r\n"[self._crlf]:
            raise _framing("aws-chunked: chunk data is not followed by CRLF")
        self._crlf += 1
        if self._crlf == 2:
            self._crlf = 0
            self._end_chunk(out)
        return pos + 1

    def _take_line(self, view: memoryview, data: bytes, pos: int, end: int, state: _State) -> int:
        """Bytes of a framing line (a chunk header or a trailer line), handled once complete."""
        newline = data.find(b"\n", pos)
        stop = end if newline < 0 else newline + 1
        if len(self._line) + (stop - pos) > self._max_line:
            raise _framing("aws-chunked: framing line too long")
        self._line += view[pos:stop]
        if newline >= 0:
            line = bytes(self._line)
            self._line.clear()
            if not line.endswith(b"\r\n"):
                raise _framing("aws-chunked: framing line not terminated by CRLF")
            if state is _State.HEADER:
                self._on_chunk_header(line[:-2])
            else:
                self._on_trailer_line(line[:-2])
        return stop

    def finish(self) -> dict[str, str]:
        """Call at the end of the body: checks completeness and returns the trailers.

        Leniency: a body that ends right after the last chunk or the last trailer line, without
        the final empty line, is accepted (everything it carries has been checked by then).
        """
        if self._state is _State.TRAILER and not self._line:
            self._end_trailers()
        if self._state is not _State.DONE:
            raise _incomplete("The request body terminated unexpectedly")
        return dict(self._trailers)

    @property
    def done(self) -> bool:
        """The final chunk and trailers have been read."""
        return self._state is _State.DONE

    # -- internals ------------------------------------------------------------------------

    def _on_chunk_header(self, line: bytes) -> None:
        size_part, _, extension = line.partition(b";")
        size_text = size_part.strip()
        if not size_text or len(size_text) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise _framing("aws-chunked: invalid chunk size")
        size = int(size_text, 16)
        if self._signed:
            name, eq, signature = extension.partition(b"=")
            if name.strip() != b"chunk-signature" or not eq:
                raise _framing("aws-chunked: missing chunk-signature")
            self._chunk_signature = signature.strip().decode("ascii", "replace")
            if size > self._max_chunk:
                raise _framing(f"aws-chunked: chunk larger than {self._max_chunk} bytes")
        self._declared += size
        if self._decoded_length is not None and self._declared > self._decoded_length:
            raise _framing("aws-chunked: body longer than x-amz-decoded-content-length")
        if size == 0:
            if self._signed:
                self._verify_chunk(EMPTY_SHA256)
            self._state = _State.TRAILER
            return
        self._remaining = size
        self._hasher = hashlib.sha256() if self._signed else None
        self._state = _State.DATA

    def _end_chunk(self, out: list[memoryview | bytes]) -> None:
        if self._hasher is not None:
            self._verify_chunk(self._hasher.hexdigest())
            out.extend(self._held)
            self._held = []
            self._hasher = None
        self._state = _State.HEADER

    def _verify_chunk(self, data_sha256: str) -> None:
        auth = self._auth
        assert auth is not None
        string_to_sign = (
            f"AWS4-HMAC-SHA256-PAYLOAD\n{auth.amz_date}\n{auth.scope}\n{self._previous}\n{EMPTY_SHA256}\n{data_sha256}"
        )
        expected = sign(auth.signing_key, string_to_sign)
        if not signatures_equal(expected, self._chunk_signature):
            raise _bad_signature(auth, string_to_sign, self._chunk_signature)
        self._previous = expected

    def _on_trailer_line(self, line: bytes) -> None:
        if not line:
            self._end_trailers()
            return
        if not self.mode.has_trailer:
            raise _framing("aws-chunked: data after the final chunk")
        if self._trailer_signature is not None:
            raise _bad_trailer("x-amz-trailer-signature must be the last trailing header")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise _bad_trailer("trailing headers must be ASCII") from None
        name, colon, value = text.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise _bad_trailer("a trailing header is not of the form name:value")
        if name == TRAILER_SIGNATURE and self.mode is PayloadMode.STREAMING_SIGNED_TRAILER:
            self._trailer_signature = value.strip()
            return
        if name in self._trailers:
            raise _bad_trailer(f"trailing header {name} appears twice")
        if name not in self._expected:
            raise _bad_trailer(f"trailing header {name} was not declared in x-amz-trailer")
        if len(self._trailers) >= MAX_TRAILERS:
            raise _bad_trailer("too many trailing headers")
        self._trailers[name] = value.strip()
        self._trailer_lines.append(f"{name}:{value.strip()}")

    def _end_trailers(self) -> None:
        if self.mode is PayloadMode.STREAMING_SIGNED_TRAILER:
            self._verify_trailer_signature()
        missing = self._expected - self._trailers.keys()
        if missing:
            raise _bad_trailer(f"declared trailing headers missing: {', '.join(sorted(missing))}")
        if self._decoded_length is not None and self._declared != self._decoded_length:
            raise _incomplete(
                "You did not provide the number of bytes specified by the x-amz-decoded-content-length HTTP header"
            )
        self._state = _State.DONE

    def _verify_trailer_signature(self) -> None:
        auth = self._auth
        assert auth is not None
        provided = self._trailer_signature
        canonical = "".join(line + "\n" for line in self._trailer_lines)
        string_to_sign = (
            f"AWS4-HMAC-SHA256-TRAILER\n{auth.amz_date}\n{auth.scope}\n{self._previous}\n"
            f"{hashlib.sha256(canonical.encode('ascii')).hexdigest()}"
        )
        if provided is None:
            raise _bad_trailer("missing x-amz-trailer-signature")
        expected = sign(auth.signing_key, string_to_sign)
        if not signatures_equal(expected, provided):
            raise _bad_signature(auth, string_to_sign, provided)
        self._previous = expected
