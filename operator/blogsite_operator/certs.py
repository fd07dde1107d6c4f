"""Certificates as facts: a self-signed placeholder, and what a PEM says.

Key generation is the one impure step (randomness); it lives here, apart
from the renderers, and its output never reaches logs, Events or status.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PLACEHOLDER_ISSUER = "blogsite-operator placeholder"


@dataclass(frozen=True)
class CertificateInfo:
    dns_names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: str
    issuer: str
    key_algorithm: str = ""  # a models.KeyAlgorithm value, or "" for anything else

    @property
    def is_placeholder(self) -> bool:
        return self.issuer == PLACEHOLDER_ISSUER


def self_signed_placeholder(
    names: list[str], *, days: int = 90, now: datetime.datetime | None = None
) -> tuple[bytes, bytes]:
    """A throwaway ECDSA certificate for `names`, so nginx can start on 443.

    Browsers will not trust it; it exists only until the real certificate is
    issued (or when the user's own Secret is missing).
    """
    now = now or datetime.datetime.now(tz=datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    # Truly self-signed (subject == issuer): the names live in the SAN.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PLACEHOLDER_ISSUER)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = _pkcs8(key)
    return cert_pem, key_pem


def certificate_info(cert_pem: bytes) -> CertificateInfo:
    """What the first (leaf) certificate of a PEM chain says; ValueError if unreadable."""
    certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    issuer = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateInfo(
        key_algorithm=_key_algorithm(certificate.public_key()),
        dns_names=names,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        serial=format(certificate.serial_number, "x"),
        issuer=str(issuer[0].value) if issuer else "",
    )


# Issuer names of CAs no browser trusts, made for trying things out: Let's
# Encrypt's staging hierarchy ("(STAGING) Counterfeit Cashew R10", ...) and
# Pebble, the ACME test server ("Pebble Intermediate CA 3f0d2a").
TEST_ISSUER_PREFIXES = ("(STAGING)", "Pebble ")


def is_test_issuer(issuer: str) -> bool:
    """Whether a certificate's issuer name is a staging or test CA's."""
    return issuer.startswith(TEST_ISSUER_PREFIXES)


def ari_certificate_id(cert_pem: bytes) -> str | None:
    """The leaf's ARI identifier (RFC 9773, section 4.1): the issuer's key
    identifier and the serial's DER bytes, each base64url without padding.
    None without an Authority Key Identifier (a placeholder has none)."""
    certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    if aki.value.key_identifier is None:
        return None
    serial = certificate.serial_number
    # An ASN.1 INTEGER: big-endian two's complement, with room for the sign bit.
    der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_base64url(aki.value.key_identifier)}.{_base64url(der)}"


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _key_algorithm(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1":
        return "ECDSAP256"
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size in (2048, 4096):
        return f"RSA{public_key.key_size}"
    return ""


def generate_private_key(algorithm: str) -> bytes:
    """A fresh certificate key as PKCS#8 PEM: ECDSAP256, RSA2048 or RSA4096."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ECDSAP256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm in ("RSA2048", "RSA4096"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[3:]))
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}")
    return _pkcs8(key)


def _pkcs8(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Does the private key belong to the leaf certificate? False when either is unreadable."""
    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        key.public_key().public_bytes(serialization.Encoding.DER, public)
        == certificate.public_key().public_bytes(serialization.Encoding.DER, public)
    )
