"""Logging: JSON lines (default) or text, with a redaction safety net.

- `setup_logging("json"|"text", level)` configures the root logger once (idempotent).
- The JSON formatter writes one object per line: `ts`, `level`, `logger`, `msg`, then every
  `extra=` field (request_id, operation, bucket, key, status, bytes_in, bytes_out,
  duration_ms, upstream_status, ...), then `exc` for exceptions.
- `redact()` strips anything that looks like a secret (SigV4 signatures, Authorization
  values, secret access keys, session tokens, Fernet keys) from every string that is
  written, messages, extra fields and tracebacks alike. It is a safety net: callers must
  still never pass secrets or body bytes to a logger.
- `log_request(logger, **fields)` writes the one access-log line per request.
- aiohttp's own loggers get `ClientBytesFilter`: their exceptions quote what the client sent
  (the HTTP parser's errors carry the bad request line, header or chunk), so they are logged
  as type, status and the parser's reason, with the frames but without the message.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import IO, Any, Literal

LogFormat = Literal["json", "text"]
REDACTED = "[REDACTED]"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# Field names whose value is always hidden, whatever it looks like.
_SENSITIVE_FIELD = re.compile(
    r"(?i)^(authorization|.*secret.*|.*password.*|.*passwd.*|.*token.*|.*signature.*"
    r"|fernet_key|master_key|key_material|credentials?)$"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header value (SigV4, SigV2 or anything else) up to end of line/quote.
    (re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n]+"), r"\1" + REDACTED),
    # The SigV4 scheme wherever it appears without its header name.
    (re.compile(r"AWS4-HMAC-SHA256\s+Credential=[^\"'\r\n]*"), "AWS4-HMAC-SHA256 " + REDACTED),
    # Query-string and header-style signatures (presigned URLs, aws-chunked bodies).
    (re.compile(r"(?i)\b((?:x-amz-)?(?:chunk-)?signature[\"']?\s*[=:]\s*[\"']?)[0-9A-Za-z%+/=]+"), r"\1" + REDACTED),
    # Session tokens (query string or header).
    (re.compile(r"(?i)\b(x-amz-security-token[\"']?\s*[=:]\s*[\"']?)[^&\s\"',]+"), r"\1" + REDACTED),
    # key=value / key: value settings that name a secret.
    (
        re.compile(
            r"(?i)\b((?:aws_)?secret(?:_access)?_?key[\"']?\s*[=:]\s*[\"']?|"
            r"(?:client_)?secret[\"']?\s*[=:]\s*[\"']?|password[\"']?\s*[=:]\s*[\"']?)"
            r"[^\s\"',;&}]+"
        ),
        r"\1" + REDACTED,
    ),
    # Fernet keys: 32 bytes in url-safe base64 = 43 chars + one '='.
    (re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{43}=(?![A-Za-z0-9_\-=])"), REDACTED),
    # AWS secret access keys: 40 chars of base64 with mixed case and a digit.
    (
        re.compile(
            r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])"
            r"(?=[A-Za-z0-9/+]{0,39}[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
        ),
        REDACTED,
    ),
)


def redact(text: str) -> str:
    """Return `text` with anything that looks like a secret replaced by `[REDACTED]`."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _clean(name: str, value: Any) -> Any:
    if _SENSITIVE_FIELD.match(name) and value not in (None, ""):
        return REDACTED
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # never log body bytes
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean("", v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: _clean(k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    ts = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every string value redacted."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: msg k=v ...` for humans; redacted like the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record),
            f"{record.levelname:<7}",
            f"{record.name}:",
            redact(record.getMessage()),
        ]
        parts += [f"{k}={v}" for k, v in _extras(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line += "\n" + redact(record.exc_text)
        return line


# aiohttp's loggers: "Error handling request from ..." is logged with the parser's exception,
# whose message quotes the client's bytes (``Invalid character in chunk size: b'...'``).
AIOHTTP_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)
MAX_FOREIGN_MESSAGE = 300  # characters of an aiohttp log message that are kept
# llhttp's errors read "<reason>:\n\n  b'<the bytes>'\n  ^": the reason is a fixed phrase.
_PARSER_REASON = re.compile(r"([A-Za-z][A-Za-z ,_-]{0,79}):\n\n  b['\"]")


def describe_exception(exc: BaseException) -> str:
    """An exception as its type, HTTP status and (llhttp's errors) reason; never its message."""
    text = f"{type(exc).__module__}.{type(exc).__qualname__}"
    code = getattr(exc, "code", None)
    if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
        text += f" ({code})"
    message = getattr(exc, "message", None)
    reason = _PARSER_REASON.match(message) if isinstance(message, str) else None
    if reason is not None:
        text += f": {reason.group(1)}"
    return text


def safe_traceback(exc: BaseException) -> str:
    """The frames of ``exc`` and of the exceptions that led to it, each shown by its type only."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    blocks = [
        "Traceback (most recent call last):\n" + "".join(traceback.format_tb(e.__traceback__)) + describe_exception(e)
        for e in reversed(chain)
    ]
    return "\n\nwhich led to:\n\n".join(blocks)


class ClientBytesFilter(logging.Filter):
    """Keeps the client's bytes out of a library's log lines (installed on aiohttp's loggers).

    An exception is replaced by its type, HTTP status and frames (``safe_traceback``), bytes
    arguments by their length, and the message is cut to ``MAX_FOREIGN_MESSAGE`` characters.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"<{len(a)} bytes>" if isinstance(a, bytes | bytearray | memoryview) else a for a in record.args
            )
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            message += f": {describe_exception(exc)}"
            record.exc_text = safe_traceback(exc)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = None  # already formatted by someone else, with the message
        if len(message) > MAX_FOREIGN_MESSAGE:
            message = message[:MAX_FOREIGN_MESSAGE] + f"... ({len(message)} characters)"
        record.msg, record.args = message, None
        return True


def _install_filters() -> None:
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ClientBytesFilter) for f in logger.filters):
            logger.addFilter(ClientBytesFilter())


class _ProxyHandler(logging.StreamHandler[IO[str]]):
    """Marker class so `setup_logging` can replace its own handler on a second call."""


def setup_logging(fmt: LogFormat = "json", level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Configure the root logger: one handler on stderr (or `stream`), given format and level."""
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _ProxyHandler):
            root.removeHandler(h)
    handler = _ProxyHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    # aiohttp's own access log duplicates ours; botocore is chatty at DEBUG and logs headers.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _install_filters()
    for noisy in ("botocore", "aiobotocore", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.INFO))
    logging.captureWarnings(True)


def log_request(logger: logging.Logger, level: int = logging.INFO, **fields: Any) -> None:
    """Write one access-log line; fields become top-level JSON keys.

    Typical fields: request_id, operation, method, bucket, key, status, bytes_in, bytes_out,
    duration_ms, upstream_status, error_code, remote.
    """
    extra = {(f"{k}_" if k in _RECORD_ATTRS else k): v for k, v in fields.items()}
    logger.log(level, "request", extra=extra)
