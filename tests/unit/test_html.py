"""
HTML to text (`mailmcp.mail._html`, through `mailmcp.mail._mime.html_to_text`): what a
reader sees is kept and readable, what a reader does not see never comes out
(MM-13), and the cost stays linear on hostile markup (MM-14).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmcp.mail._mime import html_to_text

TAIL = "<p>Tail visible</p><div style='display:none'>HIDDEN tail</div><span hidden>HIDDEN too</span>"


# -- rendering ---------------------------------------------------------------


def test_formatting_is_readable() -> None:
    """Bold, emphasis, headings, lists, quotes, links with their URL, breaks and entities."""
    out = html_to_text(
        "<h1>Title</h1><p>Some <b>bold</b>, <strong>strong</strong> and <em>soft</em> words"
        " &amp; an&nbsp;entity.</p>"
        "<ul><li>one</li><li>two<ol><li>inner</li><li>second</li></ol></li></ul>"
        "<blockquote><p>quoted</p></blockquote>"
        "<p>Read <a href='https://example.com/a?b=1&amp;c=2'>the post</a> now<br>next line</p>"
        "<pre>  keep\n   spacing</pre>"
    )
    assert out.startswith("# Title\n\nSome **bold**, **strong** and _soft_ words & an entity.")
    assert "* one\n* two\n  1. inner\n  2. second" in out
    assert "> quoted" in out
    assert "Read [the post](https://example.com/a?b=1&c=2) now\nnext line" in out
    assert "  keep\n   spacing" in out


def test_whitespace_and_blocks_collapse() -> None:
    """Source whitespace collapses; blocks give at most one blank line; empty markup adds nothing."""
    out = html_to_text("<div>\n  a\n  b  </div><div></div><p></p><p><b></b>c</p>\n\n<table><tr>"
                       "<td>x</td><td>y</td></tr></table>")
    assert out == "a b\n\nc\n\nx y"


def test_links_without_a_safe_target_are_plain_text() -> None:
    """javascript:, data: and fragment links keep their text only; an empty link leaves nothing."""
    out = html_to_text("<a href='javascript:evil()'>one</a> <a href='#top'>two</a>"
                       " <a href='https://t.example/x'><img src='x'></a> three")
    assert out == "one two three"


# -- hiding ------------------------------------------------------------------


@pytest.mark.parametrize("markup", [
    "<div hidden>SECRET</div>",
    "<div aria-hidden='true'>SECRET</div>",
    "<span style='DISPLAY : none'>SECRET</span>",
    "<p style='visibility:hidden'>SECRET</p>",
    "<span style='font-size:0px'>SECRET</span>",
    "<span style='opacity:0'>SECRET</span>",
    "<div style='max-height:0'>SECRET</div>",
    "<script>SECRET</script>",
    "<style>SECRET</style>",
    "<template>SECRET</template>",
    "<title>SECRET</title>",
    "<noscript>SECRET</noscript>",
    "<!-- SECRET -->",
    "<p title='SECRET'>x</p>",
    "<img src='https://t.example/SECRET.gif' width='1' height='1' alt='SECRET'>",
    "<div style='color:red' style='display:none'>SECRET</div>",
    # a self-closing slash means nothing on an HTML element: the div stays open
    "<div hidden/>SECRET</div>",
    # "</div>" is ignored by browsers when a table cell sits between
    "<div hidden><table><tr><td></div>SECRET</td></tr></table></div>",
    # browsers reopen a formatting element closed implicitly, with its attributes
    "<p><b style='display:none'>x</p>SECRET</b>",
    # inside <!--<script> a </script> does not end the script
    "<script><!--<script></script>SECRET</script>",
    # CDATA inside SVG is text of the SVG, which is not shown
    "<svg><![CDATA[ x></svg>SECRET]]></svg>",
    # a quoted attribute value may hold ">"
    "<div title='>' hidden>SECRET</div>",
    "<div hidden title=\"a>b\"><b>SECRET</b></div>",
])
def test_hidden_content_never_comes_out(markup: str) -> None:
    """Every way of hiding text in an HTML mail; the visible text after it is kept (MM-13)."""
    out = html_to_text("<p>Before</p>" + markup + TAIL)
    assert "SECRET" not in out and "HIDDEN" not in out
    assert "Before" in out and "Tail visible" in out


def test_head_without_end_tag_ends_at_the_body() -> None:
    """A head that is never closed ends where browsers end it, at the first body content."""
    assert html_to_text("<html><head><title>T</title><meta charset=utf-8><body><p>Body</p>") == "Body"
    assert html_to_text("<head><style>x</style>Text after") == "Text after"


def test_end_of_input_inside_a_tag_drops_the_tag() -> None:
    """An unclosed tag or quote at the end swallows the rest, as in browsers; nothing crashes."""
    assert html_to_text("<p>ok</p><div title='never closed>SECRET") == "ok"
    assert html_to_text("<p>ok</p><div") == "ok"
    assert html_to_text("a < b and c <3") == "a < b and c <3"


# -- hostile input: linear, and the text after the attack is kept --------------

MiB = 1 << 20


def _attack(name: str) -> str:
    n = {
        "nested divs": 210_000,
        "unclosed p": 250_000,
        "unclosed li": 200_000,
        "unclosed td": 210_000,
        "misnested b i": 200_000,
        "tables": 100_000,
        "attributes": 100_000,
        "entities": 300_000,
        "comments": 150_000,
        "cdata": 150_000,
        "nul": 1_000_000,
        "surrogates": 1_000_000,
        "nested links": 150_000,
        "stray end tags": 300_000,
        "hidden nesting": 200_000,
        "lone brackets": 1_000_000,
    }[name]
    return {
        "nested divs": "<div>" * n + "x" + "</div>" * 10,
        "unclosed p": "<p>x" * n,
        "unclosed li": "<ul>" + "<li>x" * n + "</ul>",
        "unclosed td": "<table><tr>" + "<td>x" * n + "</table>",
        "misnested b i": "<b><i>" * n + "x" + "</b>" * 10,
        "tables": "<table>" * n + "x" + "</table>" * n,
        "attributes": "<p " + " ".join(f"a{i}='v'" for i in range(n)) + ">x</p>",
        "entities": "&amp;&#x41;&nbsp" * (n // 3) + "&unknown;" * (n // 10),
        "comments": "<!-- c -->" * n + "<!---->",
        "cdata": "<![CDATA[ x ]]>" * n,
        "nul": "\0" * n + "<p\0>x\0</p>",
        "surrogates": "\ud800\udfff\ufffd" * (n // 3),
        "nested links": "<a href='https://e.example/'>" * n + "x",
        "stray end tags": "<div>" * 1000 + "</span>" * n,
        "hidden nesting": "<div hidden>" * 100 + "<div>" * n + "</div>" * (n + 100),
        "lone brackets": "<" * (n // 2) + "< a" * (n // 6),
    }[name]


@pytest.mark.parametrize("name", [
    "nested divs", "unclosed p", "unclosed li", "unclosed td", "misnested b i", "tables",
    "attributes", "entities", "comments", "cdata", "nul", "surrogates", "nested links",
    "stray end tags", "hidden nesting", "lone brackets",
])
def test_hostile_markup_is_linear_and_keeps_what_follows(name: str) -> None:
    """~1-1.5 MiB of hostile markup converts in well under 5 s; visible text after it stays, hidden stays hidden."""
    attack = _attack(name)
    assert len(attack) >= 0.9 * MiB
    document = "<p>Before</p>" + attack + "</p></td></tr></table></b></i></a>" + TAIL
    started = time.perf_counter()
    out = html_to_text(document)
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"{name}: {elapsed:.2f} s"
    assert "Before" in out and "HIDDEN" not in out
    assert "Tail visible" in out


def test_cost_grows_linearly() -> None:
    """Four times the input costs about four times as much (not sixteen), for nesting and attributes."""
    for unit in ("<div><b><i>", "<p a=1 b='2' c=\"3\">x", "<!-- -->&amp;<br>"):
        timings = []
        for n in (10_000, 40_000):
            document = unit * n + TAIL
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                html_to_text(document)
                best = min(best, time.perf_counter() - started)
            timings.append(best)
        assert timings[1] < 12 * max(timings[0], 0.002), (unit, timings)


# -- property: hidden content never comes out ------------------------------------

_HIDERS = [
    "hidden", "aria-hidden='true'", "style='display:none'", "style='visibility: hidden'",
    "style='font-size:0'", "style='opacity:0'",
]
_CONTAINERS = ["div", "span", "p", "b", "i", "a", "section", "li", "em", "strong", "font", "td"]


def _wrap(tag: str, attributes: str, inner: str) -> str:
    """An element; a cell comes inside its table (browsers ignore a lone <td>)."""
    element = f"<{tag}{attributes}>{inner}</{tag}>"
    return f"<table><tr>{element}</tr></table>" if tag == "td" else element


@st.composite
def _documents(draw: st.DrawFn, depth: int = 0) -> tuple[str, int]:
    """A document as (markup, count of hidden secrets), hidden subtrees holding SECRET markers."""
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "element", "hidden", "raw", "noise"]
                                    if depth < 4 else ["text", "raw", "noise"]))
        if kind == "text":
            parts.append(draw(st.sampled_from(["visible", "a &amp; b", "x < y", " ", "\n", "&lt;p&gt;"])))
        elif kind == "element":
            tag = draw(st.sampled_from(_CONTAINERS))
            inner, _ = draw(_documents(depth + 1))
            inner = inner.replace("SECRET", "")  # only hidden subtrees may hold secrets
            parts.append(_wrap(tag, "", inner))
        elif kind == "hidden":
            tag = draw(st.sampled_from(_CONTAINERS))
            hider = draw(st.sampled_from(_HIDERS))
            inner, _ = draw(_documents(depth + 1))
            parts.append(_wrap(tag, f" title='>' {hider}", f"SECRET{inner}SECRET"))
        elif kind == "raw":
            tag = draw(st.sampled_from(["script", "style", "title", "textarea", "template"]))
            parts.append(f"<{tag}><p>SECRET</p><!--SECRET--></{tag}>")
        else:
            parts.append(draw(st.sampled_from(
                ["<!-- SECRET -->", "<br>", "<hr/>", "</q>", "<img src=x>", "<!DOCTYPE html>",
                 "<![CDATA[SECRET]]>", "<?php SECRET ?>", "</>", "&nbsp;", "<wbr>"])))
    return "".join(parts), 0


@settings(max_examples=400)
@given(_documents())
def test_generated_documents_never_show_hidden_text(document: tuple[str, int]) -> None:
    """Any nesting of visible and hidden elements, raw text and noise: no SECRET comes out; the tail does."""
    markup, _ = document
    out = html_to_text(markup + "<p>Tail visible</p>")
    assert "SECRET" not in out
    assert "Tail visible" in out
