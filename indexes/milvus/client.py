"""The one door to pymilvus: connecting to a location, and every request with a bounded time and a clear error.

pymilvus is imported here, on first use, so ``import indexes`` stays free of it. Each
collection handle has its own gRPC channel (a dead server's channel is not shared with the
handles opened after it comes back) with short reconnect back-off. Every request carries
the location's timeout, which also bounds pymilvus's retries, so an unreachable or stopped
server fails within about that time with a :class:`MilvusUnavailableError` naming the
location; other refusals raise ``RuntimeError`` with the server's message.
"""

from __future__ import annotations

import logging
from typing import Any

from indexes.location import MILVUS_LITE, Location

__all__ = ["Client", "MilvusUnavailableError", "import_pymilvus"]

logger = logging.getLogger(__name__)

_INSTALL = "pip install 'siamese-retrieval[distributed]' (or: pip install pymilvus milvus-lite)"
_GRPC_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 500,
    "grpc.max_reconnect_backoff_ms": 2_000,
    "grpc.use_local_subchannel_pool": 1,
}


class MilvusUnavailableError(ConnectionError):
    """The Milvus server could not be reached, or stopped answering, within the location's timeout."""


def import_pymilvus() -> Any:
    """The pymilvus module, or an ``ImportError`` saying what to install."""
    try:
        import pymilvus
    except ImportError as exc:
        raise ImportError(f"Milvus locations need pymilvus: {_INSTALL}") from exc
    return pymilvus


def _is_unavailable(exc: BaseException) -> bool:
    code = getattr(exc, "code", None)
    text = str(getattr(exc, "message", "") or exc)
    name = getattr(code, "name", "")
    return (
        code == 2  # pymilvus: connect failed
        or name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        or "Retry timeout" in text
        or "server unavailable" in text
        or "failed to connect" in text.lower()
    )


class Client:
    """A connection to one location's Milvus (server or Lite) and the requests collections make."""

    def __init__(self, location: Location) -> None:
        pymilvus = import_pymilvus()
        self.location = location
        self.timeout = location.timeout
        self.lite = location.kind == MILVUS_LITE
        kwargs: dict[str, Any] = {
            "timeout": self.timeout,
            "dedicated": True,
            "grpc_options": dict(_GRPC_OPTIONS),
        }
        if self.lite:
            path = location.path
            assert path is not None
            if not path.expanduser().resolve().parent.is_dir():
                raise FileNotFoundError(
                    f"cannot open {location}: folder {path.expanduser().resolve().parent} does not exist; create it first"
                )
            uri = str(path.expanduser().resolve())
        else:
            uri = location.uri
            if location.token:
                kwargs["token"] = location.token
            if location.db:
                kwargs["db_name"] = location.db
            if location.tls:
                kwargs["secure"] = True
            for key in ("server_pem", "ca_pem", "client_pem", "client_key"):
                value = getattr(location, key)
                if value:
                    kwargs[f"{key}_path"] = value
            if location.server_name:
                kwargs["server_name"] = location.server_name
        try:
            self._client = pymilvus.MilvusClient(uri, **kwargs)
            self.server_version = str(self._client.get_server_version(timeout=self.timeout))
        except ImportError as exc:
            raise ImportError(f"Milvus Lite locations need milvus-lite: {_INSTALL}") from exc
        except Exception as exc:
            reason = str(getattr(exc, "message", "") or exc)
            if self.lite and "milvus-lite is required" in reason:
                raise ImportError(f"{location} needs milvus-lite: {_INSTALL}") from None
            if self.lite:
                raise MilvusUnavailableError(
                    f"cannot open the Milvus Lite database of {location} ({reason}): another process may hold "
                    "it (Milvus Lite serves one process per file); close it there, or use a Milvus server "
                    "for several processes"
                ) from None
            raise MilvusUnavailableError(
                f"cannot reach Milvus at {location} within {self.timeout:g} s ({reason}): check that the "
                "server runs and listens there, the TLS options, and the credentials (MILVUS_TOKEN or "
                "MILVUS_USER / MILVUS_PASSWORD); raise ?timeout= for a slow network"
            ) from None
        self.DataType = pymilvus.DataType
        self._exception = pymilvus.MilvusException

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args, **kwargs)`` with the location's timeout; failures become clear errors."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except self._exception as exc:
            reason = str(getattr(exc, "message", "") or exc)
            if _is_unavailable(exc):
                raise MilvusUnavailableError(
                    f"lost Milvus at {self.location} during {what} (no answer within {self.timeout:g} s: "
                    f"{reason}); once it is back, re-run: a copy or ingest with fixed ids resumes"
                ) from None
            raise RuntimeError(f"Milvus at {self.location} refused {what}: {reason}") from None
        except Exception as exc:
            if _is_unavailable(exc):
                raise MilvusUnavailableError(f"lost Milvus at {self.location} during {what}: {exc}") from None
            raise

    def schema(self, dim: int) -> Any:
        """id INT64 primary key (ids chosen by the collection), vector FLOAT_VECTOR[dim], meta JSON."""
        import pymilvus

        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", self.DataType.INT64, is_primary=True)
        schema.add_field("vector", self.DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("meta", self.DataType.JSON)
        return schema

    def index_params(self, index_type: str, metric: str, build: dict[str, Any]) -> Any:
        params = self._client.prepare_index_params()
        params.add_index(
            field_name="vector", index_name="vector", index_type=index_type, metric_type=metric, params=build
        )
        return params

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # pragma: no cover - closing a dead channel
            logger.debug("closing the Milvus client of %s failed", self.location, exc_info=True)
