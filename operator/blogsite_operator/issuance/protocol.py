"""ACME (RFC 8555) on top of the `acme` package: account, order, HTTP-01, ARI.

No Kubernetes here: answers are handed to a `publish` callback and the
certificate comes back as PEM. Every failure becomes an `IssuanceError` with a
CamelCase reason and a message fit for status and Events (never key material).
"""

from __future__ import annotations

import datetime
import http.client
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy import errors as jose_errors
from josepy.json_util import field as jose_field
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from blogsite_operator import certs
from blogsite_operator.metrics import METRICS, acme_endpoint

logger = logging.getLogger("blogsite_operator.acme")

DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
USER_AGENT = "blogsite-operator/0.1.0"
# The `acme` package retries a badNonce once; a busy CA (or Pebble's
# PEBBLE_WFE_NONCEREJECT) can reject several in a row, each with a fresh nonce.
NONCE_ATTEMPTS = 10


def directory_url(server: str) -> str:
    return DIRECTORIES.get(server, server)


class IssuanceError(Exception):
    def __init__(
        self,
        reason: str,
        message: str,
        retry_after: datetime.datetime | None = None,
        failed_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message[:1000]
        self.retry_after = retry_after
        self.failed_names = failed_names  # whose validation the CA refused


@dataclass(frozen=True)
class AccountConfig:
    server: str  # directory URL
    email: str | None  # the account's contact, if any
    key_pem: bytes = field(repr=False)  # EC P-256 account key (PKCS#8)
    ca_bundle_path: str | None = None  # trust for a private ACME server's HTTPS
    eab_key_id: str | None = None
    eab_hmac_key: str | None = field(default=None, repr=False)  # base64url, from the CA


@dataclass(frozen=True)
class OrderRequest:
    names: tuple[str, ...]
    key_algorithm: str
    profile: str | None
    timeout: datetime.timedelta
    # The ARI identifier of the certificate this order renews (RFC 9773):
    # a CA that knows it exempts the order from its rate limits.
    replaces: str | None = None


@dataclass(frozen=True)
class Issued:
    fullchain_pem: bytes
    key_pem: bytes = field(repr=False)
    replaced: str | None = None  # the ARI identifier the order named
    # Why the CA would not take `replaces` (the order was placed again without it).
    replaces_refused: str | None = None


class _NewOrderReplacing(messages.NewOrder):
    """newOrder with RFC 9773's `replaces`, which the `acme` package lacks."""

    replaces: str = jose_field("replaces", omitempty=True)


@dataclass
class Counter:
    """How many HTTP requests one operation cost (for the bench and logs)."""

    requests: int = 0


class _Network(client.ClientNetwork):
    """ClientNetwork that counts requests, keeps Retry-After and retries badNonce."""

    def __init__(self, key: JWK, verify: bool | str, counter: Counter) -> None:
        super().__init__(key, alg=ES256, verify_ssl=verify, user_agent=USER_AGENT)  # type: ignore[arg-type]
        self.counter = counter
        self.retry_after: datetime.datetime | None = None
        # The `acme` package drops the problem of a 409 (ConflictError): kept here.
        self.last_problem: messages.Error | None = None
        # name -> URL from the CA's directory, once read: names requests in metrics.
        self.directory_urls: dict[str, str] = {}

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.counter.requests += 1
        try:
            response = super()._send_request(method, url, *args, **kwargs)
        except requests.RequestException:  # no answer at all
            METRICS.acme_requests.labels(acme_endpoint(url, self.directory_urls), "error").inc()
            raise
        METRICS.acme_requests.labels(
            acme_endpoint(url, self.directory_urls), str(response.status_code)
        ).inc()
        # The last response's: an error is explained by the response that carried it.
        header = response.headers.get("Retry-After")
        self.retry_after = parse_retry_after(header) if header else None
        self.last_problem = _problem_document(response)
        return response

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for attempt in range(NONCE_ATTEMPTS):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or attempt == NONCE_ATTEMPTS - 1:
                    raise
                logger.debug("the ACME server rejected a nonce; retrying with a fresh one")
                time.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError("unreachable")  # pragma: no cover


# Poll soon, then back off: a CA usually validates a challenge and issues a
# certificate within a fraction of a second, and the `acme` package's fixed
# second before each poll was most of an order's time. A Retry-After the CA
# sends is honoured: no poll comes before it (RFC 8555, section 8.2).
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 2.0


def poll_delay(
    attempt: int, retry_after: datetime.datetime | None, now: datetime.datetime
) -> float:
    """Seconds to wait before poll `attempt` (0 for the first after the request
    that found the authorization or order unfinished)."""
    delay = min(FIRST_POLL_SECONDS * 2**attempt, MAX_POLL_SECONDS)
    if retry_after is not None:
        delay = max(delay, (retry_after - now).total_seconds())
    return float(delay)


def parse_retry_after(value: str, now: datetime.datetime | None = None) -> datetime.datetime | None:
    """Retry-After as seconds or an HTTP date; None when unreadable."""
    now = now or datetime.datetime.now(tz=datetime.UTC)
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,9}", value):  # seconds; more than 30 years is not a delay
        return now + datetime.timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


@contextmanager
def _explained(network: _Network | None = None) -> Iterator[None]:
    """Turn what the `acme` package and `requests` raise into IssuanceError."""
    try:
        yield
    except IssuanceError:
        raise
    except errors.ValidationError as error:
        failed = tuple(a.body.identifier.value for a in error.failed_authzrs)
        raise IssuanceError(
            "ChallengeFailed", _describe_failed(error.failed_authzrs), failed_names=failed
        ) from None
    except errors.TimeoutError:
        raise IssuanceError(
            "OrderTimeout", "the ACME server did not finish the order in time"
        ) from None
    except errors.IssuanceError as error:
        raise IssuanceError("OrderFailed", f"the order failed: {_problem(error.error)}") from None
    except messages.Error as error:
        retry_after = network.retry_after if network is not None else None
        reason = "RateLimited" if error.code == "rateLimited" else "AcmeError"
        raise IssuanceError(reason, _problem(error), retry_after) from None
    except requests.exceptions.SSLError:  # before ConnectionError, which it is
        raise IssuanceError(
            "AcmeServerUntrusted",
            "the ACME server's HTTPS certificate is not trusted (for a private CA, "
            "set caBundleSecretRef)",
        ) from None
    except (requests.ConnectionError, requests.Timeout, http.client.HTTPException) as error:
        raise IssuanceError(
            "AcmeServerUnreachable", f"cannot reach the ACME server: {type(error).__name__}"
        ) from None
    except errors.Error as error:
        raise IssuanceError("AcmeError", f"{type(error).__name__}: {error}") from None


def _problem_document(response: requests.Response) -> messages.Error | None:
    """The RFC 7807 problem a response carries, if any."""
    if not response.headers.get("Content-Type", "").startswith("application/problem+json"):
        return None
    try:
        problem: messages.Error = messages.Error.from_json(response.json())
    except (ValueError, jose_errors.DeserializationError):
        return None
    return problem


def _problem(error: messages.Error) -> str:
    code = error.code or error.typ
    return f"{code}: {error.detail or error.title or ''}".strip()


def _describe_failed(authzrs: Any) -> str:
    parts = []
    for authzr in authzrs:
        name = authzr.body.identifier.value
        for challenge in authzr.body.challenges:
            if challenge.error is not None:
                parts.append(f"{name}: {_problem(challenge.error)}")
    return "HTTP-01 validation failed for " + "; ".join(parts)


class Session:
    """One ACME conversation with one account: use for one order or one ARI check."""

    orders_created = 0  # newOrder requests the CA took (for the rate-limit ledger)

    def __init__(self, account: AccountConfig) -> None:
        self.account = account
        self.counter = Counter()
        key = serialization.load_pem_private_key(account.key_pem, password=None)
        self.key = JWKEC(key=key)
        verify: bool | str = account.ca_bundle_path or True
        self.network = _Network(self.key, verify, self.counter)
        with _explained(self.network):
            directory = client.ClientV2.get_directory(account.server, self.network)
        self.network.directory_urls = {
            "directory": account.server,
            **{k: v for k, v in directory.to_partial_json().items() if isinstance(v, str)},
        }
        self.client = client.ClientV2(directory, self.network)

    def register(self) -> None:
        """Find the account of this key, or create it (email, terms, EAB)."""
        self.network.account = None  # lookups and creation are signed without a kid
        with _explained(self.network):
            try:
                self.client.new_account(messages.NewRegistration(only_return_existing=True))
            except errors.ConflictError as existing:
                self._use_account(existing.location)
                return
            except messages.Error as error:
                if error.code != "accountDoesNotExist":
                    raise
            binding = None
            if self.account.eab_key_id and self.account.eab_hmac_key:
                binding = messages.ExternalAccountBinding.from_data(
                    account_public_key=self.key.public_key(),
                    kid=self.account.eab_key_id,
                    hmac_key=self.account.eab_hmac_key,
                    directory=self.client.directory,
                )
            registration = messages.NewRegistration.from_data(
                email=self.account.email,
                terms_of_service_agreed=True,
                external_account_binding=binding,
            )
            try:
                self.client.new_account(registration)
            except errors.ConflictError as existing:
                # Another site's order created it a moment ago (they share the key).
                self._use_account(existing.location)
                return
            logger.info("created an ACME account at %s", self.account.server)

    def _use_account(self, location: str) -> None:
        self.network.account = messages.RegistrationResource(
            uri=location, body=messages.Registration()
        )

    def order(
        self,
        request: OrderRequest,
        publish: Callable[[dict[str, str]], None],
        self_check: Callable[[list[tuple[str, str, str]]], None] | None = None,
    ) -> Issued:
        """Order, answer HTTP-01 through `publish`, finalize; the caller unpublishes."""
        key_pem = certs.generate_private_key(request.key_algorithm)
        csr_pem = crypto_util.make_csr(key_pem, list(request.names))
        # naive local time: the `acme` package compares its deadlines with now()
        deadline = datetime.datetime.now() + request.timeout  # noqa: DTZ005
        with _explained(self.network):
            order, refused = self._new_order(csr_pem, request)
            answers: dict[str, str] = {}
            checks: list[tuple[str, str, str]] = []  # name, token, key authorization
            responses = []
            for authorization in order.authorizations:
                if authorization.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers a recent validation of this name
                challenge = next(
                    (
                        c
                        for c in authorization.body.challenges
                        if isinstance(c.chall, challenges.HTTP01)
                    ),
                    None,
                )
                if challenge is None:
                    raise IssuanceError(
                        "NoHttp01Challenge",
                        f"the ACME server offers no HTTP-01 challenge for "
                        f"{authorization.body.identifier.value}",
                    )
                response, validation = challenge.response_and_validation(self.key)
                token = challenge.chall.encode("token")
                answers[token] = validation
                checks.append((authorization.body.identifier.value, token, validation))
                responses.append((challenge, response))
            publish(answers)
            if self_check is not None and checks:
                try:
                    self_check(checks)
                except IssuanceError:
                    self._abandon(order.authorizations)
                    raise
            for challenge, response in responses:
                self.client.answer_challenge(challenge, response)
            order = self._poll_authorizations(order, deadline)
            order = self._finalize(order, deadline)
        fullchain = order.fullchain_pem.encode()
        _check_issued(fullchain, key_pem, request.names)
        return Issued(
            fullchain_pem=fullchain,
            key_pem=key_pem,
            replaced=request.replaces if refused is None else None,
            replaces_refused=refused,
        )

    def _new_order(self, csr_pem: bytes, request: OrderRequest) -> tuple[Any, str | None]:
        """The order, naming the certificate it replaces when there is one;
        (order, why the CA refused `replaces`, when it did). A refusal
        (alreadyReplaced: another order renewed it already; or a certificate
        the CA does not know) is not the renewal's failure: it is ordered
        again without `replaces`, once, as an order no limit exempts."""
        if request.replaces is None:
            return self._counted(self.client.new_order(csr_pem, profile=request.profile)), None
        try:
            replacing = self._new_order_replacing(csr_pem, request.profile, request.replaces)
            return self._counted(replacing), None
        except messages.Error as error:
            if error.code == "rateLimited":
                raise
            refused = _problem(error)
        except errors.ConflictError:  # 409: how RFC 9773's alreadyReplaced comes
            problem = self.network.last_problem
            refused = _problem(problem) if problem is not None else "conflict (HTTP 409)"
        logger.warning(
            "the ACME server refused to let the order replace %s (%s); ordering without it",
            request.replaces,
            refused,
        )
        return self._counted(self.client.new_order(csr_pem, profile=request.profile)), refused

    def _counted(self, order: Any) -> Any:
        self.orders_created += 1
        return order

    def _new_order_replacing(self, csr_pem: bytes, profile: str | None, replaces: str) -> Any:
        """The `acme` package's new_order, with `replaces` in the request."""
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, _ = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = tuple(
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name) for name in dns_names
        )
        new_order = _NewOrderReplacing(
            identifiers=identifiers, profile=profile or "", replaces=replaces
        )
        response = self.client._post(self.client.directory["newOrder"], new_order)
        body = messages.Order.from_json(response.json())
        authorizations = [
            self.client._authzr_from_response(self.client._post_as_get(url), uri=url)
            for url in body.authorizations
        ]
        return messages.OrderResource(
            body=body,
            uri=response.headers.get("Location"),
            authorizations=authorizations,
            csr_pem=csr_pem,
        )

    def _poll_authorizations(self, order: Any, deadline: datetime.datetime) -> Any:
        """Each authorization until it is no longer pending, as the `acme`
        package's poll_authorizations does, but polled soon (see poll_delay)."""
        polled = []
        for pending in order.authorizations:
            authorization, attempt = pending, 0
            while True:
                authorization, _ = self.client.poll(authorization)
                if authorization.body.status != messages.STATUS_PENDING:
                    break
                self._wait_before_poll(attempt, deadline)
                attempt += 1
            polled.append(authorization)
        failed = [a for a in polled if a.body.status != messages.STATUS_VALID]
        if failed:
            raise errors.ValidationError(failed)
        return order.update(authorizations=polled)

    def _finalize(self, order: Any, deadline: datetime.datetime) -> Any:
        """Send the CSR and poll the order until the certificate is there.

        Like the `acme` package's finalize_order, without its fixed second
        before the first poll: a CA that issues at once answers `valid` to
        the finalization itself, and its certificate is fetched right away."""
        try:
            body = self.client.begin_finalization(order).body
        except messages.Error as error:
            if error.code != "orderNotReady":
                raise
            body = order.body
        attempt = 0
        while True:
            if body.status == messages.STATUS_VALID and body.certificate is not None:
                # POST-as-GET (RFC 8555 6.3): the package has no public name for it.
                chain = self.client._post_as_get(body.certificate).text
                return order.update(body=body, fullchain_pem=chain)
            if body.status == messages.STATUS_INVALID:
                if body.error is not None:
                    raise errors.IssuanceError(body.error)
                raise errors.Error("the order became invalid without a reason from the CA")
            self._wait_before_poll(attempt, deadline)
            attempt += 1
            if body.status == messages.STATUS_READY:  # orderNotReady before: finalize again
                body = self.client.begin_finalization(order).body
            else:
                body = messages.Order.from_json(self.client._post_as_get(order.uri).json())

    def _wait_before_poll(self, attempt: int, deadline: datetime.datetime) -> None:
        """Sleep until the next poll, or give up if it would come after `deadline`
        (naive local time, as the `acme` package keeps it)."""
        delay = poll_delay(attempt, self.network.retry_after, datetime.datetime.now(datetime.UTC))
        if datetime.datetime.now() + datetime.timedelta(seconds=delay) > deadline:  # noqa: DTZ005
            raise errors.TimeoutError()
        time.sleep(delay)

    def _abandon(self, authorizations: Any) -> None:
        """Deactivate the pending authorizations of an order we will not answer:
        CAs cap how many may be pending per account (Let's Encrypt: 300)."""
        for authorization in authorizations:
            if authorization.body.status == messages.STATUS_PENDING:
                try:
                    self.client.deactivate_authorization(authorization)
                except (errors.Error, messages.Error, requests.RequestException):
                    logger.debug("could not deactivate %s", authorization.uri)

    def renewal_info(self, cert_pem: bytes) -> tuple[datetime.datetime | None, datetime.datetime]:
        """ARI: (suggested renewal time or None without ARI, when to ask again)."""
        default = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(hours=6)
        try:
            renew_at, _ = self.client.renewal_time(cert_pem)
        except errors.ARIError as error:
            cause = error.__cause__
            raise IssuanceError(
                "RenewalInfoFailed",
                f"cannot fetch renewal info: {type(cause).__name__ if cause else error}",
                self.network.retry_after or default,
            ) from None
        except (errors.Error, ValueError) as error:
            raise IssuanceError(
                "RenewalInfoFailed", f"unusable renewal info: {type(error).__name__}", default
            ) from None
        # The package's own next-poll time is naive, sometimes local, sometimes
        # UTC; the Retry-After of the response it read is unambiguous.
        next_check = self.network.retry_after or default
        if renew_at is not None and renew_at.tzinfo is None:  # pragma: no cover - aware today
            renew_at = renew_at.replace(tzinfo=datetime.UTC)
        return renew_at, next_check


def _check_issued(fullchain: bytes, key_pem: bytes, names: tuple[str, ...]) -> None:
    """Never store what the CA sent unless it is a chain for our key and our names."""
    try:
        info = certs.certificate_info(fullchain)
    except ValueError as error:
        raise IssuanceError(
            "BadCertificate", f"the CA sent no readable certificate: {error}"
        ) from None
    if not certs.key_matches(fullchain, key_pem):
        raise IssuanceError("BadCertificate", "the CA's certificate is not for the key we sent")
    if set(info.dns_names) != set(names):
        raise IssuanceError(
            "BadCertificate",
            f"the CA's certificate names {sorted(info.dns_names)}, not {sorted(names)}",
        )
