"""Body size and read-time limits, header deadlines and keep-alive, against a real uvicorn server on loopback
configured as ``stitch serve`` configures it (fake searcher and encoder: no model needed). Every loop here is
bounded and every server stops by itself."""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import time

import httpx
import pytest

from service_util import fake_app, rss_bytes, running, server_process

pytest.importorskip("fastapi")

MB = 2**20


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM): catches a spike that is freed again."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes: then a TimeoutError)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def offer_body(port: int, total: int, chunked: bool) -> tuple[bytes, int]:
    """POST a ``total``-byte body in 1 MiB pieces (declared up front, or chunked without a length), reading
    whatever the server answers meanwhile; stops when the server closes. Returns (response, bytes sent)."""
    piece = b"7" * MB
    framed = b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece
    head = b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % total
    response, sent = b"", 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        sock.sendall(head)
        try:
            while sent < total:
                if sel.select(timeout=0):
                    data = sock.recv(65536)
                    if not data:
                        break
                    response += data
                sock.sendall(framed)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the rest of the body is never read
        try:
            response += read_until_closed(sock, 10)
        except OSError:
            pass
    return response, sent


@pytest.fixture(scope="module")
def server_alone(tmp_path_factory):
    """The service in its own process, so that its memory is measured alone."""
    with server_process(tmp_path_factory.mktemp("images")) as (url, pid):
        yield url, pid


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mb_body_gets_413_and_the_server_stays_small(server_alone, chunked):
    url, pid = server_alone
    with httpx.Client(base_url=url, timeout=30) as client:  # warm: the first search allocates its buffers
        assert client.post("/search", json={"text": "warm up"}).status_code == 200
    rss_before, peak_before = rss_bytes(pid), peak_rss_bytes(pid)

    response, sent = offer_body(port_of(url), 200 * MB, chunked)

    growth = peak_rss_bytes(pid) - peak_before
    print(
        f"\n{'chunked' if chunked else 'content-length'}: {sent / MB:.0f} MiB sent before the server closed; "
        f"RSS {rss_before / MB:.1f} -> {rss_bytes(pid) / MB:.1f} MiB, peak grew {growth / MB:.2f} MiB"
    )
    assert response.startswith(b"HTTP/1.1 413 "), response[:100]
    assert b'"detail"' in response and b"connection: close" in response.lower()
    assert growth < 50 * MB
    with httpx.Client(base_url=url, timeout=30) as client:  # and it still serves
        assert client.post("/search", json={"text": "still here"}).status_code == 200


@pytest.fixture(scope="module")
def strict_service(tmp_path_factory):
    """1 KiB bodies, 1 s for a body, 1 s for request headers, 1 s idle keep-alive."""
    app = fake_app(tmp_path_factory.mktemp("images"), delay_s=0.0, max_body_bytes=1024, body_timeout_s=1.0)
    with running(app, header_timeout_s=1.0, keep_alive_s=1.0) as url:
        yield url


def padded_query(size: int) -> bytes:
    """A valid search body of exactly ``size`` bytes (spaces pad the JSON)."""
    body = json.dumps({"text": "a dog on the beach", "k": 2}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_the_body_cap_is_exact_for_declared_and_chunked_bodies(strict_service):
    def chunks(data: bytes):
        for i in range(0, len(data), 100):
            yield data[i : i + 100]

    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=strict_service, timeout=30) as client:
        assert client.post("/search", content=padded_query(1024), headers=headers).status_code == 200
        too_big = client.post("/search", content=padded_query(1025), headers=headers)
        assert too_big.status_code == 413 and "1024 bytes" in too_big.json()["detail"]
        # an iterator is sent chunked, with no Content-Length: counted as it arrives
        assert client.post("/search", content=chunks(padded_query(1024)), headers=headers).status_code == 200
        assert client.post("/search", content=chunks(padded_query(1025)), headers=headers).status_code == 413


PARTIAL_REQUESTS = {
    "nothing": b"",
    "half a request line": b"GET /sea",
    "unfinished headers": b"GET /search?q=dog HTTP/1.1\r\nHost: x\r\n",
    "short body": b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    "endless chunks": b"POST /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
}


def test_200_incomplete_requests_are_all_closed_within_the_timeouts(strict_service):
    """Before: 200 such connections were all still open after 30 s. Now each closes ~1 s (the configured
    header or body deadline) after it opened; a stalled body gets a 408 first."""
    port, kinds = port_of(strict_service), list(PARTIAL_REQUESTS)
    closed: dict[int, float] = {}
    answers: dict[int, bytes] = {}
    socks = []
    with selectors.DefaultSelector() as sel:
        start = time.monotonic()
        try:
            for i in range(200):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                socks.append(sock)
                sock.sendall(PARTIAL_REQUESTS[kinds[i % len(kinds)]])
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, i)
            deadline = start + 10
            while len(closed) < 200 and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.2):
                    try:
                        data = key.fileobj.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if data:
                        answers[key.data] = answers.get(key.data, b"") + data
                    else:
                        closed[key.data] = time.monotonic() - start
                        sel.unregister(key.fileobj)
        finally:
            for sock in socks:
                sock.close()
    print(f"\n200 incomplete requests: closed after {min(closed.values()):.2f}-{max(closed.values()):.2f} s")
    assert len(closed) == 200
    assert 0.9 <= min(closed.values()) and max(closed.values()) < 3.0
    for i in range(200):
        kind = kinds[i % len(kinds)]
        if kind in ("short body", "endless chunks"):
            assert answers.get(i, b"").startswith(b"HTTP/1.1 408 "), (kind, answers.get(i))
        else:
            assert i not in answers  # headers never complete: no request to answer, just closed


def test_trickled_headers_do_not_extend_the_deadline(strict_service):
    """A byte every 0.1 s keeps a connection busy but not alive: the deadline counts from its first byte."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(strict_service)), timeout=5) as sock:
        start = time.monotonic()
        sent = 0
        try:
            while sent < len(request) and time.monotonic() - start < 5:
                sock.sendall(request[sent : sent + 1])
                sent += 1
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        remaining = read_until_closed(sock, 5)
        took = time.monotonic() - start
    assert remaining == b"" and sent < len(request)  # closed mid-headers, never answered
    assert took < 2.0


def test_an_idle_kept_alive_connection_is_closed_and_a_stalled_next_request_too(strict_service):
    port = port_of(strict_service)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for follow_up in (b"", b"GET /health HTTP/1.1\r\nHo"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            sock.settimeout(5)
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 ")
            start = time.monotonic()
            time.sleep(0.5)  # within keep-alive
            sock.sendall(follow_up)
            rest = read_until_closed(sock, 5)
            took = time.monotonic() - start
        assert b"HTTP/1.1" not in rest  # the second request was never complete: not answered
        assert 0.9 <= took < 2.5, (follow_up, took)


def test_oversized_request_headers_get_400(strict_service):
    """h11 refuses a request head once more than 16 KiB of it is buffered incomplete, so a head arriving in
    one socket read (up to 256 KiB) may pass, but a 1 MiB one cannot: header memory stays bounded."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * MB + b"\r\n\r\n"
    response, sent = b"", 0
    with socket.create_connection(("127.0.0.1", port_of(strict_service)), timeout=10) as sock:
        try:
            while sent < len(head):
                sock.sendall(head[sent : sent + 64 * 1024])
                sent += 64 * 1024
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            response = read_until_closed(sock, 10)
        except OSError:
            pass
    assert response.startswith(b"HTTP/1.1 400 ")
    with httpx.Client(base_url=strict_service, timeout=30) as client:
        assert client.get("/health", headers={"x-fine": "a" * (8 * 1024)}).status_code == 200


def test_a_body_at_the_default_cap_parses_without_holding_the_loop():
    """Bodies are parsed on the event loop, so the cap bounds how long one can hold it: the slowest body
    that fits the default 64 KiB cap (32k zeros, each a list item to validate) takes ~2 ms, not seconds."""
    from stitch.apps.service.app import SearchRequest
    from stitch.apps.service.guard import DEFAULT_MAX_BODY_BYTES

    zeros = (DEFAULT_MAX_BODY_BYTES - 20) // 2
    worst = '{"embedding": [' + ",".join(["0"] * zeros) + "]}"
    assert len(worst) <= DEFAULT_MAX_BODY_BYTES
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        SearchRequest.model_validate(json.loads(worst))
        best = min(best, time.perf_counter() - start)
    print(f"\nworst-case body at the cap: {best * 1000:.2f} ms to parse and validate")
    assert best < 0.05


def test_the_cap_grows_for_wide_embeddings(tmp_path):
    """A raw 4096-d embedding is ~90 KB of JSON: the default cap makes room for the run's own queries."""
    from stitch.apps.service.app import Limits

    assert Limits().body_cap(384) == 64 * 1024
    cap = Limits().body_cap(4096)
    body = json.dumps({"embedding": [-0.012345678901234567] * 4096}).encode()
    assert len(body) < cap < 256 * 1024
    assert Limits(max_body_bytes=1000).body_cap(4096) == 1000


# The middleware alone, driven by hand: what reaches the app, and when it answers instead.


def drive(middleware, headers: list[tuple[bytes, bytes]], messages: list[dict], stall: bool = False):
    """Run one request through ``middleware``; returns the status it answered (None: no answer)."""

    async def main():
        queue = list(messages)
        sent: list[dict] = []

        async def receive():
            if queue:
                return queue.pop(0)
            if stall:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
        await middleware(scope, receive, send)
        starts = [m for m in sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    return asyncio.run(main())


def part(body: bytes, more: bool = False) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


def recording_app(seen: dict):
    async def app(scope, receive, send):
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize(
    ("headers", "messages", "status", "reaches_app"),
    [
        ([(b"content-length", b"10")], [part(b"0123456789")], 200, True),
        ([(b"content-length", b"11")], [], 413, False),  # refused on the header, before reading
        ([], [part(b"012345", more=True), part(b"6789")], 200, True),  # chunked: counted as it arrives
        ([], [part(b"012345", more=True), part(b"67890")], 413, False),
        ([(b"content-length", b"ten")], [], 400, False),
        ([(b"content-length", b"5"), (b"content-length", b"6")], [], 400, False),
        ([], [{"type": "http.disconnect"}], None, False),  # the client left: nothing to answer
    ],
)
def test_the_middleware_answers_before_the_app_reads(headers, messages, status, reaches_app):
    from stitch.apps.service.guard import BodyLimit

    seen: dict = {}
    got = drive(BodyLimit(recording_app(seen), max_body_bytes=10), headers, messages)
    assert got == status
    assert ("body" in seen) == reaches_app
    if reaches_app:
        assert seen["body"] == b"0123456789"  # replayed whole, in one message


def test_the_middleware_times_out_a_stalled_body():
    from stitch.apps.service.guard import BodyLimit

    seen: dict = {}
    start = time.monotonic()
    got = drive(
        BodyLimit(recording_app(seen), max_body_bytes=100, body_timeout_s=0.3),
        [(b"content-length", b"50")],
        [part(b"x" * 10, more=True)],
        stall=True,
    )
    assert got == 408 and "body" not in seen
    assert 0.25 <= time.monotonic() - start < 2
