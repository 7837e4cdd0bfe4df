"""Run the service with uvicorn, refusing to expose it without an API key.

The HTTP connections go through :class:`~retrieval.serve.connections.GuardedH11Protocol` (read
deadlines, connections per client address, sockets in all); the bound on requests in progress
is part of the application (:class:`~retrieval.serve.connections.RequestLimitMiddleware`).
"""

from __future__ import annotations

import logging
from typing import Any

from retrieval.config import ServeConfig
from retrieval.serve.app import create_app
from retrieval.serve.connections import guarded_protocol
from retrieval.serve.guards import is_loopback

__all__ = ["check_exposure", "is_loopback", "run", "uvicorn_config"]

logger = logging.getLogger(__name__)


def check_exposure(config: ServeConfig) -> None:
    """Refuse a non-loopback bind without an API key unless ``allow_insecure`` says so."""
    if is_loopback(config.host):
        return
    if not config.api_key and not config.allow_insecure:
        raise ValueError(
            f"refusing to serve on {config.host!r} without an API key: anyone who can reach it could query "
            "your collections. Set an API key (--api-key or $RETRIEVAL_API_KEY), bind 127.0.0.1, "
            "or pass --insecure to accept the risk"
        )
    if not config.api_key:
        logger.warning("serving on %s without an API key", config.host)
    if not config.allowed_hosts:
        logger.warning(
            "serving on %s and answering to any Host name: links in answers (clip-retrieval's 'url') are built "
            "from it; name the host clients use with --allowed-host",
            config.host,
        )


def uvicorn_config(config: ServeConfig, app: Any, **overrides: Any) -> Any:
    """The ``uvicorn.Config`` that serves ``app`` as ``config`` says (protocol, limits, timeouts)."""
    import uvicorn

    settings: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_config": None,  # uvicorn logs through the handlers the caller (the CLI) configured
        "access_log": False,
        "limit_concurrency": None,  # requests in progress are bounded by the application
        "http": guarded_protocol(
            header_timeout=config.header_timeout,
            body_timeout=config.body_timeout,
            max_per_client=config.max_connections_per_client,
            max_requests=config.max_connections,
        ),
        "timeout_keep_alive": min(5.0, config.header_timeout),
    }
    settings.update(overrides)
    return uvicorn.Config(app, **settings)


def run(config: ServeConfig) -> None:
    """Serve ``config``'s collections until interrupted (blocking)."""
    import uvicorn

    check_exposure(config)
    app = create_app(config)
    logger.info("serving %s on http://%s:%d/", sorted(config.collections), config.host, config.port)
    uvicorn.Server(uvicorn_config(config, app)).run()
