"""Run the service with uvicorn, refusing to expose it without an API key."""

from __future__ import annotations

import logging

from retrieval.config import ServeConfig
from retrieval.serve.app import create_app
from retrieval.serve.guards import is_loopback

__all__ = ["check_exposure", "is_loopback", "run"]

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


def run(config: ServeConfig) -> None:
    """Serve ``config``'s collections until interrupted (blocking)."""
    import uvicorn

    check_exposure(config)
    app = create_app(config)
    logger.info("serving %s on http://%s:%d/", sorted(config.collections), config.host, config.port)
    # log_config=None: uvicorn logs through the handlers the caller (the CLI) configured.
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        limit_concurrency=config.max_connections,
    )
