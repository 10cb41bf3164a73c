"""TLS for test bots on 127.0.0.1: a private CA made per test (``cryptography``), a bot's
certificate signed by it, the bot's server context, and the gateway made to trust it.

The gateway connects to ``https``/``wss`` bots with aiohttp's default verifying context,
built once at import from OpenSSL's default paths: an operator trusts a private CA by
starting the gateway with ``SSL_CERT_FILE`` (a bundle) or ``SSL_CERT_DIR`` (there is no
setting of its own). A gateway run as ``creditgate serve`` is given that environment;
one run in-process (the test's own process, whose context was built long before) is
given :func:`trusting`: the same verifying context, built from the CA's file instead.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp.connector
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.settings import HOST


@dataclass(frozen=True)
class Ca:
    """A CA's certificate file and what it signs with."""

    cert_file: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _builder(subject: str, issuer: str) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(directory: Path, name: str = "test-ca") -> Ca:
    """A self-signed CA, its certificate written to ``directory``/``name``.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(_pem(cert))
    return Ca(path, cert, key)


def bot_context(ca: Ca, directory: Path, host: str = HOST) -> ssl.SSLContext:
    """A bot's server context: a certificate for ``host`` (an IP address) signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder("bot", ca.cert.subject.rfc4514_string().removeprefix("CN="))
        .public_key(key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / "bot-cert.pem", directory / "bot-key.pem"
    cert_file.write_bytes(_pem(cert) + _pem(ca.cert))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def trusting(monkeypatch: pytest.MonkeyPatch, ca: Ca) -> None:
    """Make the in-process gateway's bot connections trust ``ca`` as ``SSL_CERT_FILE``
    would make ``creditgate serve``'s (see the module): aiohttp's verifying context."""
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", context)


@contextlib.asynccontextmanager
async def serve_tls(app: web.Application, context: ssl.SSLContext) -> AsyncIterator[str]:
    """Run ``app`` over TLS on 127.0.0.1 (a free port); yields its ``https`` base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://{HOST}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
