"""
The HTML converter against a real browser (MM-13): for tricky and for
generated tag soup, every word the converter lets through is a word headless
Chromium shows (``innerText``, which leaves out ``display:none``,
``visibility:hidden``, ``hidden``, scripts, styles, comments and attributes).
The converter may hide more than the browser (``opacity:0``, ``font-size:0``,
``aria-hidden``, constructs it cannot follow), never less.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from mailmcp.mail._mime import html_to_text
from tests.integration.browser_login import chromium

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORD = re.compile(r"\bw[0-9]+\b")

_TAGS = ["div", "span", "p", "b", "i", "a", "em", "font", "table", "tr", "td", "th", "ul", "li",
         "h2", "blockquote", "pre", "section", "script", "style", "title", "textarea", "template",
         "svg", "math", "select", "option", "head", "body", "noscript", "xmp", "button", "object",
         "caption", "form", "center", "nobr", "strong", "code", "dl", "dd"]
_HIDERS = ["hidden", "style='display:none'", "style=\"visibility: hidden\"", "aria-hidden=true",
           "style='font-size:0'", "style='opacity:0'", "hidden/"]
_TRICKY = [
    "<div hidden><table><tr><td></div>w1</td></tr></table></div>w2",
    "<p><b style='display:none'>w1</p>w2</b>w3",
    "<script><!--<script></script>w1</script>w2",
    "<svg><![CDATA[ x></svg>w1]]></svg>w2",
    "<div title='>' hidden>w1</div>w2",
    "<div hidden/>w1</div>w2",
    "<b hidden><p>w1</b>w2</p>w3",
    "<head><title>w1</title><body>w2",
    "<div hidden><td>w1</div>w2",
    "<span hidden>w1<div>w2</div>w3</span>w4",
    "<a hidden href=x>w1<a href=y>w2</a>w3</a>w4",
    "<li hidden>w1<li>w2</li>w3",
    "<table hidden>w1<tr><td>w2</td></tr></table>w3",
    "<select><option>w1</select>w2",
    "<!-- w1 --!>w2<!--->w3<!-->w4",
    "<div style='display:none' style='color:red'>w1</div><div style='color:red' style='display:none'>w2</div>",
    "<x a=b\"/><div hidden>w1</div>w2",
    "<p hidden>w1<table><tr><td>w2</td></tr></table>w3</p>w4",
]


def _soup(rng: random.Random) -> str:
    """Random, often broken markup whose text is numbered words."""
    parts: list[str] = []
    word = 0
    for _ in range(rng.randint(5, 40)):
        roll = rng.random()
        if roll < 0.35:
            tag = rng.choice(_TAGS)
            attributes = ""
            if rng.random() < 0.4:
                attributes = " " + rng.choice(_HIDERS)
            if rng.random() < 0.2:
                attributes += rng.choice([" title='a>b'", ' class="x"', " href=https://e.example/"])
            parts.append(f"<{tag}{attributes}>")
        elif roll < 0.6:
            parts.append(f"</{rng.choice(_TAGS)}>")
        elif roll < 0.9:
            word += 1
            parts.append(f" w{word} ")
        else:
            word += 1
            parts.append(rng.choice([f"<!-- w{word} -->", f"<![CDATA[ w{word} ]]>", "<!--<script>",
                                     "-->", "<br>", f"&lt;w{word}&gt;", "<hr>"]))
    return "".join(parts)


def _documents() -> Iterator[str]:
    # Spaces around the words, so that the browser's text never glues two together.
    yield from (re.sub(r"\bw([0-9]+)\b", r" w\1 ", markup) for markup in _TRICKY)
    rng = random.Random(17)
    for _ in range(250):
        yield _soup(rng)


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    browser = chromium()
    browser.get("about:blank")
    try:
        yield browser
    finally:
        browser.quit()


def _browser_words(driver: object, markup: str) -> set[str]:
    text = driver.execute_script(  # type: ignore[attr-defined]
        "const doc = document.implementation.createHTMLDocument('');"
        "const frame = document.createElement('iframe');"
        "document.body.replaceChildren(frame);"
        "frame.contentDocument.open(); frame.contentDocument.write(arguments[0]);"
        "frame.contentDocument.close();"
        "const body = frame.contentDocument.body;"
        "return body ? body.innerText : '';",
        markup,
    )
    return set(WORD.findall(text))


def test_the_converter_never_shows_a_word_chromium_hides(driver: object) -> None:
    """Tricky cases and 250 generated soups (fixed seed): converter words are a subset of Chromium's."""
    shown_somewhere = 0
    for markup in _documents():
        ours = set(WORD.findall(html_to_text(markup)))
        theirs = _browser_words(driver, markup)
        assert ours <= theirs, f"{markup!r}: converter shows {sorted(ours - theirs)} that Chromium hides"
        shown_somewhere += bool(ours)
    assert shown_somewhere > 100  # the soups are not all hidden: the check has teeth
