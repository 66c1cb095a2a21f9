"""`python -m alert_relay`: read the settings, serve until SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from alert_relay.config import ConfigError, Settings
from alert_relay.server import create_server


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("alert_relay")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    server = create_server(settings)
    # shutdown() blocks until serve_forever returns, so call it from another thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("listening on %s:%d, %r", settings.host, server.server_address[1], settings)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
