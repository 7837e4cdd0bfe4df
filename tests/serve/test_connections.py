"""Slow and numerous connections on a real socket (uvicorn on loopback, as `retrieval serve` runs it):
read deadlines for headers and bodies, a bound per client address, liveness under a slow-socket
flood, and the API key checked before any body is read (and before ``100 Continue``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from support.keywords import KeywordEncoder

ATTACKER = "127.0.0.2"  # the whole 127.0.0.0/8 is this machine: a second client address


def _address(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    return parts.hostname, parts.port


def _connect(base: str, source: str = "127.0.0.1", timeout: float = 2.0) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(_address(base))
    return sock


def _read_all(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (``True``) or ``limit`` seconds pass."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _healthz(base: str, timeout: float = 1.0) -> bool:
    try:
        with _connect(base, timeout=timeout) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data, _ = _read_all(sock, timeout)
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.fixture
def guarded(config):
    """Tight limits so the tests run in seconds."""
    return config.replace(
        max_connections=40, max_connections_per_client=8, header_timeout=1.0, body_timeout=1.5
    )


def test_headers_must_arrive_within_the_header_timeout(guarded, serving):
    with serving(guarded, KeywordEncoder()) as base, _connect(base) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never finished
        data, closed = _read_all(sock, 5.0)
        assert closed and data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - started < 3.0


def test_a_trickle_does_not_extend_the_header_deadline(guarded, serving):
    with serving(guarded, KeywordEncoder()) as base, _connect(base) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        closed = False
        while time.monotonic() - started < 5.0 and not closed:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header line every 0.2 s
            except OSError:
                closed = True
                break
            _, closed = _read_all(sock, 0.2)
        assert closed, "the connection outlived its header deadline"
        assert time.monotonic() - started < 3.5


def test_the_body_must_arrive_within_the_body_timeout(guarded, serving):
    with serving(guarded, KeywordEncoder()) as base, _connect(base) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /collections/shapes/search/text HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"text": "red"'
        )
        _, closed = _read_all(sock, 6.0)
        assert closed
        assert time.monotonic() - started < 4.0


def test_connections_per_client_address_are_bounded(guarded, serving):
    with serving(guarded, KeywordEncoder()) as base, contextlib.ExitStack() as stack:
        held = [stack.enter_context(_connect(base, ATTACKER)) for _ in range(8)]
        time.sleep(0.2)
        extra = stack.enter_context(_connect(base, ATTACKER))
        data, closed = _read_all(extra, 2.0)
        assert closed and data.startswith(b"HTTP/1.1 503"), data
        assert b"busy" in data
        assert _healthz(base)  # another address is not affected
        assert len(held) == 8


def test_liveness_survives_a_slow_socket_flood(guarded, serving):
    """60 connections from one address that send their headers a line at a time, reopened as soon as
    they are closed, against max_connections=40: after the header timeout, /healthz from another
    address answers at least 80 % of the polls."""
    duration, header_timeout = 6.0, guarded.header_timeout
    with serving(guarded, KeywordEncoder()) as base:
        stop = threading.Event()
        refused = {"408": 0, "503": 0, "closed": 0}

        def attacker() -> None:
            sockets: list[socket.socket | None] = [None] * 60
            while not stop.is_set():
                for i, sock in enumerate(sockets):
                    try:
                        if sock is None:
                            sock = _connect(base, ATTACKER, timeout=1.0)
                            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                            sock.setblocking(False)
                            sockets[i] = sock
                        else:
                            sock.send(b"X-Slow: 1\r\n")
                            answer = sock.recv(200)
                            if answer or answer == b"":
                                raise ConnectionError(answer)
                    except BlockingIOError:
                        pass
                    except (OSError, ConnectionError) as exc:
                        text = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else b""
                        key = "408" if b" 408 " in text else "503" if b" 503 " in text else "closed"
                        refused[key] += 1
                        if sock is not None:
                            sock.close()
                        sockets[i] = None
                stop.wait(0.2)
            for sock in sockets:
                if sock is not None:
                    sock.close()

        thread = threading.Thread(target=attacker, daemon=True)
        started = time.monotonic()
        thread.start()
        polls: list[tuple[float, bool]] = []
        try:
            while time.monotonic() - started < duration:
                polls.append((time.monotonic() - started, _healthz(base)))
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(timeout=10)
    after = [ok for t, ok in polls if t > header_timeout + 0.5]
    assert len(after) >= 10, polls
    share = sum(after) / len(after)
    assert share >= 0.8, (share, refused, polls)
    assert sum(refused.values()) > 60, refused  # the flood was real: the server kept closing its sockets


# -- the key before the body --------------------------------------------------------------------


def test_no_body_is_read_before_the_key_is_checked(config):
    """ASGI level: a request with a wrong key is answered 401 without the body ever being asked for."""
    import asyncio

    from retrieval.serve import create_app

    app = create_app(config.replace(api_key="s3cret"), model=KeywordEncoder())

    async def call(path: str, content_type: bytes, length: int) -> tuple[int, int]:
        reads = 0
        sent: list[dict] = []

        async def receive():
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b"x" * 1000, "more_body": reads * 1000 < length}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"localhost"),
                (b"content-type", content_type),
                (b"content-length", str(length).encode()),  # within the endpoint's body limit
                (b"x-api-key", b"wrong"),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        return sent[0]["status"], reads

    try:
        for path, content_type, length in [
            ("/knn-service", b"application/json", 250_000),
            ("/collections/shapes/search/image", b"multipart/form-data; boundary=x", 250_000),
            ("/collections/shapes/search/text", b"application/json", 60_000),
        ]:
            status, reads = asyncio.run(call(path, content_type, length))
            assert status == 401 and reads == 0, (path, status, reads)
    finally:
        app.state.service.close()


def test_expect_100_continue_gets_the_401_not_a_continue(config, serving):
    with serving(config.replace(api_key="s3cret"), KeywordEncoder()) as base, _connect(base) as sock:
        sock.sendall(
            b"POST /knn-service HTTP/1.1\r\nHost: localhost\r\nX-API-Key: wrong\r\n"
            b"Content-Type: application/json\r\nContent-Length: 250000\r\nExpect: 100-continue\r\n\r\n"
        )
        data, closed = _read_all(sock, 5.0)
        assert data.startswith(b"HTTP/1.1 401"), data
        assert b"100 Continue" not in data
        assert closed  # the announced body is never read
    with serving(config.replace(api_key="s3cret"), KeywordEncoder()) as base, _connect(base) as sock:
        body = b'{"text": "red", "num_images": 1}'
        sock.sendall(
            b"POST /knn-service HTTP/1.1\r\nHost: localhost\r\nX-API-Key: s3cret\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % len(body)
        )
        first, _ = _read_all(sock, 1.0)
        assert first.startswith(b"HTTP/1.1 100"), first  # with the right key the body is asked for
        sock.sendall(body)
        data, _ = _read_all(sock, 5.0)
        assert b"HTTP/1.1 200" in data and b'"red"' in data, data


def test_early_answers_reach_clients_that_sent_a_body(config, serving):
    """A 401 (wrong key) or 413 (too large) sent before the body is read still reaches a client that
    sent its whole body, and the client does not reuse the connection the server ends."""
    import httpx

    with (
        serving(config.replace(api_key="s3cret"), KeywordEncoder()) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        for _ in range(20):
            r = client.post(
                "knn-service", content=b'{"text": "' + b"a" * 200_000 + b'"}', headers={"X-API-Key": "no"}
            )
            assert r.status_code == 401
            r = client.post(
                "collections/shapes/search/text",
                content=b'{"text": "' + b"a" * 100_000 + b'"}',
                headers={"X-API-Key": "s3cret", "content-type": "application/json"},
            )
            assert r.status_code == 413 and r.json()["error"] == "too_large"
        assert client.get("healthz").status_code == 200


@pytest.mark.parametrize("case", ["wrong key", "too large"])
def test_early_answers_say_the_connection_closes(config, serving, case):
    """An answer sent before the body was read ends its connection, so it must say so
    (``Connection: close``): a client that reuses the connection would otherwise send its next
    request into a socket the server is closing and get no answer at all."""
    body = b'{"text": "' + b"a" * (200_000 if case == "wrong key" else 100_000) + b'"}'
    path = b"/knn-service" if case == "wrong key" else b"/collections/shapes/search/text"
    key = b"no" if case == "wrong key" else b"s3cret"
    with serving(config.replace(api_key="s3cret"), KeywordEncoder()) as base, _connect(base) as sock:
        sock.sendall(
            b"POST "
            + path
            + b" HTTP/1.1\r\nHost: localhost\r\nX-API-Key: "
            + key
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        sock.sendall(body[:1000])
        data, closed = _read_all(sock, 5.0)
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 401" if case == "wrong key" else b"http/1.1 413"), data
        assert b"\r\nconnection: close" in head, head
        assert closed


@pytest.mark.parametrize(
    "path, headers",
    [
        # 403 from the browser guard
        (
            "/collections/shapes/search/text",
            b"Origin: http://evil.example\r\nContent-Type: application/json\r\n",
        ),
        # a refusal of an upload where none is taken
        ("/upload", b"Content-Type: multipart/form-data; boundary=x\r\n"),
    ],
)
def test_any_answer_before_the_body_arrived_ends_the_connection_and_says_so(config, serving, path, headers):
    """Whatever answers before the whole body is in (a middleware, a handler, an error), the answer
    carries ``Connection: close``, and the rest of the body is not taken for a next request. Without
    it, a client whose body arrived a moment after the answer reused the connection and got nothing."""
    with serving(config, KeywordEncoder()) as base, _connect(base) as sock:
        body = b'{"text": "red"}'
        sock.sendall(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: localhost\r\n"
            + headers
            + b"Content-Length: %d\r\n\r\n" % len(body)
        )
        answer, _ = _read_all(sock, 1.0)  # the body is still to come
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 4"), answer
        assert b"\r\nconnection: close" in head, head
        sock.sendall(body + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        rest, closed = _read_all(sock, 5.0)
        assert closed and b"HTTP/1.1" not in rest, rest  # the next request went nowhere, as announced


def test_requests_in_progress_are_bounded(config):
    """Past max_connections requests being answered, more get 503 with Retry-After (sockets still
    sending headers do not count: see the flood test)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from retrieval.serve import create_app

    model = KeywordEncoder()
    gate = threading.Event()
    inside = threading.Semaphore(0)
    original = model.encode_texts

    def slow_encode(texts, **kwargs):
        inside.release()
        gate.wait(10)
        return original(texts, **kwargs)

    model.encode_texts = slow_encode
    app = create_app(config.replace(max_connections=2, workers=4), model=model)
    with TestClient(app, base_url="http://localhost") as client, ThreadPoolExecutor(2) as pool:
        held = [
            pool.submit(client.post, "/collections/shapes/search/text", json={"text": t})
            for t in ("red", "blue")
        ]
        try:
            assert inside.acquire(timeout=10)  # one is in the model, the other waits behind it
            time.sleep(0.2)
            r = client.get("/healthz")
        finally:
            gate.set()
        assert r.status_code == 503 and r.json()["error"] == "busy" and r.headers["retry-after"] == "1"
        assert all(f.result().status_code == 200 for f in held)
        assert client.get("/healthz").status_code == 200
