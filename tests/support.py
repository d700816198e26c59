"""Helpers shared by every test and benchmark: raw clients that speak just enough to break the
rules, server fixtures on 127.0.0.1 and port 0, bounded waits, and child processes.

One of each: one HTTP head reader (`split_head`), one `wait_until` (and its async twin), one
way to start (`start_process`) and stop (`stop_process`) a server in a child process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import sse_server
import ws_server
from ws_server import encode_frame

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0  # every wait in the integration tests is bounded by this


# ---------------------------------------------------------------------------------------------
# Waiting and child processes
# ---------------------------------------------------------------------------------------------


def wait_until(condition, timeout: float = TIMEOUT, message: str = "a condition") -> None:
    """Poll `condition` until it is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.01)


def wait_for_service(process: subprocess.Popen, ready, timeout: float = 2 * TIMEOUT) -> bool:
    """Poll `ready()` while a service we started comes up (an OSError or RedisError from it
    means "not yet"): True once it is ready; False once the process ended or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if ready():
                return True
        except (OSError, ws_server.RedisError):
            pass
        time.sleep(0.02)
    return False


async def async_wait_until(condition, timeout: float = TIMEOUT, message: str = "a condition") -> None:
    """`wait_until` for coroutines: the event loop runs while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.01)


#: What our servers log when they are ready: "Serving ... on http://HOST:PORT/".
SERVING = re.compile(r"Serving .* on https?://[^:/]+:(\d+)/")


def python_command(script: str, *args: str, prelude: str = "") -> list[str]:
    """The command line of `python script ARGS`, with `prelude` (Python) run first in the child
    (the Windows simulation uses it)."""
    code = f"{prelude}\nimport runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    return [sys.executable, "-c", code, str(ROOT / script), *args]


def start_process(script: str, *args: str, prelude: str = "", timeout: float = 10.0,
                  stdin: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start `python script --port 0 ARGS` and wait for its "Serving ..." line: (process, port).

    The child's stderr stays open for the caller (`process.stderr`, text); stop it with
    `stop_process`."""
    process = subprocess.Popen(python_command(script, "--port", "0", *args, prelude=prelude),
                               stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        found = SERVING.search(line)
        if found:
            return process, int(found.group(1))
    stop_process(process)
    raise AssertionError(f"{script} did not start: {''.join(seen)[-2000:]}")


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a child we started, politely, then firmly; always reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a child that cannot be told to bind port 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LogReader:
    """Keeps every line a child process writes to stderr (its log), from a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


# ---------------------------------------------------------------------------------------------
# Redis: Debian's redis-server, started by the tests
# ---------------------------------------------------------------------------------------------

REDIS_HINT = ("redis-server is not installed: the tests of several processes need a real Redis "
              "(Debian: apt-get install redis-server; or set REDIS_SERVER to its path)")


def find_redis_server() -> str | None:
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None)


class RedisServer:
    """redis-server as a child process on a free port of 127.0.0.1, saving nothing to disk
    (`--save '' --appendonly no`), so that a restart starts empty, as an unpersisted Redis does.

    `stop()` and `start()` again (same port) make a restart; `pause()` and `resume()`
    (SIGSTOP, SIGCONT) make a Redis that is there but does not answer."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.folder = tempfile.TemporaryDirectory(prefix="redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.address = ws_server.RedisAddress("127.0.0.1", self.port)
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.folder.name, "--logfile", os.path.join(self.folder.name, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_service(self.process, lambda: self.command("PING") == "PONG"):
            self.stop()
            raise RuntimeError(f"redis-server did not start: {self.log()[-2000:]}")

    def command(self, *arguments):
        """One command on a connection of its own (the project's blocking client)."""
        client = sse_server.BlockingRedis(self.address, timeout=TIMEOUT)
        try:
            return client.command(*arguments)
        finally:
            client.close()

    def log(self) -> str:
        try:
            with open(os.path.join(self.folder.name, "redis.log"), encoding="utf-8", errors="replace") as file:
                return file.read()
        except OSError:
            return ""

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()  # a stopped process would not see SIGTERM until continued
            stop_process(self.process)
            self.process = None

    def close(self) -> None:
        self.stop()
        self.folder.cleanup()


# ---------------------------------------------------------------------------------------------
# HTTP: the one head reader
# ---------------------------------------------------------------------------------------------


def split_head(buffer: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """A response head at the start of `buffer`: (status, headers with lower-cased names, what
    follows), or None until the head is complete.  The servers' own `find_end_of_head`
    finds its end; a header sent twice keeps its last value."""
    found = ws_server.find_end_of_head(buffer)
    if found is None:
        return None
    response = ws_server.parse_response(buffer[:found[0]])
    return response.status, {name: values[-1] for name, values in response.headers.items()}, buffer[found[1]:]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response: status, headers, and the body to EOF (none after a 101)."""
    buffer = b""
    while (head := split_head(buffer)) is None:
        data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        if not data:
            raise AssertionError(f"connection closed before the end of the head: {buffer!r}")
        buffer += data
    status, headers, body = head
    if status != 101:
        while data := await asyncio.wait_for(reader.read(65536), TIMEOUT):
            body += data
    return status, headers, body


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes on a fresh connection; read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        buffer = b""
        while data := sock.recv(65536):
            buffer += data
    head = split_head(buffer)
    if head is None:
        raise AssertionError(f"no complete response head: {buffer[:200]!r}")
    return head


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


def open_fds() -> int | None:
    """This process's open file descriptors, where the platform says (Linux), else None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Fuzzing: seeded, bounded, the same for every pure entry point
# ---------------------------------------------------------------------------------------------

#: Bytes that break parsers: separators, line ends, NUL, invalid UTF-8, a percent, a bracket,
#: a latin-1 "digit".
TROUBLEMAKERS = [b"", b" ", b":", b";", b",", b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b"\xc0\xae", b"%", b"[",
                 b"\xb2", b"0", b"9" * 30, b"\t"]


def mutations(seed: int, seeds: list[bytes], count: int = 2000):
    """`count` inputs: random bytes now and then, else one of `seeds` with a few bytes replaced,
    cut or spliced with troublemakers.  The same every run: a failure can be replayed."""
    rng = random.Random(seed)
    for _ in range(count):
        if rng.random() < 0.25:
            yield rng.randbytes(rng.randrange(0, 120))
            continue
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            position = rng.randrange(len(data) + 1)
            data[position:position + rng.randrange(0, 3)] = rng.choice(TROUBLEMAKERS + [bytes([rng.randrange(256)])])
        yield bytes(data)


def fuzz(test: unittest.TestCase, function, inputs, allowed: tuple[type[BaseException], ...] = ()) -> None:
    """Call `function` on every input: only `allowed` exceptions may come out, and no call may
    take longer than a second (a generous bound: it catches a runaway, not slowness)."""
    slowest = 0.0
    for data in inputs:
        started = time.perf_counter()
        try:
            function(data)
        except allowed:
            pass
        except Exception as error:  # pragma: no cover - a finding
            raise AssertionError(f"{type(error).__name__}: {error} for input {data!r}") from error
        slowest = max(slowest, time.perf_counter() - started)
    test.assertLess(slowest, 1.0)


# ---------------------------------------------------------------------------------------------
# WebSocket: a raw client and a server fixture
# ---------------------------------------------------------------------------------------------


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
            elif client.state != ws_server.State.CLOSED:
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
        await async_wait_until(lambda: len(self.server.room.clients) == count,
                               message=f"{count} clients (have {len(self.server.room.clients)})")

    def connection_of(self, raw: RawClient) -> ws_server.Connection:
        """The server's side of a raw client's connection."""
        port = raw.writer.get_extra_info("sockname")[1]
        return next(c for c in self.server.room.clients if c.name.endswith(f":{port}"))


# ---------------------------------------------------------------------------------------------
# Server-Sent Events: a raw HTTP client that keeps every byte, and a server fixture
# ---------------------------------------------------------------------------------------------


class StreamClient:
    """GET /sse over a raw socket: the response head, every body byte, and the parsed events."""

    def __init__(self, port: int, path: str = "/sse", headers: dict[str, str] | None = None,
                 version: str = "HTTP/1.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        fields = {"Host": f"127.0.0.1:{port}", "Accept": "text/event-stream", **(headers or {})}
        request = f"GET {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        self.sock.sendall(request.encode("utf-8"))
        buffer = b""
        while (head := split_head(buffer)) is None:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"no response head: {buffer!r}")
            buffer += data
        self.status, self.headers, rest = head
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.dechunker = sse_server.ChunkedDecoder(max_size=1 << 30)  # the server's own, backwards
        self.chunks: list[bytes] = []  # one per event, when chunked
        self.parser = sse_server.EventStreamParser()
        self.body = b""
        self.events: list[sse_server.ServerSentEvent] = []
        self.eof = False
        self._consume(rest)

    @property
    def complete(self) -> bool:
        """Did the stream end with the last chunk (a clean end, not a cut)?"""
        return self.dechunker.done

    def _consume(self, data: bytes) -> None:
        if self.chunked:
            chunks = self.dechunker.feed(data)
            self.chunks += chunks
            data = b"".join(chunks)
        self.body += data
        self.events += self.parser.feed(data)

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


def request_threads() -> int:
    """Threads that ThreadingHTTPServer started, one per connection, still running."""
    return sum(1 for t in threading.enumerate() if t.name.endswith("(process_request_thread)"))


class SSEServerTestCase(unittest.TestCase):
    """An SSEServer on 127.0.0.1, port 0, in background threads; no clock or heartbeat unless
    `options` asks for them, so the tests publish exactly the events they expect."""

    options: dict = {}

    def setUp(self) -> None:
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

    def subscriber_that_never_reads(self) -> socket.socket:
        """A subscriber with a tiny receive buffer that never reads its stream."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", self.port))
        self.addCleanup(sock.close)
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return sock


# ---------------------------------------------------------------------------------------------
# TLS: the test certificate (tests/tls/README.md says how it was made)
# ---------------------------------------------------------------------------------------------

TLS_DIR = ROOT / "tests" / "tls"
CA_FILE = str(TLS_DIR / "ca.pem")
CERT_FILE = str(TLS_DIR / "localhost.pem")
KEY_FILE = str(TLS_DIR / "localhost-key.pem")


def _der_element(data: bytes, start: int) -> tuple[int, int, int]:
    """One DER element at `start` (X.690 §8.1): (where its content starts, where it ends, its tag)."""
    tag, length = data[start], data[start + 1]
    start += 2
    if length & 0x80:  # the long form: the next (length & 0x7f) bytes are the length
        count = length & 0x7F
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    return start, start + length, tag


def spki_sha256(pem_file: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate: what Chromium's
    --ignore-certificate-errors-spki-list takes.  RFC 5280 §4.1: Certificate = SEQUENCE {
    tbsCertificate SEQUENCE { [0] version, serialNumber, signature, issuer, validity, subject,
    subjectPublicKeyInfo, ... }, ... }: the seventh element of the first."""
    der = ssl.PEM_cert_to_DER_cert(Path(pem_file).read_text())
    certificate, _, _ = _der_element(der, 0)
    position, _, _ = _der_element(der, certificate)  # inside tbsCertificate
    for _ in range(6):  # skip version, serial, signature, issuer, validity, subject
        _, position, _ = _der_element(der, position)
    _, end, _ = _der_element(der, position)
    return base64.b64encode(hashlib.sha256(der[position:end]).digest()).decode()


# ---------------------------------------------------------------------------------------------
# Other platforms, simulated
# ---------------------------------------------------------------------------------------------

#: Run first in a child process: the names Windows lacks are removed, so a server that needs
#: one of them fails there as it would on Windows.  (`selectors` is imported after the removal:
#: it then falls back to select(), as it does on Windows.)
WINDOWS_PRELUDE = """
import os, select, sys
assert "selectors" not in sys.modules and "asyncio" not in sys.modules
for name in ("poll", "epoll", "kqueue", "devpoll"):
    if hasattr(select, name):
        delattr(select, name)
import socket  # (it imports selectors, which now finds only select())
del socket.MSG_DONTWAIT, socket.SO_REUSEPORT, os.fork
sys.modules["fcntl"] = None  # import fcntl raises ImportError
sys.modules["resource"] = None
import asyncio, selectors
assert selectors.DefaultSelector is selectors.SelectSelector
def _no_signal_handlers(self, *args, **kwargs):
    raise NotImplementedError("as on Windows: no loop.add_signal_handler")
asyncio.AbstractEventLoop.add_signal_handler = _no_signal_handlers
import asyncio.unix_events
asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = _no_signal_handlers
"""
