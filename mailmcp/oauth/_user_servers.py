"""
Mail servers the user names on the login page (``--allow-user-servers``).

A client that brings no servers (one registered at ``/oauth/register`` or
named by a Client ID Metadata Document) can let the user say where their
mailbox is.  The page is prefilled from the email domain's RFC 6186 SRV
records (``_imaps._tcp``, ``_imap._tcp``, ``_submissions._tcp``,
``_submission._tcp``), looked up with Twisted's resolver.

The daemon then connects where a stranger told it to, so only public
addresses on the usual ports (993, 143, 465, 587) are accepted: otherwise
the login form would be a port scanner for the operator's private network
(SSRF).  ``--user-servers-allow`` widens that for given networks and ports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError, DomainError

from ._clients import MailServer, Security

log = Logger()

#: Where user-named servers may be without --user-servers-allow.
USUAL_PORTS = frozenset({993, 143, 465, 587})
#: Security modes a user may pick: never plain (the password would cross
#: the network in clear text).
USER_SECURITY: tuple[Security, ...] = ("tls", "starttls")
#: Seconds per try of each DNS query made for the login page.
DNS_TIMEOUT = (1, 3)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def brings_servers(client: Any) -> bool:
    """
    Whether C{client} names its own mail servers: provisioned clients do;
    registered (RFC 7591) and metadata-document clients do not.
    """
    return getattr(client, "kind", "provisioned") == "provisioned"


class ServerRefused(Exception):
    """A user-named server the daemon will not connect to; the message says why."""


@attrs.frozen
class AllowRule:
    """One ``--user-servers-allow`` entry: a network and its ports (None: any)."""

    network: IPNetwork
    ports: frozenset[int] | None

    def admits(self, address: IPAddress, port: int) -> bool:
        if address.version != self.network.version or address not in self.network:
            return False
        return self.ports is None or port in self.ports


def parse_allow(text: str) -> tuple[AllowRule, ...]:
    """
    ``--user-servers-allow``: entries separated by spaces or commas, each a
    network (``10.1.0.0/16``, IPv6 in brackets ``[fd00::]/8``) with an
    optional ``:PORT`` (a number, or ``*`` for any); without one, the
    usual ports.

    :raises ValueError: naming the first bad entry.
    """
    rules = []
    for item in text.replace(",", " ").split():
        network_text, port_text = item, ""
        if item.startswith("["):
            inside, _, rest = item[1:].partition("]")
            prefix, _, port_text = rest.partition(":")
            network_text = inside + prefix
        elif item.count(":") == 1:
            network_text, _, port_text = item.partition(":")
        try:
            network = ipaddress.ip_network(network_text, strict=False)
            if port_text in ("", "*"):
                ports = None if port_text == "*" else USUAL_PORTS
            else:
                port = int(port_text)
                if not 0 < port < 65536:
                    raise ValueError(port_text)
                ports = frozenset({port})
        except ValueError:
            raise ValueError(
                f"{item!r} is not NETWORK, NETWORK:PORT or NETWORK:* (IPv6 as [NETWORK]:PORT)"
            ) from None
        rules.append(AllowRule(network, ports))
    return tuple(rules)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class ServerPolicy:
    """
    Whether the daemon may connect to a user-named server: every address
    its host resolves to must be public with a usual port, or admitted by a
    rule.

    :param rules: from `parse_allow`.
    :param resolver: a `twisted.names` resolver (``lookupAddress``,
        ``lookupIPV6Address``, ``lookupService``).
    """

    def __init__(self, rules: Iterable[AllowRule], resolver: Any) -> None:
        self._rules = tuple(rules)
        self._resolver = resolver

    def _admits(self, address: IPAddress, port: int) -> bool:
        if any(rule.admits(address, port) for rule in self._rules):
            return True
        return address.is_global and port in USUAL_PORTS

    async def _addresses(self, host: str) -> list[IPAddress]:
        literal = _literal(host)
        if literal is not None:
            return [literal]
        found: list[IPAddress] = []
        for lookup, kind in (
            (self._resolver.lookupAddress, dns.A),
            (self._resolver.lookupIPV6Address, dns.AAAA),
        ):
            try:
                answers, _, _ = await lookup(host, timeout=DNS_TIMEOUT)
            except (DNSNameError, DomainError):
                continue
            except Exception as e:
                log.info("address lookup of a user-named server failed: {kind}", kind=type(e))
                continue
            for record in answers:
                if record.type == kind:
                    # Record_A / Record_AAAA keep the packed address.
                    found.append(ipaddress.ip_address(record.payload.address))
        return found

    async def check(self, label: str, server: MailServer) -> None:
        """
        :raises ServerRefused: with a line for the login page naming C{label}.
        """
        addresses = await self._addresses(server.host)
        if not addresses:
            raise ServerRefused(f"{label} server: {server.host} was not found.")
        for address in addresses:
            if not self._admits(address, server.port):
                log.info(
                    "refused user-named {label} server {host}:{port} ({address})",
                    label=label,
                    host=server.host,
                    port=server.port,
                    address=str(address),
                )
                raise ServerRefused(
                    f"{label} server: {server.host} port {server.port} is not allowed here "
                    "(only public servers on ports 993, 143, 465 and 587)."
                )


@attrs.frozen
class Suggestion:
    """Servers found for an email domain (None where nothing was found)."""

    imap: MailServer | None = None
    smtp: MailServer | None = None


#: (SRV service, security), most preferred first: implicit TLS, then STARTTLS.
IMAP_SERVICES = (("_imaps._tcp", "tls"), ("_imap._tcp", "starttls"))
SMTP_SERVICES = (("_submissions._tcp", "tls"), ("_submission._tcp", "starttls"))


async def _lookup_srv(resolver: Any, name: str) -> tuple[str, int] | None:
    """The preferred target of C{name}'s SRV records (RFC 2782 order), or None."""
    try:
        answers, _, _ = await resolver.lookupService(name, timeout=DNS_TIMEOUT)
    except (DNSNameError, DomainError):
        return None
    except Exception as e:
        log.info("SRV lookup failed: {kind}", kind=type(e))
        return None
    records = [a.payload for a in answers if a.type == dns.SRV]
    if not records:
        return None
    best = sorted(records, key=lambda r: (r.priority, -r.weight))[0]
    target = str(best.target).rstrip(".").lower()
    # RFC 2782 / RFC 6186: a target of "." says the service is not offered.
    if not target or not 0 < best.port < 65536:
        return None
    return target, int(best.port)


async def _first(resolver: Any, domain: str, services: Any) -> MailServer | None:
    for service, security in services:
        found = await _lookup_srv(resolver, f"{service}.{domain}")
        if found is not None:
            return MailServer(host=found[0], port=found[1], security=security)
    return None


def discover(resolver: Any, email: str) -> Deferred[Suggestion]:
    """RFC 6186: the IMAP and submission servers of C{email}'s domain."""

    async def run() -> Suggestion:
        domain = email.rpartition("@")[2].strip().rstrip(".").lower()
        if not domain or len(domain) > 253 or "." not in domain:
            return Suggestion()
        return Suggestion(
            imap=await _first(resolver, domain, IMAP_SERVICES),
            smtp=await _first(resolver, domain, SMTP_SERVICES),
        )

    return Deferred.fromCoroutine(run())
