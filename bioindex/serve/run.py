"""Running the app under uvicorn the way a person at a terminal wants: the URL and "ready"
once the socket listens, one line per request, and a goodbye on Ctrl-C."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn

# uvicorn's own start-up chatter stays quiet (warnings only); its access log speaks, one
# line per request, on stderr beside our own lines.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(asctime)s %(client_addr)s "%(request_line)s" %(status_code)s',
            "datefmt": "%H:%M:%S",
            "use_colors": False,
        },
        "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s",
                    "use_colors": False},
    },
    "handlers": {
        "access": {"class": "logging.StreamHandler", "formatter": "access",
                   "stream": "ext://sys.stderr"},
        "default": {"class": "logging.StreamHandler", "formatter": "default",
                    "stream": "ext://sys.stderr"},
    },
    "loggers": {
        "uvicorn.error": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}  # fmt: skip


class _Server(uvicorn.Server):
    """Says "ready" when the socket is listening, not before, with the port it got."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[int], None]):
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready(bound_port(self))


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (what port 0 turned into)."""
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return int(server.config.port)


def serve_app(app: Any, host: str, port: int, echo: Callable[[str], None]) -> int:
    """Serve `app` until Ctrl-C (or SIGTERM); returns how many requests were answered."""
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, host=host, port=port, log_config=LOG_CONFIG, access_log=True)
    server = _Server(config, lambda bound: echo(f"ready: open http://{shown}:{bound}/ "
                                                f"(Ctrl-C stops)"))  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
    return int(server.server_state.total_requests)
