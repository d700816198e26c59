"""Helpers shared by the tests: raw sockets that speak just enough to break the rules,
for WebSocket (asyncio) and for Server-Sent Events (blocking sockets)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import socket
import subprocess
import threading
import time
import unittest

import sse_server
import ws_server
from ws_server import Opcode, encode_frame

TIMEOUT = 5.0  # every wait in the integration tests is bounded by this


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a child we started, politely, then firmly; always reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response: status, headers (lower-cased names), and the body to EOF."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if status != 101:
        body = await asyncio.wait_for(reader.read(), TIMEOUT)
    return status, headers, body


def handshake_request(path: str = "/", **headers: str) -> bytes:
    """A valid opening handshake (§4.1); keyword arguments replace or add headers
    (underscores become dashes; a value of None removes the header)."""
    fields = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
              "Sec-WebSocket-Version": "13"}
    for name, value in headers.items():
        name = name.replace("_", "-")
        fields = {k: v for k, v in fields.items() if k.lower() != name.lower()}
        if value is not None:
            fields[name] = value
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def http_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class RawClient:
    """A WebSocket client with no manners: sends any frame, reads server frames one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.receiver = ws_server.Receiver(mask_expected=False, max_size=1 << 30)
        self.events: list = []

    @classmethod
    async def connect(cls, port: int, path: str = "/") -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(handshake_request(path))
        status, _, _ = await read_response(reader)
        assert status == 101, status
        return cls(reader, writer)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True,
             rsv: int = 0) -> None:
        frame = bytearray(encode_frame(opcode, payload, fin=fin,
                                       masking_key=os.urandom(4) if mask else None))
        frame[0] |= rsv << 4
        self.writer.write(bytes(frame))

    async def next_event(self, timeout: float = TIMEOUT):
        """The next event from the server (Message, Ping, Pong, Close), or None at EOF."""
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.events.extend(self.receiver.feed(data))
        return self.events.pop(0)

    async def expect_close(self, timeout: float = TIMEOUT) -> int | None:
        """Skip messages until the server's close frame; return its code."""
        while True:
            event = await self.next_event(timeout)
            if event is None:
                raise AssertionError("connection ended without a close frame")
            if isinstance(event, ws_server.Close):
                return event.code

    async def at_eof(self, timeout: float = TIMEOUT) -> bool:
        """True once the server has closed the TCP connection (anything else is discarded)."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return True

    def close(self) -> None:
        self.writer.transport.abort()


class ServerTestCase:
    """Mixin for IsolatedAsyncioTestCase: a WebSocketServer on 127.0.0.1, port 0."""

    limits = ws_server.Limits(ping_interval=0)
    server_options: dict = {}

    async def asyncSetUp(self) -> None:
        config = ws_server.ServerConfig(port=0, limits=self.limits, **self.server_options)
        self.server = ws_server.WebSocketServer(config)
        await self.server.start()
        self.port = self.server.port
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.clients = []

    async def asyncTearDown(self) -> None:
        for client in self.clients:
            if isinstance(client, RawClient):
                client.close()
            elif client.state is not ws_server.State.CLOSED:
                client.abort()
        await asyncio.wait_for(self.server.shutdown(), TIMEOUT + 2)

    async def client(self, **options) -> ws_server.Connection:
        client = await ws_server.connect(self.url, **options)
        self.clients.append(client)
        return client

    async def raw_client(self) -> RawClient:
        client = await RawClient.connect(self.port)
        self.clients.append(client)
        return client

    async def wait_for_clients(self, count: int) -> None:
        for _ in range(int(TIMEOUT / 0.01)):
            if len(self.server.room.clients) == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.server.room.clients)} clients, expected {count}")


# ---------------------------------------------------------------------------------------------
# Server-Sent Events: a raw HTTP client that keeps every byte, and a server fixture
# ---------------------------------------------------------------------------------------------




class Dechunker:
    """RFC 9112 §7.1 in reverse: chunks in, payloads out (the test's mirror of encode_chunk)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.chunks: list[bytes] = []
        self.done = False  # the last chunk (size 0) was seen

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while not self.done:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.buffer[:line_end], 16)
            end = line_end + 2 + size
            if len(self.buffer) < end + 2:
                break
            assert self.buffer[end:end + 2] == b"\r\n", self.buffer[:end + 2]
            self.buffer, chunk = self.buffer[end + 2:], self.buffer[line_end + 2:end]
            if size == 0:
                self.done = True
            else:
                self.chunks.append(chunk)
                out.append(chunk)
        return b"".join(out)


class StreamClient:
    """GET /sse over a raw socket: the response head, every body byte, and the parsed events."""

    def __init__(self, port: int, path: str = "/sse", headers: dict[str, str] | None = None,
                 version: str = "HTTP/1.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        fields = {"Host": f"127.0.0.1:{port}", "Accept": "text/event-stream", **(headers or {})}
        request = f"GET {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"no response head: {head!r}")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.dechunker = Dechunker()
        self.parser = sse_server.EventStreamParser()
        self.body = b""
        self.events: list[sse_server.ServerSentEvent] = []
        self.eof = False
        self._consume(rest)

    def _consume(self, data: bytes) -> None:
        body = self.dechunker.feed(data) if self.chunked else data
        self.body += body
        self.events += self.parser.feed(body)

    def read_more(self, timeout: float = TIMEOUT) -> None:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
        self._consume(data)

    def wait_until(self, condition, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.eof:
                raise AssertionError(f"stream ended; body so far: {self.body[-300:]!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; body so far: {self.body[-300:]!r}")
            self.read_more(remaining)

    def next_events(self, count: int, timeout: float = TIMEOUT) -> list[sse_server.ServerSentEvent]:
        """Wait for `count` more events than were taken so far; return them."""
        self.wait_until(lambda: len(self.events) >= count, timeout)
        taken, self.events = self.events[:count], self.events[count:]
        return taken

    def read_to_eof(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            self.read_more(max(0.01, deadline - time.monotonic()))

    def close(self) -> None:
        self.sock.close()


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, headers (lower-cased names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def wait_for(condition, timeout: float = TIMEOUT, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.01)


class SSEServerTestCase(unittest.TestCase):
    """An SSEServer on 127.0.0.1, port 0, in background threads; no clock or heartbeat unless
    `options` asks for them, so the tests publish exactly the events they expect."""

    options: dict = {}

    def setUp(self) -> None:
        self.threads_before = threading.active_count()
        self.server = self.start_server(**self.options)
        self.port = self.server.port
        self.streams: list[StreamClient] = []

    def start_server(self, **options) -> sse_server.SSEServer:
        settings = {"port": 0, "clock": 0, "heartbeat": 0, **options}
        server = sse_server.SSEServer(sse_server.ServerConfig(**settings))
        server.start()
        self.addCleanup(server.stop)
        return server

    def tearDown(self) -> None:
        for stream in self.streams:
            stream.close()

    def stream(self, path: str = "/sse", **headers: str) -> StreamClient:
        stream = StreamClient(self.port, path, {k.replace("_", "-"): v for k, v in headers.items()})
        self.streams.append(stream)
        return stream

    def subscribed(self, stream: StreamClient) -> StreamClient:
        """Wait until the server has written the stream's first bytes (retry:)."""
        stream.wait_until(lambda: stream.parser.retry is not None)
        return stream

    def publish(self, body: bytes | str, query: str = "", **headers: str) -> int:
        status, _, _ = http_request(self.port, "POST", "/publish" + query,
                                    body.encode() if isinstance(body, str) else body,
                                    {k.replace("_", "-"): v for k, v in headers.items()})
        return status
