"""tests/acme_faults.py against a real Pebble, with the `acme` package as the client.

No cluster: only Pebble (on ports of its own, apart from the other tests') and
the proxy, both on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from acme import client, crypto_util, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from tests.acme_faults import AcmeFaultProxy
from tests.pebble import Pebble, running_pebble
from tests.support import worker_port

PEBBLE_ENV = {
    "PEBBLE_PORT": str(worker_port(14110)),
    "PEBBLE_MANAGEMENT_PORT": str(worker_port(15110)),
    "PEBBLE_DNS_PORT": str(worker_port(8163)),
    "PEBBLE_CHALLTESTSRV_PORT": str(worker_port(8165)),
    "PEBBLE_HTTP01_PORT": str(worker_port(5112)),
    # No rejected nonces: the plain acme client retries a badNonce only once.
    "PEBBLE_WFE_NONCEREJECT": "0",
}


@pytest.fixture(scope="module")
def pebble() -> Iterator[Pebble]:
    with running_pebble(PEBBLE_ENV) as server:
        yield server


@pytest.fixture
def proxy(pebble: Pebble) -> Iterator[AcmeFaultProxy]:
    with AcmeFaultProxy(pebble) as started:
        yield started


class _Network(client.ClientNetwork):
    """ClientNetwork that keeps every response it got."""

    def __init__(self, ca_bundle: str) -> None:
        key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        # requests takes a CA bundle path where acme's annotation says bool.
        super().__init__(key, alg=ES256, verify_ssl=ca_bundle)  # type: ignore[arg-type]
        self.responses: list[requests.Response] = []

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.responses.append(response)
        return response


def _client(pebble: Pebble, proxy: AcmeFaultProxy) -> tuple[client.ClientV2, _Network]:
    network = _Network(str(pebble.state_dir / "pebble-ca.pem"))
    directory = messages.Directory.from_json(network.get(proxy.directory_url).json())
    return client.ClientV2(directory, network), network


def _registered(pebble: Pebble, proxy: AcmeFaultProxy) -> tuple[client.ClientV2, _Network]:
    acme, network = _client(pebble, proxy)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return acme, network


def _csr(*names: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return crypto_util.make_csr(key, list(names))


def test_pass_through_points_every_url_at_the_proxy_and_logs_requests(
    pebble: Pebble, proxy: AcmeFaultProxy
) -> None:
    base = f"https://127.0.0.1:{proxy.port}/"
    acme, network = _client(pebble, proxy)
    urls = {k: v for k, v in acme.directory.to_partial_json().items() if isinstance(v, str)}
    assert {"newNonce", "newAccount", "newOrder", "renewalInfo"} <= set(urls)
    assert all(url.startswith(base) for url in urls.values()), urls

    # Pebble checks the JWS `url` against the Host it got: these POSTs only
    # succeed because the proxy forwards its own host:port.
    account = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    order = acme.new_order(_csr("www.proxy-a.example", "proxy-a.example"))

    assert account.uri.startswith(base)
    assert order.uri.startswith(base)
    assert order.body.finalize.startswith(base)
    assert all(authz.uri.startswith(base) for authz in order.authorizations)
    assert network.responses[-1].headers["Link"] == f'<{proxy.directory_url}>;rel="index"'
    log = proxy.requests()
    assert [(r.method, r.endpoint, r.status) for r in log] == [
        ("GET", "directory", 200),
        ("HEAD", "newNonce", 200),
        ("POST", "newAccount", 201),
        ("POST", "newOrder", 201),
        ("POST", "authz", 200),
        ("POST", "authz", 200),
    ]
    assert all(r.fault is None for r in log)
    assert log[3].identifiers == ("www.proxy-a.example", "proxy-a.example")
    assert proxy.orders_for("www.proxy-a.example") == [log[3]]
    assert proxy.orders_for("www.elsewhere.example") == []
    assert proxy.count("authz") == 2
    assert proxy.count() == proxy.count(since=log[0].time) == 6
    assert proxy.count(since=log[-1].time + 1) == 0
    # One requests Session, one keep-alive connection.
    assert proxy.connections == 1


def test_down_drops_connections_until_up(pebble: Pebble, proxy: AcmeFaultProxy) -> None:
    acme, network = _registered(pebble, proxy)
    before = time.monotonic()

    proxy.down()
    # On the Session's open keep-alive connection, then on a new one.
    with pytest.raises(requests.ConnectionError):
        network.get(proxy.directory_url)
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.directory_url, verify=network.verify_ssl, timeout=10)
    dropped = proxy.requests(since=before)
    assert [(r.endpoint, r.status, r.fault) for r in dropped] == [("directory", None, "down")] * 2

    proxy.up()
    acme.new_order(_csr("www.proxy-b.example"))
    assert proxy.orders_for("www.proxy-b.example")[0].status == 201


def test_rate_limited_orders_answer_429_with_retry_after_and_a_usable_nonce(
    pebble: Pebble, proxy: AcmeFaultProxy
) -> None:
    acme, network = _registered(pebble, proxy)

    proxy.rate_limit_orders(7)
    # Everything but newOrder still passes, POSTs too.
    assert network.get(proxy.directory_url).status_code == 200
    assert network.account is not None
    acme.query_registration(network.account)
    assert network.responses[-1].status_code == 200
    with pytest.raises(messages.Error) as raised:
        acme.new_order(_csr("www.proxy-c.example"))

    assert raised.value.code == "rateLimited"
    limited = network.responses[-1]
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.headers["Content-Type"] == "application/problem+json"
    [order] = proxy.orders_for("www.proxy-c.example")
    assert (order.status, order.fault) == (429, "rateLimited")
    # The 429's nonce is one Pebble issued: a client that keeps nonces from
    # error responses (RFC 8555 6.5) can use it, with no newNonce request.
    assert not network._nonces  # the 429 was a POST's answer, the acme package drops its nonce
    network._add_nonce(limited)
    since = time.monotonic()
    proxy.pass_through()
    acme.new_order(_csr("www.proxy-c.example"))
    assert [(r.endpoint, r.status) for r in proxy.requests(since)] == [
        ("newOrder", 201),
        ("authz", 200),
    ]


def test_fail_randomly_answers_503_server_internal(pebble: Pebble, proxy: AcmeFaultProxy) -> None:
    acme, network = _registered(pebble, proxy)

    proxy.fail_randomly(1.0, seed=1)
    with pytest.raises(messages.Error) as raised:
        network.get(proxy.directory_url)
    assert raised.value.code == "serverInternal"
    assert raised.value.detail == "injected by the test proxy"
    with pytest.raises(messages.Error, match="serverInternal"):
        acme.new_order(_csr("www.proxy-d.example"))
    failed = network.responses[-1]
    assert failed.status_code == 503
    assert failed.json() == {
        "type": "urn:ietf:params:acme:error:serverInternal",
        "detail": "injected by the test proxy",
        "status": 503,
    }
    assert "Replay-Nonce" in failed.headers  # a POST's error carries a fresh nonce

    proxy.fail_randomly(0.0, seed=1)
    since = time.monotonic()
    for _ in range(5):
        acme.new_order(_csr("www.proxy-d.example"))
    assert {r.status for r in proxy.requests(since)} == {200, 201}

    # The same seed fails the same requests.
    def statuses() -> list[int]:
        proxy.fail_randomly(0.5, seed=7)
        return [
            requests.get(proxy.directory_url, verify=network.verify_ssl, timeout=10).status_code
            for _ in range(20)
        ]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 503}


def test_reject_nonces_answers_400_bad_nonce_to_posts_only(
    pebble: Pebble, proxy: AcmeFaultProxy
) -> None:
    acme, network = _registered(pebble, proxy)

    proxy.reject_nonces(1.0, seed=1)
    assert network.get(proxy.directory_url).status_code == 200  # a GET carries no nonce
    with pytest.raises(messages.Error) as raised:
        acme.new_order(_csr("www.proxy-e.example"))
    assert raised.value.code == "badNonce"
    assert {r.fault for r in proxy.requests() if r.method == "POST"} >= {"badNonce"}
