"""
What a grant lets the assistant do: the OAuth scope values.

Five scopes split the tools by what they can do to the mailbox (read,
organise, draft, send, delete); each tool names the scope(s) it needs next to
its declaration (`mailmcp._toolkit.Tool.scopes`).  The legacy value ``mail``
and the absence of a scope both mean all five, so grants and tokens issued
before scopes existed keep full access.
"""

from __future__ import annotations

from collections.abc import Iterable

READ = "mail.read"
ORGANIZE = "mail.organize"
DRAFT = "mail.draft"
SEND = "mail.send"
DELETE = "mail.delete"

#: Every scope, in the order they are advertised and shown.
ALL_SCOPES: tuple[str, ...] = (READ, ORGANIZE, DRAFT, SEND, DELETE)
FULL: frozenset[str] = frozenset(ALL_SCOPES)

#: The one scope value there was before (means all five).
LEGACY_SCOPE = "mail"

#: Plain words for the login page, one per scope.
LABELS: dict[str, str] = {
    READ: "Read and search your mail",
    ORGANIZE: "Organise your mail: move messages, change flags, manage folders",
    DRAFT: "Write drafts (saved in your Drafts folder, not sent)",
    SEND: "Send mail in your name",
    DELETE: "Delete messages",
}


class UnknownScope(ValueError):
    """A scope value this server does not know."""

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.value = value


def parse_scope(value: str | None) -> frozenset[str]:
    """
    The scopes a ``scope`` parameter asks for: absent, empty or ``mail``
    means all five (``mail`` combined with others adds all five too).

    :raises UnknownScope: for any other value.
    """
    if value is None:
        return FULL
    words = value.split()
    if not words:
        return FULL
    granted: set[str] = set()
    for word in words:
        if word == LEGACY_SCOPE:
            granted.update(FULL)
        elif word in FULL:
            granted.add(word)
        else:
            raise UnknownScope(word)
    return frozenset(granted)


def scopes_of_claim(claim: object) -> frozenset[str]:
    """
    The scopes a sealed token's ``sc`` claim grants.  Tokens from before
    scopes (no claim, or ``mail``) grant all five; a damaged claim grants
    nothing.
    """
    if claim is None:
        return FULL
    if not isinstance(claim, str):
        return frozenset()
    try:
        return parse_scope(claim) if claim.strip() else frozenset()
    except UnknownScope:
        return frozenset()


def format_scope(scopes: Iterable[str]) -> str:
    """A set of scopes as a ``scope`` string, in the advertised order."""
    chosen = set(scopes)
    return " ".join(s for s in ALL_SCOPES if s in chosen)


def parse_scope_list(value: str) -> frozenset[str]:
    """
    An operator's scope list (``--scope``, ``--max-scope``): scope values
    separated by commas and/or spaces, ``mail`` meaning all five.

    :raises ValueError: with a one-line reason, for an unknown or empty list.
    """
    words = value.replace(",", " ").split()
    if not words:
        raise ValueError("name at least one scope: " + ", ".join(ALL_SCOPES))
    try:
        return parse_scope(" ".join(words))
    except UnknownScope as e:
        raise ValueError(
            f"unknown scope {e.value!r}; known scopes: " + ", ".join(ALL_SCOPES)
        ) from None
