"""JSON objects whose big members are taken one entry at a time.

A hub manifest or shard index of a million tensors holds a member ("tensors", "weight_map") with a
million entries; json.loads would build all of their objects (~500 bytes each) before the caller
converts any. `loads` parses the document with json's own C scanner, handing each entry of the
members it is told to stream to a callback as soon as that entry is parsed (#13).
"""
from __future__ import annotations

import json
import json.decoder
import re
from typing import Any, Callable

_scan = json.JSONDecoder().scan_once           # type: ignore[attr-defined]   # (value, end) at an index, C
_space = json.decoder.WHITESPACE.match         # type: ignore[attr-defined]


# What a streamed member maps to in loads' result: not None, which a JSON null would also give.
STREAMED = type("Streamed", (), {"__repr__": lambda self: "STREAMED", "__slots__": ()})()


def loads(text: str, stream: dict[str, Callable[[str, Any], None]]) -> Any:
    """json.loads(text), except that a top-level member named in `stream` whose value is an
    object is not kept: each of its entries goes to stream[name](key, value), in order, and the
    member's name maps to STREAMED in the result. ValueError for text that is not JSON."""
    try:
        return _document(text, stream)
    except StopIteration:       # the scanner met the end of the text where a value should start
        raise ValueError("the JSON text ends inside a value") from None


def members(text: str, take: Callable[[str, Any], None]) -> dict | None:
    """Every member of the JSON object `text` to take(key, value), in order, none kept: {} for
    an object, None for JSON that is not an object, ValueError for text that is not JSON."""
    try:
        i = _space(text, 0).end()
        if text[i:i + 1] != "{":
            json.loads(text)               # ValueError for text that is not JSON at all
            return None
        i = _entries(text, i, take)
    except StopIteration:
        raise ValueError("the JSON text ends inside a value") from None
    if _space(text, i).end() != len(text):
        raise ValueError(f"extra data after the JSON object at character {i}")
    return {}


def _document(text: str, stream: dict) -> Any:
    i = _space(text, 0).end()
    if text[i:i + 1] != "{":
        return json.loads(text)
    out: dict = {}
    i = _space(text, i + 1).end()
    if text[i:i + 1] != "}":
        while True:
            key, i = _key(text, i)
            if key in stream and text[i:i + 1] == "{":
                i = _entries(text, i, stream[key])
                out[key] = STREAMED
            else:
                out[key], i = _scan(text, i)
            i = _space(text, i).end()
            c = text[i:i + 1]
            if c == "}":
                break
            if c != ",":
                raise ValueError(f"expected ',' or '}}' at character {i}")
            i = _space(text, i + 1).end()
    if _space(text, i + 1).end() != len(text):
        raise ValueError(f"extra data after the JSON object at character {i + 1}")
    return out


def _key(text: str, i: int) -> tuple[str, int]:
    """A member's key at text[i] and the index of its value (after the colon and spaces)."""
    if text[i:i + 1] != '"':
        raise ValueError(f"expected a key at character {i}")
    key, i = _scan(text, i)
    i = _space(text, i).end()
    if text[i:i + 1] != ":":
        raise ValueError(f"expected ':' at character {i}")
    return key, _space(text, i + 1).end()


_COLON = re.compile(r"[ \t\n\r]*:[ \t\n\r]*").match
_NEXT = re.compile(r"[ \t\n\r]*([,}])[ \t\n\r]*").match


def _entries(text: str, i: int, take: Callable[[str, Any], None]) -> int:
    """Each entry of the object at text[i] == "{" to `take`; the index after the object.
    The loop of a million entries: one scanner call per key and value, two regex matches for
    the punctuation between them."""
    i = _space(text, i + 1).end()
    if text[i:i + 1] == "}":
        return i + 1
    n = len(text)
    while True:
        if i >= n or text[i] != '"':
            raise ValueError(f"expected a key at character {i}")
        key, i = _scan(text, i)
        m = _COLON(text, i)
        if m is None:
            raise ValueError(f"expected ':' at character {i}")
        value, i = _scan(text, m.end())
        take(key, value)
        m = _NEXT(text, i)
        if m is None:
            raise ValueError(f"expected ',' or '}}' at character {i}")
        if m[1] == "}":
            return m.start(1) + 1
        i = m.end()
