"""Errors a client can see, each rendered in the OpenAI shape with its HTTP status."""

from __future__ import annotations

from typing import Any

from ledger import errors as ledger_errors

# Seconds a client is told to wait after a 503 (a dependency down): long enough not to hammer a
# recovering server, short enough that a blip costs little.
RETRY_AFTER_S = 2


class GatewayError(Exception):
    """Base of every error the gateway returns to a client."""

    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class RevokedKey(AuthenticationFailed):
    """A known key that was revoked: the spend log still names it."""

    code = "revoked_api_key"

    def __init__(self, key_id: str, team: str) -> None:
        super().__init__("This API key has been revoked")
        self.key_id = key_id
        self.team = team


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(GatewayError):
    """The upstream answered with an error or could not be reached."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        deployment: str,
        message: str,
        *,
        upstream_status: int | None = None,
        code: str | None = None,
    ) -> None:
        where = f" (status {upstream_status})" if upstream_status else ""
        super().__init__(f"Upstream deployment {deployment!r} failed{where}: {message}", code=code)
        self.deployment = deployment
        self.upstream_status = upstream_status
        self.reason = message  # the upstream's own words, without the deployment's name

    def retell(self, attempts: list[str]) -> None:
        """Say what every attempt of the request met, each naming its deployment and address
        (pipeline/attempts.py writes them): the operator sees which upstream to look at."""
        if len(attempts) == 1:
            self.message = f"Upstream {attempts[0]}"
        else:
            listed = "; ".join(f"({i}) {a}" for i, a in enumerate(attempts, 1))
            self.message = f"All {len(attempts)} upstream attempts failed: {listed}"
        self.args = (self.message,)


class UpstreamBadRequest(UpstreamError):
    """The upstream rejected the request itself: the client's to fix, so 400."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected_request"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class ServiceUnavailable(GatewayError):
    """503: a dependency (the store, Redis) cannot be reached; the code names which one.

    `retry-after` tells clients (the OpenAI SDKs retry 503s) when trying again makes sense.
    """

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"

    def __init__(
        self, message: str, *, retry_after_s: int = RETRY_AFTER_S, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class StoreUnavailable(ServiceUnavailable):
    """The database (teams, keys, budgets, spend log) cannot be reached."""

    code = "store_unavailable"


class LedgerUnavailable(ServiceUnavailable):
    """The budget counters (Redis, or the database without Redis) cannot be reached."""

    code = "ledger_unavailable"


class BudgetExceeded(GatewayError):
    """429: a budget or rate limit refused the request; the body names the budget."""

    status = 429

    def __init__(self, refusal: ledger_errors.BudgetExceeded) -> None:
        super().__init__(refusal.message, code=refusal.code)
        self.type = refusal.type
        self.refusal = refusal

    def body(self) -> dict[str, Any]:
        # The ledger's refusal already is the client's answer (ledger/errors.py).
        return self.refusal.body()

    def headers(self) -> dict[str, str]:
        return self.refusal.headers()


def from_ledger(exc: ledger_errors.LedgerError) -> GatewayError:
    """The HTTP answer to a ledger refusal: 429 over a budget, 503 when its counters or its
    budgets cannot be reached."""
    if isinstance(exc, ledger_errors.BudgetExceeded):
        return BudgetExceeded(exc)
    if isinstance(exc, ledger_errors.BudgetsUnreadable):
        return StoreUnavailable(exc.message)
    return LedgerUnavailable(exc.message)
