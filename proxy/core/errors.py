"""Errors in the OpenAI error shape, raised anywhere and rendered once by the outer layer.

OpenAI's envelope is ``{"error": {"message", "type", "param", "code"}}``; SDKs map the
HTTP status to an exception class and read ``message`` and ``code`` from the body, so
both the status and the shape must be right for a client to behave.
"""

from __future__ import annotations

import orjson
from starlette.types import Send

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "ProxyError",
    "anthropic_error_body",
    "anthropic_error_type",
    "bad_request",
    "error_body",
    "not_found_model",
    "send_json",
    "send_error",
]


class ProxyError(Exception):
    """A failure with a status and an OpenAI-shaped body; ``headers`` go on the response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}
        self._body = body

    def body(self) -> bytes:
        """The JSON body; an upstream's own OpenAI-shaped body is kept byte for byte."""
        if self._body is not None:
            return self._body
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


# Anthropic's ``error.type`` per HTTP status (its error envelope is ``{"type": "error", "error": {...}}``).
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic ``error.type`` for an HTTP status (stream ``error`` events use it too)."""
    return ANTHROPIC_ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})


def bad_request(message: str, *, code: str | None = None, param: str | None = None) -> ProxyError:
    return ProxyError(400, message, code=code, param=param)


def not_found_model(model: str) -> ProxyError:
    return ProxyError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: ProxyError) -> None:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send_json(send, exc.status, exc.body(), extra)
