"""The JSON types of the request fields a translator reads, declared once and checked once.

A translator reads a client's body with ``.get`` chains that trust the types the API
documents; a wrong one (``"messages": "hi"``, ``"stop": 5``) would crash deep inside it and
answer 500. So each translator declares a ``Shape``: a flat table of the field paths it reads
and the JSON types it accepts there. One generic walk checks a body against it before
translation starts and answers 400 ``invalid_type`` naming the field, as OpenAI does. A body
that passes through untranslated is never checked: the upstream judges its own format.

Paths are dotted member names; ``[]`` steps into each element of an array
(``"messages[].content[].text"``). A rule applies only where its parent holds the container
its step needs (an object for a name, an array for ``[]``), so ``"stop": STRING | ARRAY`` with
``"stop[]": STRING`` reads "a string, or an array of strings". A member that is missing or
null is unset (translators read both alike) and never checked; an array element must be one
of its types. Only types: values (ranges, enums) stay the translator's business.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import IntFlag
from typing import Literal

from llm_proxy.core.errors import ProxyError, bad_request
from llm_proxy.core.jsontypes import JSONObject, JSONValue

__all__ = ["ARRAY", "BOOLEAN", "CHAT_REQUEST", "INTEGER", "NUMBER", "OBJECT", "STRING", "Kind", "Shape"]


class Kind(IntFlag):
    """A JSON type; ``|`` makes a union. ``INTEGER`` excludes booleans, ``NUMBER`` is either number."""

    STRING = 1
    INTEGER = 2
    FLOAT = 4
    BOOLEAN = 8
    OBJECT = 16
    ARRAY = 32
    NULL = 64
    NUMBER = INTEGER | FLOAT


STRING, INTEGER, NUMBER, BOOLEAN, OBJECT, ARRAY = (
    Kind.STRING, Kind.INTEGER, Kind.NUMBER, Kind.BOOLEAN, Kind.OBJECT, Kind.ARRAY)
_ANY = 127

# What orjson produces, by exact type: one dict lookup tells a bool from an int.
_KINDS: dict[type, int] = {str: 1, int: 2, float: 4, bool: 8, dict: 16, list: 32, type(None): 64}
_NAMES = ((Kind.STRING, "a string"), (Kind.NUMBER, "a number"), (Kind.INTEGER, "an integer"),
          (Kind.FLOAT, "a number"), (Kind.BOOLEAN, "a boolean"), (Kind.OBJECT, "an object"),
          (Kind.ARRAY, "an array"), (Kind.NULL, "null"))


def _kind(value: object) -> int:
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    # not from orjson (a plugin's edit): classify by isinstance, bool before int
    for cls, bits in ((bool, 8), (int, 2), (float, 4), (str, 1), (dict, 16), (list | tuple, 32)):
        if isinstance(value, cls):
            return bits
    return 0


def _describe(mask: int) -> str:
    names: list[str] = []
    for kind, name in _NAMES:
        bits = int(kind)
        if mask & bits == bits and name not in names:
            names.append(name)
            mask &= ~bits
    return " or ".join(names) or "something else"


class _Node:
    """One path's rule (``mask``) and the rules under it, by member name and for elements."""

    __slots__ = ("deep", "items", "mask", "members", "named")

    def __init__(self) -> None:
        self.mask = _ANY
        self.named: dict[str, _Node] = {}  # while the shape is built
        self.members: tuple[tuple[str, _Node], ...] = ()
        self.items: _Node | None = None
        self.deep = False

    def freeze(self) -> None:
        for child in self.named.values():
            child.freeze()
        if self.items is not None:
            self.items.freeze()
        self.members = tuple(self.named.items())
        self.deep = bool(self.members) or self.items is not None


def _steps(path: str) -> list[str | None]:
    """``"a[].b"`` -> ``["a", None, "b"]``: None steps into array elements."""
    steps: list[str | None] = []
    for part in path.split("."):
        name = part.rstrip("[]")
        depth, rest = divmod(len(part) - len(name), 2)
        if not name or rest or part[len(name):] != "[]" * depth:
            raise ValueError(f"bad shape path {path!r}")
        steps.append(name)
        steps.extend([None] * depth)
    return steps


class _Problem:
    __slots__ = ("got", "mask", "path")

    def __init__(self, path: list[str | int], mask: int, got: int) -> None:
        self.path = path  # innermost step first
        self.mask = mask
        self.got = got


class Shape:
    """The types of the fields one translator reads (see the module docstring for paths).

    ``indexes`` is how a field path names array positions in errors: ``brackets``
    (``messages[0].content``, OpenAI's) or ``dots`` (``messages.0.content``, Anthropic's)."""

    __slots__ = ("_dots", "_root")

    def __init__(self, fields: Mapping[str, Kind], *, indexes: Literal["brackets", "dots"] = "brackets") -> None:
        root = _Node()
        for path, kind in fields.items():
            node = root
            for step in _steps(path):
                if step is None:
                    node.items = node = node.items or _Node()
                else:
                    node = node.named.setdefault(step, _Node())
            node.mask = int(kind)
        root.freeze()
        self._root = root
        self._dots = indexes == "dots"

    def check(self, body: JSONObject) -> None:
        """Raise the first problem as a 400 naming the field; return when there is none."""
        problem = _first(self._root, body, _kind(body))
        if problem is not None:
            raise self._error(problem)

    def problems(self, body: JSONObject) -> list[ProxyError]:
        """Every problem, in the order the fields are declared (for diagnostics and tests)."""
        found: list[_Problem] = []
        _all(self._root, body, _kind(body), [], found)
        return [self._error(p) for p in found]

    def _error(self, problem: _Problem) -> ProxyError:
        where = ""
        for step in reversed(problem.path):
            if isinstance(step, str):
                where += f".{step}" if where else step
            else:
                where += f".{step}" if self._dots else f"[{step}]"
        return bad_request(f"Invalid type for '{where}': expected {_describe(problem.mask)}, "
                           f"but got {_describe(problem.got)} instead.", param=where, code="invalid_type")


def _children(node: _Node, value: JSONValue, kind: int) -> Iterator[tuple[str | int, _Node, JSONValue]]:
    """(step, rule, value) for each member or element of ``value`` that a rule covers."""
    if kind == 16:
        for key, child in node.members:
            item = value.get(key)
            if item is not None:
                yield key, child, item
    elif kind == 32 and node.items is not None:
        child = node.items
        for i, item in enumerate(value):
            yield i, child, item


def _first(node: _Node, value: JSONValue, kind: int) -> _Problem | None:
    """The first problem under ``value``, which is of an allowed ``kind`` (inlined: it runs per request)."""
    if kind == 16:
        for key, child in node.members:
            item = value.get(key)
            if item is None:
                continue
            got = _KINDS.get(type(item)) or _kind(item)
            if not got & child.mask:
                return _Problem([key], child.mask, got)
            if child.deep and (problem := _first(child, item, got)) is not None:
                problem.path.append(key)
                return problem
    elif kind == 32 and node.items is not None:
        child = node.items
        for i, item in enumerate(value):
            got = _KINDS.get(type(item)) or _kind(item)
            if not got & child.mask:
                return _Problem([i], child.mask, got)
            if child.deep and (problem := _first(child, item, got)) is not None:
                problem.path.append(i)
                return problem
    return None


def _all(node: _Node, value: JSONValue, kind: int, trail: list[str | int], found: list[_Problem]) -> None:
    for step, child, item in _children(node, value, kind):
        got = _kind(item)
        if not got & child.mask:
            found.append(_Problem([step, *reversed(trail)], child.mask, got))
        elif child.deep:
            trail.append(step)
            _all(child, item, got, trail, found)
            trail.pop()


# The chat-request fields every chat translator reads, with OpenAI's documented types; a format
# adds its own and may widen one (Ollama and Anthropic take tool arguments as objects too).
CHAT_REQUEST: Mapping[str, Kind] = {
    "messages": ARRAY,
    "messages[]": OBJECT,
    "messages[].role": STRING,
    "messages[].content": STRING | ARRAY,
    "messages[].content[]": OBJECT,
    "messages[].content[].type": STRING,
    "messages[].content[].text": STRING,
    "messages[].content[].image_url": STRING | OBJECT,
    "messages[].content[].image_url.url": STRING,
    "messages[].name": STRING,
    "messages[].tool_call_id": STRING,
    "messages[].tool_calls": ARRAY,
    "messages[].tool_calls[]": OBJECT,
    "messages[].tool_calls[].id": STRING,
    "messages[].tool_calls[].function": OBJECT,
    "messages[].tool_calls[].function.name": STRING,
    "messages[].tool_calls[].function.arguments": STRING,
    "tools": ARRAY,
    "tools[]": OBJECT,
    "tools[].type": STRING,
    "tools[].function": OBJECT,
    "tools[].function.name": STRING,
    "tools[].function.description": STRING,
    "tools[].function.parameters": OBJECT,
    "tool_choice": STRING | OBJECT,
    "tool_choice.function": OBJECT,
    "tool_choice.function.name": STRING,
    "stop": STRING | ARRAY,
    "stop[]": STRING,
    "max_tokens": INTEGER,
    "max_completion_tokens": INTEGER,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "n": INTEGER,
    "reasoning_effort": STRING,
}
