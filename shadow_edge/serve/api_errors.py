"""OpenAI-shaped API errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status."""

from __future__ import annotations

from dataclasses import dataclass

# status -> (OpenAI error type, default code)
KINDS = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "context_length_exceeded"),
    429: ("rate_limit_error", "queue_full"),
    500: ("server_error", None),
    503: ("service_unavailable", "unavailable"),
    504: ("timeout_error", "timeout"),
}


@dataclass
class APIError(Exception):
    """One failed request: HTTP status, a message naming the field, the field (`param`) and a code."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.status not in KINDS:
            raise ValueError(f"status {self.status} has no OpenAI error kind; add it to KINDS")

    def body(self) -> dict:
        kind, code = KINDS[self.status]
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code or code}}


def bad_param(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)
