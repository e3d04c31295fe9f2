"""Errors of FHIR server extraction, each with a one-line message fit for the user (`dlmreg run` prints it).

Messages name the cause (refused credentials, the server's OperationOutcome text, why the server could
not be reached) and never carry resource content, tokens or passwords.
"""
from __future__ import annotations


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ExtractError(Exception):
    """Extraction failed; `str(error)` is a one-line message for the user."""

    def __init__(self, message: str):
        self.message = _one_line(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class AuthError(ExtractError):
    """Credentials missing, malformed or refused (401/403 after a refresh, token endpoint refusal)."""


class ServerError(ExtractError):
    """The server answered with an error that retrying did not cure (4xx, or 429/5xx after retries)."""

    def __init__(self, message: str, status: int | None = None, detail: str = ""):
        super().__init__(message)
        self.status = status
        self.detail = detail


class UnreachableError(ExtractError):
    """No usable answer: connection refused, DNS, TLS, timeouts or broken responses after retries."""
