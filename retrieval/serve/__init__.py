"""HTTP service for collections: a JSON API, clip-retrieval's back-end API and a search page.

``create_app(config)`` builds the FastAPI application (collections opened and models loaded
once); ``run(config)`` serves it with uvicorn. Needs the ``serve`` extra.

This package's ``__init__`` is its public API; the modules behind it:

* :mod:`~retrieval.serve.app` -- :func:`create_app`: the application, middleware, error handlers.
* :mod:`~retrieval.serve.service` -- :class:`Service`: config, served collections, worker pool.
* :mod:`~retrieval.serve.served_collection` -- :class:`ServedCollection`: one collection and its
  model, thread-safe, reloaded when it changes on disk.
* :mod:`~retrieval.serve.batching` -- a model shared by collections; concurrent queries encoded
  together.
* :mod:`~retrieval.serve.routes`, :mod:`~retrieval.serve.clip_compat` -- the JSON API and
  clip-retrieval's API.
* :mod:`~retrieval.serve.inputs`, :mod:`~retrieval.serve.media`, :mod:`~retrieval.serve.errors` --
  request checks (body limits per endpoint, JSON depth), media files, the error type.
* :mod:`~retrieval.serve.urls` -- downloading a query image from a URL (global addresses only,
  the checked address, one deadline).
* :mod:`~retrieval.serve.guards` -- defences against browser-borne requests (Host allow-list,
  cross-site posts, resource policy headers).
* :mod:`~retrieval.serve.auth` -- the API key (checked before any body is read) and the reload
  permission and rate limit.
* :mod:`~retrieval.serve.connections` -- read deadlines, connections per client address, requests
  in progress.
* :mod:`~retrieval.serve.thumbnails` -- thumbnails made apart from query encoding, cached.
* :mod:`~retrieval.serve.privacy` -- server file paths kept out of answers.
* :mod:`~retrieval.serve.docs` -- ``/docs`` and ``/redoc`` served offline, the OpenAPI security schemes.
* :mod:`~retrieval.serve.server` -- :func:`run` with uvicorn.
"""

from __future__ import annotations

from retrieval.config import ServeConfig
from retrieval.serve.app import create_app
from retrieval.serve.server import run
from retrieval.serve.service import Service

__all__ = ["ServeConfig", "Service", "create_app", "run"]
