"""Error answers in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, one line each."""

from __future__ import annotations

from starlette.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}
DEFAULT_CODES = {400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 422: "invalid_value"}


class RequestError(Exception):
    """An error answer: HTTP status, one-line message, the request field it concerns, a machine-readable code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or DEFAULT_CODES.get(status, f"http_{status}")
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, code=self.code, headers=self.headers)


class ClientDisconnectedError(Exception):
    """The client went away while its request was queued or running; its work was dropped."""


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code or DEFAULT_CODES.get(status, f"http_{status}"),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)
