"""The error a query of the search service ends with: a message and the HTTP status that says why."""

from __future__ import annotations


class QueryError(ValueError):
    """A query the service cannot answer; `status` is the HTTP status that says why (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
