"""
HTML to readable text in one linear pass, with hidden content dropped.

An HTML mail body is text for a language model: what a human sees in a mail
client must reach it (paragraphs, headings, lists, emphasis, links with their
URL), and what a human does not see (``<head>``, scripts, styles, elements
hidden with ``hidden``, ``aria-hidden``, ``display:none``,
``visibility:hidden``, ``font-size:0``, ``opacity:0``, tracking pixels) must
never reach it: that is where prompt injections hide (docs/threat-model.rst
MM-13).

Why by hand: the converter used to be two ``html.parser`` passes (hiding,
then html2text), ~50 ms for a 60 KB newsletter.  A bare ``html.parser`` pass
alone costs ~8 ms.  lxml parses it in ~0.4 ms but loses all text after 2,048
nested elements (even with ``huge_tree``) and is quadratic in the attributes
of one tag (20,000 attributes: 1.2 s; 100,000: 78 s); lexbor (selectolax,
resiliparse) is quadratic in nesting depth (30,000 nested ``div``: 4 s);
inscriptis takes ~40 ms and html-text drops the links.  None of them decides
visibility.  So this module tokenizes with a few possessive regular
expressions that follow the HTML5 tokenizer (tags, attributes with quoted
values that may hold ``>``, comments, raw text of ``<script>`` with its
escape states, CDATA in SVG/MathML) and renders while it goes: ~6 ms for the
newsletter (~0.1 µs per byte), 0.05-2 µs per byte on 1-4 MiB of hostile
input (deep nesting, misnesting, 100,000 attributes, unclosed tags,
entities), the text after it kept.

Tree building follows the HTML5 rules only as far as hiding needs: an end
tag closes the nearest open element of its name only when that element is in
scope (``</div>`` inside a table cell does not close a ``div`` outside it);
hidden formatting elements closed implicitly keep hiding until their own end
tag (browsers reopen them); most HTML tags end SVG/MathML content; ``<head>``
ends where browsers end it; a ``<select>`` ignores other end tags.  Implied
end tags (``<li>``, ``<p>``, ``<dd>`` closing an open one) are not followed,
so a hidden element usually stays hidden longer than in a browser.
``tests/integration/test_html_browser.py`` compares the output with headless
Chromium's ``innerText`` on generated tag soup; on 3,000 soups 8 still showed
a word Chromium hides, all of them chains of those implied end tags inside
hidden content.
"""

from __future__ import annotations

import re
from html import unescape

__all__ = ["MarkdownReader", "html_to_markdown"]

_WS = "\t\n\f\r "
_SPACES = re.compile(r"[\t\n\f\r ]+")
# The runs of white space that collapsing changes: all but a lone " " (most
# of them in running text), so ordinary words cost no replacement.
_SPACE_RUNS = re.compile(r"[\t\n\f\r][\t\n\f\r ]*+| [\t\n\f\r ]++")
_LEAD = re.compile(r"[\n >]*+")

# Attributes as the HTML5 tokenizer reads them: a name runs to whitespace,
# "/", ">" or "="; a quoted value may hold ">"; an unclosed quote runs to the
# end of the document.  Possessive quantifiers keep every match linear.
_ATTRS = (
    r"(?:[\t\n\f\r /]++|[^\t\n\f\r />][^\t\n\f\r />=]*+"
    r"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"
    r"(?:\"[^\"]*+(?:\"|\Z)|'[^']*+(?:'|\Z)|[^\t\n\f\r >\"'][^\t\n\f\r >]*+|(?=>)|\Z))?)*+"
)
_MARKUP = re.compile(
    r"<(?:(?P<end>/)?(?P<name>[A-Za-z][^\t\n\f\r />]*+)(?P<attrs>" + _ATTRS + r")(?P<gt>>)?"
    r"|(?P<comment>!--(?s:-?>|.*?--!?>|.*))"
    r"|(?P<bogus>[!?/][^>]*+>?))"
)
_ATTR = re.compile(
    r"([^\t\n\f\r />][^\t\n\f\r />=]*+)(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"
    r"(\"[^\"]*+\"?|'[^']*+'?|[^\t\n\f\r >\"'][^\t\n\f\r >]*+)?)?"
)

_VOID = frozenset(
    "area base basefont bgsound br col embed hr img image input keygen link meta param source "
    "track wbr frame".split()
)
# Elements whose content is never shown (or is shown only by a script).
_DROP = frozenset(
    "head script style title template noscript object iframe svg math select textarea button "
    "noembed noframes applet frameset".split()
)
# Raw text: the tokenizer reads everything up to the matching end tag.
_RAW = frozenset("script style xmp iframe noembed noframes title textarea".split())
_RAW_END = {name: re.compile(r"</" + name + r"[\t\n\f\r />]", re.I) for name in _RAW}
_SCRIPT_EVENTS = re.compile(r"<!--|-->|<(/?)script[\t\n\f\r />]", re.I)
_CDATA_END = re.compile(r"\]\]>")
# Scope boundaries (HTML5 "has an element in scope"); "title" and "desc"
# only matter inside SVG, where everything is hidden anyway.
_SCOPE = frozenset(
    "applet caption html table td th marquee object template mi mo mn ms mtext "
    "annotation-xml foreignobject desc title".split()
)
_TABLE_SCOPE = frozenset({"html", "table", "template"})
_TABLE_PARTS = frozenset("table tbody thead tfoot tr td th caption".split())
_TABLE_ONLY = frozenset("caption col colgroup tbody td tfoot th thead tr".split())
_FORMATTING = frozenset("a b big code em font i nobr s small strike strong tt u".split())
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_HEAD_CONTENT = frozenset(
    "base basefont bgsound link meta title style script noscript template".split()
)
_FOREIGN = frozenset({"svg", "math"})
_SPECIAL = _SCOPE | _TABLE_SCOPE | _FOREIGN
# HTML start tags that end SVG/MathML content.
_BREAKOUT = frozenset(
    "b big blockquote body br center code dd div dl dt em embed h1 h2 h3 h4 h5 h6 head hr i img "
    "li listing menu meta nobr ol p pre ruby s small span strong strike sub sup table tt u ul "
    "var".split()
)

_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?:[a-z%]*)?\s*(?:;|$|!)"
    r"|opacity\s*:\s*0(?:\.0*)?\s*(?:;|$|!)|max-height\s*:\s*0(?:px)?\s*(?:;|$|!)",
    re.IGNORECASE,
)
_PIXEL_STYLE = re.compile(r"(?:width|height)\s*:\s*[01](?:px)?\b", re.IGNORECASE)
_UNSAFE_HREF = re.compile(r"(?:javascript|vbscript|data)\s*:", re.IGNORECASE)

# Rendering actions, stored beside each open element.
_BLOCK, _PARA, _BOLD, _EM, _LINK, _LIST, _ITEM, _QUOTE, _PRE, _HEADING = range(1, 11)
_HIDDEN_FORMATTING = 99  # a hidden formatting element: no rendering, but browsers reopen it
_ACTIONS = {
    **{
        n: _BLOCK
        for n in "div section article header footer nav aside main address center "
        "form fieldset figure figcaption details summary dl dt dd tr caption".split()
    },
    **{n: _PARA for n in "p table".split()},
    **{n: _HEADING for n in _HEADINGS},
    "b": _BOLD,
    "strong": _BOLD,
    "i": _EM,
    "em": _EM,
    "a": _LINK,
    "ul": _LIST,
    "ol": _LIST,
    "li": _ITEM,
    "blockquote": _QUOTE,
    "pre": _PRE,
    "listing": _PRE,
}


def _attributes(text: str) -> dict[str, str]:
    """Attributes of one start tag, lower-case names; the first of duplicates wins."""
    found: dict[str, str] = {}
    for name, value in _ATTR.findall(text):
        name = name.lower()
        if value[:1] in ("'", '"'):
            value = value[1:-1] if len(value) > 1 and value[-1] == value[0] else value[1:]
        if "&" in value:
            value = unescape(value)
        if name in found:
            # Browsers use the first; a later "hidden" style must still hide,
            # so style values are kept together for the check.
            if name == "style":
                found[name] += ";" + value
            continue
        found[name] = value
    return found


def _hidden(attrs: dict[str, str]) -> bool:
    if "hidden" in attrs or attrs.get("aria-hidden", "").strip().lower() == "true":
        return True
    style = attrs.get("style")
    if style is None:
        return False
    # Every match holds "none", "dden" or "0", whose letters have no
    # case-insensitive twins outside ASCII (unlike the "i" of "hidden"):
    # most styles are cleared without the five-way search.
    lowered = style.lower()
    if "0" not in lowered and "none" not in lowered and "dden" not in lowered:
        return False
    return _HIDDEN_STYLE.search(style) is not None


def _tracking_pixel(attrs: dict[str, str]) -> bool:
    for dimension in ("width", "height"):
        if attrs.get(dimension, "").strip().rstrip("px") in ("0", "1"):
            return True
    return _PIXEL_STYLE.search(attrs.get("style", "")) is not None


def _self_closing(attrs_text: str) -> bool:
    """Whether a start tag ends with the self-closing "/" (not one inside an unquoted value)."""
    if not attrs_text.endswith("/"):
        return False
    last = _ATTR.findall(attrs_text)
    return not last or not last[-1][1] or last[-1][1][0] in "\"'"


def _script_end(html: str, pos: int) -> int:
    """
    Where a ``<script>``'s content ends: at ``</script`` except inside the
    "double escaped" state (``<!--<script>…</script>…-->``) in which browsers
    keep reading.  Errs toward reading on; -1 when it runs to the end.
    """
    escaped = double = False
    for m in _SCRIPT_EVENTS.finditer(html, pos):
        event = m.group(0)
        if event == "<!--":
            escaped = True
        elif event == "-->":
            escaped = double = False
        elif m.group(1):  # </script
            if double:
                double = False
            else:
                return m.start()
        elif escaped:  # <script inside <!--
            double = True
    return -1


class _Converter:
    """One pass over the markup: a stack of open elements, hiding, rendering."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.stack: list[str] = []
        self.actions: list[int] = []
        self.where: dict[str, list[int]] = {}  # open elements by name -> stack indexes
        self.scope: list[int] = []  # indexes of scope boundaries
        self.table_scope: list[int] = []
        self.hidden_at: int | None = None  # index of the hidden subtree's root
        # Hidden formatting elements closed implicitly, which browsers reopen
        # (with their attributes) for what follows, until their own end tag.
        self.ghosts: dict[str, int] = {}
        self.foreign = 0
        self.all_hidden = False
        # rendering
        self.breaks = 0
        self.line_start = True
        self.space = False
        self.bold = self.em = self.quote = self.pre = 0
        self.lists: list[list[int]] = []  # [ordered, counter]
        self.link: tuple[int, str] | None = None
        self.link_depth = 0
        # Characters of text and link targets written so far (markers and
        # breaks not counted): what `feed` compares with its C{stop}.
        self.size = 0

    # -- tokenizing ---------------------------------------------------------

    def feed(self, html: str, pos: int = 0, stop: int | None = None) -> int:
        """
        Tokenize C{html} from C{pos}.  With C{stop}: pause at the first tag
        after the text written reaches C{stop} characters, and return where
        (call again from there to go on); otherwise (or at the end) return
        ``len(html)``.
        """
        n = len(html)
        find, match = html.find, _MARKUP.match
        while pos < n:
            lt = find("<", pos)
            if lt < 0:
                self.text(html[pos:])
                return n
            if lt > pos:
                self.text(html[pos:lt])
                if stop is not None and self.size >= stop:
                    return lt
            m = match(html, lt)
            if m is None:  # a "<" that opens nothing is text
                self.text("<")
                pos = lt + 1
                continue
            pos = m.end()
            end_mark, name, attrs_text, gt = m.group("end", "name", "attrs", "gt")
            if name is None:  # comment, doctype, processing instruction, bogus
                if m.group("bogus") and self.foreign and html.startswith("<![CDATA[", lt):
                    cdata = _CDATA_END.search(html, lt + 9)
                    pos = n if cdata is None else cdata.end()
                continue
            if gt is None:
                return n  # end of input inside a tag: browsers drop it
            name = name.lower().replace("\0", "\ufffd")
            if end_mark:
                self.end_tag(name)
                continue
            self.start_tag(name, attrs_text)
            if name in _RAW:
                if name == "script":
                    end = _script_end(html, pos)
                else:
                    found = _RAW_END[name].search(html, pos)
                    end = -1 if found is None else found.start()
                content = html[pos:] if end < 0 else html[pos:end]
                if name == "xmp" and not self.hiding:
                    self.text(content, raw=True)
                if end < 0:
                    return n
                pos = end
            elif name == "plaintext":
                self.text(html[pos:], raw=True)
                return n
        return n

    # -- tree ---------------------------------------------------------------

    @property
    def hiding(self) -> bool:
        return self.hidden_at is not None or bool(self.ghosts)

    def start_tag(self, name: str, attrs_text: str) -> None:
        if name == "image":
            name = "img"
        hidden_at = self.hidden_at
        if hidden_at is not None and hidden_at == len(self.stack) - 1:
            if self.stack[hidden_at] == "head" and name not in _HEAD_CONTENT:
                self.pop_to(hidden_at)  # browsers end <head> at the first body tag
        if name in ("body", "html") and attrs_text.strip(_WS + "/"):
            if _hidden(_attributes(attrs_text)):
                # Browsers add a later <body>'s attributes to the one body.
                self.all_hidden = True
        if name in _TABLE_ONLY and not self.where.get("table"):
            return  # browsers ignore a cell or row outside a table
        if self.where.get("svg") or self.where.get("math"):
            self.break_out(name)
        if self.hidden_at is not None or self.ghosts:
            if name not in _VOID:
                self.push(
                    name, _HIDDEN_FORMATTING if self.hidden_formatting(name, attrs_text) else 0
                )
            return
        hidden = name in _DROP
        attrs: dict[str, str] | None = None
        if not hidden and attrs_text.strip(_WS + "/"):
            attrs = _attributes(attrs_text)
            hidden = _hidden(attrs) or (name == "img" and _tracking_pixel(attrs))
        if name in _VOID:
            if not hidden:
                self.void(name)
            return
        if name in _FOREIGN and _self_closing(attrs_text):
            return
        if hidden:
            self.hidden_at = len(self.stack)
            self.push(name, _HIDDEN_FORMATTING if name in _FORMATTING else 0)
            return
        action = _ACTIONS.get(name, 0)
        if name in ("td", "th"):
            self.space = True
        self.push(name, action)
        if action:
            self.begin(action, name, attrs)

    def hidden_formatting(self, name: str, attrs_text: str) -> bool:
        """Whether a formatting element opened inside hidden content hides by itself."""
        if name not in _FORMATTING or not attrs_text.strip(_WS + "/"):
            return False
        return _hidden(_attributes(attrs_text))

    def break_out(self, name: str) -> None:
        """
        Most HTML start tags inside SVG or MathML close the foreign elements
        (unless inside an integration point such as ``foreignObject``).
        """
        if name not in _BREAKOUT:
            return
        root = max(self.where.get("svg", [-1])[-1:] + self.where.get("math", [-1])[-1:] or [-1])
        if root < 0 or (self.scope and self.scope[-1] > root):
            return
        self.close_implicitly(root)

    def close_implicitly(self, index: int) -> None:
        """Pop down to C{index}, remembering hidden formatting elements browsers reopen."""
        actions, stack = self.actions, self.stack
        for position in range(index + 1, len(stack)):
            if actions[position] == _HIDDEN_FORMATTING:
                name = stack[position]
                self.ghosts[name] = self.ghosts.get(name, 0) + 1
        self.pop_to(index)

    def push(self, name: str, action: int) -> None:
        index = len(self.stack)
        self.stack.append(name)
        self.actions.append(action)
        positions = self.where.get(name)
        if positions is None:
            self.where[name] = [index]
        else:
            positions.append(index)
        if name in _SPECIAL:
            if name in _SCOPE:
                self.scope.append(index)
            if name in _TABLE_SCOPE:
                self.table_scope.append(index)
            if name in _FOREIGN:
                self.foreign += 1

    def pop_to(self, index: int) -> None:
        """Close every open element from the top down to C{index}, inclusive."""
        stack, actions = self.stack, self.actions
        while len(stack) > index:
            top = len(stack) - 1
            name = stack.pop()
            action = actions.pop()
            self.where[name].pop()
            if name in _SPECIAL:
                if name in _SCOPE:
                    self.scope.pop()
                if name in _TABLE_SCOPE:
                    self.table_scope.pop()
                if name in _FOREIGN:
                    self.foreign -= 1
            if self.hidden_at == top:
                self.hidden_at = None
            if action:
                self.finish(action)

    def end_tag(self, name: str) -> None:
        ghosts = self.ghosts.get(name)
        if ghosts:
            if ghosts == 1:
                del self.ghosts[name]
            else:
                self.ghosts[name] = ghosts - 1
            return
        if name in ("body", "html"):
            return
        if self.where.get("select") and name not in ("select", "option", "optgroup"):
            return  # inside a <select> browsers ignore every other end tag
        if name == "br":
            if not self.hiding:
                self.void("br")
            return
        stack = self.stack
        if stack and stack[-1] == name:
            # The usual case: the current element; nothing can be out of scope.
            self.pop_to(len(stack) - 1)
            return
        if name in _HEADINGS:
            open_at = max((self.where[h][-1] for h in _HEADINGS if self.where.get(h)), default=-1)
        else:
            positions = self.where.get(name)
            open_at = positions[-1] if positions else -1
        if open_at < 0:
            if name == "p" and not self.hiding:
                self.paragraph()
            return
        boundaries = self.table_scope if name in _TABLE_PARTS else self.scope
        if boundaries and boundaries[-1] > open_at:
            return  # not in scope: browsers ignore it
        buttons = self.where.get("button")
        if name == "p" and buttons and buttons[-1] > open_at:
            return
        if name == "li" and any(
            self.where.get(lst) and self.where[lst][-1] > open_at for lst in ("ul", "ol")
        ):
            return
        self.close_implicitly(open_at)

    # -- rendering ----------------------------------------------------------

    def text(self, data: str, raw: bool = False) -> None:
        hidden_at = self.hidden_at
        if hidden_at is not None and hidden_at == len(self.stack) - 1:
            if self.stack[hidden_at] == "head" and data.strip(_WS):
                self.pop_to(hidden_at)
        if self.hiding:
            return
        if "&" in data and not raw:
            data = unescape(data)
        if raw or self.pre:
            if data:
                self.flush()
                self.out.append(data)
                self.size += len(data)
                self.line_start = data.endswith("\n")
            return
        data = _SPACE_RUNS.sub(" ", data)
        if data[:1] == " ":
            self.space = True
            data = data[1:]
        if not data:
            return
        self.flush()
        if self.space and not self.line_start:
            self.out.append(" ")
        if data[-1] == " ":
            data = data[:-1]
            self.space = True
        else:
            self.space = False
        self.out.append(data.replace("\xa0", " "))
        self.size += len(data)
        self.line_start = False

    def flush(self) -> None:
        """Write the line breaks asked for by the blocks just opened or closed."""
        if self.breaks:
            if self.out:
                self.out.append("\n" * self.breaks + "> " * self.quote)
            self.breaks = 0
            self.line_start = True
            self.space = False

    def block(self, lines: int) -> None:
        if lines > self.breaks:
            self.breaks = lines
        self.space = False

    def paragraph(self) -> None:
        self.block(2)

    def marker(self, text: str) -> None:
        """Inline markup that opens something (``**``, a list bullet)."""
        self.flush()
        if self.space and not self.line_start:
            self.out.append(" ")
        self.space = False
        self.out.append(text)
        self.line_start = False

    def closing(self, text: str, opening: str) -> None:
        if self.out and self.out[-1] == opening:
            self.out.pop()  # nothing inside: no empty "****"
        else:
            self.out.append(text)

    def void(self, name: str) -> None:
        if name == "br":
            self.out.append("\n" + "> " * self.quote)
            self.line_start, self.space = True, False
        elif name == "hr":
            self.paragraph()
            self.marker("* * *")
            self.paragraph()
        elif name in ("img", "input"):
            self.space = True

    def begin(self, action: int, name: str, attrs: dict[str, str] | None) -> None:
        if action == _BLOCK:
            self.block(1)
        elif action == _PARA:
            self.paragraph()
        elif action == _HEADING:
            self.paragraph()
            self.marker("#" * int(name[1]) + " ")
        elif action == _BOLD:
            self.bold += 1
            if self.bold == 1:
                self.marker("**")
        elif action == _EM:
            self.em += 1
            if self.em == 1:
                self.marker("_")
        elif action == _LINK:
            self.link_depth += 1
            href = ((attrs or {}).get("href") or "").strip(_WS)
            if self.link_depth == 1 and href and not href.startswith("#"):
                if _UNSAFE_HREF.match(href) is None:
                    self.link = (len(self.out), _SPACES.sub("%20", href))
        elif action == _LIST:
            self.block(1 if self.lists else 2)
            self.lists.append([name == "ol", 0])
        elif action == _ITEM:
            self.block(1)
            if self.lists:
                current = self.lists[-1]
                current[1] += 1
                bullet = f"{current[1]}. " if current[0] else "* "
            else:
                bullet = "* "
            self.marker("  " * max(len(self.lists) - 1, 0) + bullet)
        elif action == _QUOTE:
            self.paragraph()
            self.quote += 1
        elif action == _PRE:
            self.paragraph()
            self.pre += 1

    def finish(self, action: int) -> None:
        if action in (_BLOCK, _ITEM):
            self.block(1)
        elif action in (_PARA, _HEADING):
            self.paragraph()
        elif action == _BOLD:
            self.bold -= 1
            if self.bold == 0:
                self.closing("**", "**")
        elif action == _EM:
            self.em -= 1
            if self.em == 0:
                self.closing("_", "_")
        elif action == _LINK:
            self.link_depth -= 1
            if self.link_depth == 0 and self.link is not None:
                start, href = self.link
                self.link = None
                inside = "".join(self.out[start:])
                lead = _LEAD.match(inside).group()  # type: ignore[union-attr]
                label = inside[len(lead) :].rstrip()
                if label:
                    del self.out[start:]
                    self.out.append(f"{lead}[{label}]({href})")
                    self.size += len(href) + 4
        elif action == _LIST:
            self.lists.pop()
            self.block(2 if not self.lists else 1)
        elif action == _QUOTE:
            self.quote -= 1
            self.paragraph()
        elif action == _PRE:
            self.pre -= 1
            self.paragraph()

    def result(self) -> str:
        if self.all_hidden:
            return ""
        return _lines("".join(self.out))

    def settled(self) -> str:
        """
        The part of what `result` will give that nothing later in the
        document can change, as `result` renders it: the complete lines
        before an open link (rewritten as ``[text](url)`` when it closes).
        The only other rewrite, taking back an empty ``**``/``_`` pair,
        removes markers from the end, after the last line break.  Only a
        later hidden ``<body>``/``<html>`` can undo it (`MarkdownReader`).
        """
        out = self.out
        end = len(out) if self.link is None else self.link[0]
        written = "".join(out[:end])
        return _lines(written[: max(written.rfind("\n"), 0)])


def _lines(written: str) -> str:
    """Lines right-trimmed, runs of blank (or quote-only) lines made one, no blank ends."""
    lines: list[str] = []
    blank = False
    for line in written.split("\n"):
        line = line.rstrip()
        if not line.strip(" >"):
            if lines and not blank:
                lines.append("")
            blank = True
            continue
        blank = False
        lines.append(line)
    return "\n".join(lines).strip("\n")


# A <body> or <html> start tag with attributes, which may hide the whole
# document wherever it comes (a superset: also inside comments and scripts).
_DOCUMENT_TAG = re.compile(r"<(?:body|html)[\t\n\f\r /]", re.IGNORECASE)


class MarkdownReader:
    """
    `html_to_markdown` read only as far as a caller needs: a tool showing
    the first 20,000 characters of a long newsletter need not render the
    rest.  `more` converts on until at least C{chars} more characters of
    text are written; `settled` is then a prefix of the complete rendering.
    """

    def __init__(self, html: str) -> None:
        self._html = html
        self._pos = 0
        self._converter = _Converter()
        self._final = False

    @property
    def done(self) -> bool:
        """Whether all of the document is read (then `settled` is the whole result)."""
        return self._pos >= len(self._html)

    def more(self, chars: int) -> None:
        """Read on until C{chars} more characters of text are written, or to the end."""
        converter = self._converter
        if not self._final and _DOCUMENT_TAG.search(self._html, self._pos) is not None:
            self._final = True  # what follows may hide everything: read it all
        stop = None if self._final else converter.size + chars
        self._pos = converter.feed(self._html, self._pos, stop)

    def settled(self) -> str:
        """
        A prefix of ``html_to_markdown(html)``: all of it once `done`, else
        the lines that nothing later can change.
        """
        if self.done:
            return self._converter.result()
        if self._converter.all_hidden:
            return ""
        return self._converter.settled()


def html_to_markdown(html: str) -> str:
    """
    The visible text of C{html}, lightly marked up (``**bold**``, ``_em_``,
    ``# heading``, ``* item``, ``[text](url)``, ``> quote``).
    """
    converter = _Converter()
    converter.feed(html)
    return converter.result()
