"""OpenAI chat request → Anthropic Messages request (``POST /v1/messages``).

The differences are structural: the system prompt is a top-level field, roles must
alternate, tool results are user-turn content blocks, tool arguments are JSON objects rather
than strings, ``max_tokens`` is required, and reasoning is a thinking budget.
"""

from __future__ import annotations

import orjson

from llm_proxy.core.errors import bad_request
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.shapes import BOOLEAN, CHAT_REQUEST, OBJECT, STRING, Shape
from llm_proxy.core.wire import UpstreamCall, rename_params

__all__ = ["API_VERSION", "CHAT_SHAPE", "DEFAULT_MAX_TOKENS", "MESSAGES_PATH", "auth_headers", "build_request"]

MESSAGES_PATH = "/v1/messages"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when neither client nor catalog gives one
_RENAMES = {"temperature": "temperature", "top_p": "top_p"}
# reasoning_effort -> thinking budget; 1024 is the smallest budget Anthropic accepts.
_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
_MIN_BUDGET = 1024
# What ``build_request`` reads, by JSON type (checked before it runs: a wrong type is a 400, not a crash).
CHAT_SHAPE = Shape({
    **CHAT_REQUEST,
    "messages[].tool_calls[].function.arguments": STRING | OBJECT,  # Anthropic's own form is an object
    "messages[].content[].refusal": STRING,
    "parallel_tool_calls": BOOLEAN,
    "user": STRING,
})


def build_request(
    body: JSONObject, model: str, *, api_key: str | None, stream: bool, max_output_tokens: int | None
) -> UpstreamCall:
    """An OpenAI chat request -> ``POST /v1/messages``; raises ``bad_request`` if untranslatable."""
    if (body.get("n") or 1) != 1:
        raise bad_request("Anthropic models return a single choice; n must be 1", param="n")
    system, messages = _messages(body.get("messages"))
    out: JSONObject = {"model": model}
    explicit = body.get("max_completion_tokens") or body.get("max_tokens")
    if explicit is not None and (not isinstance(explicit, int) or isinstance(explicit, bool) or explicit < 1):
        raise bad_request("max_tokens must be a positive integer", param="max_tokens")
    max_tokens = int(explicit or max_output_tokens or DEFAULT_MAX_TOKENS)
    budget = _budget(body.get("reasoning_effort"))
    if budget:
        # Thinking counts against max_tokens and Anthropic wants budget_tokens < max_tokens.
        if not explicit and not max_output_tokens:
            max_tokens = budget + DEFAULT_MAX_TOKENS  # no known ceiling: leave room for the answer
        elif max_tokens <= budget:
            budget = max(_MIN_BUDGET, max_tokens // 2)
            if max_tokens <= budget:
                max_tokens += budget
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        rename_params(body, _RENAMES, out)  # thinking rejects temperature/top_p changes: dropped then
        if isinstance(out.get("temperature"), int | float) and out["temperature"] > 1:
            out["temperature"] = 1.0  # OpenAI's range is 0..2, Anthropic's 0..1
    out["max_tokens"] = max_tokens
    if stream:
        out["stream"] = True
    if system:
        out["system"] = system
    out["messages"] = messages
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice:
            out["tool_choice"] = choice
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    return UpstreamCall(MESSAGES_PATH, orjson.dumps(out), {"anthropic-version": API_VERSION, **auth_headers(api_key)})


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"x-api-key": api_key} if api_key else {}


def _budget(effort: JSONValue) -> int | None:
    if effort is None or effort == "none":
        return None
    if effort not in _BUDGETS:
        raise bad_request(f"Unsupported reasoning_effort {effort!r}", param="reasoning_effort")
    return _BUDGETS[effort]


def _messages(raw: JSONValue) -> tuple[str | list[JSONObject] | None, list[JSONObject]]:
    """(system, messages): system hoisted, tool results as user blocks, same-role turns merged."""
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty array", param="messages")
    system: list[JSONObject] = []
    turns: list[JSONObject] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", param=where)
        role, content = msg.get("role"), msg.get("content")
        if role in ("system", "developer"):
            system.extend(_blocks(content, where, images=False))
            continue
        if role == "user":
            blocks = _blocks(content, where)
        elif role == "assistant":
            blocks = _blocks(content, where)
            blocks.extend(_tool_use(call, where) for call in msg.get("tool_calls") or ())
        elif role == "tool":
            if not msg.get("tool_call_id"):
                raise bad_request("tool messages need a tool_call_id", param=f"{where}.tool_call_id")
            role, result = "user", {"type": "tool_result", "tool_use_id": msg["tool_call_id"]}
            parts = content if isinstance(content, str) else _blocks(content, where)
            if parts:
                result["content"] = parts
            blocks = [result]
        else:
            raise bad_request(f"Unsupported message role {role!r}", param=f"{where}.role")
        if not blocks:  # Anthropic rejects empty content; an empty turn carries nothing anyway
            continue
        if turns and turns[-1]["role"] == role:  # Anthropic requires alternating roles
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise bad_request("messages must include a user or assistant message", param="messages")
    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user":  # tool_result blocks must open the user turn (stable sort)
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text" and len(blocks[0]) == 2:
            turn["content"] = blocks[0]["text"]  # the plain-string form, as most clients send it
    if any("cache_control" in b for b in system):
        return system, turns  # keep the blocks so the client's cache breakpoints survive
    return "\n\n".join(b["text"] for b in system) or None, turns


def _blocks(content: JSONValue, where: str, *, images: bool = True) -> list[JSONObject]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("content must be a string or an array of parts", param=f"{where}.content")
    out: list[JSONObject] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or kind == "refusal":
            text = part.get(kind)
            if not text:
                continue
            block: JSONObject = {"type": "text", "text": text}
        elif kind == "image_url" and images:
            block = {"type": "image", "source": _image_source(part.get("image_url"), where)}
        else:
            raise bad_request(f"Unsupported content part {kind!r} for Anthropic", param=f"{where}.content")
        if part.get("cache_control"):
            block["cache_control"] = part["cache_control"]
        out.append(block)
    return out


def _image_source(image: JSONValue, where: str) -> JSONObject:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        if sep and header.endswith(";base64"):
            return {"type": "base64", "media_type": header[: -len(";base64")], "data": data}
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise bad_request("image_url must be an http(s) URL or a base64 data: URL", param=f"{where}.content")


def _tool_use(call: JSONValue, where: str) -> JSONObject:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not fn.get("name") or not call.get("id"):
        raise bad_request("tool_calls need an id and a function name", param=f"{where}.tool_calls")
    args = fn.get("arguments") or "{}"
    if isinstance(args, str):
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            raise bad_request("tool call arguments are not valid JSON", param=f"{where}.tool_calls") from None
    if not isinstance(args, dict):  # Anthropic's tool input must be an object
        raise bad_request("tool call arguments must be a JSON object", param=f"{where}.tool_calls")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args}


def _tool(tool: JSONValue, i: int) -> JSONObject:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise bad_request("Only function tools with a name can be sent to Anthropic", param=f"tools[{i}]")
    out: JSONObject = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: JSONValue, parallel: JSONValue) -> JSONObject | None:
    if choice is None:
        out: JSONObject | None = {"type": "auto"} if parallel is False else None
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and (choice.get("function") or {}).get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise bad_request(f"Unsupported tool_choice {choice!r}", param="tool_choice")
    if out and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out
