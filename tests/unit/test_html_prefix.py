"""
Reading only as much HTML as a caller shows (`mailmcp.mail._mime.html_text_prefix`,
`mailmcp.mail._html.MarkdownReader`): the text is always the start of the
whole conversion and longer than asked for (or the whole), so
``get_mail_message`` answers exactly as if it had converted everything.
"""

from __future__ import annotations

import random
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from benchmarks._seed import newsletter
from mailmcp._toolkit import ToolContext
from mailmcp.mail import _mime
from mailmcp.mail._html import MarkdownReader, html_to_markdown
from mailmcp.mail._mime import html_text_prefix, html_to_text
from mailmcp.mail._untrusted import unmark_body
from mailmcp.testing import FakeIMAPPool, FakeIMAPServer, make_account, tool_services
from mailmcp.tools._reading import GetMessageInput, get_mail_message
from tests.helpers import run

# Pieces that touch every way the converter rewrites what it has written:
# empty bold/emphasis pairs taken back, links rewritten when they close,
# blank runs collapsed, quote-only lines, <pre> with CR, hidden and
# invisible characters removed after rendering, unclosed elements.
_PIECES = [
    "<p>", "</p>", "<div>", "</div>", "<br>", "<hr>", "<b>", "</b>", "<i>", "</i>", "<b></b>",
    "<em><strong></strong></em>", "_", "**", "<a href='https://e.example/{n}'>", "</a>",
    "<a href='#x'>", "<ul><li>", "</li><li>", "</ul>", "<ol><li>", "</ol>", "<blockquote>",
    "</blockquote>", "<pre>", "</pre>", "<h2>", "</h2>", "<table><tr><td>", "</td><td>",
    "</td></tr></table>", "\r\n", "\n\n\n", "   ", "&nbsp;", "&amp;", "\u200b", "\x07",
    "\u200b\n\u200b", "> ", "<span hidden>SECRET</span>", "<div style='display:none'>SECRET",
    "<!-- c -->", "<script>x</script>", "<img src=x width=1>", "<p>", "<q>",
]


def _document(rng: random.Random, pieces: int) -> str:
    out: list[str] = []
    for n in range(pieces):
        if rng.random() < 0.45:
            out.append(" ".join(rng.choice(["word", "text", "x", "longer-word", "ünïcode"])
                                for _ in range(rng.randint(1, 12))))
        else:
            out.append(rng.choice(_PIECES).format(n=n))
    return "".join(out)


def _check(html: str, chars: int) -> str:
    whole = html_to_text(html)
    part = html_text_prefix(html, chars)
    assert whole.startswith(part), (chars, part[-80:], whole[len(part) - 80 : len(part) + 80])
    assert part == whole or len(part) > chars
    return part


@pytest.mark.parametrize("seed", range(40))
def test_generated_documents_prefix_is_the_start_of_the_whole(seed: int) -> None:
    """400 to 4,000 random pieces, cut at many lengths: always the start of the whole, and long enough."""
    rng = random.Random(seed)
    html = _document(rng, rng.choice([400, 1500, 4000]))
    whole = html_to_text(html)
    for chars in sorted({0, 1, 100, 999, len(whole) // 3, len(whole) // 2, len(whole) - 1,
                         len(whole), len(whole) + 1, rng.randint(0, len(whole) + 10)}):
        _check(html, max(chars, 0))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES + ["word", "two words", "x"]), max_size=300),
       st.integers(0, 400))
def test_any_piece_sequence_prefix_is_the_start_of_the_whole(pieces: list[str], chars: int) -> None:
    """Hypothesis over sequences of the tricky pieces, small lengths (so the cut falls anywhere)."""
    _check("".join(p.format(n=i) for i, p in enumerate(pieces)), chars)


def test_a_later_hidden_body_hides_everything() -> None:
    """<body hidden> after the cut still hides the whole document: nothing is shown early."""
    visible = "".join(f"<p>paragraph {i} with some words</p>" for i in range(2000))
    for late in ("<body hidden>", "<BODY\tstyle='display:none'>", "<html aria-hidden=true>",
                 "<body/style=visibility:hidden>"):
        assert html_to_text(visible + late + "<p>x</p>") == ""
        assert html_text_prefix(visible + late + "<p>x</p>", 100) == ""


def test_a_later_plain_body_tag_is_read_but_changes_nothing() -> None:
    """A later <body> with harmless attributes makes the reader read on; the text is the same."""
    visible = "".join(f"<p>paragraph {i}</p>" for i in range(500))
    html = visible + "<body class=x><p>end</p>"
    assert html_text_prefix(html, 100) == html_to_text(html)


def test_open_link_and_empty_bold_at_the_cut_are_left_for_later() -> None:
    """A link still open where the reader stops is not shown unrewritten; nor is an unfinished **."""
    head = "".join(f"<p>line {i}</p>" for i in range(200))
    html = head + "<p><a href='https://e.example/'>label\n" + "spans lines\n" * 400 + "</a> <b></b>after</p>"
    whole = html_to_text(html)
    assert "[label spans lines" in whole
    for chars in range(1000, len(whole), 373):
        part = _check(html, chars)
        assert "label" not in part or "[label" in part


def test_the_newsletter_is_read_about_halfway_for_the_default_window() -> None:
    """The bench's 60 KB newsletter renders to ~40,000 characters; 20,000 need about half of it read."""
    html = newsletter(0, "u@example.org").split(b"\r\n\r\n", 1)[1].decode()
    whole = html_to_text(html)
    assert len(whole) > 35_000
    reader = MarkdownReader(html)
    reader.more(20_000 + 512)
    assert not reader.done
    part = _check(html, 20_000)
    assert len(part) < 0.6 * len(whole)
    reader.more(len(html))
    assert reader.done and reader.settled() == html_to_markdown(html)


def test_reader_settles_to_the_whole_at_the_end() -> None:
    """Read in small steps, the reader ends with exactly html_to_markdown's result."""
    html = _document(random.Random(5), 3000)
    whole = html_to_markdown(html)
    reader = MarkdownReader(html)
    steps = 0
    while not reader.done:
        reader.more(50)
        steps += 1
        assert whole.startswith(reader.settled())
    assert steps > 10 and reader.settled() == whole


# -- through get_mail_message: the same answer as converting everything --------------------


def _html_message(*bodies: tuple[str, str]) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "a@example.test"
    message["Subject"] = "news"
    if len(bodies) == 1:
        subtype, text = bodies[0]
        message.set_content(text, subtype=subtype)
    else:
        message.make_mixed()
        for subtype, text in bodies:
            part = EmailMessage(policy=SMTP)
            part.set_content(text, subtype=subtype, disposition="inline")
            message.attach(part)
    return message.as_bytes()


def _comparable(out: Any) -> dict[str, Any]:
    data: dict[str, Any] = out.model_dump()
    data["body"] = unmark_body(out.body)
    data.pop("notice")
    return data


def _read(server: FakeIMAPServer, **arguments: Any) -> dict[str, Any]:
    ctx = ToolContext(account=make_account(),
                      services=tool_services(reactor=MemoryReactorClock(), imap=FakeIMAPPool(server)))
    return _comparable(run(get_mail_message(ctx, GetMessageInput(**arguments))))


@pytest.mark.parametrize("shape", ["html", "html+html", "html+plain", "plain+html", "hidden+html"])
def test_answers_are_those_of_a_whole_conversion(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window of several HTML-bodied messages is the same with the early stop and without."""
    rng = random.Random(shape)
    long_html = newsletter(1, "u@example.org").split(b"\r\n\r\n", 1)[1].decode()
    bodies = {
        "html": [("html", long_html)],
        "html+html": [("html", _document(rng, 3000)), ("html", long_html)],
        "html+plain": [("html", long_html), ("plain", "tail text\n" * 50)],
        "plain+html": [("plain", "head text\n" * 500), ("html", long_html)],
        "hidden+html": [("html", "<div hidden>" + _document(rng, 500) + "</div>"), ("html", long_html)],
    }[shape]
    server = FakeIMAPServer()
    server.mailbox("INBOX")
    uid = server.mailboxes["INBOX"].add(_html_message(*bodies))
    windows = [(0, 20_000), (0, 100), (15_000, 5_000), (39_000, 2_000), (1_000, 200_000),
               (60_000, 20_000), (0, 39_990)]
    fast = [_read(server, uid=uid, body_offset=o, max_body_chars=m) for o, m in windows]
    monkeypatch.setattr(_mime, "html_text_prefix", lambda html, chars: html_to_text(html))
    slow = [_read(server, uid=uid, body_offset=o, max_body_chars=m) for o, m in windows]
    assert fast == slow
    assert any(f["truncated"] for f in fast) and any(f["body"] for f in fast)


def test_paging_an_html_newsletter_gives_the_whole_text() -> None:
    """Reading on with next_offset, window by window, adds up to the whole conversion."""
    html = newsletter(2, "u@example.org").split(b"\r\n\r\n", 1)[1].decode()
    server = FakeIMAPServer()
    server.mailbox("INBOX")
    uid = server.mailboxes["INBOX"].add(_html_message(("html", html)))
    pieces: list[str] = []
    offset: int | None = 0
    while offset is not None:
        out = _read(server, uid=uid, body_offset=offset, max_body_chars=7_000)
        pieces.append(out["body"])
        offset = out["next_offset"]
    assert "".join(pieces) == html_to_text(html)
