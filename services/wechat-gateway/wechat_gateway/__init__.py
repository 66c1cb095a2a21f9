"""WeChat Official Account callback gateway: verify, decrypt, dedup, forward, reply in time."""
