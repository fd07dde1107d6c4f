"""The Pebble harness itself: hack/pebble.sh through tests/pebble.py, for real."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from tests.pebble import DEFAULT_ENV, Pebble, running_pebble


@pytest.fixture(scope="module")
def pebble() -> Iterator[Pebble]:
    # No rejected nonces: the plain acme client below retries a badNonce only once.
    with running_pebble({"PEBBLE_WFE_NONCEREJECT": "0"}) as server:
        yield server


def _directory(pebble: Pebble) -> dict[str, object]:
    context = ssl.create_default_context(cadata=pebble.ca_pem.decode())
    with urllib.request.urlopen(pebble.directory_url, context=context, timeout=10) as response:
        directory: dict[str, object] = json.load(response)
    return directory


def test_directory_answers_over_https_trusted_via_ca_pem(pebble: Pebble) -> None:
    directory = _directory(pebble)

    assert pebble.directory_url == f"https://127.0.0.1:{DEFAULT_ENV['PEBBLE_PORT']}/dir"
    assert "renewalInfo" in directory
    meta = directory["meta"]
    assert isinstance(meta, dict)
    assert set(meta["profiles"]) == {"default", "shortlived"}
    # Only ca_pem makes Pebble's certificate trusted: the system store does not.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(pebble.directory_url, timeout=10)


def test_root_is_a_self_signed_ca_that_issued_the_intermediate(pebble: Pebble) -> None:
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())

    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    intermediate.verify_directly_issued_by(root)
    assert (pebble.state_dir / "root.pem").read_bytes().strip() == pebble.root_pem().strip()


def _dns_query(port: int, name: str, qtype: int) -> list[bytes]:
    """One question over UDP to 127.0.0.1:port; returns the answers' RDATA."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    # ID 0x1234, recursion desired, one question; QCLASS IN.
    query = (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + qtype.to_bytes(2) + b"\0\1"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, ("127.0.0.1", port))
        reply = sock.recv(4096)
    assert reply[:2] == b"\x12\x34"
    assert reply[3] & 0x0F == 0, f"DNS error code {reply[3] & 0x0F}"
    answers, offset = [], 12 + len(qname) + 4
    for _ in range(int.from_bytes(reply[6:8])):
        while reply[offset] and reply[offset] < 0xC0:  # the owner name's labels
            offset += reply[offset] + 1
        offset += 2 if reply[offset] >= 0xC0 else 1  # a compression pointer or the root
        length = int.from_bytes(reply[offset + 8 : offset + 10])
        answers.append(reply[offset + 10 : offset + 10 + length])
        offset += 10 + length
    return answers


def test_dns_answers_loopback_for_any_name_and_no_ipv6(pebble: Pebble) -> None:
    assert _dns_query(pebble.dns_port, "www.any-blog.example", 1) == [bytes([127, 0, 0, 1])]
    assert _dns_query(pebble.dns_port, "www.any-blog.example", 28) == []


def test_issues_shortlived_certificate_and_serves_set_renewal_info(
    pebble: Pebble, http01_server: dict[str, str]
) -> None:
    account_key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # requests takes a CA bundle path where acme's annotation says bool.
    ca_bundle = str(pebble.state_dir / "pebble-ca.pem")
    network = client.ClientNetwork(account_key, alg=ES256, verify_ssl=ca_bundle)  # type: ignore[arg-type]
    acme = client.ClientV2(
        messages.Directory.from_json(network.get(pebble.directory_url).json()), network
    )
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    domain_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    order = acme.new_order(crypto_util.make_csr(domain_key, ["www.any-blog.example"]), "shortlived")
    for authorization in order.authorizations:
        challenge = next(
            c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)
        )
        response, validation = challenge.response_and_validation(account_key)
        http01_server[challenge.chall.encode("token")] = validation
        acme.answer_challenge(challenge, response)
    order = acme.poll_and_finalize(order, datetime.now() + timedelta(seconds=60))  # noqa: DTZ005 - acme compares naive local times

    leaf_pem = order.fullchain_pem.encode()
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=5) < lifetime <= timedelta(seconds=518400)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    pebble.set_renewal_info(leaf_pem, start, start + timedelta(hours=2))
    renew_at, _ = acme.renewal_time(leaf_pem)
    assert renew_at is not None
    assert start <= renew_at <= start + timedelta(hours=2)


def test_restart_serves_again_under_a_new_root(pebble: Pebble) -> None:
    before = pebble.root_pem()

    pebble.stop()
    pebble.start()

    assert "newOrder" in _directory(pebble)
    assert pebble.root_pem() != before
