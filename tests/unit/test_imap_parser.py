"""
The fast IMAP response parser (`mailmcp.mail.imap._parser`) on normal and
hostile input: every malformed response raises `ParseError` (never another
exception, never a hang), numbers are bounded, NIL is accepted wherever the
grammar allows it, and 8-bit or broken header text still decodes.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.mail import imap4

from mailmcp.mail._mailbox_api import Address
from mailmcp.mail.imap._parser import (
    MAX_DEPTH,
    ParseError,
    compress_uids,
    decode_header_text,
    decode_words,
    expand_sequence_set,
    is_sequence_set,
    parse_envelope,
    parse_fetch,
    parse_values,
    split_code,
)

ENVELOPE = (
    b'("Tue, 01 Jul 2025 13:30:00 +0000" "=?utf-8?q?R=C3=A9union?= today" '
    b'(("=?iso-8859-1?q?J=FCrgen?=" NIL "juergen" "example.test")) NIL NIL '
    b'(("Bob" NIL "bob" "example.test")(NIL NIL "carol" "example.test")) NIL NIL '
    b'"<a@b>" "<id@example.test>")'
)


def fetch(line: bytes, *literals: bytes) -> object:
    """Parse ``* <line>`` split at ``{n}`` markers like the protocol does."""
    return parse_fetch(_segments(line, literals))


def _segments(line: bytes, literals: tuple[bytes, ...]) -> tuple[bytes, ...]:
    parts = line.split(b"\x00")
    assert len(parts) == len(literals) + 1
    out: list[bytes] = []
    for i, text in enumerate(parts):
        out.append(text)
        if i < len(literals):
            out.append(literals[i])
    return tuple(out)


# -- the normal shapes ----------------------------------------------------------------


def test_listing_fetch() -> None:
    """UID, FLAGS, RFC822.SIZE, INTERNALDATE, ENVELOPE and MODSEQ of a listing FETCH."""
    message = parse_fetch(
        (
            b'12 FETCH (UID 345 FLAGS (\\Seen $Label1) RFC822.SIZE 4096 INTERNALDATE "01-Jul-2025 13:30:00 +0000" '
            b"MODSEQ (12345678901) ENVELOPE " + ENVELOPE + b")",
        )
    )
    assert message is not None
    assert (message.seq, message.uid, message.size, message.modseq) == (12, 345, 4096, 12345678901)
    assert message.flags == ("\\Seen", "$Label1")
    assert message.internal_date == "01-Jul-2025 13:30:00 +0000"
    envelope = message.envelope
    assert envelope is not None
    assert envelope.subject == "Réunion today"
    assert envelope.from_ == (Address(name="Jürgen", email="juergen@example.test"),)
    assert envelope.sender == () and envelope.reply_to == ()
    assert envelope.to == (Address("Bob", "bob@example.test"), Address(None, "carol@example.test"))
    assert envelope.in_reply_to == "<a@b>" and envelope.message_id == "<id@example.test>"


def test_sections_and_literals() -> None:
    """BODY[...] values from literals and quoted strings, keyed by bare section."""
    message = parse_fetch(
        _segments(
            b'7 FETCH (UID 9 BODY[HEADER.FIELDS (SUBJECT FROM)] \x00 BODY[1.2]<0> "abc" BODY[] \x00 BODY[2.MIME] NIL)',
            (b"Subject: (unbalanced\r\n\r\n", b'raw "bytes" \xff\x00 )))'),
        )
    )
    assert message is not None
    assert message.sections == {
        "HEADER.FIELDS (SUBJECT FROM)": b"Subject: (unbalanced\r\n\r\n",
        "1.2": b"abc",
        "": b'raw "bytes" \xff\x00 )))',
        "2.MIME": b"",
    }


def test_bodystructure_contract_form() -> None:
    """BODYSTRUCTURE atoms/strings become str, numbers int, NIL None; quoted digits stay str."""
    message = parse_fetch(
        (
            b'1 FETCH (UID 1 BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 1 NIL NIL NIL NIL)'
            b'("application" "pdf" ("name" "1234") NIL NIL "base64" 4000 NIL ("attachment" ("filename" "r\xe9sum\xe9.pdf")) NIL NIL)'
            b' "mixed" ("boundary" "42") NIL NIL NIL))',
        )
    )
    assert message is not None
    body = message.bodystructure
    assert body[0] == [
        "text",
        "plain",
        ["charset", "utf-8"],
        None,
        None,
        "7bit",
        12,
        1,
        None,
        None,
        None,
        None,
    ]
    assert body[1][2] == ["name", "1234"]
    assert body[1][8] == ["attachment", ["filename", "r\xe9sum\xe9.pdf"]]
    assert body[2:4] == ["mixed", ["boundary", "42"]]


def test_envelope_all_nil() -> None:
    """An ENVELOPE of ten NILs is valid: every field None or empty."""
    envelope = parse_envelope([None] * 10)
    assert envelope.subject is None and envelope.date is None
    assert envelope.from_ == () and envelope.bcc == ()


def test_group_syntax_addresses() -> None:
    """RFC 3501 group markers: start becomes a name-only Address, end is dropped."""
    (values,) = parse_values(
        (
            b'(NIL "s" NIL NIL NIL ((NIL NIL "team" NIL)("A" NIL "a" "x.test")(NIL NIL NIL NIL)) NIL NIL NIL NIL)',
        )
    )
    envelope = parse_envelope(values)
    assert envelope.to == (Address("team", ""), Address("A", "a@x.test"))


def test_response_codes() -> None:
    """Response codes are split from their text; numbers parsed, names upper-cased."""
    assert split_code(b"[appenduid 38505 3955] APPEND completed") == (
        [b"APPENDUID", 38505, 3955],
        b"APPEND completed",
    )
    assert split_code(b"[COPYUID 7 1:3,5 10:13] Done")[0] == [b"COPYUID", 7, b"1:3,5", b"10:13"]
    assert split_code(b"[PERMANENTFLAGS (\\Seen \\*)] ok")[0] == [
        b"PERMANENTFLAGS",
        [b"\\Seen", b"\\*"],
    ]
    assert split_code(b"no code here") == (None, b"no code here")


# -- hostile input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"1 FETCH (UID 5 FLAGS (\\Seen)",  # missing close
        b"1 FETCH (UID 5))",  # extra close
        b"1 FETCH (UID 5 FLAGS (\\Seen])",  # mismatched bracket
        b'1 FETCH (UID 5 ENVELOPE ("unterminated))',
        b"1 FETCH (UID 5 {12} oops)",  # literal marker not at end of line
        b"1 FETCH UID 5",  # no list
        b"1 FETCH (UID)",  # odd item count
        b"1 FETCH (FLAGS (\\Seen))",  # no UID
        b"1 FETCH (UID 0)",
        b"1 FETCH (UID -1)",
        b"1 FETCH (UID 12abc)",
        b"1 FETCH (UID 4294967296)",
        b"1 FETCH (UID 99999999999999999999999999999)",
        b"1 FETCH (UID " + b"9" * 5000 + b")",  # beyond int()'s digit limit
        b"1 FETCH (UID 5 RFC822.SIZE NIL)",
        b"1 FETCH (UID 5 RFC822.SIZE (1))",
        b"1 FETCH (UID 5 FLAGS NIL)",
        b"1 FETCH (UID 5 MODSEQ 5)",
        b"1 FETCH (UID 5 MODSEQ (99999999999999999999))",
        b"1 FETCH (UID 5 BODYSTRUCTURE NIL)",
        b"1 FETCH (UID 5 ENVELOPE NIL)",
        b"1 FETCH (UID 5 ENVELOPE (NIL NIL))",
        b'1 FETCH (UID 5 ENVELOPE (NIL NIL ((NIL NIL "x")) NIL NIL NIL NIL NIL NIL NIL))',
        b"1 FETCH (UID 5 ENVELOPE (NIL NIL BOGUS NIL NIL NIL NIL NIL NIL NIL))",
        b"1 FETCH (UID 5 BODY[1] (a b))",
        b"1 FETCH ((UID) 5)",
        b"99999999999 FETCH (UID 5)",
    ],
)
def test_malformed_fetch_raises_parse_error(line: bytes) -> None:
    """Each malformed FETCH raises ParseError, nothing else."""
    with pytest.raises(ParseError):
        parse_fetch((line,))


def test_deep_nesting_is_bounded() -> None:
    """Thousands of nested parentheses are refused without recursion."""
    with pytest.raises(ParseError, match="too deep"):
        parse_values((b"(" * 5000 + b")" * 5000,))
    assert parse_values((b"(" * MAX_DEPTH + b")" * MAX_DEPTH,))


def test_nil_everywhere_is_tolerated_where_allowed() -> None:
    """NIL in every nstring position of FETCH data parses."""
    message = parse_fetch(
        (
            b"1 FETCH (UID 3 INTERNALDATE NIL BODY[TEXT] NIL ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))",
        )
    )
    assert message is not None
    assert message.internal_date is None and message.sections == {"TEXT": b""}


def test_eight_bit_header_text() -> None:
    """Raw UTF-8 decodes as UTF-8; invalid UTF-8 falls back to Latin-1; never raises."""
    assert decode_header_text("Grüße 日本".encode()) == "Grüße 日本"
    assert decode_header_text(b"caf\xe9") == "café"
    assert decode_header_text(b"\xff\xfe\xfd") == "ÿþý"


def test_rfc2047_broken_charsets_and_payloads() -> None:
    """Unknown charsets, bad base64 and bad QP decode to something readable instead of failing."""
    assert decode_words("=?x-unknown?q?caf=C3=A9?=") == "café"
    assert decode_words("=?utf-8?b?!!!not base64?=") == "=?utf-8?b?!!!not base64?="
    assert decode_words("=?utf-8?q?=FF=FE?=") == "\ufffd\ufffd"
    assert decode_words("=?utf-8?b?SsO8cmdlbg?=") == "Jürgen"  # missing padding
    assert decode_words("=?utf-8?q?a?=  \t =?utf-8?q?b?= c") == "ab c"
    assert decode_words("=?base64?q?abc?= =?rot13?q?abc?=") == "abcabc"  # non-text codecs


def test_decoded_control_characters_become_spaces() -> None:
    """An encoded CR/LF/NUL (header smuggling) comes out as a space per run."""
    assert decode_header_text(b"=?utf-8?q?hi=0D=0ABcc:_evil@x=00?=") == "hi Bcc: evil@x "


def test_huge_subject_is_cut_before_decoding() -> None:
    """20,000 encoded words are cut to a bounded length before decoding (P-16)."""
    text = b" ".join([b"=?utf-8?q?a?="] * 20000)
    decoded = decode_header_text(text)
    assert decoded is not None and 0 < len(decoded) <= 8192


def test_atoms_with_eight_bit_bytes() -> None:
    """8-bit bytes inside atoms are kept, not an error (servers do send them)."""
    assert parse_values((b'* LIST () "/" Caf\xe9',)) == [b"*", b"LIST", [], b"/", b"Caf\xe9"]


def test_quoted_escapes() -> None:
    """Backslash escapes inside quoted strings are undone."""
    assert parse_values((b'"a \\"b\\" \\\\c" ""',)) == [b'a "b" \\c', b""]


# -- sequence sets -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "1:*", "*", "1,3:5,7:*", "4294967295"])
def test_valid_sequence_sets(value: str) -> None:
    """Ordinary sequence sets are accepted."""
    assert is_sequence_set(value)


@pytest.mark.parametrize(
    "value",
    ["", "0", "1:0", "4294967296", "1,,2", "1:*\r\n", "a", "1 2", "-1", "1:2:3", "1," * 6000],
)
def test_invalid_sequence_sets(value: str) -> None:
    """Zero, overflow, junk and CR/LF are refused."""
    assert not is_sequence_set(value)


def test_compress_and_expand_round_trip() -> None:
    """compress_uids and expand_sequence_set are inverse on sorted unique UIDs."""
    uids = [1, 2, 3, 5, 9, 10, 11, 200]
    assert compress_uids(uids) == b"1:3,5,9:11,200"
    assert expand_sequence_set(b"1:3,5,9:11,200", 100) == uids
    with pytest.raises(ParseError):
        expand_sequence_set(b"1:1000000", 1000)


# -- agreement with Twisted's parser and fuzzing -------------------------------------------------


def test_agrees_with_stock_parser_on_envelope() -> None:
    """On a well-formed ENVELOPE our nested form matches twisted's parseNestedParens."""
    ours = parse_values((ENVELOPE,))
    stock = imap4.parseNestedParens(ENVELOPE)

    def normalise(value: object) -> object:
        if isinstance(value, list):
            return [normalise(v) for v in value]
        if isinstance(value, int):
            return str(value).encode()
        return value

    assert normalise(ours) == stock


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_parse_error(data: bytes) -> None:
    """Arbitrary bytes after ``1 FETCH `` either parse or raise ParseError."""
    try:
        parse_fetch((b"1 FETCH " + data,))
    except ParseError:
        pass


def test_mutated_real_responses_only_ever_raise_parse_error() -> None:
    """Thousands of byte-level mutations of a real FETCH never escape as other exceptions."""
    base = bytearray(
        b"1 FETCH (UID 345 FLAGS (\\Seen) RFC822.SIZE 4096 MODSEQ (5) ENVELOPE " + ENVELOPE + b")"
    )
    alphabet = b'()[]"\\ {}0123456789NILx\xff'
    rng = random.Random(1234)
    for _ in range(3000):
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(mutated))
            choice = rng.random()
            if choice < 0.4:
                mutated[position] = rng.choice(alphabet)
            elif choice < 0.7:
                del mutated[position]
            else:
                mutated.insert(position, rng.choice(alphabet))
        try:
            parse_fetch((bytes(mutated),))
        except ParseError:
            pass


# -- the ENVELOPE fast path -------------------------------------------------------------------

FAST_PATH_ENVELOPES = [
    ENVELOPE,
    b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
    b'("d" "a \\"quoted\\" \\\\ subject" (("N\\"x" NIL "m" "h")) NIL NIL NIL NIL NIL NIL NIL)',
    b'(NIL "s" NIL NIL NIL ((NIL NIL "team" NIL)("A" NIL "a" "x.test")(NIL NIL NIL NIL)) NIL NIL NIL NIL)',
    b'(NIL "Gr\xc3\xbc\xc3\x9fe caf\xe9" (("=?bogus?q?x?=" NIL NIL "host")) NIL NIL NIL NIL NIL NIL NIL)',
    b'(NIL "=?utf-8?q?a=0D=0Ab?=" (("n" NIL "lo\x01cal" "host")) NIL NIL NIL NIL NIL NIL NIL)',
]


@pytest.mark.parametrize("envelope", FAST_PATH_ENVELOPES)
def test_fast_envelope_path_matches_general_parser(envelope: bytes) -> None:
    """The one-regex ENVELOPE path gives exactly what the general parser gives."""
    from mailmcp.mail.imap import _parser

    line = b"3 FETCH (UID 8 FLAGS (\\Seen) ENVELOPE " + envelope + b" RFC822.SIZE 10)"
    assert _parser._fast_envelope(line, 8) is not None
    general = _parser.fetch_from_items(3, parse_values((line,), 8)[0])
    _parser._DECODED.clear()
    _parser._ADDRESS_LISTS.clear()
    assert parse_fetch((line,)) == general
    assert parse_fetch((line,)) == general  # memoised second time, same result


def test_fast_envelope_ignores_envelope_text_inside_a_string() -> None:
    """'ENVELOPE (' inside a quoted value is not taken for the ENVELOPE item."""
    from mailmcp.mail.imap import _parser

    fake = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    line = b'3 FETCH (UID 8 BODY[HEADER] "x ENVELOPE ' + fake + b' y")'
    assert _parser._fast_envelope(line, 8) is None
    message = parse_fetch((line,))
    assert message is not None and message.envelope is None
    assert message.sections == {"HEADER": b"x ENVELOPE " + fake + b" y"}


# -- the single-pass listing scanner (issue 17) ------------------------------------------------
#
# `_scan_fetch` must either give exactly what the general parser gives
# (`parse_values` + `fetch_from_items`) or step aside (None), on any input.

from mailmcp.mail.imap import _parser  # noqa: E402

LISTING_BODY = (
    b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 120 5 NIL NIL NIL NIL)'
    b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 340 9 NIL NIL NIL NIL) '
    b'"alternative" ("boundary" "b1") NIL NIL NIL)'
)
DOVECOT_LINE = (
    b'9981 FETCH (UID 9981 FLAGS (\\Seen $Label1) RFC822.SIZE 1234 INTERNALDATE "05-Dec-2026 10:00:00 +0000" '
    b"ENVELOPE " + ENVELOPE + b" BODYSTRUCTURE " + LISTING_BODY + b" MODSEQ (101))"
)


def general_fetch(line: bytes) -> object:
    """What the general parser makes of ``<seq> FETCH (...)``: a message or "error"."""
    space = line.index(b" ")
    try:
        values = parse_values((line,), space + 7)
        if len(values) != 1 or not isinstance(values[0], list):
            raise ParseError("no list")
        return _parser.fetch_from_items(int(line[:space]), values[0])
    except ParseError:
        return "error"


def assert_scanner_agrees(line: bytes) -> bool:
    """The scanner's answer, if it gives one, is the general parser's; True when it answered."""
    space = line.index(b" ")
    try:
        scanned = _parser._scan_fetch(line, space + 7, int(line[:space]))
    except ParseError:  # pragma: no cover - the scanner never raises
        raise AssertionError(f"the scanner raised on {line!r}") from None
    if scanned is None:
        return False
    assert scanned == general_fetch(line), line
    return True


def test_scanner_takes_the_listing_forms() -> None:
    """Dovecot's listing line (MODSEQ last) and the other plain orders go through the scanner."""
    assert assert_scanner_agrees(DOVECOT_LINE)
    message = parse_fetch((DOVECOT_LINE,))
    assert message is not None and message.modseq == 101 and message.uid == 9981
    assert message.bodystructure[-5:] == ["alternative", ["boundary", "b1"], None, None, None]
    for line in (
        b"1 FETCH (UID 5)",
        b"1 FETCH (FLAGS () UID 5)",
        b"2 FETCH (MODSEQ (7) UID 5 FLAGS (\\Seen) BODYSTRUCTURE " + LISTING_BODY + b")",
        b'3 FETCH (UID 6 FLAGS (\\Seen) RFC822.SIZE 10 INTERNALDATE "x" ENVELOPE ' + ENVELOPE + b")",
        b"4 FETCH (UID 7 BODYSTRUCTURE (\"text\" \"plain\" NIL NIL NIL \"8bit\" 5 1))",
    ):
        assert assert_scanner_agrees(line), line


def test_a_listing_line_read_before_is_not_read_again() -> None:
    """
    The same line bytes give the same (frozen) message object back; a line
    that differs in anything (a flag, the sequence number) is read afresh.
    """
    _parser._SCANNED.clear()
    first = parse_fetch((DOVECOT_LINE,))
    assert first is not None and _parser._SCANNED[DOVECOT_LINE] is first
    assert parse_fetch((bytes(DOVECOT_LINE),)) is first
    flagged = DOVECOT_LINE.replace(b"(\\Seen $Label1)", b"(\\Seen \\Flagged $Label1)")
    assert flagged != DOVECOT_LINE
    other = parse_fetch((flagged,))
    assert other is not None and other is not first
    assert other.flags == ("\\Seen", "\\Flagged", "$Label1") and first.flags == ("\\Seen", "$Label1")
    moved = parse_fetch((b"9980" + DOVECOT_LINE[4:],))
    assert moved is not None and moved.seq == 9980 and first.seq == 9981


def test_the_memo_of_read_lines_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full, it drops its oldest quarter; a line too long to keep is read but not kept."""
    monkeypatch.setattr(_parser, "SCANNED_MAX", 8)
    _parser._SCANNED.clear()
    lines = [b"%d FETCH (UID %d FLAGS (\\Seen))" % (n, n) for n in range(1, 10)]
    for line in lines:
        assert parse_fetch((line,)) is not None
    assert len(_parser._SCANNED) == 7  # 8 kept, the oldest 2 dropped, the 9th added
    assert lines[0] not in _parser._SCANNED and lines[1] not in _parser._SCANNED
    assert lines[8] in _parser._SCANNED
    long_line = b"1 FETCH (UID 1 FLAGS (" + b" ".join([b"$k%d" % i for i in range(2000)]) + b"))"
    assert len(long_line) > _parser.SCANNED_LINE_MAX
    message = parse_fetch((long_line,))
    assert message is not None and len(message.flags or ()) == 2000
    assert long_line not in _parser._SCANNED


def test_a_head_with_literals_read_before_is_not_read_again() -> None:
    """
    A message's head (a FETCH with a header-fields literal) read again gives
    the same message back; other literal bytes are read afresh; one too
    large to keep is read every time.
    """
    _parser._SCANNED.clear()
    prefix = b"3 FETCH (UID 7 FLAGS (\\Seen) BODY[HEADER.FIELDS (MESSAGE-ID)] "
    literal = b"Message-ID: <a@b>\r\n\r\n"
    head = (prefix, literal, b")")
    first = parse_fetch(head)
    assert first is not None and first.sections == {"HEADER.FIELDS (MESSAGE-ID)": literal}
    assert parse_fetch((prefix, bytes(literal), b")")) is first
    other = parse_fetch((prefix, literal.replace(b"a@b", b"c@d"), b")"))
    assert other is not None and other is not first and b"c@d" in other.sections["HEADER.FIELDS (MESSAGE-ID)"]
    large = (prefix, b"X-Big: " + b"x" * _parser.SCANNED_LINE_MAX + b"\r\n\r\n", b")")
    once, again = parse_fetch(large), parse_fetch(large)
    assert once is not None and again is not None and once is not again and once == again


#: (plain values, odd values) for each part of a generated listing line.
_FLAGS = ([b"\\Seen", b"\\Flagged", b"$Label1", b"\\*", b"caf\xe9"], [b"NIL", b"123", b"007", b"a%b", b"x}y"])
_NUMBERS = ([b"1", b"9981", b"4294967295", b"007"], [b"0", b"4294967296", b"9" * 25, b"NIL", b'"12"', b"-1"])
_DATES = (
    [b'"05-Dec-2026 10:00:00 +0000"', b'"caf\xc3\xa9"', b'"\xe9"', b'""'],
    [b"NIL", b'"a\\"b"', b"12", b"x"],
)
_ENVELOPES = (
    FAST_PATH_ENVELOPES,
    [
        b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
        b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
        b'(NIL NIL (("a" NIL "b")) NIL NIL NIL NIL NIL NIL NIL)',
        b"NIL",
        b'("d" 12 NIL NIL NIL NIL NIL NIL NIL NIL)',
    ],
)
_ATOMS = (
    [b'"text"', b'"plain"', b"NIL", b"12", b'"12"', b'"a\\"b"', b'"caf\xe9"', b"atom", b'"NIL"', b"9" * 25],
    [b"\xff\xfe", b"{3}", b'"', b"[", b"]", b")"],
)
_MODSEQS = ([b"(0)", b"(7)", b"(9223372036854775807)"], [b"(9223372036854775808)", b"()", b"(1 2)", b"7"])


@st.composite
def listing_lines(draw: st.DrawFn) -> bytes:
    """
    ``n FETCH (...)`` lines: half of them plain (what servers send, with
    8-bit text, escapes, NIL, 20+ digit numbers), half with odd values,
    orders, case, separators or ends mixed in.
    """
    plain = draw(st.booleans())

    def pick(choices: tuple[list[bytes], list[bytes]]) -> bytes:
        good, odd = choices
        return draw(st.sampled_from(good if plain else good + odd))

    def structure(depth: int = 0) -> bytes:
        if depth > 3 or draw(st.integers(0, 2)) == 0:
            return pick(_ATOMS)
        children = [structure(depth + 1) for _ in range(draw(st.integers(1, 4)))]
        if not plain and draw(st.integers(0, 9)) == 0:
            return b"[" + b" ".join(children) + b"]"
        return b"(" + b" ".join(children) + b")"

    flags = [pick(_FLAGS) for _ in range(draw(st.integers(0, 3)))]
    items = [
        b"UID " + pick(_NUMBERS),
        b"FLAGS (" + b" ".join(flags) + b")",
        b"RFC822.SIZE " + pick(_NUMBERS),
        b"INTERNALDATE " + pick(_DATES),
        b"ENVELOPE " + pick(_ENVELOPES),
        b"BODYSTRUCTURE (" + structure(1) + b")",
    ]
    if draw(st.booleans()):
        items.append(b"MODSEQ " + pick(_MODSEQS))
    separator, tail = b" ", b")"
    if not plain:
        if draw(st.integers(0, 3)) == 0:
            items = draw(st.permutations(items))
        if draw(st.integers(0, 3)) == 0:
            items = draw(st.lists(st.sampled_from(items), max_size=8))
        if draw(st.integers(0, 5)) == 0:
            items = [item.lower() for item in items]
        separator = draw(st.sampled_from([b" "] * 6 + [b"  ", b"\t"]))
        tail = draw(st.sampled_from([b")"] * 6 + [b" )", b"", b"))", b") x"]))
    elif draw(st.booleans()):
        items = draw(st.permutations(items))
    return b"%d FETCH (" % draw(st.integers(1, 99)) + separator.join(items) + tail


@settings(max_examples=600, deadline=None, derandomize=True)
@given(listing_lines())
def test_scanner_agrees_with_the_general_parser(line: bytes) -> None:
    """Generated listing lines (odd numbers, NIL, 8-bit, escapes, any order): same answer or None."""
    assert_scanner_agrees(line)


def test_scanner_agrees_on_mutated_listing_lines() -> None:
    """Thousands of byte-level mutations of a real listing line: same answer or None."""
    alphabet = b'()[]"\\ {}0123456789NILMODSEQx\xff\t'
    rng = random.Random(17)
    taken = 0
    for _ in range(4000):
        mutated = bytearray(DOVECOT_LINE)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(10, len(mutated))
            choice = rng.random()
            if choice < 0.4:
                mutated[position] = rng.choice(alphabet)
            elif choice < 0.7:
                del mutated[position]
            else:
                mutated.insert(position, rng.choice(alphabet))
        taken += assert_scanner_agrees(bytes(mutated))
        try:
            parse_fetch((bytes(mutated),))
        except ParseError:
            pass
    assert taken > 400  # the scanner itself was exercised, not only the fallback


@st.composite
def structures(draw: st.DrawFn) -> bytes:
    """BODYSTRUCTURE-like lists: plain atoms, strings with spaces, NIL or 8-bit in them, odd spacing."""
    strings = [b'"text"', b'"plain"', b'"utf-8"', b'"NIL"', b'"xNILy"', b'"a b"', b'"(x)"', b'""',
               b'"caf\xe9"', b'"a\\"b"', b'"\x01"', b'"12"', b'"<id@x>"']
    atoms = [b"NIL", b"0", b"12", b"007", b"9" * 18, b"9" * 19, b"9" * 25, b"atom", b"NIL5", b"NILNIL"]

    def node(depth: int) -> bytes:
        if depth > 4 or draw(st.integers(0, 2)) == 0:
            return draw(st.sampled_from(strings + atoms))
        children = [node(depth + 1) for _ in range(draw(st.integers(0, 4)))]
        glue = draw(st.sampled_from([b" "] * 8 + [b"", b"  ", b"\t"]))
        return b"(" + glue.join(children) + b")"

    return b"(" + b" ".join(node(1) for _ in range(draw(st.integers(1, 4)))) + b")"


@settings(max_examples=800, deadline=None, derandomize=True)
@given(structures())
def test_bodystructure_json_path_agrees_with_the_token_loop(raw: bytes) -> None:
    """Whenever the JSON path reads a BODYSTRUCTURE, it reads what the token loop reads."""
    via_json = _parser._structure_as_json(raw)
    if via_json is not None:
        assert via_json == _parser._scan_structure_tokens(raw, 0, len(raw)), raw


def test_bodystructure_json_path_takes_what_servers_send() -> None:
    """Dovecot's plain structures go through the JSON path; odd ones fall back to the token loop."""
    plain = [
        LISTING_BODY,
        b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 120 5 NIL NIL NIL NIL)',
        b'(("text" "plain" NIL NIL NIL "7bit" 1 1 NIL NIL NIL NIL)("application" "pdf" ("name" "r.pdf")'
        b' NIL NIL "base64" 2048 NIL ("attachment" ("filename" "r.pdf")) NIL NIL) "mixed" NIL NIL NIL NIL)',
    ]
    for raw in plain:
        taken = _parser._structure_as_json(raw)
        assert taken is not None and taken == _parser._scan_structure_tokens(raw, 0, len(raw))
    for odd in (b'("a b" 1)', b'("caf\xe9")', b'("a\\"b")', b'( "a")', b'("a"NIL)', b'("x" 007)', b'(' * 99 + b')' * 99):
        assert _parser._structure_as_json(odd) is None, odd


@pytest.mark.parametrize("depth", [97, 98, 99, 100, 101])
def test_scanner_nesting_limit_is_the_general_parsers(depth: int) -> None:
    """A BODYSTRUCTURE nested right at the limit: accepted or refused exactly as before."""
    body = b"(" * depth + b'"x"' + b")" * depth
    line = b"1 FETCH (UID 5 BODYSTRUCTURE " + body + b")"
    assert_scanner_agrees(line)
    if depth >= MAX_DEPTH:
        with pytest.raises(ParseError):
            parse_fetch((line,))
    else:
        assert parse_fetch((line,)) is not None
