"""The module Gunicorn imports: `gunicorn -c gunicorn.conf.py wechat_gateway.wsgi:app`."""

from .app import create_app

app = create_app()
