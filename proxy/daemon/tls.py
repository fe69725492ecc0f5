"""TLS for the listener: a loopback self-signed certificate and the server SSLContext.

Medusa's default S3 settings are `secure = True` with `ssl_verify = False`, so a
self-signed certificate for 127.0.0.1 is the common case (`medusa-crypt-proxy
tls-selfsigned --out DIR`). Clients that do verify can trust the generated cert directly:
it is its own CA and names `localhost`, `127.0.0.1` and `::1`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"
VALIDITY = _dt.timedelta(days=730)


def make_self_signed(
    out_dir: str | os.PathLike[str],
    common_name: str = "medusa-crypt-proxy",
    extra_hosts: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """Write `tls.crt` and `tls.key` (mode 0600) into `out_dir`; return their paths.

    EC P-256 key, SAN = localhost, 127.0.0.1, ::1 (+ `extra_hosts`, names or IPs),
    valid from one hour ago for two years.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = []
    for host in ("localhost", "127.0.0.1", "::1", *extra_hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = out / CERT_NAME, out / KEY_NAME
    for existing in (cert_path, key_path):
        if existing.exists():  # as keygen: a certificate in use is never replaced by accident
            raise FileExistsError(errno.EEXIST, "exists; remove it first to make a new one", str(existing))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create the key file 0600 from the start (no window with looser permissions).
    tmp = key_path.with_name(key_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(cert_path, 0o644)
    return cert_path, key_path


def server_ssl_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side context with the given PEM cert (chain) and key; TLS 1.2 minimum."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    return ctx
