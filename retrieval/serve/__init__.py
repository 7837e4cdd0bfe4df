"""HTTP service for collections: a JSON API, clip-retrieval's back-end API and a search page.

``create_app(config)`` builds the FastAPI application (collections opened and models loaded
once); ``run(config)`` serves it with uvicorn. Needs the ``serve`` extra.
"""

from __future__ import annotations

from retrieval.config import ServeConfig
from retrieval.serve.app import create_app
from retrieval.serve.server import run

__all__ = ["ServeConfig", "create_app", "run"]
