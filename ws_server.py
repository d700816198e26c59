#!/usr/bin/env python3
"""A WebSocket chat server (and client), RFC 6455 written by hand over asyncio streams.

    python ws_server.py                      # chat on http://127.0.0.1:8080/
    python ws_server.py --trace              # ... and log every frame, dissected
    python ws_server.py --connect ws://127.0.0.1:8080/    # terminal client

Every message a client sends is broadcast to every open client, the sender included: the
chat of the tutorial this project rebuilds.  With one client connected it is an echo server.
Standard library only.  The module reads top to bottom like the RFC:

1. Constants from the spec: the GUID (§1.3), opcodes (§5.2), close codes (§7.4), limits.
2. Errors: one family; each error carries its HTTP status or its close code.
3. The opening handshake (§4): parse the request, check it, build the answer.  Pure.
4. Static files on the same port (plain HTTP, RFC 9110), with traversal protection.
5. Framing (§5): masking (§5.3), encoding (§5.2), and `Receiver`, a decoder you feed bytes
   and that returns messages and control frames (§5.4, §5.5).  Pure: no sockets.
6. Closing (§5.5.1, §7): the close payload's rules.
7. `Connection`: moves bytes between an asyncio stream and the pure functions above; control
   frames, the closing handshake, keepalive pings, a bounded outgoing queue.
8. The application: `ChatRoom` and `WebSocketServer`; `connect()`, the client.
9. The command line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import codecs
import collections
import dataclasses
import enum
import hashlib
import logging
import mimetypes
import os
import secrets
import signal
import struct
import sys
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable, Union

log = logging.getLogger("ws_server")

# ---------------------------------------------------------------------------------------------
# 1. Constants from the spec
# ---------------------------------------------------------------------------------------------

#: §1.3: the server appends this GUID to the client's key before hashing (see `accept_key`).
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: §4.1, §4.4: the only version of the protocol this server speaks.
WEBSOCKET_VERSION = "13"


class Opcode(enum.IntEnum):
    """§5.2 "Opcode: 4 bits", as registered in §11.8."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


KNOWN_OPCODES = frozenset(Opcode)  # §5.2: every other value is reserved
DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
#: §5.5: control frames have an opcode whose most significant bit is 1.
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
#: §5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125


class CloseCode(enum.IntEnum):
    """§7.4.1 status codes, plus those registered since with IANA (§11.7)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire: "no status code was actually present"
    ABNORMAL_CLOSURE = 1006  # never on the wire: the TCP connection ended without a close frame
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # IANA registry
    TRY_AGAIN_LATER = 1013  # IANA registry
    BAD_GATEWAY = 1014  # IANA registry
    TLS_HANDSHAKE = 1015  # never on the wire


#: §7.4.1 codes an endpoint may put in a close frame: 1004 is reserved, 1005, 1006 and 1015
#: "MUST NOT be set as a status code in a Close control frame"; 1012-1014 came later (IANA).
#: §7.4.2: 0-999 are not used, 1016-2999 are for future revisions of the protocol,
#: 3000-3999 for libraries and frameworks (IANA), 4000-4999 for private use.
SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def is_sendable_close_code(code: int) -> bool:
    """May `code` appear in a close frame on the wire? (§7.4.1, §7.4.2)"""
    return code in SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


# Default limits.  Each one is also a command-line flag and a constructor argument.
DEFAULT_MAX_SIZE = 1 << 20  # --max-size: bytes in one message
DEFAULT_MAX_QUEUE = 64  # --max-queue: messages waiting for a client that does not read
DEFAULT_PING_INTERVAL = 20.0  # --ping-interval: seconds between keepalive pings
DEFAULT_PING_TIMEOUT = 20.0  # --ping-timeout: seconds to wait for the pong
DEFAULT_CLOSE_TIMEOUT = 5.0  # --close-timeout: seconds to wait for the peer's close frame
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds for the whole request head (slowloris)
DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # request line + headers
DEFAULT_MAX_HEADER_LINES = 100

#: A continuation frame costs this many bytes of the --max-size budget on top of its payload:
#: see `Receiver` for why.
FRAGMENT_CHARGE = 64

#: How much one read asks of the stream; also the StreamReader's limit.
READ_SIZE = 256 * 1024

# ---------------------------------------------------------------------------------------------
# 2. Errors
# ---------------------------------------------------------------------------------------------


class WebSocketError(Exception):
    """Base of every error this module raises on purpose."""


class HandshakeError(WebSocketError):
    """The opening handshake is refused: answered with `status` and a one-line `reason`."""

    def __init__(self, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)


class ProtocolError(WebSocketError):
    """The peer broke the protocol: the connection is failed with close `code` (§7.1.7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class ConnectionClosed(WebSocketError):
    """The connection is closed; `code` and `reason` say how (1006: no close frame at all)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# 3. The opening handshake (§4)
# ---------------------------------------------------------------------------------------------

_STATUS_PHRASES = {
    101: "Switching Protocols", 200: "OK", 204: "No Content", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 426: "Upgrade Required",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable",
}

#: RFC 9110 §5.6.2: a header name is a token.
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclasses.dataclass
class Request:
    """An HTTP/1.1 request head (RFC 9112 §3): request line and header fields."""

    method: str
    target: str
    version: tuple[int, int]
    headers: dict[str, list[str]]  # lower-cased name -> every value, in order

    def header(self, name: str) -> str | None:
        """The field's value; a field sent several times is one comma-joined list (RFC 9110 §5.3)."""
        values = self.headers.get(name.lower())
        return None if values is None else ", ".join(values)

    def tokens(self, name: str) -> list[str]:
        """The comma-separated list in a field, lower-cased (RFC 9110 §5.6.1)."""
        value = self.header(name) or ""
        return [item.strip().lower() for item in value.split(",") if item.strip()]


def parse_request(head: bytes, max_header_lines: int = DEFAULT_MAX_HEADER_LINES) -> Request:
    """Parse a request head (everything before the blank line) in one linear pass.

    RFC 9112 §2.2: lines end with CRLF (a bare LF is tolerated); §3: request-line =
    method SP request-target SP HTTP-version; §5: field-line = field-name ":" OWS value OWS.
    §5.2: obsolete line folding is refused with 400.
    """
    lines = head.split(b"\n")
    if len(lines) - 1 > max_header_lines:
        raise HandshakeError(431, f"more than {max_header_lines} header lines")
    try:
        method, target, version = lines[0].rstrip(b"\r").decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise HandshakeError(400, "malformed request line") from None
    if not (version.startswith("HTTP/") and len(version) == 8 and version[5].isdigit()
            and version[6] == "." and version[7].isdigit()):
        raise HandshakeError(400, "malformed HTTP version")
    if not method or not set(method.encode()) <= _TOKEN_CHARS or not target:
        raise HandshakeError(400, "malformed request line")
    return Request(method, target, (int(version[5]), int(version[7])), parse_header_lines(lines[1:]))


def parse_header_lines(lines: list[bytes]) -> dict[str, list[str]]:
    """RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; names are tokens."""
    headers: dict[str, list[str]] = {}
    for raw in lines:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[0] in b" \t":
            raise HandshakeError(400, "obsolete line folding in headers")
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            raise HandshakeError(400, "malformed header line")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.strip(b" \t").decode("latin-1"))
    return headers


def accept_key(key: str) -> str:
    """§4.2.2 /key/: base64(SHA-1(key + GUID)), the proof that the server read the request.

    >>> accept_key("dGhlIHNhbXBsZSBub25jZQ==")   # the example of §1.3
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def is_websocket_request(request: Request) -> bool:
    """Does the client ask for a WebSocket?  Anything else on this port is plain HTTP.

    An `Upgrade` that names another protocol (h2c, say) may be ignored (RFC 9110 §7.8).
    """
    return "websocket" in request.tokens("upgrade") or "sec-websocket-key" in request.headers


@dataclasses.dataclass
class Handshake:
    """What the server agreed to: the `Sec-WebSocket-Accept` value and the subprotocol."""

    accept: str
    subprotocol: str | None = None


def check_request(request: Request, *, allowed_origins: Iterable[str] | None = None,
                  subprotocols: Iterable[str] = ()) -> Handshake:
    """§4.2.1: check the client's opening handshake; raise `HandshakeError` to refuse it."""
    if request.method != "GET":  # §4.2.1 item 1
        raise HandshakeError(400, "the WebSocket handshake must use GET")
    if request.version < (1, 1):  # §4.2.1 item 1: "HTTP/1.1 or higher"
        raise HandshakeError(400, "the WebSocket handshake needs HTTP/1.1 or later")
    if len(request.headers.get("host", ())) != 1:  # §4.2.1 item 2; RFC 9112 §3.2
        raise HandshakeError(400, "exactly one Host header is required")
    if "websocket" not in request.tokens("upgrade"):  # item 3, case-insensitive
        raise HandshakeError(400, "Upgrade: websocket is required")
    if "upgrade" not in request.tokens("connection"):  # item 4: a token in a list
        raise HandshakeError(400, "Connection: Upgrade is required")
    keys = request.headers.get("sec-websocket-key", [])
    if len(keys) != 1:  # item 5
        raise HandshakeError(400, "exactly one Sec-WebSocket-Key is required")
    try:
        nonce = base64.b64decode(keys[0].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    version = request.header("sec-websocket-version")  # item 6
    if version is None:
        raise HandshakeError(400, "Sec-WebSocket-Version is required")
    if version.strip() != WEBSOCKET_VERSION:  # §4.4: answer with the version we speak
        raise HandshakeError(426, f"unsupported WebSocket version {version!r}",
                             [("Sec-WebSocket-Version", WEBSOCKET_VERSION)])
    check_origin(request, allowed_origins)
    return Handshake(accept_key(keys[0]), choose_subprotocol(request, subprotocols))


def check_origin(request: Request, allowed_origins: Iterable[str] | None) -> None:
    """§10.2: refuse a browser page from another site (403) when an allow-list is given.

    Cross-site WebSocket hijacking: a WebSocket is not bound by the same-origin policy, and
    the browser sends the user's cookies with the handshake.  Any page the user visits could
    open a socket to this server and act as the user.  Browsers always send `Origin`, and a
    page cannot forge it, so checking it is the defence.  A request with no `Origin` comes
    from a program, not a browser page, and is not refused: nothing is hijacked there.
    """
    if not allowed_origins:
        return
    origin = request.header("origin")
    if origin is not None and origin.lower() not in {o.lower() for o in allowed_origins}:
        raise HandshakeError(403, f"origin {origin!r} is not allowed")


def choose_subprotocol(request: Request, supported: Iterable[str]) -> str | None:
    """§4.2.2 /subprotocol/: the first protocol the client offers that we speak, or None.

    Subprotocol names are compared exactly: unlike header names, they are case-sensitive.
    """
    supported = set(supported)
    offered = (request.header("sec-websocket-protocol") or "").split(",")
    return next((name.strip() for name in offered if name.strip() in supported), None)


def build_response(status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                   *, head_only: bool = False) -> bytes:
    """An HTTP/1.1 response (RFC 9112 §4); the body is left out for HEAD."""
    lines = [f"HTTP/1.1 {status} {_STATUS_PHRASES.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def build_switching_protocols(handshake: Handshake) -> bytes:
    """§4.2.2 item 5: the server's answer that opens the WebSocket."""
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", handshake.accept)]
    if handshake.subprotocol:  # omitted when nothing matched (§4.2.2 /subprotocol/)
        headers.append(("Sec-WebSocket-Protocol", handshake.subprotocol))
    return build_response(101, headers)


def build_error_response(status: int, reason: str, headers: Iterable[tuple[str, str]] = (),
                         *, head_only: bool = False) -> bytes:
    """A refusal: the status, a one-line plain-text reason, and the connection closed."""
    body = (reason + "\n").encode("utf-8")
    return build_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Content-Length", str(len(body))), ("Connection", "close"),
                                    *headers], body, head_only=head_only)


# ---------------------------------------------------------------------------------------------
# 4. Static files on the same port
# ---------------------------------------------------------------------------------------------

STATIC_DIR = Path(__file__).resolve().parent / "static"


def resolve_static_path(root: str | os.PathLike, target: str, index: str) -> Path:
    """Map a request target to a file under `root`, or raise `HandshakeError` (404/403).

    The careful way, as `http.server`'s translate_path does it: drop the query, percent-decode
    once (so `%2e%2e` is `..` here and refused like it), refuse backslashes and NUL (another
    OS's separators), refuse any `..` or `.` segment, then resolve symlinks and check that the
    result is still inside the root.  `/` serves `index`.
    """
    path = urllib.parse.urlsplit(target).path if target.startswith("/") else None
    if path is None or target.startswith("//"):  # absolute-form, authority-form, "//host/..."
        raise HandshakeError(404, "not found")
    path = urllib.parse.unquote(path, errors="strict") if "%" in path else path
    if "\\" in path or "\x00" in path:
        raise HandshakeError(404, "not found")
    segments = [s for s in path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise HandshakeError(404, "not found")
    base = Path(root).resolve()
    candidate = base.joinpath(*segments) if segments else base / index
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise HandshakeError(404, "not found") from None
    if real != base and base not in real.parents:  # a symlink that leads out
        raise HandshakeError(403, "forbidden")
    if not real.is_file():
        raise HandshakeError(404, "not found")
    return real


def content_type(path: Path) -> str:
    """The Content-Type of a static file; text gets charset=utf-8."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    return kind


def static_response(root: str | os.PathLike, request: Request, index: str) -> bytes:
    """Answer a plain GET or HEAD from `root` (RFC 9110 §9.3.1, §9.3.2); 405 otherwise."""
    head_only = request.method == "HEAD"
    if request.method not in ("GET", "HEAD"):
        return build_error_response(405, f"method {request.method} is not allowed here",
                                    [("Allow", "GET, HEAD")], head_only=head_only)
    try:
        path = resolve_static_path(root, request.target, index)
        body = path.read_bytes()
    except HandshakeError as error:
        return build_error_response(error.status, error.reason, head_only=head_only)
    except OSError:
        return build_error_response(404, "not found", head_only=head_only)
    headers = [("Content-Type", content_type(path)), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-cache"), ("Connection", "close")]
    return build_response(200, headers, body, head_only=head_only)


# ---------------------------------------------------------------------------------------------
# 5. Framing (§5)
# ---------------------------------------------------------------------------------------------

#: Integer masking works on blocks of this size: large enough that Python's per-call cost
#: vanishes, small enough for the CPU caches (measured: 16-256 KiB best).  A multiple of 4, so
#: every block starts at the same position in the key.
MASK_BLOCK = 64 * 1024

#: From this size up, the four-lane `bytes.translate` technique is faster than integer XOR
#: (`python -m tests.bench_mask` measures both; see the README's Performance section).
MASK_LANES_FROM = 2 * 1024

#: XOR with a constant byte k, as a `bytes.translate` table: _XOR_TABLES[k][b] == b ^ k.
_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def apply_mask(data: bytes | bytearray | memoryview, masking_key: bytes) -> bytes | bytearray:
    """§5.3: mask or unmask (the same operation) `data` with the 4-byte `masking_key`.

    The definition, one byte at a time:

        transformed[i] = original[i] XOR masking_key[i MOD 4]

    A Python loop over bytes runs at a few MB/s.  Two ways do the work in C instead, and the
    faster one is chosen by size: `_mask_int_blocks` for small payloads, `_mask_lanes` from
    `MASK_LANES_FROM` bytes up (which returns its working bytearray: one copy less).
    """
    if len(data) < MASK_LANES_FROM:
        return _mask_int_blocks(data, masking_key)
    return _mask_lanes(data, masking_key)


def _mask_int_blocks(data: bytes | bytearray | memoryview, masking_key: bytes) -> bytes:
    """The buffer as one integer, XORed with the key repeated to the same length: C does it
    one machine word at a time.  Large buffers go in `MASK_BLOCK` slices, which stay in cache."""
    n = len(data)
    if n <= MASK_BLOCK:
        key = int.from_bytes((masking_key * ((n >> 2) + 1))[:n], "little")
        return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")
    key = int.from_bytes(masking_key * (MASK_BLOCK >> 2), "little")
    view = memoryview(data)
    blocks = []
    whole = n - n % MASK_BLOCK
    for start in range(0, whole, MASK_BLOCK):
        block = int.from_bytes(view[start:start + MASK_BLOCK], "little") ^ key
        blocks.append(block.to_bytes(MASK_BLOCK, "little"))
    if whole < n:
        blocks.append(_mask_int_blocks(view[whole:], masking_key))
    return b"".join(blocks)


def _mask_lanes(data: bytes | bytearray | memoryview, masking_key: bytes) -> bytearray:
    """Bytes 0, 4, 8, ... are all XORed with masking_key[0]; bytes 1, 5, 9, ... with
    masking_key[1]; and so on.  So the payload is four strided lanes, and XOR with one constant
    byte is a 256-entry lookup table: `bytes.translate` maps a whole lane in C."""
    out = bytearray(data)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR_TABLES[masking_key[lane]])
    return out


#: From this payload size up, a server frame is queued as (header, payload) and the two are
#: written one after the other: joining them would copy the whole payload once more.
LARGE_PAYLOAD = 64 * 1024

#: A frame ready to write: its bytes, or for a large payload its header and its payload.
Frame = Union[bytes, tuple]


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True,
                 masking_key: bytes | None = None) -> bytes:
    """§5.2: one frame, header and payload, with the minimal length encoding.

    A server never masks (§5.1); a client always does, with a fresh key per frame (§5.3).
    """
    header = frame_header(opcode, len(payload), fin=fin, masked=masking_key is not None)
    if masking_key:
        return header + masking_key + apply_mask(payload, masking_key)
    return header + payload


def frame_header(opcode: int, length: int, *, fin: bool = True, masked: bool = False) -> bytes:
    """§5.2: the first two bytes and the extended payload length (not the masking key)."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes((first, mask_bit | length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


def encode_server_frame(opcode: int, payload: bytes | bytearray) -> Frame:
    """An unmasked frame for `Connection.send_frame_bytes`; large payloads are not copied."""
    if len(payload) < LARGE_PAYLOAD:
        return encode_frame(opcode, payload)
    return frame_header(opcode, len(payload)), payload


@dataclasses.dataclass(slots=True)
class Message:
    """A complete data message (§5.6): text (`opcode` TEXT, UTF-8 payload) or binary."""

    opcode: Opcode
    payload: bytes | bytearray  # as received: not copied again

    @property
    def data(self) -> str | bytes:
        return self.payload.decode("utf-8") if self.opcode == Opcode.TEXT else bytes(self.payload)


@dataclasses.dataclass(slots=True)
class Ping:
    payload: bytes


@dataclasses.dataclass(slots=True)
class Pong:
    payload: bytes


@dataclasses.dataclass(slots=True)
class Close:
    """A close frame (§5.5.1); `code` is None when the frame carried no status code."""

    code: int | None
    reason: str = ""


Event = Union[Message, Ping, Pong, Close, ProtocolError]


@dataclasses.dataclass(frozen=True)
class FrameHeader:
    """The fixed part of a frame, decoded; used by `--trace` and by the tests."""

    fin: bool
    rsv: int  # RSV1, RSV2, RSV3 as 3 bits
    opcode: int
    masked: bool
    length: int
    masking_key: bytes | None

    def describe(self, payload: bytes = b"") -> str:
        """A packet-dissector line: FIN, RSV1-3, opcode by name, MASK, length, key, payload."""
        name = Opcode(self.opcode).name if self.opcode in KNOWN_OPCODES else "RESERVED"
        key = self.masking_key.hex() if self.masking_key else "-"
        preview = payload[:40]
        more = "..." if len(payload) > 40 else ""
        return (f"FIN={int(self.fin)} RSV={self.rsv:03b} opcode={self.opcode:#x} {name} "
                f"MASK={int(self.masked)} len={self.length} key={key} payload={preview!r}{more}")


def parse_frame_header(data: bytes) -> tuple[FrameHeader, int] | None:
    """Decode the header at the start of `data`: (header, its size), or None if incomplete."""
    if len(data) < 2:
        return None
    first, second = data[0], data[1]
    length = second & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)
    if len(data) < size:
        return None
    if length == 126:
        length = int.from_bytes(data[2:4], "big")
    elif length == 127:
        length = int.from_bytes(data[2:10], "big")
    key = bytes(data[size - 4:size]) if second & 0x80 else None
    return FrameHeader(bool(first & 0x80), (first >> 4) & 7, first & 0x0F, bool(second & 0x80),
                       length, key), size


class Receiver:
    """The frame decoder, sans I/O: `feed(bytes)` returns the events those bytes complete.

    §5.2, the base framing protocol:

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-------+-+-------------+-------------------------------+
        |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
        |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
        |N|V|V|V|       |S|             |   (if payload len==126/127)   |
        | |1|2|3|       |K|             |                               |
        +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
        |     Extended payload length continued, if payload len == 127  |
        + - - - - - - - - - - - - - - - +-------------------------------+
        |                               |Masking-key, if MASK set to 1  |
        +-------------------------------+-------------------------------+
        | Masking-key (continued)       |          Payload Data         |
        +-------------------------------- - - - - - - - - - - - - - - - +
        :                     Payload Data continued ...                :
        + - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - +
        |                     Payload Data continued ...                |
        +---------------------------------------------------------------+

    The events are `Message` (a whole data message, fragments joined, §5.4), `Ping`, `Pong`,
    `Close` and, last of all when the peer broke a rule, the `ProtocolError` that says which
    close code to fail the connection with.  Events before the error are returned with it:
    a message that arrived complete before a bad frame is still delivered.

    Limits.  A data frame's length is checked from its header, before its payload is read:
    a message over `max_size` is refused with 1009 without buffering it.  A flood of empty
    continuation frames would never grow the message yet cost work for each frame, forever;
    capping the number of fragments instead refuses honest messages sent in many small
    pieces (Autobahn 9.3.1: 4 MiB in 65,536 frames of 64 bytes).  So each continuation frame
    is charged `FRAGMENT_CHARGE` bytes of the same budget: any flood ends after at most
    max_size / FRAGMENT_CHARGE frames, and a message of N fragments may carry max_size minus
    (N - 1) x 64 bytes (4 MiB in 65,536 fragments needs a budget of 8 MiB).

    UTF-8 (§5.6, §8.1): text is checked incrementally, as each piece of payload arrives, so
    an invalid byte fails the connection with 1007 at once, even in the middle of a frame.
    """

    __slots__ = ("_buffer", "_cost", "_decoder", "_header", "_opcode", "_parts", "_received",
                 "_remaining", "failed", "mask_expected", "max_size", "on_frame")

    def __init__(self, *, mask_expected: bool = True, max_size: int = DEFAULT_MAX_SIZE,
                 on_frame: Callable[[FrameHeader, bytes], None] | None = None) -> None:
        self.mask_expected = mask_expected  # §5.1: True for a server, False for a client
        self.max_size = max_size
        self.on_frame = on_frame  # called with each frame, for --trace
        self._buffer = b""
        self.failed: ProtocolError | None = None
        # The frame whose payload is being streamed: its header and what is left to read.
        self._header: FrameHeader | None = None
        self._remaining = 0
        self._received = 0  # payload bytes of this frame already read (masking key phase)
        # The data message in progress, perhaps over several fragments (§5.4).
        self._opcode: int | None = None
        self._parts: list[bytes | bytearray] = []  # its payload so far, piece by piece
        self._cost = 0
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes from the peer; return the events they complete."""
        events: list[Event] = []
        if self.failed is not None:  # after an error the stream means nothing any more
            return events
        buf = self._buffer + data if self._buffer else data
        pos, end = 0, len(buf)
        try:
            while pos < end:
                if self._header is not None:  # in the middle of a data frame's payload
                    pos = self._stream_payload(buf, pos, end, events)
                    continue
                if end - pos < 2:
                    break
                first, second = buf[pos], buf[pos + 1]
                fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
                self._check_first_bytes(first, second, opcode, fin, length)
                size = 2
                if length == 126:
                    size = 4
                elif length == 127:
                    size = 10
                masked = second & 0x80
                if end - pos < size + (4 if masked else 0):
                    break
                if length == 126:
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                elif length == 127:
                    length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                    if length >> 63:  # §5.2: "the most significant bit MUST be 0"
                        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "64-bit length with top bit set")
                key = buf[pos + size:pos + size + 4] if masked else None
                size += 4 if masked else 0
                if opcode >= 0x8:  # control frame: small, read whole (§5.5)
                    if end - pos - size < length:
                        break
                    payload = buf[pos + size:pos + size + length]
                    if key:
                        payload = apply_mask(payload, key)
                    pos += size + length
                    header = FrameHeader(True, 0, opcode, bool(masked), length, key)
                    if self.on_frame:
                        self.on_frame(header, payload)
                    events.append(self._control_event(opcode, payload))
                    continue
                self._start_data_frame(opcode, length)
                header = FrameHeader(bool(fin), 0, opcode, bool(masked), length, key)
                pos += size
                if fin and opcode and end - pos >= length:  # fast path: a whole message here
                    payload = buf[pos:pos + length]
                    pos += length
                    if key:
                        payload = apply_mask(payload, key)
                    if self.on_frame:
                        self.on_frame(header, payload)
                    if opcode == Opcode.TEXT:
                        self._check_utf8(payload)
                    self._opcode = None
                    events.append(Message(Opcode(opcode), payload))
                    continue
                self._header, self._remaining, self._received = header, length, 0
                if length == 0:
                    self._finish_frame(events)
        except ProtocolError as error:
            self.failed = error
            events.append(error)
            self._buffer = b""
            return events
        self._buffer = buf[pos:] if pos < end else b""
        return events

    def _check_first_bytes(self, first: int, second: int, opcode: int, fin: int, length: int) -> None:
        """The rules that the first two bytes alone decide (§5.1, §5.2, §5.4, §5.5)."""
        if first & 0x70:  # §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated"
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set, no extension negotiated")
        if opcode not in KNOWN_OPCODES:  # §5.2: "MUST Fail the WebSocket Connection"
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if bool(second & 0x80) != self.mask_expected:
            # §5.1: a client masks every frame it sends; a server masks none.
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "unmasked frame from a client" if self.mask_expected
                                else "masked frame from a server")
        if opcode >= 0x8:
            if not fin:  # §5.5: "Control frames themselves MUST NOT be fragmented."
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:  # §5.5
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame longer than 125 bytes")
        elif opcode == Opcode.CONTINUATION:
            if self._opcode is None:  # §5.4: a continuation continues something
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame with no message started")
        elif self._opcode is not None:  # §5.4: fragments of two messages never interleave
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new data frame inside a fragmented message")

    def _start_data_frame(self, opcode: int, length: int) -> None:
        """Charge the frame against the message's budget before reading its payload (§10.4)."""
        if opcode:  # the first frame of a message
            self._opcode, self._cost = opcode, length
        else:
            self._cost += FRAGMENT_CHARGE + length
        if self._cost > self.max_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                f"message over the limit of {self.max_size} bytes")

    def _stream_payload(self, buf: bytes, pos: int, end: int, events: list[Event]) -> int:
        """Read what has arrived of the current data frame's payload; return the new position."""
        header = self._header
        take = min(self._remaining, end - pos)
        piece = buf[pos:pos + take]
        if header.masking_key:
            phase = self._received & 3  # where in the key this piece starts
            piece = apply_mask(piece, header.masking_key[phase:] + header.masking_key[:phase])
        self._received += take
        self._remaining -= take
        self._parts.append(piece)
        if self._opcode == Opcode.TEXT:
            self._feed_utf8(piece, final=False)
        if self._remaining == 0:
            self._finish_frame(events)
        return pos + take

    def _finish_frame(self, events: list[Event]) -> None:
        header = self._header
        self._header = None
        if self.on_frame:
            self.on_frame(header, b"".join(self._parts)[-header.length:] if header.length else b"")
        if not header.fin:
            return
        # Measured: joining pieces beats one buffer sized up front and unmasked in place.
        payload = b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
        if self._opcode == Opcode.TEXT:
            self._feed_utf8(b"", final=True)
        events.append(Message(Opcode(self._opcode), payload))
        self._opcode, self._parts, self._decoder = None, [], None

    def _feed_utf8(self, piece: bytes, final: bool) -> None:
        if self._decoder is None:
            self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        try:
            self._decoder.decode(piece, final)
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "text message is not valid UTF-8") from None

    @staticmethod
    def _check_utf8(payload: bytes) -> None:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "text message is not valid UTF-8") from None

    @staticmethod
    def _control_event(opcode: int, payload: bytes) -> Event:
        payload = bytes(payload)
        if opcode == Opcode.PING:
            return Ping(payload)
        if opcode == Opcode.PONG:
            return Pong(payload)
        return parse_close_payload(payload)


# ---------------------------------------------------------------------------------------------
# 6. Closing (§5.5.1, §7.4)
# ---------------------------------------------------------------------------------------------


def parse_close_payload(payload: bytes) -> Close:
    """§5.5.1: a close payload is empty, or a 2-byte status code then a UTF-8 reason."""
    if not payload:
        return Close(None)
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close payload of 1 byte")
    code = int.from_bytes(payload[:2], "big")
    if not is_sendable_close_code(code):  # §7.4.1, §7.4.2
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"close code {code} is not allowed on the wire")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "close reason is not valid UTF-8") from None
    return Close(code, reason)


def build_close_payload(code: int | None, reason: str = "") -> bytes:
    """The payload of a close frame; trimmed so that the frame stays within 125 bytes."""
    if code is None:
        return b""
    data = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2]
    return code.to_bytes(2, "big") + data.decode("utf-8", "ignore").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# 7. The connection: bytes between the stream and the pure functions
# ---------------------------------------------------------------------------------------------


class State(enum.Enum):
    OPEN = "open"  # §4.1: after the handshake
    CLOSING = "closing"  # §7.1.3: we sent a close frame (or failed the connection)
    CLOSED = "closed"  # §7.1.4: both close frames, or the TCP connection is gone


@dataclasses.dataclass
class Limits:
    """The limits of one connection; each has a default, a flag and a test."""

    max_size: int = DEFAULT_MAX_SIZE
    max_queue: int = DEFAULT_MAX_QUEUE
    ping_interval: float = DEFAULT_PING_INTERVAL
    ping_timeout: float = DEFAULT_PING_TIMEOUT
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT


class Connection:
    """One WebSocket connection over an asyncio stream, server or client side.

    Reading is pulled: `recv()` reads from the socket only when no message is waiting, so a
    busy reader applies TCP backpressure to its peer.  Pings are answered from there.

    Writing never waits: frames go to an outgoing queue flushed with one write per batch.
    While the peer reads, the queue only batches what one turn of the event loop produced.
    When the peer stops reading, the socket's buffer fills, a writer task waits for it to
    drain, and the queue grows: past `max_queue` messages the client is dropped with 1008
    (policy violation: the server's rule that clients keep up was broken; 1013, "try again
    later", would tell a client that did nothing wrong to blame the server's load).
    """

    __slots__ = ("_close_timer", "_closed_waiter", "_drain_task", "_events", "_flush_handle",
                 "_high_water", "_loop", "_next_event", "_outgoing", "_ping_payload",
                 "_ping_timer", "_reading", "close_code", "close_reason", "is_client", "limits",
                 "name", "reader", "receiver", "state", "subprotocol", "trace", "transport",
                 "writer")  # no per-connection __dict__: idle clients stay small

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 client: bool = False, limits: Limits | None = None,
                 subprotocol: str | None = None, trace: bool = False) -> None:
        self.reader, self.writer, self.transport = reader, writer, writer.transport
        self.is_client = client
        self.limits = limits or Limits()
        self.subprotocol = subprotocol
        self.trace = trace
        self.state = State.OPEN
        self.close_code: int | None = None  # the peer's, when it sent one
        self.close_reason = ""
        peer = writer.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.receiver = Receiver(mask_expected=not client, max_size=self.limits.max_size,
                                 on_frame=self._trace_in if trace else None)
        self._loop = asyncio.get_running_loop()
        self._events: list[Event] = []  # received, not yet handled; a list and an index: a
        self._next_event = 0  # deque would cost 600 bytes for every idle connection
        self._outgoing: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._drain_task: asyncio.Task | None = None
        self._high_water = self.transport.get_write_buffer_limits()[1]
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._reading = False  # is a task inside recv_message()?
        self._closed_waiter: asyncio.Future | None = None  # close() waiting for another reader
        if not client and self.limits.ping_interval > 0:
            self._ping_timer = self._loop.call_later(self.limits.ping_interval, self._keepalive)

    # -- receiving -----------------------------------------------------------------------------

    async def recv_message(self) -> Message:
        """The next data message; raises `ConnectionClosed` once the connection is closed.

        Events are handled strictly in the order they arrived: a message that came before a
        close frame or a protocol error is returned (and echoed) before that close is sent.
        One task receives at a time; another task may send, or `close()`, meanwhile.
        """
        if self._reading:
            raise RuntimeError("recv() called while another task is already receiving")
        self._reading = True
        try:
            while True:
                message = self._next_message()
                if message is not None:
                    return message
                if self.state is State.CLOSED:
                    await self._wait_for_tcp_end()
                    raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
                if self._flush_handle is not None:
                    # About to wait for the peer, which may be waiting for our answer: send what
                    # is queued now, not one loop turn later (frames of one read still batch).
                    self._flush()
                try:
                    data = await self.reader.read(READ_SIZE)
                except OSError:
                    data = b""
                if data:
                    self.receive_data(data)
                else:  # the peer's TCP is gone
                    self._connection_lost()
        finally:
            self._reading = False

    def _next_message(self) -> Message | None:
        """Handle the received events in order, up to the next data message."""
        events = self._events
        while self._next_event < len(events):
            event = events[self._next_event]
            self._next_event += 1
            if type(event) is Message:
                if self.state is State.OPEN:  # after our close, data is discarded (§7.1.3)
                    return event
            else:
                self._handle_control(event)
        events.clear()
        self._next_event = 0
        return None

    def receive_data(self, data: bytes) -> None:
        """Decode bytes from the peer; their events wait, in order, for `recv_message`."""
        self._events.extend(self.receiver.feed(data))

    async def recv(self) -> str | bytes:
        """The next message: `str` for text, `bytes` for binary."""
        return (await self.recv_message()).data

    def __aiter__(self):
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    def _handle_control(self, event: Event) -> None:
        kind = type(event)
        if kind is Ping:
            if self.state is State.OPEN:  # §5.5.2, §5.5.3: a pong with the same "Application data"
                self._send_frame(Opcode.PONG, event.payload)
        elif kind is Pong:  # §5.5.3: an unsolicited pong is ignored
            if event.payload == self._ping_payload:
                self._ping_payload = None
        elif kind is Close:
            if self.state is not State.CLOSED:
                self._close_received(event)
        elif self.state is not State.CLOSED:
            self._fail(event)

    def _close_received(self, close: Close) -> None:
        """§5.5.1: answer a close with a close (echoing its code), then end the TCP connection."""
        self.close_code = close.code if close.code is not None else CloseCode.NO_STATUS_RCVD
        self.close_reason = close.reason
        if self.state is State.OPEN:
            self._send_frame(Opcode.CLOSE, build_close_payload(close.code))
        self._set_closed()
        # §7.1.1: the server closes the TCP connection first; the client waits for it.
        self._flush()
        if self.is_client:
            self._start_close_timer()
        else:
            self.transport.close()

    def _connection_lost(self) -> None:
        if self.state is not State.CLOSED:
            self.close_code = self.close_code or CloseCode.ABNORMAL_CLOSURE  # §7.1.5
        self._set_closed()
        self.transport.close()

    # -- sending -------------------------------------------------------------------------------

    def send_nowait(self, data: str | bytes) -> None:
        """Queue a text (`str`) or binary (`bytes`) message; never waits."""
        if isinstance(data, str):
            self._send_frame(Opcode.TEXT, data.encode("utf-8"))
        else:
            self._send_frame(Opcode.BINARY, bytes(data))

    async def send(self, data: str | bytes) -> None:
        """Send a message; waits while the peer is not reading."""
        if self.state is not State.OPEN:
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        self.send_nowait(data)
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    def send_frame_bytes(self, frame: Frame) -> None:
        """Queue an already encoded server frame: a broadcast encodes once for every client."""
        if self.state is not State.OPEN:
            return
        if self._drain_task is not None and len(self._outgoing) >= self.limits.max_queue:
            self._fail(ProtocolError(CloseCode.POLICY_VIOLATION, "client too slow: outgoing queue full"))
            return
        if self.trace:
            self._trace_out(frame)
        self._queue(frame)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self.is_client:
            frame = encode_frame(opcode, payload, masking_key=os.urandom(4))  # §5.3: unpredictable
        else:
            frame = encode_server_frame(opcode, payload)
        if opcode >= 0x8:  # control frames bypass the queue's bound: they are small
            if self.trace:
                self._trace_out(frame)
            self._queue(frame)
        else:
            self.send_frame_bytes(frame)

    def _queue(self, frame: Frame) -> None:
        self._outgoing.append(frame)
        if self._flush_handle is None and self._drain_task is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is queued in one write, unless the peer's socket buffer is full."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._outgoing or self._drain_task is not None:
            return
        if self.transport.is_closing():
            self._outgoing.clear()
            return
        if self.transport.get_write_buffer_size() > self._high_water:
            self._drain_task = self._loop.create_task(self._write_when_drained())
            return
        outgoing = self._outgoing
        if len(outgoing) == 1 and type(outgoing[0]) is bytes:
            self.transport.write(outgoing[0])
        elif all(type(frame) is bytes for frame in outgoing):
            self.transport.write(b"".join(outgoing))
        else:  # large payloads go to the socket as they are, after their header
            for frame in outgoing:
                for chunk in (frame if type(frame) is tuple else (frame,)):
                    self.transport.write(chunk)
        outgoing.clear()

    async def _write_when_drained(self) -> None:
        """The writer of a client that does not keep up: wait for its socket, then flush."""
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self._outgoing.clear()
        finally:
            self._drain_task = None
        self._flush()

    # -- closing -------------------------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (§7.1.2) and wait, at most close_timeout, for its end."""
        if self.state is State.OPEN:
            self._start_closing(code, reason)
        deadline = self._loop.time() + self.limits.close_timeout + 1
        if self._reading:  # another task's recv() will read the peer's close: wait for it
            try:
                self._closed_waiter = self._loop.create_future()
                await asyncio.wait_for(self._closed_waiter, deadline - self._loop.time())
            except asyncio.TimeoutError:
                self._abort()
            return
        # Read on until the peer's close frame and the end of TCP, as recv() would.
        while self.state is not State.CLOSED and self._loop.time() < deadline:
            try:
                await asyncio.wait_for(self.recv_message(), deadline - self._loop.time())
            except (ConnectionClosed, asyncio.TimeoutError):
                break
        await self._wait_for_tcp_end()
        self._abort()

    async def _wait_for_tcp_end(self) -> None:
        """§7.1.1: the client waits, within close_timeout, for the server to close TCP first."""
        if self.is_client and not self.transport.is_closing():
            try:
                await asyncio.wait_for(self.reader.read(), self.limits.close_timeout)
            except (asyncio.TimeoutError, OSError):
                pass
            self._abort()

    def _start_closing(self, code: int, reason: str) -> None:
        self._send_frame(Opcode.CLOSE, build_close_payload(code, reason))
        self.state = State.CLOSING
        self._start_close_timer()

    def _fail(self, error: ProtocolError) -> None:
        """§7.1.7 Fail the WebSocket Connection: a close frame with the code, then end TCP.

        The server also half-closes its side (§7.1.1: the server ends TCP first) and reads on,
        discarding, until the peer closes: closing a socket that still has unread bytes would
        send a TCP reset, which can destroy the close frame before the peer reads it.
        """
        log.info("%s failing the connection: %s %s", self.name, error.code, error.reason)
        if self.close_code is None:
            self.close_code, self.close_reason = error.code, error.reason
        if self.state is State.OPEN:
            self._send_frame(Opcode.CLOSE, build_close_payload(error.code, error.reason))
        self.state = State.CLOSING
        self.receiver.failed = self.receiver.failed or error
        self._flush()
        if self._drain_task is None and self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()
        self._start_close_timer()

    def _start_close_timer(self) -> None:
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(self.limits.close_timeout, self._abort)

    def _abort(self) -> None:
        """The end of patience: drop the TCP connection (§7.1.1 for the unresponsive peer)."""
        self._set_closed()
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL_CLOSURE
        if self._outgoing or self._drain_task:  # a peer that does not read: do not wait for it
            self.transport.abort()
        else:
            self.transport.close()

    def _set_closed(self) -> None:
        self.state = State.CLOSED
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        for timer in (self._ping_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._close_timer = None

    # -- keepalive -----------------------------------------------------------------------------

    def _keepalive(self) -> None:
        """Send a ping every ping_interval; a peer that sends no pong in ping_timeout is dropped."""
        if self.state is not State.OPEN:
            return
        self._ping_payload = os.urandom(4)
        self._send_frame(Opcode.PING, self._ping_payload)
        self._ping_timer = self._loop.call_later(self.limits.ping_timeout, self._check_pong,
                                                 self._ping_payload)

    def _check_pong(self, payload: bytes) -> None:
        if self.state is not State.OPEN:
            return
        if self._ping_payload == payload:
            # No code fits a silent peer exactly; like `websockets`, 1011: the server cannot go on.
            self._fail(ProtocolError(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
            return
        remaining = max(0.0, self.limits.ping_interval - self.limits.ping_timeout)
        self._ping_timer = self._loop.call_later(remaining, self._keepalive)

    # -- tracing -------------------------------------------------------------------------------

    def _trace_in(self, header: FrameHeader, payload: bytes) -> None:
        log.info("%s <<< %s", self.name, header.describe(payload))

    def _trace_out(self, frame: Frame) -> None:
        if type(frame) is tuple:
            frame = b"".join(frame)
        header, size = parse_frame_header(frame)
        payload = frame[size:]
        if header.masking_key:
            payload = apply_mask(payload, header.masking_key)
        log.info("%s >>> %s", self.name, header.describe(payload))


# ---------------------------------------------------------------------------------------------
# 8. The application: the chat room, the server, the client
# ---------------------------------------------------------------------------------------------


class ChatRoom:
    """The seed's chat: every message goes to every open client, the sender too.

    Text stays text and binary stays binary.  (The tutorial's Node server passes the `Buffer`
    it received to `send()`, which `ws` 8 sends as binary: browsers then show "[object Blob]"
    for every chat line.)  The frame is encoded once and the same bytes are queued for every
    client; queuing never waits, so no client's socket holds up the next client.
    """

    def __init__(self) -> None:
        self.clients: set[Connection] = set()

    def broadcast(self, message: Message) -> None:
        frame = encode_server_frame(message.opcode, message.payload)
        for client in tuple(self.clients):
            client.send_frame_bytes(frame)


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    static_dir: str | os.PathLike = STATIC_DIR
    index: str = "chat.html"
    limits: Limits = dataclasses.field(default_factory=Limits)
    allowed_origins: list[str] | None = None
    subprotocols: list[str] = dataclasses.field(default_factory=list)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_header_lines: int = DEFAULT_MAX_HEADER_LINES
    trace: bool = False


async def read_request_head(reader: asyncio.StreamReader, max_bytes: int) -> tuple[bytes, bytes]:
    """Read up to the blank line that ends a request head: (head, bytes that came after it).

    Linear: each new chunk is searched only from just before its start.  The bytes after
    the head (a client may send its first frames at once) go to the frame decoder.
    """
    buffer = b""
    while True:
        chunk = await reader.read(max_bytes + 4 - len(buffer))
        if not chunk:
            raise HandshakeError(400, "connection closed before the end of the request head")
        start = max(0, len(buffer) - 3)
        buffer += chunk
        end = buffer.find(b"\r\n\r\n", start)
        if end >= 0:
            return buffer[:end], buffer[end + 4:]
        if len(buffer) > max_bytes:
            raise HandshakeError(431, f"request head over {max_bytes} bytes")


class WebSocketServer:
    """The chat server: WebSocket on any path, static files for plain GET and HEAD."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.room = ChatRoom()
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self._handshaking: set[asyncio.Task] = set()  # handlers still reading a request head

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.config.host, self.config.port,
                                                  limit=READ_SIZE)

    async def shutdown(self, code: int = CloseCode.GOING_AWAY) -> None:
        """Stop accepting, close every client with `code` (1001, going away), wait for them."""
        if self._server is not None:
            self._server.close()
        for task in tuple(self._handshaking):  # idle or half-sent requests: nothing to wait for
            task.cancel()
        for client in tuple(self.room.clients):
            if client.state is State.OPEN:
                client._start_closing(code, "server shutting down")
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=self.config.limits.close_timeout + 1)
        for task in tuple(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=1)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        self._handshaking.add(task)
        try:
            accepted = await self._handshake(reader, writer)
            if accepted is not None:  # the request head and its parse are gone: idle clients are small
                await self._chat(reader, writer, *accepted)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # shutdown() ends connections it cannot close politely
            pass
        except Exception:  # a bug: log it, keep serving everyone else
            log.exception("unexpected error")
        finally:
            self._handlers.discard(task)
            self._handshaking.discard(task)
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                         ) -> tuple[Handshake, bytes] | None:
        """Read and answer the request: a static file, a refusal, or 101 (then the handshake
        and the bytes that came after the head)."""
        config = self.config
        try:
            head, rest = await asyncio.wait_for(read_request_head(reader, config.max_header_bytes),
                                                config.handshake_timeout)
            request = parse_request(head, config.max_header_lines)
            if config.trace:
                log.info("handshake request:\n%s", head.decode("latin-1"))
            if not is_websocket_request(request):
                writer.write(static_response(config.static_dir, request, config.index))
                await self._close_http(writer)
                return
            handshake = check_request(request, allowed_origins=config.allowed_origins,
                                      subprotocols=config.subprotocols)
        except asyncio.TimeoutError:  # RFC 9110 §15.5.9
            writer.write(build_error_response(408, "request head not received in time"))
            await self._close_http(writer)
            return
        except HandshakeError as error:
            log.info("refused %s: %s %s", writer.get_extra_info("peername"), error.status, error.reason)
            writer.write(build_error_response(error.status, error.reason, error.headers))
            await self._close_http(writer)
            return
        self._handshaking.discard(asyncio.current_task())
        response = build_switching_protocols(handshake)
        if config.trace:
            log.info("handshake response:\n%s", response.decode("latin-1").rstrip())
        writer.write(response)
        return handshake, rest

    async def _chat(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    handshake: Handshake, rest: bytes) -> None:
        config = self.config
        connection = Connection(reader, writer, limits=config.limits,
                                subprotocol=handshake.subprotocol, trace=config.trace)
        self.room.clients.add(connection)
        log.info("%s connected (%d open)", connection.name, len(self.room.clients))
        try:
            if rest:
                connection.receive_data(rest)
            while True:
                self.room.broadcast(await connection.recv_message())
        except ConnectionClosed:
            pass
        finally:
            self.room.clients.discard(connection)
            if connection.state is not State.CLOSED:
                connection._connection_lost()
            log.info("%s disconnected: %s %s (%d open)", connection.name, connection.close_code,
                     connection.close_reason, len(self.room.clients))

    @staticmethod
    async def _close_http(writer: asyncio.StreamWriter) -> None:
        """Send the answer, then close; a short linger lets a client finish sending its request."""
        try:
            await asyncio.wait_for(writer.drain(), 5)
            if writer.can_write_eof():
                writer.write_eof()
        except (asyncio.TimeoutError, OSError):
            pass
        writer.close()


async def connect(url: str, *, origin: str | None = None, subprotocols: Iterable[str] = (),
                  limits: Limits | None = None, timeout: float = 10.0,
                  trace: bool = False) -> Connection:
    """Open a client connection to a ws:// URL: the server's mirror (§4.1).

    The client masks every frame (§5.3) and checks `Sec-WebSocket-Accept` against the key
    it sent, which proves the answer comes from a WebSocket server that read this request.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"not a ws:// URL: {url!r} (wss:// is not supported)")
    port = parts.port or 80
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port, limit=READ_SIZE),
                                            timeout)
    try:
        key = base64.b64encode(secrets.token_bytes(16)).decode("ascii")  # §4.1: a random nonce
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                 f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {WEBSOCKET_VERSION}"]
        if origin:
            lines.append(f"Origin: {origin}")
        if subprotocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        head, rest = await asyncio.wait_for(read_request_head(reader, DEFAULT_MAX_HEADER_BYTES), timeout)
        status_line, _, _ = head.partition(b"\r\n")
        if status_line.split(b" ")[1:2] != [b"101"]:
            raise HandshakeError(int(status_line.split(b" ")[1]) if status_line[9:12].isdigit() else 0,
                                 f"server refused the upgrade: {status_line.decode('latin-1')}")
        response = Request("", "", (1, 1), parse_header_lines(head.split(b"\n")[1:]))
        if response.header("sec-websocket-accept") != accept_key(key):  # §4.1 item 4
            raise HandshakeError(0, "wrong Sec-WebSocket-Accept from the server")
        if "websocket" not in response.tokens("upgrade") or "upgrade" not in response.tokens("connection"):
            raise HandshakeError(0, "server answered 101 without Upgrade: websocket")
    except BaseException:
        writer.transport.abort()
        raise
    connection = Connection(reader, writer, client=True, limits=limits or Limits(ping_interval=0),
                            subprotocol=response.header("sec-websocket-protocol"), trace=trace)
    if rest:
        connection.receive_data(rest)
    return connection


# ---------------------------------------------------------------------------------------------
# 9. The command line
# ---------------------------------------------------------------------------------------------


async def run_server(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then close every client with 1001 (going away)."""
    server = WebSocketServer(config)
    await server.start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    log.info("Serving the chat on http://%s:%d/ (WebSocket on ws://%s:%d/) ...",
             host, server.port, host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("Shutting down: closing %d client(s) with 1001", len(server.room.clients))
    await server.shutdown()


async def run_client(url: str, trace: bool) -> None:
    """`--connect`: typed lines are sent as text; received messages are printed."""
    connection = await connect(url, trace=trace)
    sys.stdout.write(f"connected to {url}; type a line to send it, Ctrl-D to quit\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()

    async def printer() -> None:
        async for message in connection:
            sys.stdout.write(f"< {message if isinstance(message, str) else message!r}\n")
            sys.stdout.flush()
        sys.stdout.write(f"connection closed: {connection.close_code} {connection.close_reason}\n")

    printing = loop.create_task(printer())
    try:
        while not printing.done():
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or printing.done():
                break
            await connection.send(line.rstrip("\n"))
    finally:
        if connection.state is State.OPEN:
            await connection.close()
        printing.cancel()
        await asyncio.gather(printing, return_exceptions=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="WebSocket chat server (RFC 6455 by hand), or a terminal client with --connect.")
    parser.add_argument("--host", "--bind", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument("--static", default=str(STATIC_DIR), metavar="DIR",
                        help="folder of the pages served over plain HTTP (default: static/)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, metavar="N",
                        help=f"largest message in bytes; larger ones close with 1009 (default: {DEFAULT_MAX_SIZE})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                        help="messages queued for a client that does not read before it is "
                             f"dropped with 1008 (default: {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--ping-interval", type=float, default=DEFAULT_PING_INTERVAL, metavar="S",
                        help=f"seconds between keepalive pings, 0 to disable (default: {DEFAULT_PING_INTERVAL:g})")
    parser.add_argument("--ping-timeout", type=float, default=DEFAULT_PING_TIMEOUT, metavar="S",
                        help=f"seconds to wait for a pong (default: {DEFAULT_PING_TIMEOUT:g})")
    parser.add_argument("--close-timeout", type=float, default=DEFAULT_CLOSE_TIMEOUT, metavar="S",
                        help=f"seconds to wait for the peer's close frame (default: {DEFAULT_CLOSE_TIMEOUT:g})")
    parser.add_argument("--handshake-timeout", type=float, default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="S",
                        help=f"seconds to receive the request head (default: {DEFAULT_HANDSHAKE_TIMEOUT:g})")
    parser.add_argument("--max-header-bytes", type=int, default=DEFAULT_MAX_HEADER_BYTES, metavar="N",
                        help=f"largest request head (default: {DEFAULT_MAX_HEADER_BYTES})")
    parser.add_argument("--max-header-lines", type=int, default=DEFAULT_MAX_HEADER_LINES, metavar="N",
                        help=f"most header lines in a request (default: {DEFAULT_MAX_HEADER_LINES})")
    parser.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                        help="accept browser pages from this origin only (repeatable; default: any)")
    parser.add_argument("--subprotocol", action="append", default=[], metavar="NAME",
                        help="a subprotocol to accept (repeatable)")
    parser.add_argument("--trace", action="store_true", help="log the handshake and every frame, dissected")
    parser.add_argument("--connect", metavar="URL", help="run the terminal client against URL instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("max_size", "max_queue", "max_header_bytes", "max_header_lines"):
        if getattr(args, name) < 1:
            build_parser().error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        if args.connect:
            asyncio.run(run_client(args.connect, args.trace))
            return 0
        limits = Limits(args.max_size, args.max_queue, args.ping_interval, args.ping_timeout,
                        args.close_timeout)
        config = ServerConfig(args.host, args.port, args.static, limits=limits,
                              allowed_origins=args.allow_origin, subprotocols=args.subprotocol,
                              handshake_timeout=args.handshake_timeout,
                              max_header_bytes=args.max_header_bytes,
                              max_header_lines=args.max_header_lines, trace=args.trace)
        asyncio.run(run_server(config))
    except KeyboardInterrupt:  # Ctrl-C in the client, or before the handlers are installed
        pass
    except (OSError, WebSocketError, ValueError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
