"""Downloading a query image from a URL a client sent, without letting the URL reach inside the network.

The rules (server-side request forgery and slow-server defences):

* only ``http`` and ``https`` URLs with a host; anything malformed (bad port, broken IPv6
  literal, a name that is not valid IDNA) is a 400;
* the host name is encoded once (IDNA 2008 with UTS #46 mapping, as browsers and HTTP clients
  do) and that one ASCII name is both resolved and sent in ``Host`` / TLS SNI;
* it is resolved once; unless private addresses are allowed, every address it resolves to must
  be global in the sense of :mod:`ipaddress` (so loopback, private, link-local, carrier-grade
  NAT ``100.64.0.0/10``, benchmarking, documentation and multicast ranges are refused); the
  download connects to the checked address itself, so a second DNS answer (DNS rebinding)
  cannot swap it;
* no redirects; the size is capped while the body streams in;
* one deadline covers the name lookup, connecting, the headers and the whole body: a server that drips a byte
  every few seconds is cut off when the deadline passes, not allowed a fresh timeout per read.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

from retrieval.serve.errors import ApiError, bad_request, too_large

__all__ = ["fetch_image_url", "is_global_address"]

_CHUNK = 64 * 1024


def is_global_address(address: str) -> bool:
    """Whether ``address`` (an IP address as text) is globally reachable: :mod:`ipaddress`'s
    ``is_global``, minus multicast; IPv4-mapped IPv6 addresses are judged as their IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


def _ascii_host(host: str) -> str:
    """The one ASCII form of ``host`` used for the lookup, ``Host`` and SNI."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if host.isascii():
        return host.lower()
    try:
        import idna

        return idna.encode(host, uts46=True).decode("ascii")
    except ImportError:  # pragma: no cover - idna comes with httpx, a dependency of the serve extra
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:  # idna.IDNAError is one
        raise bad_request(
            "bad_url", f"the host name {host[:100]!r} is not a valid international name: {exc}"
        ) from None


def _parse(url: Any) -> tuple[str, str, int, str, str]:
    """``url`` -> ``(scheme, ascii host, port, Host header, request target)``; 400 when malformed."""
    if not isinstance(url, str) or not url:
        raise bad_request("bad_url", "image_url must be a non-empty string")
    shown = url[:200]
    try:
        parts = urlsplit(url)
        scheme, hostname, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError as exc:
        raise bad_request("bad_url", f"image_url {shown!r} is not a valid URL: {exc}") from None
    if scheme not in ("http", "https") or not hostname:
        raise bad_request("bad_url", f"image_url must be an http(s) URL with a host, received {shown!r}")
    host = _ascii_host(hostname)
    default = 443 if scheme == "https" else 80
    port = default if port is None else port
    if not 0 < port < 65536:
        raise bad_request("bad_url", f"image_url {shown!r} has port {port}, expected 1..65535")
    name = f"[{host}]" if ":" in host else host
    host_header = name if port == default else f"{name}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # Keep what is already percent-encoded; encode spaces, controls and non-ASCII.
    target = quote(target, safe="!#$%&'()*+,/:;=?@[]~")
    return scheme, host, port, host_header, target


def _lookup(host: str, port: int, timeout: float) -> list[Any]:
    """``socket.getaddrinfo`` bounded by ``timeout`` (it has no timeout of its own): run in a
    daemon thread that is left behind when the resolver hangs."""
    answer: list[Any] = []

    def work() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            answer.append(exc)

    thread = threading.Thread(target=work, name="image-url-lookup", daemon=True)
    thread.start()
    thread.join(max(timeout, 0.0))
    if not answer:
        raise TimeoutError(f"looking up {host!r} took longer than {timeout:.1f} s")
    if isinstance(answer[0], Exception):
        raise bad_request("bad_url", f"cannot resolve {host!r}: {answer[0]}")
    return list(answer[0])


def _resolve(host: str, port: int, allow_private: bool, timeout: float) -> str:
    """The address to connect to: the first of one lookup, after checking all of them."""
    infos = _lookup(host, port, timeout)
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise bad_request("bad_url", f"cannot resolve {host!r}: no address")
    if not allow_private and not all(is_global_address(a) for a in addresses):
        raise ApiError(403, "url_refused", f"{host!r} resolves to a private or local address; refused")
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address while checking the certificate (and sending SNI) for the host name."""

    def __init__(self, address: str, port: int, server_name: str, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=ssl.create_default_context())
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)  # type: ignore[attr-defined]


def _cut(conn: http.client.HTTPConnection) -> None:
    """At the deadline: shut the socket down, which wakes a read blocked in another thread."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def fetch_image_url(url: Any, *, max_bytes: int, timeout: float, allow_private: bool) -> bytes:
    """Download a query image (see the module docstring for the rules); every failure is a 4xx
    :class:`~retrieval.serve.errors.ApiError`. Blocking: run it in a worker thread."""
    deadline = time.monotonic() + timeout
    scheme, host, port, host_header, target = _parse(url)
    shown = str(url)[:200]
    try:
        address = _resolve(host, port, allow_private, timeout)
    except TimeoutError:
        raise ApiError(
            400, "url_timeout", f"downloading {shown} took longer than the limit of {timeout} s"
        ) from None
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = _PinnedHTTPSConnection(address, port, host, timeout)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _cut, (conn,))
    timer.daemon = True
    timer.start()
    try:
        conn.request(
            "GET",
            target,
            headers={
                "Host": host_header,
                "Accept": "image/*",
                "Accept-Encoding": "identity",
                "User-Agent": "siamese-retrieval",
            },
        )
        response = conn.getresponse()
        if response.status != 200:
            raise bad_request("bad_url", f"GET {shown} answered HTTP {response.status}, expected 200")
        length = response.getheader("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise too_large(f"the image at image_url is larger than the limit of {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise too_large(f"the image at image_url is larger than the limit of {max_bytes} bytes")
            chunks.append(chunk)
        if time.monotonic() >= deadline:  # the body may look complete only because the socket was cut
            raise TimeoutError
        return b"".join(chunks)
    except ApiError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
            raise ApiError(
                400, "url_timeout", f"downloading {shown} took longer than the limit of {timeout} s"
            ) from None
        raise bad_request("bad_url", f"cannot download image_url: {type(exc).__name__}: {exc}") from None
    finally:
        timer.cancel()
        conn.close()
