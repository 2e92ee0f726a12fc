"""
The IMAP SEARCH compiler: untrusted query text in, safe wire tokens out.
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmcp.mail._mailbox_api import Literal
from mailmcp.mail._search import (
    Filters,
    SearchQueryError,
    compile_search,
    imap_date,
    render,
    tokenize,
)


@pytest.mark.parametrize(
    "query",
    [
        "ALL\r\nX1 DELETE INBOX",
        "ALL\nX1 DELETE INBOX",
        "ALL\rX1",
        "SUBJECT \"a\r\nX1 DELETE INBOX\"",
        "SUBJECT x\x00",
        "{5}\r\nhello",
        "SUBJECT {5}",
        "SUBJECT ~{5+}",
        "TEXT {5+}",
    ],
)
def test_injection_refused(query: str) -> None:
    """Control characters and literal syntax (docs/threat-model.rst, TL-S1) never compile."""
    with pytest.raises(SearchQueryError):
        compile_search(query)


def test_literal_syntax_message_is_helpful() -> None:
    """The refusal of ``{n}`` tells the model what to write instead."""
    with pytest.raises(SearchQueryError, match="double quotes"):
        compile_search("SUBJECT {5}")


def test_quoted_phrase_stays_one_argument() -> None:
    """``SUBJECT "q3 report"`` is one key with one string, re-quoted (the seed split it)."""
    assert compile_search('SUBJECT "q3 report"') == [b"SUBJECT", b'"q3 report"']


def test_atoms_are_requoted_and_escapes_kept() -> None:
    """Every string argument is re-emitted quoted, with backslash and quote escaped."""
    assert compile_search('FROM alice@example.com SUBJECT "say \\"hi\\" \\\\o/"') == [
        b"FROM", b'"alice@example.com"', b"SUBJECT", b'"say \\"hi\\" \\\\o/"',
    ]


def test_or_not_and_parentheses() -> None:
    """OR/NOT take the right number of keys; parentheses glue onto their neighbours."""
    assert compile_search("OR FROM a FROM b") == [b"OR", b"FROM", b'"a"', b"FROM", b'"b"']
    assert compile_search("NOT (SEEN FLAGGED)") == [b"NOT", b"(SEEN", b"FLAGGED)"]
    assert compile_search("(UNSEEN FLAGGED)") == [b"UNSEEN", b"FLAGGED"]
    assert compile_search("OR (FROM a SEEN) NOT FLAGGED") == [
        b"OR", b'(FROM', b'"a"', b"SEEN)", b"NOT", b"FLAGGED",
    ]


def test_non_ascii_becomes_literal() -> None:
    """Non-ASCII text goes as a UTF-8 literal (the IMAP layer adds CHARSET UTF-8)."""
    assert compile_search('FROM "Müller"') == [b"FROM", Literal("Müller".encode())]
    tokens = compile_search("NOT (SUBJECT Grüße SEEN)")
    assert tokens == [b"NOT", b"(SUBJECT", Literal("Grüße".encode()), b"SEEN)"]


def test_literal_at_group_end_keeps_parenthesis_separate() -> None:
    """A literal can't carry a glued ')'; the parenthesis becomes its own token."""
    assert compile_search("NOT (SEEN SUBJECT é)") == [b"NOT", b"(SEEN", b"SUBJECT", Literal("é".encode()), b")"]


def test_keys_are_case_insensitive() -> None:
    """Lower-case keys work and come out upper-case."""
    assert compile_search("unseen since 1-feb-2025") == [b"UNSEEN", b"SINCE", b"1-Feb-2025"]


@pytest.mark.parametrize("text,expected", [
    ("07-Mar-2025", b"7-Mar-2025"),
    ("7-mar-2025", b"7-Mar-2025"),
    ("2025-03-07", b"7-Mar-2025"),
])
def test_dates(text: str, expected: bytes) -> None:
    """IMAP and ISO dates are accepted and normalised."""
    assert imap_date(text) == expected


@pytest.mark.parametrize("text", ["31-Feb-2025", "1-Foo-2025", "2025-13-01", "yesterday", "1-Jan-25"])
def test_bad_dates(text: str) -> None:
    """Invalid dates are refused with the expected format named."""
    with pytest.raises(SearchQueryError, match="DD-Mon-YYYY"):
        compile_search(f"SINCE {text}")


@pytest.mark.parametrize("query", ["UID 1:*", "UID 5", "UID 1,3:7,9"])
def test_uid_sets(query: str) -> None:
    """Valid UID sets pass through."""
    assert compile_search(query) == [b"UID", query.split()[1].encode()]


@pytest.mark.parametrize("query", ["UID 0", "UID 4294967296", "UID 1:", "UID a", "UID $", "UID -1"])
def test_bad_uid_sets(query: str) -> None:
    """Zero, out-of-range numbers and junk are refused."""
    with pytest.raises(SearchQueryError):
        compile_search(query)


def test_bare_sequence_numbers_refused() -> None:
    """A bare sequence set would mean sequence numbers; the error says to use UID."""
    with pytest.raises(SearchQueryError, match="UID 1:10"):
        compile_search("1:10")


@pytest.mark.parametrize("query", [
    "FROM", "OR FROM a", "NOT", "(SEEN", "SEEN)", "()", "BOGUS", "LARGER ten", "CHARSET UTF-8 ALL",
    '"just text"', "KEYWORD \\Seen", "HEADER Bad:Name x", "FROM (a)",
])
def test_malformed(query: str) -> None:
    """Malformed queries are refused, never passed on."""
    with pytest.raises(SearchQueryError):
        compile_search(query)


def test_caps() -> None:
    """Length, key count and nesting depth are capped."""
    with pytest.raises(SearchQueryError, match="too long"):
        compile_search("SEEN " * 1000)
    with pytest.raises(SearchQueryError, match="more than"):
        compile_search("SEEN " * 150)
    with pytest.raises(SearchQueryError, match="deeper"):
        compile_search("NOT " * 30 + "SEEN")


def test_empty_means_all() -> None:
    """No criteria at all compiles to ALL (callers limit the result)."""
    assert compile_search(None) == [b"ALL"]
    assert compile_search("   ") == [b"ALL"]


def test_filters_and_query_are_anded() -> None:
    """Structured filters follow the query at top level, which IMAP ANDs."""
    tokens = compile_search(
        "OR FROM a FROM b",
        Filters(subject="q3", since=datetime.date(2025, 1, 2), unseen=True, flagged=False, larger=100),
    )
    assert tokens == [
        b"OR", b"FROM", b'"a"', b"FROM", b'"b"', b"SUBJECT", b'"q3"', b"SINCE", b"2-Jan-2025",
        b"UNSEEN", b"UNFLAGGED", b"LARGER", b"100",
    ]


def test_filter_text_with_newline_refused() -> None:
    """A structured filter value gets the same control-character check."""
    with pytest.raises(SearchQueryError):
        compile_search(None, Filters(from_="a\r\nX DELETE INBOX"))


def test_header_and_keyword() -> None:
    """HEADER takes a field name and a string; KEYWORD an atom."""
    assert compile_search("HEADER List-Id dev KEYWORD $Important") == [
        b"HEADER", b'"List-Id"', b'"dev"', b"KEYWORD", b"$Important",
    ]


def test_render() -> None:
    """render() shows literals as quoted text for the tool result."""
    assert render(compile_search('FROM "Müller" UNSEEN')) == 'FROM "Müller" UNSEEN'


def test_tokenize_positions() -> None:
    """Tokens carry their position for error messages."""
    assert [(t.kind, t.text, t.position) for t in tokenize('(a "b c")')] == [
        ("(", "(", 0), ("atom", "a", 1), ("string", "b c", 3), (")", ")", 8),
    ]


@given(st.text(max_size=200))
def test_fuzz_output_is_always_safe(query: str) -> None:
    """Whatever the input, the output never carries CR, LF, NUL or literal syntax."""
    try:
        tokens = compile_search(query)
    except SearchQueryError:
        return
    for token in tokens:
        if isinstance(token, Literal):
            assert b"\r" not in token.data and b"\n" not in token.data and b"\0" not in token.data
        else:
            assert all(0x20 <= b < 0x7F for b in token), token
            assert not (token.startswith(b"{") or token.rstrip(b")").endswith(b"}")) or token.startswith(b'"')
