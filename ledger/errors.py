"""What the ledger refuses with. Each error carries its data; the gateway answers each kind with
its HTTP error (gateway/errors.py: 429, or 503 naming what is down)."""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """Base of the ledger's refusals: the request was not admitted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BudgetExceeded(LedgerError):
    """The request does not fit a budget or a rate limit (a `minute` budget); `detail` is the
    budget's window as the admin API shows it, with the dimension `exceeded`."""

    # The refusal as a client sees it (the gateway answers with exactly this): the OpenAI
    # error shape with the budget named, and when to retry.
    status = 429

    def __init__(
        self, message: str, *, rate: bool, detail: dict[str, Any], retry_after: int | None
    ) -> None:
        super().__init__(message)
        self.rate = rate
        self.type = "rate_limit_error" if rate else "budget_exceeded_error"
        self.code = "rate_limit_exceeded" if rate else "budget_exceeded"
        self.detail = detail
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": None,
                "code": self.code,
                "budget": self.detail,
            }
        }

    def headers(self) -> dict[str, str]:
        headers = {"retry-after": str(self.retry_after)} if self.retry_after else {}
        if not self.rate:
            # A day's or a month's budget does not come back within a client's retry loop: the
            # openai and anthropic SDKs read this header before the status and give up at once,
            # instead of sending the request twice more for two more refusals.
            headers["x-should-retry"] = "false"
        return headers


class CountersUnreachable(LedgerError):
    """The counters (Redis, or the database without Redis) cannot be reached, and the outage
    policy refuses: `on_outage: fail_closed`, or the fail-open allowance is used."""


class BudgetsUnreadable(LedgerError):
    """The budgets cannot be read (the database is down) and none were read before."""
