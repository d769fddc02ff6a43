"""The declared request shapes (``llm_proxy.core.shapes``): one generic check of the JSON types
a translator reads, and every translating format declaring its own. End to end, with wrong types
on every surface and format, in ``test_fuzz_shapes.py``."""

from __future__ import annotations

from typing import Any

import pytest

from llm_proxy.core.errors import ProxyError
from llm_proxy.core.shapes import ARRAY, INTEGER, NUMBER, OBJECT, STRING, Shape
from llm_proxy.inbound import anthropic_messages, responses
from llm_proxy.providers import FORMATS


def test_every_translating_format_and_surface_declares_the_shape_it_reads() -> None:
    for fmt in FORMATS.values():
        assert fmt.chat_passthrough or isinstance(fmt.chat_shape, Shape), fmt.name
    assert isinstance(anthropic_messages.REQUEST_SHAPE, Shape) and isinstance(responses.REQUEST_SHAPE, Shape)

SHAPE = Shape({"stop": STRING | ARRAY, "stop[]": STRING, "n": INTEGER, "t": NUMBER,
               "m": ARRAY, "m[]": OBJECT, "m[].c": STRING | ARRAY, "m[].c[]": OBJECT, "m[].c[].text": STRING,
               "f": OBJECT, "f.g.h": INTEGER})


@pytest.mark.parametrize("body", [
    {}, {"stop": "x"}, {"stop": ["a", "b"]}, {"stop": None}, {"n": 3}, {"t": 1}, {"t": 0.5},
    {"m": [{"c": "x"}, {"c": [{"text": "y"}, {"other": 5}]}, {"c": None}]}, {"f": {"g": 5}}, {"f": {"g": {"h": 2}}},
    {"unknown": [1, {"x": 2}]},
])
def test_a_shape_accepts_what_it_declares(body: dict[str, Any]) -> None:
    SHAPE.check(body)
    assert SHAPE.problems(body) == []


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"stop": 5}, "stop", "expected a string or an array, but got an integer instead"),
    ({"stop": ["a", 5]}, "stop[1]", "expected a string, but got an integer instead"),
    ({"n": True}, "n", "expected an integer, but got a boolean instead"),  # a bool is no integer
    ({"n": 1.5}, "n", "expected an integer, but got a number instead"),
    ({"t": "hot"}, "t", "expected a number, but got a string instead"),
    ({"m": [{"c": "x"}, None]}, "m[1]", "expected an object, but got null instead"),  # elements are not optional
    ({"m": [{"c": [{"text": {}}]}]}, "m[0].c[0].text", "expected a string, but got an object instead"),
    ({"f": {"g": {"h": "x"}}}, "f.g.h", "expected an integer, but got a string instead"),
])
def test_a_shape_names_the_first_wrong_field(body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(ProxyError) as caught:
        SHAPE.check(body)
    error = caught.value
    assert (error.status, error.param, error.code, error.type) == (400, param, "invalid_type", "invalid_request_error")
    assert error.message == f"Invalid type for '{param}': {message}."


def test_a_shape_lists_every_problem_and_can_name_indexes_the_anthropic_way() -> None:
    body = {"stop": [1, "a", 2], "m": [{"c": [{"text": 1}]}], "n": "x"}
    assert [e.param for e in SHAPE.problems(body)] == ["stop[0]", "stop[2]", "n", "m[0].c[0].text"]
    dots = Shape({"messages": ARRAY, "messages[].content[].text": STRING, "f": OBJECT}, indexes="dots")
    assert [e.param for e in dots.problems({"messages": [{"content": [{"text": 5}]}], "f": 1})] == [
        "messages.0.content.0.text", "f"]


def test_a_bad_path_is_refused_when_the_shape_is_declared() -> None:
    for path in ("a[", "a[]]", "a..b", "[]"):
        with pytest.raises(ValueError):
            Shape({path: OBJECT})
