"""
The operator's send policy: which recipient domains mail may go to
(``--send-allow-domains``).

An email the assistant reads may tell it to forward the inbox somewhere
(docs/threat-model.rst, SM-15); the allow-list is the operator's answer that
no text can argue with.  It is checked in `mailmcp.tools._writing.deliver`,
the one path every sending tool shares, before the SMTP server is contacted
and before anything is filed.

Matching: ``example.com`` allows exactly that domain; ``.example.com``
allows every domain below it (``a.example.com``, ``b.a.example.com``) but
not ``example.com`` itself (list both for both).  Names compare
case-insensitively, after IDNA encoding, without a trailing dot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def normalise_domain(domain: str) -> str:
    """
    C{domain} as an ASCII (IDNA) lower-case name without a trailing dot.

    :raises ValueError: when it is not a host name.
    """
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError(f"{domain!r} is not a valid domain") from None
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{domain!r} is not a valid domain")
    return name


def parse_allow_domains(text: str) -> tuple[str, ...]:
    """
    The ``--send-allow-domains`` value (comma and/or space separated) as
    normalised entries; a leading dot (subdomains only) is kept.

    :raises ValueError: naming the first entry that is not a domain.
    """
    entries: list[str] = []
    for raw in re.split(r"[\s,]+", text.strip()):
        if not raw:
            continue
        subdomains = raw.startswith(".")
        name = normalise_domain(raw[1:] if subdomains else raw)
        entry = "." + name if subdomains else name
        if entry not in entries:
            entries.append(entry)
    return tuple(entries)


def domain_allowed(domain: str, allowed: Sequence[str]) -> bool:
    """Whether mail to C{domain} is allowed by the (normalised) C{allowed} entries."""
    try:
        name = normalise_domain(domain)
    except ValueError:
        return False
    for entry in allowed:
        if entry.startswith("."):
            if name.endswith(entry):
                return True
        elif name == entry:
            return True
    return False


def refused_recipients(recipients: Iterable[str], allowed: Sequence[str]) -> list[str]:
    """
    The addresses among C{recipients} (``local@domain``) that the policy
    refuses, in order; none when C{allowed} is empty (no restriction).
    """
    if not allowed:
        return []
    return [r for r in recipients if not domain_allowed(r.rpartition("@")[2], allowed)]
