"""Opening a callback (signature, timestamp, mode, decryption) and sealing its reply.

Pure protocol: no web framework here, so the endpoint checker and the tests use the same
code as the gateway. Fail closed: a body whose signature or decryption fails is never read
as plaintext. In AES mode (safe and compatible) only the decrypted `Encrypt` counts.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import crypto, messages, replies, signature
from .config import AccountSettings
from .errors import (
    AppIdMismatch,
    BadRequest,
    DecryptError,
    EncryptionNotConfigured,
    GatewayError,
    SignatureMismatch,
    StaleTimestamp,
)

MODE_VERIFY, MODE_PLAIN, MODE_COMPAT, MODE_SAFE = "verify", "plain", "compat", "safe"


@dataclass
class OpenedCallback:
    """A verified callback: its mode, the message's XML fields, and what the reply needs."""

    mode: str
    fields: dict[str, str]
    timestamp: str
    nonce: str
    # Failures tolerated because STRICT_WECHAT_VERIFY=0 (development only), for the log.
    tolerated: list[GatewayError] = field(default_factory=list)
    # Which accepted token / AES key matched: 0 is the current one, >0 a rotated-out one.
    token_index: int | None = None
    key_index: int | None = None

    @property
    def encrypted(self) -> bool:
        return self.mode in (MODE_COMPAT, MODE_SAFE)


def required_params(query: Mapping[str, str], *names: str) -> list[str]:
    missing = [name for name in names if not query.get(name)]
    if missing:
        raise BadRequest(f"missing query parameter(s): {', '.join(missing)}")
    return [query[name] for name in names]


def _check(failure: GatewayError | None, strict: bool, tolerated: list[GatewayError]) -> None:
    if failure is None:
        return
    if strict:
        raise failure
    tolerated.append(failure)


def verify_url(
    query: Mapping[str, str], account: AccountSettings, *, strict: bool
) -> tuple[str, list[GatewayError]]:
    """The echostr to return for WeChat's GET URL check (signature over token, ts, nonce).

    No clock-skew check here: the check changes nothing on our side, and operators replay
    it by hand from WeChat's console and from the documentation's worked example.
    """
    sig, timestamp, nonce, echostr = required_params(
        query, "signature", "timestamp", "nonce", "echostr"
    )
    tolerated: list[GatewayError] = []
    _verify_signature(sig, account, strict, tolerated, "bad_signature", timestamp, nonce)
    return echostr, tolerated


def _verify_signature(
    provided: str,
    account: AccountSettings,
    strict: bool,
    tolerated: list[GatewayError],
    reason: str,
    *signed: str,
) -> int | None:
    """The index of the accepted token that signed `signed`; a mismatch raises (or is noted)."""
    token = signature.matching_token(provided, account.accepted_tokens, *signed)
    if token is None:
        name = "msg_signature" if reason == "bad_msg_signature" else "signature"
        _check(SignatureMismatch(f"{name} mismatch", reason=reason), strict, tolerated)
        return None
    return account.accepted_tokens.index(token)


def claimed_mode(query: Mapping[str, str]) -> str:
    """The mode a callback's query claims (safe when `encrypt_type=aes`), for the log line and
    counts of one refused before its body is opened; `open_callback` tells compat apart."""
    return MODE_SAFE if query.get("encrypt_type", "").lower() == "aes" else MODE_PLAIN


def open_callback(
    query: Mapping[str, str],
    body: bytes,
    account: AccountSettings,
    *,
    strict: bool,
    max_skew_s: int,
    now_s: float,
) -> OpenedCallback:
    """Verify and decode a POSTed callback in any of WeChat's three modes."""
    timestamp, nonce = required_params(query, "timestamp", "nonce")
    tolerated: list[GatewayError] = []
    _check(_timestamp_failure(timestamp, now_s, max_skew_s), strict, tolerated)
    outer = messages.parse_xml(body)
    # A body that carries <Encrypt> is opened as encrypted whatever the query says: WeChat
    # always adds encrypt_type=aes then, and a body whose ciphertext is ignored must not be
    # answered from its unauthenticated plaintext fields (fail closed).
    if query.get("encrypt_type", "").lower() == "aes" or "Encrypt" in outer:
        return _open_encrypted(query, outer, account, strict, timestamp, nonce, tolerated)
    sig = required_params(query, "signature")[0]
    index = _verify_signature(sig, account, strict, tolerated, "bad_signature", timestamp, nonce)
    return OpenedCallback(MODE_PLAIN, outer, timestamp, nonce, tolerated, token_index=index)


def _open_encrypted(
    query: Mapping[str, str],
    outer: dict[str, str],
    account: AccountSettings,
    strict: bool,
    timestamp: str,
    nonce: str,
    tolerated: list[GatewayError],
) -> OpenedCallback:
    encrypted = outer.get("Encrypt")
    if not encrypted:
        raise BadRequest("encrypt_type=aes but the body has no <Encrypt>")
    msg_sig = required_params(query, "msg_signature")[0]
    token_index = _verify_signature(
        msg_sig, account, strict, tolerated, "bad_msg_signature", timestamp, nonce, encrypted
    )
    if not account.encryption_enabled:
        raise EncryptionNotConfigured("AES-mode callback but WECHAT_ENCODING_AES_KEY is not set")
    try:
        key_index, inner = crypto.decrypt_with_any(account.ciphers, encrypted)
    except crypto.CryptoError as exc:
        error_class = AppIdMismatch if exc.reason == "appid" else DecryptError
        raise error_class(f"decryption failed: {exc}", reason=exc.reason) from None
    try:
        fields = messages.parse_xml(inner)
    except GatewayError as exc:
        raise DecryptError(
            f"decrypted message is not valid XML: {exc.message}", reason="xml"
        ) from None
    mode = MODE_COMPAT if "MsgType" in outer else MODE_SAFE
    return OpenedCallback(
        mode, fields, timestamp, nonce, tolerated, token_index=token_index, key_index=key_index
    )


def _timestamp_failure(timestamp: str, now_s: float, max_skew_s: int) -> GatewayError | None:
    if signature.timestamp_within_skew(timestamp, now_s, max_skew_s):
        return None
    return StaleTimestamp(
        f"timestamp {timestamp!r} is outside the {max_skew_s}s clock-skew window",
        reason="stale_timestamp",
    )


def seal_reply(
    reply_xml: str,
    opened: OpenedCallback,
    account: AccountSettings,
    *,
    now_s: float,
    random_bytes: Callable[[int], bytes] = os.urandom,
    nonce: str | None = None,
) -> bytes:
    """The HTTP body for a passive reply: encrypted and signed when the request was.

    The reply uses the key and token the request used: during a rotation WeChat still
    works with the old ones until the console is updated, and must be able to read us.
    """
    if not opened.encrypted:
        return reply_xml.encode("utf-8")
    token = account.accepted_tokens[opened.token_index or 0]
    encrypted = account.ciphers[opened.key_index or 0].encrypt(
        reply_xml.encode("utf-8"), random_bytes=random_bytes
    )
    timestamp = str(int(now_s))
    nonce = nonce or str(secrets.randbelow(10**10))
    msg_signature = signature.compute_signature(token, timestamp, nonce, encrypted)
    return replies.render_encrypted_envelope(encrypted, msg_signature, timestamp, nonce).encode()
