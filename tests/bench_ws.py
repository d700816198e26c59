"""Benchmark: ws_server.py under load from a standard-library load generator, on loopback.

    python -m tests.bench_ws                      # every mode, about a minute
    python -m tests.bench_ws --modes echo_small,idle --idle-clients 1000,10000

Modes (each starts a fresh `ws_server.py` subprocess on 127.0.0.1):
  echo_small  one connection, 64-byte text messages, 100 in flight -> messages/s;
              then strict ping-pong (one message, wait for its echo) -> round-trip time
  echo_large  1 MiB and 16 MiB binary messages, masked by the client -> MB/s of round trips
  fanout      K clients, one of them sends M messages carrying a timestamp; the server
              broadcasts each to all K -> deliveries/s, latency p50/p99; with --deflate the
              clients negotiate permessage-deflate and inflate (try --fanout-size 1024)
  idle        N connections that do nothing -> server RSS per connection
  slow_readers  8 clients that never read, 100 broadcasts of 1 MiB -> growth of the server's
              peak RSS (what --max-buffer bounds); not in the default run
  bomb        16 MiB of zeros, compressed to 16 KiB, to the default --max-size -> the close
              code and the growth of the server's peak RSS; not in the default run
  redis       the latency of one chat message, one at a time: one process alone; one process
              with --redis; sent on one of two --redis processes, received on the other ->
              p50/p99 and what Redis adds.  Needs redis-server (started here); not in the default run

Why the generator is faster than the server: its frames are built and masked once, before the
clock starts; echoes have a known size, so it counts bytes instead of parsing frames; fanout
receivers read one timestamp per read (the oldest frame in it, so latency is not flattered).
The table gives both processes' CPU seconds: the generator's must stay below the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import ssl
import time

import ws_server
from ws_server import Opcode, encode_frame
from tests.benchtools import RawHTTPClient, Server, machine, median, percentile, print_table, raise_fd_limit
from tests.support import CA_FILE, CERT_FILE, KEY_FILE

HANDSHAKE = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")


def handshake_bytes() -> bytes:
    return HANDSHAKE.format(key=base64.b64encode(os.urandom(16)).decode()).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    return encode_frame(opcode, payload, masking_key=os.urandom(4))


def server_frame_size(payload_size: int) -> int:
    """Bytes of an unmasked server frame (§5.2): header, extended length, payload."""
    return payload_size + (2 if payload_size < 126 else 4 if payload_size < 65536 else 10)


class Client(RawHTTPClient):
    """A raw WebSocket connection: the handshake, then it counts the bytes received."""

    status = b"HTTP/1.1 101"

    def __init__(self) -> None:
        super().__init__()
        self.received = 0

    def request(self) -> bytes:
        return handshake_bytes()

    def on_body(self, data: bytes) -> None:
        self.received += len(data)


async def connect_many(port: int, count: int, factory=Client, concurrency: int = 200,
                       tls: ssl.SSLContext | None = None) -> list:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(concurrency)
    options = {} if tls is None else {"ssl": tls, "server_hostname": "localhost"}

    async def one():
        async with limit:
            _, client = await loop.create_connection(factory, "127.0.0.1", port, **options)
            await asyncio.wait_for(client.open, 30)
            return client
    return await asyncio.gather(*(one() for _ in range(count)))


# -- echo_small ------------------------------------------------------------------------------------

class Pipeline(Client):
    """Keeps `in_flight` echoes outstanding until `total` have come back."""

    def __init__(self, frame: bytes, echo_size: int, in_flight: int, total: int) -> None:
        super().__init__()
        self.frame, self.echo_size, self.in_flight, self.total = frame, echo_size, in_flight, total
        self.sent = self.completed = 0
        self.done = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self.sent = self.in_flight
        self.transport.write(self.frame * self.in_flight)

    def on_body(self, data: bytes) -> None:
        self.received += len(data)
        completed = self.received // self.echo_size
        more = min(completed - self.completed, self.total - self.sent)
        self.completed = completed
        if more > 0:
            self.sent += more
            self.transport.write(self.frame * more)
        if completed >= self.total and not self.done.done():
            self.done.set_result(time.perf_counter())


async def echo_small(server: Server, total: int, pings: int) -> list[dict]:
    loop = asyncio.get_running_loop()
    payload = b"x" * 64
    _, client = await loop.create_connection(
        lambda: Pipeline(client_frame(Opcode.TEXT, payload), server_frame_size(64), 100, total), "127.0.0.1", server.port)
    await client.open
    cpu_server, cpu_client, started = server.cpu_seconds(), time.process_time(), time.perf_counter()
    client.start()
    finished = await asyncio.wait_for(client.done, 120)
    rows = [{"mode": "echo_small, 64 B, 100 in flight", "result": total / (finished - started), "unit": "msg/s",
             "server CPU s": server.cpu_seconds() - cpu_server, "generator CPU s": time.process_time() - cpu_client}]
    client.transport.close()
    rows.append(await asyncio.to_thread(ping_pong, server, pings))
    return rows


def ping_pong(server: Server, count: int) -> dict:
    """Strict request-response with a blocking socket: one message, wait for its echo."""
    sock = open_blocking(server.port)
    frame, size = client_frame(Opcode.TEXT, b"x" * 64), server_frame_size(64)
    buffer = bytearray(size)
    times = []
    cpu_server, cpu_client = server.cpu_seconds(), time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(frame)
        receive_exactly(sock, buffer)
        times.append(time.perf_counter() - started)
    sock.close()
    return {"mode": "ping-pong round trip (median; p99 %.0f µs)" % (percentile(times, 0.99) * 1e6),
            "result": median(times) * 1e6, "unit": "µs",
            "server CPU s": server.cpu_seconds() - cpu_server, "generator CPU s": time.process_time() - cpu_client}


def open_blocking(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(handshake_bytes())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101") and head.endswith(b"\r\n\r\n"), head[:80]
    return sock


def receive_exactly(sock: socket.socket, buffer: bytearray) -> None:
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("server closed the connection")
        got += n


# -- echo_large ------------------------------------------------------------------------------------

def echo_large(server: Server, size: int, count: int) -> dict:
    sock = open_blocking(server.port)
    frame = client_frame(Opcode.BINARY, os.urandom(size))  # masked once, before the clock starts
    buffer = bytearray(server_frame_size(size))
    cpu_server, cpu_client = server.cpu_seconds(), time.process_time()
    started = time.perf_counter()
    for _ in range(count):
        sock.sendall(frame)
        receive_exactly(sock, buffer)
    elapsed = time.perf_counter() - started
    sock.close()
    return {"mode": f"echo_large, {size >> 20} MiB binary x {count}", "result": size * count / elapsed / 1e6,
            "unit": "MB/s", "server CPU s": server.cpu_seconds() - cpu_server,
            "generator CPU s": time.process_time() - cpu_client}


# -- fanout ------------------------------------------------------------------------------------------

PAYLOAD = 32  # 16 digits of sequence number, 16 of send time in µs


class Receiver(Client):
    """Counts broadcast frames (all PAYLOAD bytes long) and samples one latency per read."""

    frame_size = server_frame_size(PAYLOAD)

    def __init__(self, expected: int, finished: list) -> None:
        super().__init__()
        self.expected, self.finished = expected, finished
        self.samples: list[tuple[float, int]] = []  # (latency s, frames it stands for)

    def on_body(self, data: bytes) -> None:
        now = time.time_ns() // 1000
        before = self.received // self.frame_size
        start = (-self.received) % self.frame_size  # where the first frame starting here begins
        self.received += len(data)
        frames = self.received // self.frame_size - before
        if frames and start + self.frame_size <= len(data):
            sent = int(data[start + 2 + 16:start + 2 + PAYLOAD])
            self.samples.append(((now - sent) / 1e6, frames))
        if before < self.expected <= self.received // self.frame_size:
            self.finished.append(time.perf_counter())


DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium offers


class DeflateReceiver(Receiver):
    """A fanout receiver that offers permessage-deflate as Chromium does and inflates every
    message it gets (with the project's own client Protocol), so that compressed runs cost
    the generator what they would cost a browser."""

    def __init__(self, expected: int, finished: list) -> None:
        super().__init__(expected, finished)
        self.count = 0
        self.key = ws_server.new_key()
        self.protocol = ws_server.Protocol(client=True, opening=ws_server.OpeningHandshake(
            self.key, (), (ws_server.PERMESSAGE_DEFLATE,)))

    def request(self) -> bytes:
        return ws_server.build_client_request("127.0.0.1", 80, "/", self.key, extensions=DEFLATE_OFFER)

    def data_received(self, data: bytes) -> None:
        if not self.open.done():  # the protocol reads the answer to the handshake itself
            self.protocol.receive_data(data)
            if self.protocol.state == ws_server.State.OPEN:
                self.open.set_result(True)
            return
        self.on_body(data)

    def on_body(self, data: bytes) -> None:
        now = time.time_ns() // 1000
        self.protocol.receive_data(data)
        first = True
        while (event := self.protocol.next_event()) is not None:
            self.count += 1
            if first:
                self.samples.append(((now - int(event.payload[16:32])) / 1e6, 1))
                first = False
        if self.count == self.expected:
            self.finished.append(time.perf_counter())


def feed_message(seq: int, size: int) -> bytes:
    """A JSON feed item of about `size` bytes: sequence number and send time first (µs)."""
    head = b"%016d%016d" % (seq, time.time_ns() // 1000)
    body = b'{"symbol": "EURUSD", "bid": 1.08731, "ask": 1.08736, "venue": "demo", "depth": [1.0873, 1.0874]}'
    return head + (body * (size // len(body) + 1))[:max(0, size - len(head))]


async def fanout(server: Server, clients: int, messages: int, size: int = PAYLOAD, deflate: bool = False) -> dict:
    finished: list[float] = []
    factory = DeflateReceiver if deflate else Receiver
    if size != PAYLOAD and not deflate:
        raise ValueError("the plain receiver counts frames of PAYLOAD bytes; other sizes need --deflate")
    receivers = await connect_many(server.port, clients, lambda: factory(messages, finished))
    await asyncio.sleep(0.5)
    sender = receivers[0].transport
    cpu_server, cpu_client, started = server.cpu_seconds(), time.process_time(), time.perf_counter()
    for seq in range(messages):
        payload = b"%016d%016d" % (seq, time.time_ns() // 1000) if size == PAYLOAD else feed_message(seq, size)
        sender.write(client_frame(Opcode.TEXT, payload))
        await asyncio.sleep(0)  # one message per turn of the loop: receivers read in between
    deadline = time.perf_counter() + 120
    while len(finished) < clients and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    elapsed = max(finished) - started if len(finished) == clients else float("nan")
    samples = [s for r in receivers for s in r.samples]
    for receiver in receivers:
        receiver.transport.close()
    kind = f"{size} B JSON, permessage-deflate" if deflate else f"{size} B"
    return {"mode": f"fanout, {clients} clients x {messages} messages of {kind} (p50 {weighted(samples, 0.5) * 1e3:.1f} ms, "
                    f"p99 {weighted(samples, 0.99) * 1e3:.1f} ms)",
            "result": clients * messages / elapsed, "unit": "deliveries/s",
            "server CPU s": server.cpu_seconds() - cpu_server, "generator CPU s": time.process_time() - cpu_client}


def weighted(samples: list[tuple[float, int]], fraction: float) -> float:
    total = sum(n for _, n in samples)
    if not total:
        return float("nan")
    seen = 0
    for latency, n in sorted(samples):
        seen += n
        if seen >= fraction * total:
            return latency
    return samples[-1][0]


# -- idle ----------------------------------------------------------------------------------------------

class DeflateClient(DeflateReceiver):
    """An idle connection that negotiated permessage-deflate as Chromium does."""

    def __init__(self) -> None:
        super().__init__(0, [])


async def idle(server: Server, clients: int, deflate: bool = False, tls: bool = False) -> dict:
    factory = DeflateClient if deflate else Client
    context = ws_server.client_tls_context(CA_FILE) if tls else None
    warm = await connect_many(server.port, 1, factory, tls=context)
    warm[0].transport.close()
    await asyncio.sleep(0.5)
    before = server.status("VmRSS")
    held = await connect_many(server.port, clients, factory, tls=context)
    await asyncio.sleep(1.0)
    loaded = server.status("VmRSS")
    for client in held:
        client.transport.close()
    return {"mode": f"idle, {clients} connections{', permessage-deflate' if deflate else ''}{', TLS' if tls else ''}",
            "result": (loaded - before) / clients,
            "unit": "KiB RSS per connection", "server CPU s": float("nan"), "generator CPU s": float("nan")}


# -- slow_readers -----------------------------------------------------------------------------------

def slow_readers(server: Server, slow: int, count: int, size: int = 1 << 20) -> dict:
    """`slow` clients connect and never read; one client sends `count` binary messages of `size`
    bytes, each broadcast to all, and waits for its own copy.  What the server holds for the
    slow ones is bounded by --max-buffer: the growth of its peak RSS says how well."""
    sleepers = [open_blocking(server.port) for _ in range(slow)]
    for sock in sleepers:  # a small window: the kernel holds little, the server must hold the rest
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sender = open_blocking(server.port)
    frame = client_frame(Opcode.BINARY, os.urandom(size))
    buffer = bytearray(server_frame_size(size))
    base = server.status("VmRSS")
    cpu_server = server.cpu_seconds()
    for _ in range(count):
        sender.sendall(frame)
        receive_exactly(sender, buffer)
    peak = server.status("VmHWM")
    for sock in sleepers + [sender]:
        sock.close()
    return {"mode": f"slow_readers: {slow} that never read, {count} broadcasts of {size >> 20} MiB",
            "result": (peak - base) / 1024, "unit": "MiB of peak RSS over the start",
            "server CPU s": server.cpu_seconds() - cpu_server, "generator CPU s": float("nan")}


# -- bomb ------------------------------------------------------------------------------------------

def bomb(server: Server, size: int = 16 << 20) -> dict:
    """A decompression bomb: `size` bytes of zeros, compressed (about 16 KiB for 16 MiB), sent
    to a server with its default --max-size.  It must close with 1009 having inflated at most
    --max-size: the growth of its peak RSS says how much it held."""
    key = ws_server.new_key()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(ws_server.build_client_request("127.0.0.1", 80, "/", key, extensions=DEFLATE_OFFER))
    protocol = ws_server.Protocol(client=True, opening=ws_server.OpeningHandshake(key, (), (ws_server.PERMESSAGE_DEFLATE,)))
    while protocol.state == ws_server.State.CONNECTING:
        protocol.receive_data(sock.recv(65536))
    payload = ws_server.MessageDeflater(level=9).compress(bytes(size))
    base = server.status("VmHWM")
    sock.sendall(encode_frame(Opcode.BINARY, payload, masking_key=os.urandom(4), rsv1=True))
    while protocol.state != ws_server.State.CLOSED:
        data = sock.recv(65536)
        if not data:
            protocol.receive_eof()
            break
        protocol.receive_data(data)
        while protocol.next_event() is not None:
            pass
    peak = server.status("VmHWM")
    sock.close()
    return {"mode": f"bomb: {size >> 20} MiB of zeros in {len(payload) >> 10} KiB, closed with {protocol.close_code}",
            "result": (peak - base) / 1024, "unit": "MiB of peak RSS growth",
            "server CPU s": float("nan"), "generator CPU s": float("nan")}


# -- main ------------------------------------------------------------------------------------------

# -- redis -----------------------------------------------------------------------------------------

def chat_latency(sender_port: int, receiver_port: int, count: int) -> list[float]:
    """One 64-byte message at a time: the time from its send to its arrival at a client of
    `receiver_port` (the sender itself when both are one server)."""
    sender = open_blocking(sender_port)
    receiver = sender if receiver_port == sender_port else open_blocking(receiver_port)
    frame, buffer = client_frame(Opcode.TEXT, b"x" * 64), bytearray(server_frame_size(64))
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            sender.sendall(frame)
            receive_exactly(receiver, buffer)
            times.append(time.perf_counter() - started)
            if receiver is not sender:
                receive_exactly(sender, buffer)  # its own copy of the broadcast
    finally:
        sender.close()
        receiver.close()
    return times


def redis_latency(count: int) -> list[dict]:
    from tests.support import RedisServer, find_redis_server  # (only this mode needs Redis)
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("the redis mode needs redis-server (Debian: apt-get install redis-server)")
    redis = RedisServer(binary)
    rows, alone = [], None
    try:
        for label, processes, extra in (("1 process", 1, ()), ("1 process, --redis", 1, ("--redis", redis.url)),
                                        ("2 processes, --redis: sent on one, received on the other", 2,
                                         ("--redis", redis.url))):
            servers = [Server("ws_server.py", *extra) for _ in range(processes)]
            try:
                chat_latency(servers[0].port, servers[-1].port, 200)  # warm up
                times = chat_latency(servers[0].port, servers[-1].port, count)
            finally:
                for server in servers:
                    server.stop()
            p50, p99 = median(times) * 1e6, percentile(times, 0.99) * 1e6
            alone = alone or (p50, p99)
            rows.append({"chat message, one at a time": label, "p50 µs": p50, "p99 µs": p99,
                         "p50 added µs": p50 - alone[0], "p99 added µs": p99 - alone[1]})
    finally:
        redis.close()
    return rows


def with_server(rows: list, measure, *server_args: str) -> None:
    server = Server("ws_server.py", *server_args)
    try:
        result = asyncio.run(measure(server))
        rows.extend(result if isinstance(result, list) else [result])
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="echo_small,echo_large,fanout,idle",
                        help="comma list of echo_small, echo_large, fanout, idle, slow_readers, bomb, redis")
    parser.add_argument("--messages", type=int, default=200_000, help="echo_small messages")
    parser.add_argument("--pings", type=int, default=5000, help="ping-pong round trips")
    parser.add_argument("--large-count", type=lambda s: [int(x) for x in s.split(",")], default=[150, 10],
                        help="round trips of 1 MiB and of 16 MiB (default 150,10)")
    parser.add_argument("--fanout-clients", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000])
    parser.add_argument("--fanout-messages", type=int, default=100)
    parser.add_argument("--fanout-size", type=int, default=PAYLOAD,
                        help=f"fanout message size in bytes (default {PAYLOAD}; other sizes need --deflate)")
    parser.add_argument("--tls", action="store_true", help="idle clients connect with TLS (wss://, the test certificate)")
    parser.add_argument("--deflate", action="store_true",
                        help="fanout and idle clients offer permessage-deflate as Chromium does and inflate")
    parser.add_argument("--slow-clients", type=int, default=8, help="slow_readers: clients that never read")
    parser.add_argument("--slow-messages", type=int, default=100, help="slow_readers: 1 MiB broadcasts")
    parser.add_argument("--idle-clients", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000])
    args = parser.parse_args(argv)
    print_table(f"ws_server.py ({machine()})", run(args))


def run(args) -> list[dict]:
    """Each measurement gets a fresh server and its own event loop (`with_server`)."""
    rows: list[dict] = []
    modes = args.modes.split(",")
    if "echo_small" in modes:
        with_server(rows, lambda s: echo_small(s, args.messages, args.pings))
    if "echo_large" in modes:
        for size, count in ((1 << 20, args.large_count[0]), (16 << 20, args.large_count[1])):
            with_server(rows, lambda s: asyncio.to_thread(echo_large, s, size, count), "--max-size", str(32 << 20))
    if "fanout" in modes:
        for clients in args.fanout_clients:
            with_server(rows, lambda s: fanout(s, clients, args.fanout_messages, args.fanout_size, args.deflate))
    if "bomb" in modes:
        with_server(rows, lambda s: asyncio.to_thread(bomb, s))
    if "slow_readers" in modes:
        with_server(rows, lambda s: asyncio.to_thread(slow_readers, s, args.slow_clients, args.slow_messages),
                    "--max-size", str(2 << 20))
    if "redis" in modes:
        print_table(f"ws_server.py chat through Redis ({machine()})", redis_latency(args.pings))
    if "idle" in modes:
        raise_fd_limit(max(args.idle_clients) * 2 + 1000)
        tls_args = ("--certfile", CERT_FILE, "--keyfile", KEY_FILE) if args.tls else ()
        for clients in args.idle_clients:
            with_server(rows, lambda s: idle(s, clients, args.deflate, args.tls), *tls_args)
    return rows


if __name__ == "__main__":
    main()
