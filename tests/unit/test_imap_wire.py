"""
The IMAP wire validators match the whole value (``re.fullmatch``): a
pattern written ``^…$`` and applied with ``.match`` also accepts the value
followed by a newline, because ``$`` matches before a final ``\\n``.  Every
validator here must refuse that, so no caller's value can end a command
line early (P-01).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmcp.attachments import _common
from mailmcp.attachments._common import safe_content_type
from mailmcp.mail import _mime, _search
from mailmcp.mail._mailbox_api import IMAPError
from mailmcp.mail.imap import _parser, _session, _wire

TRAILING = ["\n", "\r\n", "\r"]


@pytest.mark.parametrize("suffix", TRAILING)
def test_keyword_flag_with_a_trailing_newline_is_refused(suffix: str) -> None:
    assert _wire.check_flag("$Important") == b"$Important"
    with pytest.raises(IMAPError, match="invalid flag"):
        _wire.check_flag("$Important" + suffix)


@pytest.mark.parametrize("suffix", TRAILING)
def test_date_time_with_a_trailing_newline_is_refused(suffix: str) -> None:
    good = "01-Jul-2025 13:30:00 +0000"
    assert _wire.check_date_time(good) == b'"' + good.encode() + b'"'
    with pytest.raises(IMAPError, match="invalid IMAP date-time"):
        _wire.check_date_time(good + suffix)


@pytest.mark.parametrize("suffix", [s.encode() for s in TRAILING])
def test_quoted_string_and_search_token_refuse_a_trailing_newline(suffix: bytes) -> None:
    assert _wire.quote(b"Archive") == b'"Archive"'
    with pytest.raises(IMAPError, match="quoted string"):
        _wire.quote(b"Archive" + suffix)
    # astring falls back to a literal, which carries the bytes safely.
    assert not isinstance(_wire.astring(b"Archive" + suffix), bytes)
    with pytest.raises(IMAPError, match="invalid search token"):
        _wire.check_atom_token(b"ALL" + suffix)


@pytest.mark.parametrize("suffix", TRAILING)
def test_mailbox_name_with_a_trailing_newline_is_refused(suffix: str) -> None:
    assert _wire.quote(_wire.encode_mailbox("Archive")) == b'"Archive"'
    with pytest.raises(IMAPError, match="control characters"):
        _wire.encode_mailbox("Archive" + suffix)


def test_sequence_sets_and_fetch_items_refuse_a_trailing_newline() -> None:
    assert _parser.is_sequence_set("1:5,7")
    assert not _parser.is_sequence_set("1:5,7\n")
    assert _session._FETCH_ITEMS_OK.fullmatch(b"(UID FLAGS)")
    assert _session._FETCH_ITEMS_OK.fullmatch(b"(UID FLAGS)\n") is None
    with pytest.raises(IMAPError, match="invalid FETCH items"):
        _session._fetch_items("(UID\nFLAGS)")


@pytest.mark.parametrize(
    "query",
    ["keyword $Important\n", "uid 1:5\n", "since 2025-01-01\n", "header X-Spam\n yes"],
)
def test_search_arguments_with_a_trailing_newline_are_refused(query: str) -> None:
    with pytest.raises(_search.SearchQueryError):
        _search.compile_search(query, _search.Filters())


def test_search_helpers_match_the_whole_value() -> None:
    assert _search.imap_date("2025-01-01") == b"1-Jan-2025"
    for bad in ("2025-01-01\n", "1-Jan-2025\n"):
        with pytest.raises(_search.SearchQueryError):
            _search.imap_date(bad)
    assert _search.uid_set("1:5") == b"1:5"
    with pytest.raises(_search.SearchQueryError):
        _search.uid_set("1:5\n")


def test_internal_date_and_rfc2231_parsers_match_the_whole_value() -> None:
    assert _mime.parse_internal_date("17-Jul-1996 02:44:25 -0700") == "1996-07-17T02:44:25-07:00"
    assert _mime._RFC2231_SEGMENT.fullmatch("filename*0*") is not None
    assert _mime._RFC2231_SEGMENT.fullmatch("filename*0*\n") is None


def test_content_type_tokens_match_the_whole_value() -> None:
    assert safe_content_type("text/plain") == "text/plain"
    assert _common._TOKEN.fullmatch("plain") is not None
    assert _common._TOKEN.fullmatch("plain\n") is None


@settings(max_examples=500)
@given(name=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("&é€ü"), min_size=1, max_size=30))
def test_mailbox_names_encode_as_modified_utf7(name: str) -> None:
    """The shortcut for plain ASCII names writes exactly what the modified UTF-7 codec writes."""
    expected = b"INBOX" if name.upper() == "INBOX" else name.encode("imap4-utf-7")
    assert _wire.encode_mailbox(name) == expected
    assert _wire.decode_mailbox(expected) == ("INBOX" if name.upper() == "INBOX" else name)
