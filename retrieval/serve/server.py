"""Run the service with uvicorn, refusing to expose it without an API key."""

from __future__ import annotations

import ipaddress
import logging

from retrieval.config import ServeConfig
from retrieval.serve.app import create_app

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
