"""One exception tree for the gateway; each error knows its HTTP status and metric labels.

Views raise; the single handler in app.py turns an error into a status code, a log line
and a count. WeChat's own error codes (-400xx) are kept for operators who search for them.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: a request the gateway refuses. `outcome` labels wechat_requests_total."""

    status = 500
    outcome = "error"
    wechat_code: int | None = None

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.outcome


class BadRequest(GatewayError):
    """A parameter is missing or the body is not the XML WeChat sends."""

    status = 400
    outcome = "bad_request"


class HostileXml(BadRequest):
    """The body declares a DTD or entities: refused before anything is expanded."""

    outcome = "hostile_xml"
    wechat_code = -40002


class PayloadTooLarge(GatewayError):
    status = 413
    outcome = "too_large"


class SignatureMismatch(GatewayError):
    """`signature` (or `msg_signature` in AES mode) matches none of the accepted tokens."""

    status = 403
    outcome = "bad_signature"
    wechat_code = -40001


class StaleTimestamp(GatewayError):
    """The timestamp lies outside WECHAT_MAX_CLOCK_SKEW: a replay or a wrong clock."""

    status = 403
    outcome = "stale_timestamp"


class DecryptError(GatewayError):
    """The Encrypt field does not decrypt to a well-formed frame. Never read as plaintext."""

    status = 400
    outcome = "decrypt_failed"
    wechat_code = -40007


class AppIdMismatch(DecryptError):
    """The frame decrypted but names another AppID: not addressed to this account."""

    status = 403
    wechat_code = -40005


class EncryptionNotConfigured(GatewayError):
    """An AES-mode callback arrived but WECHAT_ENCODING_AES_KEY is not set."""

    status = 400
    outcome = "decrypt_failed"
    wechat_code = -40004


class NotFound(GatewayError):
    status = 404
    outcome = "not_found"


class ConfigError(Exception):
    """A setting is missing or invalid: start-up stops with this message."""
