"""Admission of connections and requests: slow or numerous sockets cannot lock clients out.

A plain HTTP server lets a client hold a connection open forever by sending its headers a byte at
a time, and counting such connections against one global limit lets a few hundred of them (no API
key needed) refuse everyone else. Here:

* **read deadlines** (:class:`GuardedH11Protocol`): a connection must deliver its request line and
  headers within ``header_timeout`` seconds of opening (or of its previous answer, when kept alive),
  and the body within ``body_timeout`` seconds of the headers. One that misses a deadline is closed
  (answered ``408`` first when nothing was answered yet). The deadline covers the whole header or
  body, not each read: a byte every few seconds does not extend it.
* **per-client bound**: one client address may hold ``max_connections_per_client`` connections
  open; more are answered ``503`` and closed at once (``0`` turns this off, e.g. behind a reverse
  proxy where every client has the proxy's address).
* **sockets in all**: at most four times ``max_connections`` are open; more are answered ``503``.
* **requests in progress** (:class:`RequestLimitMiddleware`): at most ``max_connections`` requests
  are answered at once, counted once their headers are in and their API key checked, so sockets
  still sending headers take no place there; more get ``503`` with ``Retry-After``.

After an answer started before the whole request body was in (a ``401`` or ``413`` from a check
of the headers, a ``403`` from the browser guard, a ``404`` from a handler that had no use for
the body), the connection stops, and the answer says so (``Connection: close``, added here
whatever answered): a client that kept the connection would send its next request into a socket
nobody reads. The server half-closes the connection, discards what the client still sends for
:data:`LINGER_SECONDS` (closing at once could reset the connection before the client has read the
answer) and closes it, instead of reading the rest of the body.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol", "RequestLimitMiddleware", "guarded_protocol"]

OPEN_SOCKETS_PER_REQUEST_SLOT = 4
LINGER_SECONDS = 2.0  # after an early answer: how long what the client still sends is discarded


def _raw_response(status: int, reason: str, code: str, detail: str) -> bytes:
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and connection bounds (module docstring).

    Configured through class attributes: use :func:`guarded_protocol` for a class with values."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_per_client: int = 32
    max_open: int = 1024
    per_client: collections.Counter[str] = collections.Counter()  # replaced per server

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._address: str | None = None
        self._lingering = False
        self._ends_early = False
        # uvicorn closes the transport it gave the request cycle once an answer says "close":
        # that close lingers after an early answer (module docstring)
        self.transport = _LingeringClose(transport, self)
        self.app = self._announcing_close(self.app)
        address = self.client[0] if self.client else None
        if len(self.connections) > self.max_open:
            self._refuse("the server has too many open connections; try again in a moment")
            return
        if address is not None and self.max_per_client > 0:
            if self.per_client[address] >= self.max_per_client:
                self._refuse(
                    f"your address already has {self.max_per_client} connections open; reuse them "
                    "(keep-alive) or close some"
                )
                return
            self.per_client[address] += 1
            self._address = address
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        if self._address is not None:
            self.per_client[self._address] -= 1
            if self.per_client[self._address] <= 0:
                del self.per_client[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body nobody will read
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        if self._lingering:  # the answer ended the connection before its body was read
            self.server_state.total_requests += 1
            return
        super().on_response_complete()
        self._track()

    def _announcing_close(self, app: Any) -> Any:
        """``app`` whose answers say ``Connection: close`` when they start before the body is in."""

        async def announcing(scope: Any, receive: Any, send: Any) -> None:
            async def send_announcing(message: Any) -> None:
                if message["type"] == "http.response.start" and self.conn.their_state is h11.SEND_BODY:
                    self._ends_early = True
                    headers = list(message.get("headers", ()))
                    if not any(name.lower() == b"connection" for name, _ in headers):
                        message = {**message, "headers": [*headers, (b"connection", b"close")]}
                await send(message)

            await app(scope, receive, send_announcing)

        return announcing

    def _linger(self) -> None:
        self._arm(None)
        self._lingering = True
        transport = self.transport.wrapped
        try:
            if transport.can_write_eof():
                transport.write_eof()  # the client sees the end of the answer
        except (OSError, RuntimeError):
            transport.close()
            return
        self.flow.resume_reading()
        self._deadline = self.loop.call_later(LINGER_SECONDS, transport.close)

    # -- deadlines ---------------------------------------------------------------------------

    def _track(self) -> None:
        """Arm the deadline of what the connection is waiting for from the client now."""
        if self._lingering:
            return
        if self.transport.is_closing():
            self._arm(None)
            return
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase:
            self._arm(phase)

    def _arm(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            seconds = self.header_timeout if phase == "headers" else self.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "headers" and self.conn.our_state is h11.IDLE:
            self.transport.write(
                _raw_response(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"the request headers did not arrive within {self.header_timeout:g} s",
                )
            )
        # a body that stops arriving: the application sees the client go away
        self.transport.close()

    def _refuse(self, detail: str) -> None:
        self.transport.write(_raw_response(503, "Service Unavailable", "busy", detail))
        self.transport.close()


class _LingeringClose:
    """The connection's transport, whose ``close`` lingers after an early answer (module docstring)."""

    def __init__(self, transport: Any, protocol: GuardedH11Protocol) -> None:
        self.wrapped = transport
        self._protocol = protocol

    def close(self) -> None:
        protocol = self._protocol
        if protocol._ends_early and not protocol._lingering and not self.wrapped.is_closing():
            protocol._linger()
        else:
            self.wrapped.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def guarded_protocol(
    *, header_timeout: float, body_timeout: float, max_per_client: int, max_requests: int
) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class with these limits and its own per-client counts (one per server)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": float(header_timeout),
            "body_timeout": float(body_timeout),
            "max_per_client": int(max_per_client),
            "max_open": OPEN_SOCKETS_PER_REQUEST_SLOT * int(max_requests),
            "per_client": collections.Counter(),
        },
    )


class RequestLimitMiddleware:
    """At most ``limit`` HTTP requests answered at once; more get ``503`` with ``Retry-After``."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = int(limit)
        self.active = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            body = json.dumps(
                {"error": "busy", "detail": f"the server is answering {self.limit} requests; try again soon"}
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
