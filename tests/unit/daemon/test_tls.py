"""Unit tests for proxy.daemon.tls: the self-signed certificate works in a real TLS handshake."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

from cryptography import x509

from proxy.daemon.tls import make_self_signed, server_ssl_context


def test_files_and_certificate(tmp_path: Path) -> None:
    cert_path, key_path = make_self_signed(tmp_path / "tls")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 729 <= life.days <= 731
    ctx = server_ssl_context(cert_path, key_path)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


async def test_handshake_verifies_on_loopback(tmp_path: Path) -> None:
    cert_path, key_path = make_self_signed(tmp_path)
    server_ctx = server_ssl_context(cert_path, key_path)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert_path))  # verifies + hostname
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"), 10
        )
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"ping\n"
        ssl_obj = writer.get_extra_info("ssl_object")
        assert ssl_obj.version() in ("TLSv1.2", "TLSv1.3")
        writer.close()

        # A client that does not trust the certificate is refused (it really is verified).
        strict = ssl.create_default_context()
        try:
            _, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=strict, server_hostname="127.0.0.1"), 10
            )
            w.close()
            raise AssertionError("handshake with an untrusted certificate succeeded")
        except ssl.SSLCertVerificationError:
            pass
    finally:
        server.close()
        await server.wait_closed()
