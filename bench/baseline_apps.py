"""The two apps the gateway is measured against, served by the gateway's own gunicorn.conf.py.

- `bare_app`: Flask answering POST /wechat with a constant: the ceiling that Flask under
  these Gunicorn settings sets on this machine (the ratio's denominator).
- `wechatpy_app`: the same callbacks handled the way wechatpy's own Flask example does
  (check_signature, WeChatCrypto.decrypt_message, parse_message, create_reply,
  encrypt_message), forwarding each message to the same instant AI responder; no dedup,
  no metrics, no logs: a point of comparison, not a rival implementation.

Both read the account from the same environment variables as the gateway.
"""

from __future__ import annotations

import os

import requests
from flask import Flask, Response, request
from wechatpy import create_reply, parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

bare_app = Flask("bench_bare")


@bare_app.get("/health")
def bare_health() -> Response:
    return Response('{"status": "ok"}', mimetype="application/json")


@bare_app.post("/wechat")
def bare_callback() -> Response:
    return Response("success", mimetype="text/plain")


def _wechatpy_app() -> Flask:
    token = os.environ["WECHAT_TOKEN"]
    crypto = WeChatCrypto(token, os.environ["WECHAT_ENCODING_AES_KEY"], os.environ["WECHAT_APPID"])
    reply_url = os.environ["AI_API_URL"].rstrip("/") + "/v1/reply"
    session = requests.Session()
    app = Flask("bench_wechatpy")

    @app.get("/health")
    def health() -> Response:
        return Response('{"status": "ok"}', mimetype="application/json")

    @app.post("/wechat")
    def callback() -> Response:
        args = request.args
        timestamp, nonce = args.get("timestamp", ""), args.get("nonce", "")
        try:
            check_signature(token, args.get("signature", ""), timestamp, nonce)
            xml = crypto.decrypt_message(request.data, args["msg_signature"], timestamp, nonce)
        except (InvalidSignatureException, KeyError):
            return Response("forbidden", status=403)
        msg = parse_message(xml)
        document = {
            "msg_id": str(msg.id),
            "type": msg.type,
            "openid": msg.source,
            "content": getattr(msg, "content", None),
        }
        try:
            answer = session.post(reply_url, json=document, timeout=(1, 4.5)).json()["reply"]
        except (requests.RequestException, ValueError, KeyError):
            answer = {"type": "text", "content": "抱歉，服务暂时繁忙，请稍后再试。"}
        reply = create_reply(answer["content"], msg)
        body = crypto.encrypt_message(reply.render(), nonce, timestamp)
        return Response(body, mimetype="application/xml")

    return app


wechatpy_app = _wechatpy_app() if "AI_API_URL" in os.environ else None
