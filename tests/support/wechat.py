"""A WeChat simulator: signs, encrypts, cuts at 5 s, retries, reports what the user sees.

WeChat's side of the crypto is done with wechatpy, an independent implementation, so every
test that goes through the simulator also cross-checks our framing, padding, signatures
and reply envelope against it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from wechatpy.crypto import PrpCrypto, WeChatCrypto

SERVICE_UNAVAILABLE = "该公众号暂时无法提供服务，请稍后再试"
DEV_TOKEN = "celestial-dev-token"
DEV_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
DEV_APPID = "wx0123456789abcdef"
ACCOUNT_ID = "gh_0123456789ab"

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def sign(*fields: str) -> str:
    return hashlib.sha1("".join(sorted(fields)).encode()).hexdigest()


@dataclass
class Account:
    token: str = DEV_TOKEN
    appid: str = DEV_APPID
    encoding_aes_key: str = DEV_AES_KEY

    def env(self) -> dict[str, str]:
        """Gateway environment variables for this account."""
        return {
            "WECHAT_TOKEN": self.token,
            "WECHAT_APPID": self.appid,
            "WECHAT_ENCODING_AES_KEY": self.encoding_aes_key,
        }


def text_message(
    content: str,
    *,
    openid: str = "oUser0001",
    msg_id: str | None = None,
    create_time: int | None = None,
    account_id: str = ACCOUNT_ID,
) -> dict[str, str]:
    return {
        "ToUserName": account_id,
        "FromUserName": openid,
        "CreateTime": str(create_time or int(time.time())),
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id or str(secrets.randbelow(10**17)),
    }


def event_message(
    event: str,
    *,
    event_key: str | None = None,
    openid: str = "oUser0001",
    create_time: int | None = None,
    **extra: str,
) -> dict[str, str]:
    fields = {
        "ToUserName": ACCOUNT_ID,
        "FromUserName": openid,
        "CreateTime": str(create_time or int(time.time())),
        "MsgType": "event",
        "Event": event,
    }
    if event_key is not None:
        fields["EventKey"] = event_key
    fields.update(extra)
    return fields


def to_xml(fields: dict[str, str]) -> str:
    parts = [f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()]
    return "<xml>" + "".join(parts) + "</xml>"


@dataclass
class Attempt:
    """One HTTP attempt as WeChat experiences it."""

    number: int
    status: int | None  # None: cut at 5 s
    body: bytes
    elapsed_s: float
    reply: dict[str, str] | None = None  # the decrypted, parsed reply XML
    verdict: str = ""  # reply, success, invalid, timeout, error_status


@dataclass
class Delivery:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def user_sees(self) -> str | None:
        """The text the user sees: reply content, the error banner, or None (nothing)."""
        last = self.attempts[-1]
        if last.verdict == "reply":
            assert last.reply is not None
            return last.reply.get("Content") or f"<{last.reply.get('MsgType')}>"
        if last.verdict == "success":
            return None
        return SERVICE_UNAVAILABLE


class WeChatSimulator:
    """Sends callbacks the way WeChat's servers do and reads replies the way WeChat does."""

    def __init__(
        self,
        url: str,
        account: Account | None = None,
        *,
        mode: str = "safe",
        cut_s: float = 5.0,
        max_attempts: int = 3,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.account = account or Account()
        self.mode = mode
        self.cut_s = cut_s
        self.max_attempts = max_attempts
        self.session = session or requests.Session()
        self.session.verify = False  # self-signed certificates in tests

    # -- requests ---------------------------------------------------------------------
    def verify_url(
        self, echostr: str = "4375120948345356249", **overrides: str
    ) -> requests.Response:
        timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
        params = {
            "signature": sign(self.account.token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
            **overrides,
        }
        return self.session.get(self.url, params=params, timeout=self.cut_s)

    def build_request(
        self,
        fields: dict[str, str],
        *,
        mode: str | None = None,
        timestamp: str | None = None,
        nonce: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """Query parameters and body of one callback, as WeChat would send them."""
        mode = mode or self.mode
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**10))
        token = self.account.token
        params = {
            "signature": sign(token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": fields.get("FromUserName", ""),
        }
        plain = to_xml(fields)
        if mode == "plain":
            return params, plain.encode()
        key = self._crypto().key
        encrypted = PrpCrypto(key).encrypt(plain, self.account.appid).decode()
        params.update(encrypt_type="aes", msg_signature=sign(token, timestamp, nonce, encrypted))
        outer = {"ToUserName": fields["ToUserName"], "Encrypt": encrypted}
        if mode == "compat":
            outer = {**fields, "Encrypt": encrypted}
        return params, to_xml(outer).encode()

    def post(self, fields: dict[str, str], *, number: int = 1, **build: Any) -> Attempt:
        params, body = self.build_request(fields, **build)
        return self.post_raw(params, body, number=number)

    def post_raw(self, params: dict[str, str], body: bytes, *, number: int = 1) -> Attempt:
        started = time.monotonic()
        try:
            response = self.session.post(
                self.url, params=params, data=body, timeout=(self.cut_s, self.cut_s)
            )
        except requests.Timeout:
            return Attempt(number, None, b"", time.monotonic() - started, verdict="timeout")
        elapsed = time.monotonic() - started
        if elapsed > self.cut_s:
            return Attempt(
                number, response.status_code, response.content, elapsed, verdict="timeout"
            )
        attempt = Attempt(number, response.status_code, response.content, elapsed)
        self._judge(attempt)
        return attempt

    def deliver(self, fields: dict[str, str], **build: Any) -> Delivery:
        """Up to three attempts of the same message, each cut at 5 s, like WeChat."""
        delivery = Delivery()
        for number in range(1, self.max_attempts + 1):
            attempt = self.post(fields, number=number, **build)
            delivery.attempts.append(attempt)
            if attempt.verdict in ("reply", "success", "invalid"):
                break
        return delivery

    # -- replies ----------------------------------------------------------------------
    def _crypto(self) -> WeChatCrypto:
        return WeChatCrypto(self.account.token, self.account.encoding_aes_key, self.account.appid)

    def _judge(self, attempt: Attempt) -> None:
        if attempt.status != 200:
            attempt.verdict = "error_status"
            return
        if attempt.body in (b"", b"success"):
            attempt.verdict = "success"
            return
        try:
            attempt.reply = self.open_reply(attempt.body)
        except Exception:  # anything WeChat cannot read shows the user the error banner
            attempt.verdict = "invalid"
            return
        attempt.verdict = "reply"

    def open_reply(self, body: bytes) -> dict[str, str]:
        """The reply's fields; an encrypted envelope is checked and decrypted with wechatpy."""
        outer = parse_fields(body)
        if "Encrypt" in outer:
            inner = self._crypto().decrypt_message(
                body.decode(), outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"]
            )
            return parse_fields(inner if isinstance(inner, bytes) else inner.encode())
        return outer


def parse_fields(body: bytes) -> dict[str, str]:
    """Top-level fields of a reply; nested news items flattened as Articles.<Tag>."""
    root = ET.fromstring(body)
    fields: dict[str, str] = {}
    for child in root:
        if len(child):
            for item in child.iter():
                if item is not child and not len(item):
                    fields[f"{child.tag}.{item.tag}"] = item.text or ""
        else:
            fields[child.tag] = child.text or ""
    return fields
