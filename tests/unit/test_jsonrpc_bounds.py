"""
`decode_body`'s bound on the number of values (issue 12): a body of many
tiny values is refused as a parse error before it is built, whatever shape
the values take; large bodies of a few big values (an attachment) and
strings full of brackets and quotes still decode.
"""

from __future__ import annotations

import json
import time

import pytest

from mailmcp.mcp._jsonrpc import MAX_VALUES, PARSE_ERROR, RPCError, decode_body


def envelope(pad: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": {"pad": pad}}}).encode()


@pytest.mark.parametrize("shape", ["objects", "arrays", "strings", "ints", "floats"])
def test_too_many_values_is_a_parse_error(shape: str) -> None:
    item: object = {"objects": {}, "arrays": [], "strings": "", "ints": 123456, "floats": 1.5}[shape]
    body = envelope([item] * (MAX_VALUES + 1))
    started = time.perf_counter()
    with pytest.raises(RPCError) as refused:
        decode_body(body)
    assert refused.value.code == PARSE_ERROR and refused.value.status == 400
    assert f"more than {MAX_VALUES}" in refused.value.message
    if shape not in ("ints", "floats"):  # refused by counting bytes, before decoding
        assert time.perf_counter() - started < 0.5


def test_just_under_the_bound_decodes() -> None:
    value = decode_body(envelope([0] * (MAX_VALUES - 10)))
    assert len(value["params"]["_meta"]["pad"]) == MAX_VALUES - 10


def test_a_few_large_strings_full_of_brackets_and_escaped_quotes_decode() -> None:
    """Brackets inside strings loosen the bound; escaped quotes do not count as strings."""
    text = 'say \\"{[x]}\\" ' * 5000 + '"quoted" ' * 60000
    value = decode_body(envelope([text, "x" * (4 << 20)]))
    assert value["params"]["_meta"]["pad"][0] == text


def test_small_bodies_are_not_counted() -> None:
    """A body shorter than the bound cannot exceed it; nothing extra runs."""
    assert decode_body(b"[" + b",".join([b"1"] * 1000) + b"]") == [1] * 1000
