"""
The converter's fast paths (issue 17) give exactly what the plain forms
give: white space collapsed, hidden styles found, unseen characters removed.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailmcp.mail import _html, _mime

_WHITE = st.text(alphabet="\t\n\f\r \xa0ab", max_size=60)
_STYLE_BITS = [
    "display", "DISPLAY", "visibility", "font-size", "opacity", "max-height", "none", "NONE",
    "hidden", "hİdden", "hıdden", "HIDDEN", "0", "0px", "0.0", "1", ":", ";", " ", "!important",
    "color:#333", "padding:12px", "margin:0", "ſ", "K", "diſplay",
]


@settings(max_examples=500)
@given(_WHITE)
def test_space_runs_collapse_as_all_runs_do(text: str) -> None:
    """Replacing only the runs that are not a lone space is the same as replacing every run."""
    assert _html._SPACE_RUNS.sub(" ", text) == _html._SPACES.sub(" ", text)


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(_STYLE_BITS), max_size=12))
def test_hidden_style_prefilter_never_misses(bits: list[str]) -> None:
    """The cheap pre-check of a style attribute agrees with the full search, Unicode case twins included."""
    style = "".join(bits)
    assert _html._hidden({"style": style}) == (_html._HIDDEN_STYLE.search(style) is not None)


def test_hidden_style_twins_still_hide() -> None:
    """Non-ASCII case twins that the regular expression treats as "i" still hide."""
    for style in ("visibility:hİdden", "VISIBILITY: HIDDEN", "visibility:hıdden", "display:NONE"):
        assert _html._hidden({"style": style}), style
    assert not _html._hidden({"style": "padding:12px;color:#333"})


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(max_codepoint=0xE0080), max_size=80))
def test_unseen_characters_go_in_one_pass(text: str) -> None:
    """One combined pass removes exactly what the invisible then the control pass removed."""
    assert _mime._UNSEEN.sub("", text) == _mime._CONTROL.sub("", _mime._INVISIBLE.sub("", text))
