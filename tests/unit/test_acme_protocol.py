"""The ACME protocol layer without a CA: headers, errors, checks and nonce retries."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from acme import challenges, errors, messages
from acme.client import _renewal_info_path_component
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwk import JWKEC

from blogsite_operator import certs
from blogsite_operator.issuance.protocol import (
    FIRST_POLL_SECONDS,
    MAX_POLL_SECONDS,
    NONCE_ATTEMPTS,
    Counter,
    IssuanceError,
    OrderRequest,
    Session,
    _check_issued,
    _explained,
    _Network,
    directory_url,
    parse_retry_after,
    poll_delay,
)

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)
NAMES = ("a.example.com", "b.example.com")


def certificate_with(serial: int, key_identifier: bytes | None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.example")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=6))
    )
    if key_identifier is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(key_identifier, None, None), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class TestAriCertificateId:
    def test_the_rfc_9773_example(self) -> None:
        key_identifier = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
        cert_pem = certificate_with(0x87654321, key_identifier)
        # The serial's DER is 00 87 65 43 21: a leading zero keeps it positive.
        assert certs.ari_certificate_id(cert_pem) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"

    @pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF, 2**159 - 1])
    def test_as_the_acme_package_names_its_renewal_info(self, serial: int) -> None:
        cert_pem = certificate_with(serial, b"\x01\x02\x03")
        expected = _renewal_info_path_component(x509.load_pem_x509_certificate(cert_pem))
        assert certs.ari_certificate_id(cert_pem) == expected

    def test_none_without_an_authority_key_identifier(self) -> None:
        assert certs.ari_certificate_id(certificate_with(5, None)) is None
        placeholder, _ = certs.self_signed_placeholder(["a.example.com"])
        assert certs.ari_certificate_id(placeholder) is None


class TestRetryAfter:
    def test_seconds(self) -> None:
        assert parse_retry_after("120", NOW) == NOW + datetime.timedelta(seconds=120)
        assert parse_retry_after(" 0 ", NOW) == NOW

    def test_http_date(self) -> None:
        assert parse_retry_after("Wed, 25 Nov 2026 13:30:00 GMT", NOW) == datetime.datetime(
            2026, 11, 25, 13, 30, tzinfo=datetime.UTC
        )

    def test_http_date_without_a_zone_is_utc(self) -> None:
        when = parse_retry_after("Wed, 25 Nov 2026 13:30:00 -0000", NOW)
        assert when == datetime.datetime(2026, 11, 25, 13, 30, tzinfo=datetime.UTC)

    @pytest.mark.parametrize("value", ["", "soon", "-5", "1.5", "Someday, 99 Foo"])
    def test_garbage(self, value: str) -> None:
        assert parse_retry_after(value, NOW) is None

    @pytest.mark.parametrize("value", ["9" * 20, "\xb2"], ids=["huge", "superscript-two"])
    def test_unusable_digits_are_unreadable_not_a_crash(self, value: str) -> None:
        assert parse_retry_after(value, NOW) is None


def test_directory_url() -> None:
    assert directory_url("letsencrypt") == "https://acme-v02.api.letsencrypt.org/directory"
    assert (
        directory_url("letsencrypt-staging")
        == "https://acme-staging-v02.api.letsencrypt.org/directory"
    )
    assert directory_url("https://ca.example/dir") == "https://ca.example/dir"


class TestCheckIssued:
    """What the CA sends is stored only if it is for our key and our names."""

    def test_accepts_our_names_in_any_order(self) -> None:
        cert_pem, key_pem = certs.self_signed_placeholder(list(NAMES))
        _check_issued(cert_pem, key_pem, tuple(reversed(NAMES)))  # does not raise

    def test_other_names(self) -> None:
        cert_pem, key_pem = certs.self_signed_placeholder(["a.example.com"])
        with pytest.raises(IssuanceError) as caught:
            _check_issued(cert_pem, key_pem, NAMES)
        assert caught.value.reason == "BadCertificate"
        assert "b.example.com" in caught.value.message

    def test_another_key(self) -> None:
        cert_pem, _ = certs.self_signed_placeholder(list(NAMES))
        with pytest.raises(IssuanceError) as caught:
            _check_issued(cert_pem, certs.generate_private_key("ECDSAP256"), NAMES)
        assert caught.value.reason == "BadCertificate"
        assert "key" in caught.value.message

    def test_not_a_certificate(self) -> None:
        with pytest.raises(IssuanceError) as caught:
            _check_issued(b"<html>oops</html>", certs.generate_private_key("ECDSAP256"), NAMES)
        assert caught.value.reason == "BadCertificate"


# --- what the `acme` package and `requests` raise, explained -------------------


def network() -> _Network:
    return _Network(JWKEC(key=ec.generate_private_key(ec.SECP256R1())), True, Counter())


def explained(error: Exception, net: _Network | None = None) -> IssuanceError:
    with pytest.raises(IssuanceError) as caught, _explained(net):
        raise error
    return caught.value


def acme_error(code: str, detail: str | None = None) -> messages.Error:
    return messages.Error.with_code(code, detail=detail)


class TestExplained:
    def test_rate_limited_keeps_the_retry_after_the_server_sent(self) -> None:
        net = network()
        net.retry_after = NOW + datetime.timedelta(hours=3)
        error = explained(acme_error("rateLimited", "too many certificates for this domain"), net)
        assert error.reason == "RateLimited"
        assert error.message == "rateLimited: too many certificates for this domain"
        assert error.retry_after == NOW + datetime.timedelta(hours=3)

    def test_other_acme_problems(self) -> None:
        error = explained(acme_error("malformed", "bad CSR"))
        assert (error.reason, error.message, error.retry_after) == (
            "AcmeError",
            "malformed: bad CSR",
            None,
        )

    @pytest.mark.parametrize(
        "cause", [requests.ConnectionError("refused"), requests.Timeout("slow")]
    )
    def test_unreachable_server(self, cause: Exception) -> None:
        error = explained(cause)
        assert error.reason == "AcmeServerUnreachable"
        assert type(cause).__name__ in error.message

    def test_order_timeout(self) -> None:
        assert explained(errors.TimeoutError()).reason == "OrderTimeout"

    def test_failed_order(self) -> None:
        error = explained(errors.IssuanceError(acme_error("caa", "CAA forbids this CA")))
        assert (error.reason, error.message) == (
            "OrderFailed",
            "the order failed: caa: CAA forbids this CA",
        )

    def test_issuance_errors_pass_unchanged(self) -> None:
        original = IssuanceError("PublishFailed", "cannot write the answers")
        assert explained(original) is original

    def test_unrelated_errors_are_not_swallowed(self) -> None:
        with pytest.raises(KeyError), _explained():
            raise KeyError("bug")

    def test_long_messages_are_cut(self) -> None:
        assert len(explained(acme_error("malformed", "x" * 5000)).message) == 1000


# --- the network: badNonce retries, request counting, Retry-After ---------------

RESPONSE = requests.Response()


class FlakyNetwork(_Network):
    """The CA rejects the nonce of the first `rejections` POSTs."""

    def __init__(self, rejections: int, code: str = "badNonce") -> None:
        super().__init__(JWKEC(key=ec.generate_private_key(ec.SECP256R1())), True, Counter())
        self.rejections = rejections
        self.code = code
        self.calls: list[tuple[Any, ...]] = []

    def _post_once(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.calls.append(args)
        if len(self.calls) <= self.rejections:
            raise acme_error(self.code, "try again")
        return RESPONSE


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # what the retry loop waits
    return slept


class TestBadNonce:
    @pytest.mark.parametrize("rejections", [0, 1, NONCE_ATTEMPTS - 1])
    def test_retried_until_accepted(self, rejections: int, sleeps: list[float]) -> None:
        net = FlakyNetwork(rejections)
        assert net.post("https://ca.example/new-order", "body") is RESPONSE
        assert net.calls == [("https://ca.example/new-order", "body")] * (rejections + 1)
        assert len(sleeps) == rejections
        assert sleeps == sorted(sleeps)
        assert all(0 < s <= 1.0 for s in sleeps)

    def test_gives_up_after_the_last_attempt(self, sleeps: list[float]) -> None:
        net = FlakyNetwork(NONCE_ATTEMPTS)
        with pytest.raises(messages.Error) as caught:
            net.post("https://ca.example/new-order", "body")
        assert caught.value.code == "badNonce"
        assert len(net.calls) == NONCE_ATTEMPTS

    def test_other_problems_are_not_retried(self, sleeps: list[float]) -> None:
        net = FlakyNetwork(1, code="rateLimited")
        with pytest.raises(messages.Error):
            net.post("https://ca.example/new-order", "body")
        assert len(net.calls) == 1
        assert sleeps == []


class _TooManyRequests(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/fine", "/plain") else 429)
        if self.path != "/plain":
            self.send_header("Retry-After", "9" * 20 if self.path == "/absurd" else "120")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@pytest.fixture
def loopback() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TooManyRequests)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_requests_are_counted_and_retry_after_is_the_last_responses(loopback: str) -> None:
    net = network()
    before = datetime.datetime.now(tz=datetime.UTC)
    assert net._send_request("GET", f"{loopback}/limited").status_code == 429
    assert net.retry_after is not None
    after = datetime.datetime.now(tz=datetime.UTC)
    wait = datetime.timedelta(seconds=120)
    assert before + wait <= net.retry_after <= after + wait
    # A later response without the header: an old Retry-After explains nothing.
    assert net._send_request("GET", f"{loopback}/plain").status_code == 200
    assert net.retry_after is None
    # A success may carry one too (renewal info says when to ask again).
    assert net._send_request("GET", f"{loopback}/fine").status_code == 200
    assert net.retry_after is not None
    assert net.counter.requests == 3


def test_an_absurd_retry_after_does_not_lose_the_response(loopback: str) -> None:
    net = network()
    assert net._send_request("GET", f"{loopback}/absurd").status_code == 429


class _FakeCa:
    """Stands in for ClientV2: one pending authorization per name, deactivations recorded."""

    def __init__(self, names: list[str]) -> None:
        self.deactivated: list[str] = []
        self.answered: list[str] = []
        self.authorizations = [
            messages.AuthorizationResource(
                uri=f"https://ca.example/authz/{name}",
                body=messages.Authorization(
                    identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name),
                    status=messages.STATUS_PENDING,
                    challenges=[
                        messages.ChallengeBody(
                            chall=challenges.HTTP01(token=name.encode().ljust(16, b"-")),
                            uri=f"https://ca.example/chall/{name}",
                            status=messages.STATUS_PENDING,
                        )
                    ],
                ),
            )
            for name in names
        ]

    def new_order(self, csr_pem: bytes, profile: str | None = None) -> Any:
        return messages.OrderResource(authorizations=self.authorizations, csr_pem=csr_pem)

    def deactivate_authorization(self, authorization: Any) -> Any:
        self.deactivated.append(authorization.uri)
        return authorization

    def answer_challenge(self, challenge: Any, response: Any) -> Any:
        self.answered.append(challenge.uri)
        raise AssertionError("a failed self-check must not answer the CA")


def test_a_failed_self_check_deactivates_the_orders_authorizations_and_answers_nothing() -> None:
    names = ["a.example.com", "b.example.com"]
    ca = _FakeCa(names)
    session = Session.__new__(Session)  # no directory fetch: the CA is the fake above
    session.key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    session.client = ca  # type: ignore[assignment]
    session.network = None  # type: ignore[assignment]
    published: list[dict[str, str]] = []

    def self_check(checks: list[tuple[str, str, str]]) -> None:
        assert sorted(name for name, _, _ in checks) == names
        raise IssuanceError("SelfCheckFailed", "nobody answers on port 80")

    request = OrderRequest(tuple(names), "ECDSAP256", None, datetime.timedelta(seconds=30))
    with pytest.raises(IssuanceError) as caught:
        session.order(request, publish=published.append, self_check=self_check)
    assert caught.value.reason == "SelfCheckFailed"
    (answers,) = published
    assert len(answers) == 2, "both answers were published first"
    assert ca.deactivated == [f"https://ca.example/authz/{n}" for n in names]
    assert ca.answered == []


class TestPollDelay:
    def test_soon_then_doubling_up_to_the_cap(self) -> None:
        delays = [poll_delay(attempt, None, NOW) for attempt in range(8)]
        assert delays[:3] == [FIRST_POLL_SECONDS, 2 * FIRST_POLL_SECONDS, 4 * FIRST_POLL_SECONDS]
        assert delays == sorted(delays)
        assert delays[-1] == MAX_POLL_SECONDS

    def test_never_before_the_cas_retry_after(self) -> None:
        later = NOW + datetime.timedelta(seconds=3)
        assert poll_delay(0, later, NOW) == 3.0
        past = NOW - datetime.timedelta(seconds=3)
        assert poll_delay(0, past, NOW) == FIRST_POLL_SECONDS


class _PollingCa:
    """Stands in for ClientV2 and its network after the challenges are answered:
    each poll of an authorization or the order reads the next status of a
    script, and a status may come with a Retry-After (seconds)."""

    def __init__(
        self,
        authorization: list[tuple[str, int | None]],
        order: list[tuple[str, int | None]],
    ) -> None:
        self.authorization_script = list(authorization)
        self.order_script = list(order)
        self.retry_after: datetime.datetime | None = None  # what _Network keeps
        self.requests: list[str] = []

    def _next(self, script: list[tuple[str, int | None]]) -> str:
        status, retry_after = script.pop(0)
        self.retry_after = (
            datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=retry_after)
            if retry_after is not None
            else None
        )
        return status

    def _order(self, status: str) -> messages.Order:
        certificate = "https://ca.example/cert/1" if status == "valid" else None
        return messages.Order(
            status=messages.Status.from_json(status),
            certificate=certificate,
            finalize="https://ca.example/finalize/1",
        )

    def poll(self, authorization: Any) -> tuple[Any, Any]:
        self.requests.append("authz")
        status = messages.Status.from_json(self._next(self.authorization_script))
        return authorization.update(body=authorization.body.update(status=status)), RESPONSE

    def begin_finalization(self, order: Any) -> Any:
        self.requests.append("finalize")
        return order.update(body=self._order(self._next(self.order_script)))

    def _post_as_get(self, url: str) -> Any:
        if url.endswith("/cert/1"):
            self.requests.append("certificate")
            response = requests.Response()
            response._content = b"CHAIN"
            return response
        self.requests.append("order")
        response = requests.Response()
        response._content = json.dumps(
            self._order(self._next(self.order_script)).to_json()
        ).encode()
        return response


def polling_session(ca: _PollingCa) -> tuple[Session, Any]:
    session = Session.__new__(Session)  # no directory fetch: the CA is the fake above
    session.client = ca  # type: ignore[assignment]
    session.network = ca  # type: ignore[assignment]
    order = messages.OrderResource(
        uri="https://ca.example/order/1",
        body=messages.Order(status=messages.STATUS_PENDING),
        authorizations=_FakeCa(["a.example.com"]).authorizations,
    )
    return session, order


def far() -> datetime.datetime:
    return datetime.datetime.now() + datetime.timedelta(seconds=90)  # noqa: DTZ005 - the package's


def test_an_order_the_ca_finishes_at_once_is_never_waited_for(sleeps: list[float]) -> None:
    ca = _PollingCa(authorization=[("valid", None)], order=[("valid", None)])
    session, order = polling_session(ca)
    order = session._finalize(session._poll_authorizations(order, far()), far())
    assert order.fullchain_pem == "CHAIN"
    assert ca.requests == ["authz", "finalize", "certificate"]
    assert sleeps == []


def test_polls_soon_backs_off_and_honours_the_cas_retry_after(sleeps: list[float]) -> None:
    ca = _PollingCa(
        authorization=[("pending", None), ("pending", 3), ("valid", None)],
        order=[("processing", None), ("processing", None), ("valid", None)],
    )
    session, order = polling_session(ca)
    order = session._finalize(session._poll_authorizations(order, far()), far())
    assert order.fullchain_pem == "CHAIN"
    assert ca.requests == ["authz"] * 3 + ["finalize", "order", "order", "certificate"]
    authz_waits, order_waits = sleeps[:2], sleeps[2:]
    assert authz_waits[0] == FIRST_POLL_SECONDS
    assert 2.9 < authz_waits[1] <= 3.0, "not before the Retry-After"
    assert order_waits == [FIRST_POLL_SECONDS, 2 * FIRST_POLL_SECONDS]


def test_an_invalid_authorization_fails_the_order(sleeps: list[float]) -> None:
    ca = _PollingCa(authorization=[("pending", None), ("invalid", None)], order=[])
    session, order = polling_session(ca)
    with pytest.raises(errors.ValidationError):
        session._poll_authorizations(order, far())


def test_no_poll_is_planned_past_the_deadline(sleeps: list[float]) -> None:
    ca = _PollingCa(authorization=[("pending", 60)], order=[])
    session, order = polling_session(ca)
    with pytest.raises(errors.TimeoutError):
        session._poll_authorizations(order, far() - datetime.timedelta(seconds=60))
    assert sleeps == []
