"""The serving certificate and the server's TLS context.

The context asks every client for a certificate but does not require one (bearer-token clients
connect without). A certificate that is presented must chain to the request-header CA - the
only CA this context trusts for client certificates - or the handshake is refused. So a
non-empty `getpeercert()` on a connection means: verified against the request-header CA.
(The context is built from a bare `SSLContext`: `ssl.create_default_context(CLIENT_AUTH)`
would also trust the system's public CAs for client certificates.)

A configured certificate is reloaded into the live context when its files change (a renewed
Secret, e.g. by cert-manager): new connections get the new one. The request-header CA is read
once, at start (rotating it needs a restart).

`issue()` makes certificates with `cryptography`: the self-signed development certificate,
and in tests the CA, serving and client certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = structlog.get_logger("qscale.apiauth")


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, PEM."""

    cert_pem: bytes
    key_pem: bytes

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _usage(is_ca: bool, client: bool) -> list[tuple[x509.ExtensionType, bool]]:
    """Extensions for a CA, a client certificate (clientAuth) or a serving one (serverAuth)."""
    if is_ca:
        return [(x509.BasicConstraints(ca=True, path_length=None), True),
                (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                               key_encipherment=False, data_encipherment=False, key_agreement=False,
                               encipher_only=False, decipher_only=False), True)]
    eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    return [(x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                           key_encipherment=False, data_encipherment=False, key_agreement=False,
                           encipher_only=False, decipher_only=False), True),
            (x509.ExtendedKeyUsage([eku]), False)]


def issue(common_name: str, issuer: CertPair | None = None, hosts: tuple[str, ...] = (), is_ca: bool = False,
          client: bool = False, days: float = 365) -> CertPair:
    """A certificate for `common_name` signed by `issuer` (self-signed without one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signing_key = subject, key
    if issuer is not None:
        issuer_name, signing_key = issuer.certificate().subject, issuer.private_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for extension, critical in _usage(is_ca, client):
        builder = builder.add_extension(extension, critical=critical)
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def development_certificate(hosts: tuple[str, ...]) -> CertPair:
    """A self-signed serving certificate for `hosts`: no client can verify it against a CA it
    already trusts, so it is for development only (the APIService cannot carry a caBundle)."""
    return issue(hosts[0] if hosts else "qscale", hosts=hosts, days=30)


def _load_pair(ctx: ssl.SSLContext, pair: CertPair) -> None:
    """`load_cert_chain` reads files only: the pair goes through a private temporary folder."""
    with tempfile.TemporaryDirectory(prefix="qscale-tls-") as folder:
        cert_path, key_path = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
        for path, data in ((cert_path, pair.cert_pem), (key_path, pair.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with contextlib.closing(os.fdopen(fd, "wb")) as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)


def server_context(cert_file: str | None, key_file: str | None, development: CertPair | None,
                   client_ca_pem: bytes | None) -> ssl.SSLContext:
    """TLS 1.2+ serving `cert_file`/`key_file` (or the `development` pair); client certificates
    asked for, optional, and verified against `client_ca_pem` only (none asked for without it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    else:
        assert development is not None, "a serving certificate is needed"
        _load_pair(ctx, development)
    if client_ca_pem:
        ctx.load_verify_locations(cadata=client_ca_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def common_name(peercert: dict) -> str | None:
    """The subject CN of a verified peer certificate (`SSLObject.getpeercert()`), if any."""
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class CertificateReloader:
    """Loads `cert_file`/`key_file` into `ctx` again when either changes (checked every
    `interval_s`); a pair that does not load (a half-written renewal) keeps the old one."""

    def __init__(self, ctx: ssl.SSLContext, cert_file: str, key_file: str, interval_s: float = 30.0) -> None:
        self.ctx = ctx
        self.files = (cert_file, key_file)
        self.interval_s = interval_s
        self._loaded = self._stamp()

    def _stamp(self) -> tuple[tuple[int, int], ...] | None:
        try:
            return tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, self.files))
        except OSError:
            return None

    def check(self) -> bool:
        """True when a changed pair was loaded."""
        stamp = self._stamp()
        if stamp is None or stamp == self._loaded:
            return False
        try:
            # Tried on a scratch context first: a failed load leaves a context half-changed
            # (the new certificate with the old key), and every handshake would fail.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(*self.files)
            self.ctx.load_cert_chain(*self.files)
        except (OSError, ssl.SSLError) as exc:
            log.warning("serving certificate changed but does not load; keeping the old one",
                        cert_file=self.files[0], error=str(exc)[:200])
            return False
        self._loaded = stamp
        log.info("serving certificate reloaded", cert_file=self.files[0])
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()
