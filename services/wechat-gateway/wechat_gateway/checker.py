"""Check a deployed callback URL the way WeChat's servers would.

    python -m wechat_gateway.checker https://example.com/wechat        (make check-endpoint URL=...)

Reads WECHAT_TOKEN, WECHAT_APPID and WECHAT_ENCODING_AES_KEY like the gateway (or takes
flags), then: the GET URL check with a random echostr; a signed text message in the mode
you choose (plain, compat, safe); the reply's signature, decryption, AppID and XML; that
the reply is an answer, not WECHAT_FALLBACK_REPLY; and the time taken against WeChat's
5-second cut. A loopback URL skips the port check. Exit status 0 only when all pass.
The check message goes to the AI API like any other; its openid is `celestial-checker`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3

from . import crypto, messages, signature
from .config import DEFAULT_FALLBACK_REPLY
from .errors import GatewayError

WECHAT_CUT_S = 5.0
CHECKER_OPENID = "celestial-checker"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.ok else "FAIL"


def _query(token: str, extra: str | None = None) -> dict[str, str]:
    timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
    params = {
        "timestamp": timestamp,
        "nonce": nonce,
        "signature": signature.compute_signature(token, timestamp, nonce),
    }
    if extra is not None:
        params["msg_signature"] = signature.compute_signature(token, timestamp, nonce, extra)
    return params


def is_local(host: str | None) -> bool:
    """A loopback host: the operator's own machine (make run, make stack), not WeChat's view."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_url(url: str) -> list[Check]:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if is_local(parsed.hostname):
        return [Check("port", True, f"{parsed.hostname}:{port} is local: not checked", True)]
    return [
        Check(
            "port",
            port in (80, 443),
            f"{parsed.scheme}://…:{port} (WeChat only calls ports 80 and 443)",
        )
    ]


class _Session(requests.Session):
    """A session whose `verify` holds for every request: requests otherwise replaces it with
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE when either is set (psf/requests#3829), and
    --insecure would fail on a self-signed certificate on exactly the corporate hosts that
    set them."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


def http_session(insecure: bool) -> requests.Session:
    """The session the checks share; `insecure` accepts a self-signed certificate (asked
    for, so without urllib3's warning on every request)."""
    if insecure:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    session = _Session()
    session.verify = not insecure
    return session


def check_verification(session: requests.Session, url: str, token: str) -> Check:
    echostr = str(secrets.randbelow(10**18))
    params = {**_query(token), "echostr": echostr}
    started = time.monotonic()
    try:
        response = session.get(url, params=params, timeout=WECHAT_CUT_S)
    except requests.RequestException as exc:
        return Check("url_verification", False, f"request failed: {type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - started
    ok = response.status_code == 200 and response.text == echostr
    detail = f"HTTP {response.status_code} in {elapsed * 1000:.0f} ms"
    if not ok:
        detail += (
            " (expected the echostr back: wrong token, or the path does not reach the gateway)"
        )
    return Check("url_verification", ok, detail)


def check_message(
    session: requests.Session,
    url: str,
    token: str,
    appid: str,
    aes_key: bytes | None,
    mode: str,
    text: str,
    fallback_reply: str = DEFAULT_FALLBACK_REPLY,
) -> list[Check]:
    now = int(time.time())
    fields = {
        "ToUserName": "gh_checker",
        "FromUserName": CHECKER_OPENID,
        "CreateTime": str(now),
        "MsgType": "text",
        "Content": text,
        "MsgId": str(secrets.randbelow(10**17)),
    }
    inner = "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>"
    if mode == "plain":
        params, body = _query(token), inner.encode()
    else:
        if aes_key is None:
            return [Check("message", False, f"mode {mode} needs WECHAT_ENCODING_AES_KEY")]
        encrypted = crypto.MessageCipher(aes_key, appid).encrypt(inner.encode())
        params = {**_query(token, encrypted), "encrypt_type": "aes"}
        outer = fields if mode == "compat" else {"ToUserName": "gh_checker"}
        body = (
            "<xml>"
            + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in outer.items())
            + f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        ).encode()
    params["openid"] = CHECKER_OPENID
    started = time.monotonic()
    try:
        response = session.post(url, params=params, data=body, timeout=WECHAT_CUT_S)
    except requests.Timeout:
        return [
            Check(
                "message",
                False,
                "no answer within 5 s: WeChat would retry, then show '该公众号暂时无法提供服务'",
            )
        ]
    except requests.RequestException as exc:
        return [Check("message", False, f"request failed: {type(exc).__name__}: {exc}")]
    elapsed = time.monotonic() - started
    checks = [
        Check(
            "message_status",
            response.status_code == 200,
            f"HTTP {response.status_code} in {elapsed * 1000:.0f} ms",
        )
    ]
    if response.status_code == 200:
        checks.append(_check_reply(response.content, token, appid, aes_key, mode, fallback_reply))
    return checks


def _check_reply(
    body: bytes, token: str, appid: str, aes_key: bytes | None, mode: str, fallback_reply: str
) -> Check:
    if body in (b"", b"success"):
        return Check("reply", True, "`success` (no passive reply: the AI API had nothing to say)")
    try:
        outer = messages.parse_xml(body)
        if "Encrypt" in outer:
            expected = signature.compute_signature(
                token, outer.get("TimeStamp", ""), outer.get("Nonce", ""), outer["Encrypt"]
            )
            if expected != outer.get("MsgSignature"):
                return Check("reply", False, "the reply's MsgSignature does not verify")
            if aes_key is None:
                return Check("reply", False, "encrypted reply but no AES key to check it")
            outer = messages.parse_xml(
                crypto.MessageCipher(aes_key, appid).decrypt(outer["Encrypt"])
            )
        elif mode != "plain":
            return Check("reply", False, "the request was encrypted but the reply is not")
    except (GatewayError, crypto.CryptoError) as exc:
        return Check("reply", False, f"WeChat could not read the reply: {exc}")
    ok = outer.get("ToUserName") == CHECKER_OPENID and bool(outer.get("MsgType"))
    content = outer.get("Content", f"<{outer.get('MsgType')}>")
    if fallback_reply and content == fallback_reply:
        return Check(
            "reply",
            False,
            f"WECHAT_FALLBACK_REPLY {content[:60]!r}: the gateway got no answer from the "
            "AI API (see the gateway's /health and the AI API's log)",
        )
    return Check("reply", ok, f"{outer.get('MsgType')} reply: {content[:60]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the callback URL configured in the WeChat console")
    parser.add_argument("--token", default=os.environ.get("WECHAT_TOKEN"))
    parser.add_argument("--appid", default=os.environ.get("WECHAT_APPID", ""))
    parser.add_argument("--aes-key", default=os.environ.get("WECHAT_ENCODING_AES_KEY"))
    parser.add_argument(
        "--mode",
        choices=("plain", "compat", "safe"),
        default=None,
        help="message mode (default: safe with an AES key, else plain)",
    )
    parser.add_argument("--text", default="帮助", help="the text message to send")
    parser.add_argument(
        "--fallback-reply",
        default=os.environ.get("WECHAT_FALLBACK_REPLY", DEFAULT_FALLBACK_REPLY),
        help="the gateway's WECHAT_FALLBACK_REPLY: getting it back fails the check",
    )
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed certificate")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("set WECHAT_TOKEN or pass --token")
    aes_key = crypto.decode_aes_key(args.aes_key) if args.aes_key else None
    mode = args.mode or ("safe" if aes_key else "plain")
    session = http_session(insecure=args.insecure)
    checks = check_url(args.url)
    checks.append(check_verification(session, args.url, args.token))
    checks += check_message(
        session, args.url, args.token, args.appid, aes_key, mode, args.text, args.fallback_reply
    )
    for check in checks:
        sys.stdout.write(f"[{check.verdict}] {check.name}: {check.detail}\n")
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
