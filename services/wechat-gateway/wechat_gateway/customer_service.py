"""WECHAT_SLOW_REPLY_MODE=custom: late answers pushed through the customer-service API.

The access_token is one shared resource per AppID: fetched with the AppSecret, cached in
Redis for every replica, refreshed by one replica at a time (a `SET NX` lock) five minutes
before it expires, and dropped when WeChat says it is invalid (40001/40014/42001); fetching
a new one invalidates the old one for everybody, hence the lock.
https://developers.weixin.qq.com/doc/service/en/Basic_Information/Get_access_token.html
https://developers.weixin.qq.com/doc/service/en/api/customer/message/api_sendcustommessage
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import requests

from . import metrics
from .config import Settings
from .errors import ConfigError
from .parked import CONTINUATION
from .splitting import MORE_HINT, PART_BYTES, split_utf8

log = logging.getLogger(__name__)

TOKEN_ERRORS = {40001, 40014, 42001}  # invalid / expired access_token: refresh, retry once
PERMANENT_ERRORS = {
    48001: "the account lacks customer-service permission (verify the account)",
    45015: "outside the 48-hour window, or the user unsubscribed",
    45047: "customer-service quota for this user used up",
    40003: "invalid openid",
}
REFRESH_MARGIN_S = 300
MAX_PARTS = 5  # the quota: 5 customer-service messages per 48 h after the user's message


class WeChatApiError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode


class AccessTokenProvider:
    """The current access_token, shared through Redis when there is one."""

    def __init__(
        self,
        api_base: str,
        appid: str,
        appsecret: str,
        client: redis.Redis | None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.appid = appid
        self._appsecret = appsecret
        self.client = client
        self.session = session or requests.Session()
        self.clock = clock
        self.sleep = sleep
        self._key = f"cn:gw:access_token:{appid}"
        self._lock_key = f"cn:gw:access_token_lock:{appid}"
        self._local: dict[str, Any] | None = None
        self._local_lock = threading.Lock()

    def token(self) -> str:
        """A token valid for at least REFRESH_MARGIN_S more seconds."""
        cached = self._cached()
        if cached and cached["expires_at"] - self.clock() > REFRESH_MARGIN_S:
            return cached["token"]
        return self._refresh(stale=cached["token"] if cached else None)

    def invalidate(self, token: str) -> None:
        """WeChat refused `token`: forget it unless another replica already replaced it."""
        cached = self._cached()
        if cached and cached["token"] == token:
            self._store(None)

    # -- cache ------------------------------------------------------------------------
    def _cached(self) -> dict[str, Any] | None:
        if self.client is None:
            return self._local
        try:
            raw = self.client.get(self._key)
        except redis.RedisError:
            return self._local
        return json.loads(raw) if raw else None

    def _store(self, entry: dict[str, Any] | None) -> None:
        self._local = entry
        if self.client is None:
            return
        try:
            if entry is None:
                self.client.delete(self._key)
            else:
                ttl = max(int(entry["expires_at"] - self.clock()), 1)
                self.client.set(self._key, json.dumps(entry), ex=ttl)
        except redis.RedisError:
            log.warning(
                "could not share the access_token through redis",
                extra={"event": "token_cache_error"},
            )

    # -- refresh ----------------------------------------------------------------------
    def _refresh(self, stale: str | None) -> str:
        """Fetch a new token, unless another caller has stored one since `stale` was read.

        The check is repeated under the lock: a replica that read the cache just before
        another one stored its new token, and took the lock just after it was released,
        would otherwise fetch a second token.
        """
        if self.client is None:
            return self._refresh_alone(stale)
        try:
            locked = self.client.set(self._lock_key, "1", nx=True, ex=10)
        except redis.RedisError:  # Redis down: this process refreshes for itself meanwhile
            return self._refresh_alone(stale)
        if locked:
            try:
                return self._replaced(self._cached(), stale) or self._fetch()
            finally:
                with contextlib.suppress(redis.RedisError):
                    self.client.delete(self._lock_key)
        return self._await_other_refresher(stale)

    def _refresh_alone(self, stale: str | None) -> str:
        with self._local_lock:
            return self._replaced(self._local, stale) or self._fetch()

    def _replaced(self, cached: dict[str, Any] | None, stale: str | None) -> str | None:
        """The cached token when it is another than `stale` and still valid, else None."""
        if cached and cached["token"] != stale and cached["expires_at"] > self.clock():
            return str(cached["token"])
        return None

    def _await_other_refresher(self, stale: str | None) -> str:
        """Another replica holds the lock: wait (bounded) for the token it stores."""
        deadline = self.clock() + 5
        while self.clock() < deadline:
            token = self._replaced(self._cached(), stale)
            if token:
                return token
            self.sleep(0.05)
        raise WeChatApiError(-1, "timed out waiting for another replica to refresh the token")

    def _fetch(self) -> str:
        params = {"grant_type": "client_credential", "appid": self.appid, "secret": self._appsecret}
        try:
            response = self.session.get(f"{self.api_base}/cgi-bin/token", params=params, timeout=5)
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            metrics.ACCESS_TOKEN_REFRESHES.labels(result="error").inc()
            raise WeChatApiError(-1, f"token request failed: {type(exc).__name__}") from None
        if "access_token" not in document:
            metrics.ACCESS_TOKEN_REFRESHES.labels(result="error").inc()
            log.error(
                "access_token refresh refused: errcode %s",
                document.get("errcode"),
                extra={"event": "token_refresh_error", "errcode": document.get("errcode")},
            )
            raise WeChatApiError(int(document.get("errcode", -1)), str(document.get("errmsg")))
        expires_in = int(document.get("expires_in", 7200))
        self._store({"token": document["access_token"], "expires_at": self.clock() + expires_in})
        metrics.ACCESS_TOKEN_REFRESHES.labels(result="ok").inc()
        log.info(
            "access_token refreshed", extra={"event": "token_refreshed", "expires_in": expires_in}
        )
        return document["access_token"]


def custom_messages(openid: str, reply: dict[str, Any]) -> list[dict[str, Any]]:
    """Customer-service message bodies for a reply document; long text becomes several."""
    kind = reply.get("type")
    if kind == "text":
        parts = split_utf8(str(reply.get("content") or ""), PART_BYTES)
        return [_text_body(openid, part) for part in parts]
    if kind == "image":
        return [{"touser": openid, "msgtype": "image", "image": {"media_id": reply["media_id"]}}]
    if kind == "news":
        article = reply["articles"][0]
        item = {
            "title": article.get("title", ""),
            "description": article.get("description", ""),
            "url": article.get("url", ""),
            "picurl": article.get("pic_url", ""),
        }
        return [{"touser": openid, "msgtype": "news", "news": {"articles": [item]}}]
    return []


def _text_body(openid: str, content: str) -> dict[str, Any]:
    return {"touser": openid, "msgtype": "text", "text": {"content": content}}


def _joined(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "text", "content": "".join(b["text"]["content"] for b in bodies)}


class CustomServiceSender:
    """Sends reply documents with retries; False tells the caller to park the answer."""

    def __init__(
        self,
        tokens: AccessTokenProvider,
        session: requests.Session | None = None,
        backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tokens = tokens
        self.session = session or requests.Session()
        self.backoff_s = backoff_s
        self.sleep = sleep

    def deliver(self, openid: str, reply: dict[str, Any]) -> dict[str, Any] | None:
        """Send `reply`; what could not be sent comes back (to be parked), else None.

        A long text already half sent returns only its unsent parts, so parking never
        makes the user read a part twice. Past the quota, the last message says 继续 and
        the rest comes back marked CONTINUATION, for the user's 继续 only; a rest the user
        was not told about comes back unmarked, to be parked for their next message.
        """
        bodies, later = custom_messages(openid, reply), []
        if len(bodies) > MAX_PARTS:
            bodies, later = bodies[: MAX_PARTS - 1], bodies[MAX_PARTS - 1 :]
        for index, body in enumerate([*bodies, _text_body(openid, MORE_HINT)] if later else bodies):
            if not self._send_with_retries(body):
                if index == 0 or body["msgtype"] != "text":
                    return reply
                return _joined(bodies[index:] + later)  # the user was not told to ask for it
        # The last message told the user to reply 继续: the rest is theirs on 继续 (parked.py).
        return {**_joined(later), CONTINUATION: True} if later else None

    def _send_with_retries(self, body: dict[str, Any]) -> bool:
        token_retried = False
        for attempt in range(len(self.backoff_s) + 1):
            try:
                self._send(body)
            except WeChatApiError as exc:
                if exc.errcode in PERMANENT_ERRORS:
                    metrics.CUSTOM_SENDS.labels(result="not_retryable").inc()
                    log.warning(
                        "customer-service send refused (%s): %s; parking the answer",
                        exc.errcode,
                        PERMANENT_ERRORS[exc.errcode],
                        extra={"event": "custom_send_refused", "errcode": exc.errcode},
                    )
                    return False
                if exc.errcode in TOKEN_ERRORS and not token_retried:
                    token_retried = True
                    continue  # the token was dropped in _send; retry at once with a new one
                log.warning(
                    "customer-service send failed (%s), attempt %d",
                    exc,
                    attempt + 1,
                    extra={"event": "custom_send_retry", "errcode": exc.errcode},
                )
                if attempt < len(self.backoff_s):
                    metrics.CUSTOM_SENDS.labels(result="retried").inc()
                    self.sleep(self.backoff_s[attempt])
                continue
            metrics.CUSTOM_SENDS.labels(result="ok").inc()
            return True
        metrics.CUSTOM_SENDS.labels(result="failed").inc()
        log.error(
            "customer-service send failed after retries; parking the answer",
            extra={"event": "custom_send_failed"},
        )
        return False

    def _send(self, body: dict[str, Any]) -> None:
        token = self.tokens.token()
        url = f"{self.tokens.api_base}/cgi-bin/message/custom/send"
        try:
            response = self.session.post(
                url,
                params={"access_token": token},
                data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                headers={"Content-Type": "application/json"},
                timeout=5,
            )
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise WeChatApiError(-1, f"request failed: {type(exc).__name__}") from None
        errcode = int(document.get("errcode", 0))
        if errcode in TOKEN_ERRORS:
            self.tokens.invalidate(token)
        if errcode:
            raise WeChatApiError(errcode, str(document.get("errmsg")))


def build_sender(settings: Settings) -> CustomServiceSender:
    client = None
    if settings.redis_url:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=0.5, socket_timeout=1.0
        )
    if not settings.appsecret:
        raise ConfigError("WECHAT_SLOW_REPLY_MODE=custom needs WECHAT_APPSECRET")
    tokens = AccessTokenProvider(
        settings.api_base, settings.account.appid, settings.appsecret, client
    )
    return CustomServiceSender(tokens)
