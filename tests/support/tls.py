"""HTTPS clients for tests that go through nginx: they verify the test's own certificate.

`trust_env` is off on purpose: requests otherwise replaces a session's `verify` with the
machine's REQUESTS_CA_BUNDLE (where one is set) and may route loopback through a proxy.
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter


class SourceAddressAdapter(HTTPAdapter):
    """Connects from a chosen local address (e.g. 127.0.0.2), so the client differs from a proxy."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["source_address"] = (self.source, 0)
        return super().init_poolmanager(*args, **kwargs)


def verified_session(cafile: str, source_address: str | None = None) -> requests.Session:
    """A session trusting only `cafile`, optionally connecting from `source_address`."""
    session = requests.Session()
    session.trust_env = False
    session.verify = cafile
    if source_address:
        session.mount("https://", SourceAddressAdapter(source_address))
        session.mount("http://", SourceAddressAdapter(source_address))
    return session
