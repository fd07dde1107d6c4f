"""Before any order: does each name lead to this site?

The CA resolves each name and fetches the HTTP-01 answer from
http://NAME/.well-known/acme-challenge/TOKEN; a name that resolves
elsewhere fails its authorization, and Let's Encrypt allows 5 failed
authorizations per name per hour and pauses a name after 1,152 in a row.
The preflight makes the same trip first, with a token of its own in the
site's answers ConfigMap, and costs the CA nothing: each name must resolve
(to the frontend's external addresses, when it has any) and the fetch must
come back with this site's answer. A site that fails it is not ordered for.

Only definite findings hold an order back: a name that does not exist or
has no address, an address elsewhere, a fetch that fails. A resolver that
does not answer (a timeout, SERVFAIL) says nothing about the name, and the
CA asks its own: the name is left unchecked and the order goes.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver


class ResolverError(Exception):
    """The resolver gave no answer about a name (timeout, SERVFAIL, refused)."""


@dataclass(frozen=True)
class NameCheck:
    name: str
    addresses: tuple[str, ...]  # what it resolves to
    problem: str | None  # None: it leads here (or could not be checked)
    checked: bool = True


def check_names(
    names: Sequence[str],
    *,
    expected: Sequence[str],
    resolve: Callable[[str], tuple[str, ...]],
    reaches_this_site: Callable[[str, str], str | None],
) -> list[NameCheck]:
    """For each name, what it resolves to and, if it does not lead to this
    site, why. `expected`: the addresses it must resolve to (empty: any);
    `reaches_this_site(address, name)` fetches the preflight answer, None
    when it came back right, else what went wrong."""
    wanted = _addresses_of(expected, resolve)
    checks = []
    resolver_answers = True
    for name in names:
        if not resolver_answers:  # one timeout is enough to wait for
            checks.append(NameCheck(name, (), None, checked=False))
            continue
        try:
            addresses = resolve(name)
        except ResolverError:
            resolver_answers = False
            checks.append(NameCheck(name, (), None, checked=False))
            continue
        except LookupError as error:
            checks.append(NameCheck(name, (), f"{name} does not resolve ({error})"))
            continue
        listed = ", ".join(addresses)
        elsewhere = [a for a in addresses if wanted and _normal(a) not in wanted]
        if elsewhere:
            checks.append(
                NameCheck(
                    name,
                    addresses,
                    f"{name} resolves to {listed}, not to this site's {', '.join(sorted(wanted))}",
                )
            )
            continue
        failures = [(a, why) for a in addresses if (why := reaches_this_site(a, name))]
        problem = None
        if failures:
            address, why = failures[0]
            problem = (
                f"{name} resolves to {listed}; http://{name}/.well-known/acme-challenge/ "
                f"at {address} does not reach this site ({why})"
            )
        checks.append(NameCheck(name, addresses, problem))
    return checks


def _addresses_of(expected: Sequence[str], resolve: Callable[[str], tuple[str, ...]]) -> set[str]:
    """The expected addresses, a load balancer's hostname resolved."""
    wanted: set[str] = set()
    for entry in expected:
        try:
            wanted.add(_normal(entry))
        except ValueError:
            try:
                wanted.update(_normal(a) for a in resolve(entry))
            except (LookupError, ResolverError):
                continue  # a hostname not in DNS yet: nothing to compare with
    return wanted


def _normal(address: str) -> str:
    """One spelling per IP address; ValueError for anything else."""
    return str(ipaddress.ip_address(address))


def resolver(server: str | None) -> Callable[[str], tuple[str, ...]]:
    """A name's IPv4 and IPv6 addresses: from the system's resolver (None),
    or from the DNS server at HOST:PORT. LookupError when it has none."""
    if server is None:
        return _system_resolve
    host, _, port = server.rpartition(":")
    dns_resolver = dns.resolver.Resolver(configure=False)
    dns_resolver.nameservers = [host]
    dns_resolver.port = int(port)
    dns_resolver.lifetime = 3.0

    def resolve(name: str) -> tuple[str, ...]:
        found: list[str] = []
        for record_type in ("A", "AAAA"):
            try:
                answer = dns_resolver.resolve(name, record_type)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as error:  # no answer: nothing known
                raise ResolverError(str(error) or type(error).__name__) from None
            found.extend(record.to_text() for record in answer)
        if not found:
            raise LookupError("no A or AAAA record")
        return tuple(found)

    return resolve


def _system_resolve(name: str) -> tuple[str, ...]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        if error.errno == socket.EAI_AGAIN:  # a temporary failure: nothing known
            raise ResolverError(error.strerror or str(error)) from None
        raise LookupError(error.strerror or str(error)) from None
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))
