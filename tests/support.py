"""Helpers shared by the tests: raw sockets that speak just enough to break the rules."""

from __future__ import annotations

import asyncio
import base64
import os
import contextlib

import ws_server
from ws_server import Opcode, encode_frame

TIMEOUT = 5.0  # every wait in the integration tests is bounded by this


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
                client._abort()
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
