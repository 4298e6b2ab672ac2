"""Errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``), which the
OpenAI SDKs turn into their own exceptions by status (401 AuthenticationError, 404
NotFoundError, 422 UnprocessableEntityError, 429 RateLimitError …)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from conduit_workers.errors import StoreUnavailable

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An HTTP error answered in OpenAI's shape; ``message`` tells a person what to fix."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or _TYPES.get(status, "api_error")
        self.headers = headers


def error_response(err: ApiError) -> Response:
    body = {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }
    return Response(
        json.dumps(body), status_code=err.status, media_type="application/json", headers=err.headers
    )


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """A readable message from pydantic's errors: where, what; the first three of them."""
    items = []
    param = None
    for e in exc.errors()[:3]:
        where = _location(tuple(e.get("loc", ())))
        param = param or (where.split(".")[0].split("[")[0] or None)
        if e.get("type") == "extra_forbidden":
            what = "is not supported by Conduit's API (remove it)"
        elif e.get("type") == "json_invalid":
            what = "the body is not valid JSON"
        else:
            what = str(e.get("msg", "is invalid"))
        items.append(f"{where}: {what}" if where else what)
    more = len(exc.errors()) - len(items)
    msg = "; ".join(items) + (f" (and {more} more)" if more > 0 else "")
    return msg or "the request body is invalid", param


def install(app: FastAPI) -> None:
    """Answer every error, including FastAPI's own 404/405/422, in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        msg, param = validation_message(exc)
        return error_response(ApiError(422, msg, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        msg = str(exc.detail)
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
        return error_response(ApiError(exc.status_code, msg))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> Response:
        log.warning("%s on %s: answered 503", exc, request.url.path)
        return error_response(
            ApiError(
                503,
                "Conduit's Redis or history database is unavailable; retry shortly.",
                type_="api_error",
                code="store_unavailable",
                headers={"Retry-After": "2"},
            )
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Never the exception's text: it may hold a prompt.
        log.error("unexpected %s on %s", type(exc).__name__, request.url.path)
        log.debug("unexpected error", exc_info=exc)
        return error_response(
            ApiError(
                500, "internal error in Conduit's API; see the server's log", type_="api_error"
            )
        )
