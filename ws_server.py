#!/usr/bin/env python3
"""A WebSocket chat server (and client), RFC 6455 written by hand over asyncio streams.

    python ws_server.py                      # chat on http://127.0.0.1:8080/
    python ws_server.py --trace              # ... and log every frame, dissected
    python ws_server.py --connect ws://127.0.0.1:8080/    # terminal client

The tutorial this project rebuilds is a chat of twenty lines of Node `ws`: every message a
client sends goes to every open client, the sender included.  This module is that chat with
every byte of the protocol written out.  Standard library only; every platform Python runs on.

How to read it
--------------
Part I, "The tutorial's protocol", is what a connection meets, in that order, and it is the
code that runs (nothing in it is a simplified copy):

  I.1  The opening handshake (§4): an HTTP GET, and the 101 answer with its accept key.
  I.2  The frame (§5.2): the diagram, its bit masks, one header decoder, the encoder.
  I.3  Masking (§5.3), written as its definition.
  I.4  What frames carry: messages (§5.4, §5.6) and control frames (§5.5).
  I.5  The decoder, `Receiver`: bytes in, messages and control frames out, every rule checked.
  I.6  Closing (§5.5.1, §7.4): the close frame's payload and its status codes.
  I.7  `Protocol`: one connection's state machine, sans I/O: ping → pong, the closing handshake.
  I.8  The broadcast: the tutorial's `server.clients.forEach(...)`.
  I.9  The server's main path: accept, handshake, read messages, broadcast them, close.

Part II, "For real use", is what a server exposed to the Internet needs besides: limits and
speed, strict HTTP, static files, compression, the connection's pump (byte budgets, batched
writes, keepalive), the client, TLS, Redis, who may connect, the chat page's "On the wire"
panel, the command line.  Part I calls into Part II where it must (Python looks names up when
a function runs), and says at each such call what it is for; it defines nothing of Part II.

Sans I/O: everything up to `Protocol` is pure (bytes in, bytes and decisions out); the
walkthrough (`python -m unittest -v`) feeds it literal bytes.  Only `Connection` (Part II) and
the server touch sockets and clocks.
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
import hmac
import ipaddress
import json
import logging
import mimetypes
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import urllib.parse
import zlib
from pathlib import Path
from typing import Callable, Iterable, Union

if sys.version_info < (3, 10):  # dataclass(slots=True) and more: say so, rather than fail on them
    sys.stderr.write(f"{os.path.basename(__file__)}: Python 3.10 or later is needed; this is "
                     f"Python {sys.version.split()[0]}\n")
    sys.exit(2)

log = logging.getLogger("ws_server")


# =============================================================================================
# PART I — THE TUTORIAL'S PROTOCOL
# =============================================================================================

# ---------------------------------------------------------------------------------------------
# I.1 The opening handshake (§4)
# ---------------------------------------------------------------------------------------------
#
# The browser's `new WebSocket("ws://host/")` sends an HTTP request; the server answers 101, and
# from then on the same TCP connection carries frames (I.2).  §1.2 and §1.3, side by side:
#
# The client:                                   The server:
#   GET /chat HTTP/1.1                            HTTP/1.1 101 Switching Protocols
#   Host: server.example.com                      Upgrade: websocket
#   Upgrade: websocket                            Connection: Upgrade
#   Connection: Upgrade                           Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
#   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==   Sec-WebSocket-Protocol: chat
#   Sec-WebSocket-Version: 13
#   Sec-WebSocket-Protocol: chat, superchat
#
# The request head is read by the strict HTTP/1.1 parser of Part II (`parse_request`, RFC 9112),
# which also serves the pages on the same port; the functions here check what makes it a
# WebSocket handshake.  Every refusal is an `HTTPError`, answered in one place (I.9).


class WebSocketError(Exception):
    """Base of every error this module raises on purpose: one family, each error carrying
    the HTTP status or the close code it is answered with."""


class HTTPError(WebSocketError):
    """A request refused: answered with `status`, a one-line `reason` and maybe `headers`.

    Raised by pure functions (here and in Part II) and turned into a response in one place
    (`WebSocketServer._handshake`, and `sse_server`'s handler)."""

    def __init__(self, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)


class HandshakeError(HTTPError):
    """§4.2.1: the server refuses a client's opening handshake."""


#: §1.3: the server appends this GUID to the client's key before hashing (see `accept_key`).
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: §4.1, §4.4: the only version of the protocol this server speaks.
WEBSOCKET_VERSION = "13"


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
    """What both sides agreed to: the `Sec-WebSocket-Accept` value, the subprotocol, and the
    permessage-deflate parameters (Part II), if any."""

    accept: str
    subprotocol: str | None = None
    deflate: DeflateParameters | None = None


def check_request(request: Request, *, access: AccessRules | None = None,
                  subprotocols: Iterable[str] = (), compression: bool = False) -> Handshake:
    """§4.2.1: check the client's opening handshake; raise `HandshakeError` to refuse it.

    Item 2, exactly one Host, is checked for every request by `parse_request` (RFC 9112 §3.2).
    """
    if request.method != "GET":  # §4.2.1 item 1
        raise HandshakeError(400, "the WebSocket handshake must use GET")
    if request.version < (1, 1):  # §4.2.1 item 1: "HTTP/1.1 or higher"
        raise HandshakeError(400, "the WebSocket handshake needs HTTP/1.1 or later")
    if "websocket" not in request.tokens("upgrade"):  # item 3, case-insensitive
        raise HandshakeError(400, "Upgrade: websocket is required")
    if "upgrade" not in request.tokens("connection"):  # item 4: a token in a list
        raise HandshakeError(400, "Connection: Upgrade is required")
    if body_length(request) != 0:  # a GET has no body; bytes after the head are frames
        raise HandshakeError(400, "the WebSocket handshake has no body")
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
    if version.strip() != WEBSOCKET_VERSION:
        # §4.4: say which version we speak.  RFC 9110 §15.5.22: a 426 names the protocol to
        # upgrade to, and whoever sends Upgrade also sends Connection: upgrade (§7.8).
        raise HandshakeError(426, f"unsupported WebSocket version {version[:20]!r}",
                             [("Upgrade", "websocket"), ("Connection", "Upgrade, close"),
                              ("Sec-WebSocket-Version", WEBSOCKET_VERSION)])
    check_origin(request, access)
    # §9.1: extensions are negotiated here too; one this server cannot honour is declined,
    # never refused (permessage-deflate, Part II).
    deflate = negotiate_deflate(request.header("sec-websocket-extensions")) if compression else None
    return Handshake(accept_key(keys[0]), choose_subprotocol(request, subprotocols), deflate)


def check_origin(request: Request, access: AccessRules | None) -> None:
    """§10.2: refuse (403) a browser page of any origin but this server's own and those allowed.

    Cross-site WebSocket hijacking: a WebSocket is not bound by the same-origin policy, and
    the browser sends the user's cookies with the handshake, so any page the user visits could
    open a socket to this server and act as the user.  Browsers always send `Origin`, which a
    page cannot forge, so checking it is the defence; a request with none is a program's, not a
    page's, and nothing is hijacked there.  The server's `AccessRules` (Part II) know its own
    origin (a Host it answers for) and --allow-origin's."""
    if access is not None:
        access.check_origin(request)


def choose_subprotocol(request: Request, supported: Iterable[str]) -> str | None:
    """§4.2.2 /subprotocol/: the first protocol the client offers that we speak, or None.

    Subprotocol names are compared exactly: unlike header names, they are case-sensitive.
    """
    supported = set(supported)
    offered = (request.header("sec-websocket-protocol") or "").split(",")
    return next((name.strip() for name in offered if name.strip() in supported), None)


def build_switching_protocols(handshake: Handshake) -> bytes:
    """§4.2.2 item 5: the server's answer that opens the WebSocket."""
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", handshake.accept)]
    if handshake.subprotocol:  # omitted when nothing matched (§4.2.2 /subprotocol/)
        headers.append(("Sec-WebSocket-Protocol", handshake.subprotocol))
    if handshake.deflate:  # §4.2.2 /extensions/: only what the client offered and we accept
        headers.append(("Sec-WebSocket-Extensions", handshake.deflate.header()))
    return build_response(101, headers)


# ---------------------------------------------------------------------------------------------
# I.2 The frame (§5.2)
# ---------------------------------------------------------------------------------------------
#
# After the 101, everything on the connection is frames, in both directions:
#
#      0                   1                   2                   3
#      0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
#     +-+-+-+-+-------+-+-------------+-------------------------------+
#     |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
#     |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
#     |N|V|V|V|       |S|             |   (if payload len==126/127)   |
#     | |1|2|3|       |K|             |                               |
#     +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
#     |     Extended payload length continued, if payload len == 127  |
#     + - - - - - - - - - - - - - - - +-------------------------------+
#     |                               |Masking-key, if MASK set to 1  |
#     +-------------------------------+-------------------------------+
#     | Masking-key (continued)       |          Payload Data         |
#     +-------------------------------- - - - - - - - - - - - - - - - +
#     :                     Payload Data continued ...                :
#     + - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - +
#     |                     Payload Data continued ...                |
#     +---------------------------------------------------------------+
#
# The bits of the first two bytes, named as the diagram names them:

FIN = 0b1000_0000  # byte 0: this is the last frame of its message (§5.4)
RSV1 = 0b0100_0000  # byte 0: reserved for extensions; permessage-deflate's "compressed" bit
RSV2 = 0b0010_0000  # byte 0: reserved
RSV3 = 0b0001_0000  # byte 0: reserved
OPCODE = 0b0000_1111  # byte 0: what the payload is (`Opcode`)
MASK = 0b1000_0000  # byte 1: the payload is masked, and a masking key follows (§5.3)
PAYLOAD_LEN = 0b0111_1111  # byte 1: the length, or 126 / 127: a 16-bit / 64-bit length follows

#: Payload len values that announce an extended length (§5.2).
LENGTH_16_BITS, LENGTH_64_BITS = 126, 127


class Opcode:
    """§5.2 "Opcode: 4 bits", as registered in §11.8.  Plain numbers, as the RFC writes them
    (%x1 "denotes a text frame"): an enum would print its names, but on Python 3.11 each lookup
    of a member costs about 70 ns, and the decoder makes a few per frame (README, Performance)."""

    CONTINUATION = 0x0  # the next fragment of a message (§5.4)
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8  # control frames (§5.5) from here: the opcode's most significant bit is set
    PING = 0x9
    PONG = 0xA


#: §5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket
#: Connection_": every value not in this table, which names the others for --trace.
OPCODE_NAMES = {Opcode.CONTINUATION: "CONTINUATION", Opcode.TEXT: "TEXT", Opcode.BINARY: "BINARY",
                Opcode.CLOSE: "CLOSE", Opcode.PING: "PING", Opcode.PONG: "PONG"}

#: §5.5: "Control frames are identified by opcodes where the most significant bit of the
#: opcode is 1": this bit of the opcode.
CONTROL = 0b1000

#: §5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125


@dataclasses.dataclass(slots=True)
class FrameHeader:
    """A frame's header, field by field in the diagram's order."""

    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    opcode: int
    masked: bool
    length: int  # of the payload, whichever of the three forms carried it
    masking_key: bytes | None

    def describe(self, payload: bytes = b"", inflated: bool = False) -> str:
        """A packet-dissector line for --trace: FIN, RSV1-3, opcode by name, MASK, length, key
        and payload (for a compressed message, `inflated`: the payload after inflation)."""
        name = OPCODE_NAMES.get(self.opcode, "RESERVED")
        key = self.masking_key.hex() if self.masking_key else "-"
        more = "..." if len(payload) > 40 else ""
        return (f"FIN={int(self.fin)} RSV={int(self.rsv1)}{int(self.rsv2)}{int(self.rsv3)} "
                f"opcode={self.opcode:#x} {name} MASK={int(self.masked)} len={self.length}"
                f"{f' inflated={len(payload)}' if inflated else ''} key={key} payload={payload[:40]!r}{more}")


def parse_frame_header(data: bytes, start: int = 0) -> tuple[FrameHeader, int] | None:
    """§5.2: decode the header that begins at `start` in `data`; return it and the position
    of its payload, or None while the header is incomplete.

    The one header decoder: the server's `Receiver` runs it on every frame it reads, and
    --trace on every frame the server writes."""
    available = len(data) - start
    if available < 2:
        return None
    first, second = data[start], data[start + 1]
    fin, rsv1, rsv2, rsv3 = first & FIN != 0, first & RSV1 != 0, first & RSV2 != 0, first & RSV3 != 0
    opcode, masked, length = first & OPCODE, second & MASK != 0, second & PAYLOAD_LEN
    extended = 2 if length == LENGTH_16_BITS else 8 if length == LENGTH_64_BITS else 0
    if available < 2 + extended + (4 if masked else 0):
        return None
    position = start + 2
    if extended:  # "the following 2 (8) bytes interpreted as a 16-bit (64-bit) unsigned integer"
        length = int.from_bytes(data[position:position + extended], "big")
        position += extended
        if length >> 63:  # "(the most significant bit MUST be 0)"
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "64-bit length with its top bit set")
    masking_key = None
    if masked:
        masking_key = data[position:position + 4]
        position += 4
    return FrameHeader(fin, rsv1, rsv2, rsv3, opcode, masked, length, masking_key), position


def frame_header(opcode: int, length: int, *, fin: bool = True, masked: bool = False,
                 rsv1: bool = False) -> bytes:
    """§5.2, the other way: the first two bytes and the extended payload length (not the
    masking key), with "the minimal number of bytes" for the length."""
    first = (FIN if fin else 0) | (RSV1 if rsv1 else 0) | opcode
    mask_bit = MASK if masked else 0
    if length < LENGTH_16_BITS:
        return bytes((first, mask_bit | length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | LENGTH_16_BITS, length)
    return struct.pack("!BBQ", first, mask_bit | LENGTH_64_BITS, length)


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True,
                 masking_key: bytes | None = None, rsv1: bool = False) -> bytes:
    """§5.2: one frame, header and payload.

    A server never masks (§5.1); a client always does, with a fresh key per frame (§5.3).
    """
    header = frame_header(opcode, len(payload), fin=fin, masked=masking_key is not None, rsv1=rsv1)
    if masking_key is not None:
        return header + masking_key + apply_mask(payload, masking_key)
    return header + payload


# ---------------------------------------------------------------------------------------------
# I.3 Masking (§5.3)
# ---------------------------------------------------------------------------------------------
#
# Every frame a browser sends is masked with a fresh random key, so that its bytes cannot be
# chosen by a page's script: a proxy that does not know WebSocket can then never be made to
# read them as an HTTP request of the page's making (§10.3, cache poisoning).  The server
# unmasks; it never masks (§5.1).


def apply_mask(data: bytes | bytearray | memoryview, masking_key: bytes) -> bytes | bytearray:
    """§5.3: mask or unmask (the same operation) `data` with the 4-byte `masking_key`:

        transformed-octet-i = original-octet-i XOR masking-key-octet-(i MOD 4)

    Written here for the whole payload at once: the key repeated to the payload's length,
    XORed with it as two big integers (one XOR in C instead of a Python loop per byte).
    From `MASK_LANES_FROM` bytes up, `mask_lanes` (Part II) gives the same bytes faster.
    """
    n = len(data)
    if n >= MASK_LANES_FROM:
        return mask_lanes(data, masking_key)
    repeated_key = (masking_key * (n // 4 + 1))[:n]  # masking_key[i MOD 4] for every i
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated_key, "big")).to_bytes(n, "big")


# ---------------------------------------------------------------------------------------------
# I.4 What frames carry: messages and control frames (§5.4-§5.6)
# ---------------------------------------------------------------------------------------------
#
# A message (text or binary) is one frame, or several: the first has its opcode and FIN clear,
# the next are CONTINUATION frames, the last has FIN set (§5.4).  Control frames (Ping, Pong,
# Close) are never fragmented but may come between two fragments.  The decoder turns frames
# into these events:


@dataclasses.dataclass(slots=True)
class Message:
    """A complete data message (§5.6): text (`opcode` TEXT, UTF-8 payload) or binary."""

    opcode: int  # Opcode.TEXT or Opcode.BINARY
    payload: bytes | bytearray  # as received: not copied again

    @property
    def data(self) -> str | bytes:
        return self.payload.decode("utf-8") if self.opcode == Opcode.TEXT else bytes(self.payload)


@dataclasses.dataclass(slots=True)
class Ping:
    """§5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in response"."""

    payload: bytes


@dataclasses.dataclass(slots=True)
class Pong:
    """§5.5.3: a Pong, in answer to a Ping or unsolicited (a heartbeat)."""

    payload: bytes


@dataclasses.dataclass(slots=True)
class Close:
    """A close frame (§5.5.1); `code` is None when the frame carried no status code."""

    code: int | None
    reason: str = ""


class ProtocolError(WebSocketError):
    """The peer broke the protocol: the connection is failed with close `code` (§7.1.7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


#: What the decoder returns: the last event is a ProtocolError when the peer broke a rule.
Event = Union[Message, Ping, Pong, Close, ProtocolError]


# ---------------------------------------------------------------------------------------------
# I.5 The decoder: frames in, messages and control frames out
# ---------------------------------------------------------------------------------------------

#: §10.4: "implementations SHOULD impose a limit on frame sizes and the total message size".
DEFAULT_MAX_SIZE = 1 << 20  # --max-size: bytes in one message


class Receiver:
    """The frame decoder, sans I/O: `feed(bytes)` returns the events those bytes complete.

    Each frame, in the order of the diagram (I.2): its header (`parse_frame_header`), the rules
    the header alone decides (`_check_header`), then its payload, unmasked (§5.3).  A control
    frame (at most 125 bytes) is taken whole; a data frame's payload is taken piece by piece as
    it arrives, so that a 16 MiB message is not waited for before its first byte is checked,
    and the pieces of a fragmented message (§5.4) are joined when its last frame ends.

    The events are `Message`, `Ping`, `Pong`, `Close` and, last of all when the peer broke a
    rule, the `ProtocolError` that says which close code to fail the connection with.  Events
    before the error are returned with it: a message that arrived complete before a bad frame
    is still delivered.

    UTF-8 (§5.6, §8.1): text is checked as each piece of payload arrives, so an invalid byte
    fails the connection with 1007 at once, even in the middle of a frame.

    Limits (§10.4).  A data frame's length is checked from its header, before its payload is
    read: a message over `max_size` is refused with 1009 without buffering it.  A flood of empty
    continuation frames would never grow the message yet cost work for each frame, forever;
    capping the number of fragments instead refuses honest messages sent in many small pieces
    (Autobahn 9.3.1: 4 MiB in 65,536 frames of 64 bytes).  So each continuation frame is charged
    `FRAGMENT_CHARGE` bytes of the same budget (Part II).

    Compression (RFC 7692, Part II), when negotiated, sits between frames and messages: RSV1 on
    the first frame marks a compressed message, whose pieces are inflated as they arrive, before
    their UTF-8 is checked; `max_size` then bounds the inflated message, and its frames may take
    up to `deflate_bound(max_size)` on the wire (DEFLATE's worst case).
    """

    __slots__ = ("_buffer", "_compressed", "_cost", "_decoder", "_frame", "_frame_start", "_inflater",
                 "_opcode", "_parts", "_remaining", "compression", "failed", "mask_expected", "max_size",
                 "on_frame")

    def __init__(self, *, mask_expected: bool = True, max_size: int = DEFAULT_MAX_SIZE,
                 on_frame: Callable[[FrameHeader, bytes, bool], None] | None = None,
                 compression: Compression | None = None) -> None:
        self.mask_expected = mask_expected  # §5.1: True for a server, False for a client
        self.max_size = max_size
        self.on_frame = on_frame  # --trace, the wire panel: called with each frame, its payload, "inflated?"
        self.compression = compression  # permessage-deflate, if negotiated
        self.failed: ProtocolError | None = None
        self._buffer = b""  # kept for the next feed: a header, or a control frame, not whole yet
        # The data frame whose payload is being read: its header, what is left of its payload,
        # and where its pieces start among the message's.
        self._frame: FrameHeader | None = None
        self._remaining = 0
        self._frame_start = 0
        # The data message in progress, perhaps over several frames (§5.4).
        self._opcode: int | None = None  # Opcode.TEXT or Opcode.BINARY; None between messages
        self._parts: list[bytes | bytearray] | tuple = NOTHING  # its payload so far, piece by piece
        self._cost = 0  # what it has cost of max_size
        self._decoder: codecs.IncrementalDecoder | None = None  # its UTF-8 so far, if text
        self._compressed = False  # RSV1 on its first frame (RFC 7692 §6)
        self._inflater: MessageInflater | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes from the peer; return the events they complete."""
        events: list[Event] = []
        if self.failed is not None:  # after an error the stream means nothing any more
            return events
        buffer = self._buffer + data if self._buffer else data
        position, end = 0, len(buffer)
        try:
            while True:
                if self._frame is not None:  # in the middle of a data frame's payload
                    if position == end:
                        break
                    position = self._read_payload(buffer, position, end, events)
                    continue
                parsed = parse_frame_header(buffer, position)
                if parsed is None:
                    break  # wait for the rest of the header
                header, payload_start = parsed
                self._check_header(header)
                if header.opcode & CONTROL:  # read whole: at most 125 bytes (§5.5)
                    payload_end = payload_start + header.length
                    if payload_end > end:
                        break  # wait for the whole control frame
                    events.append(self._control_frame(header, buffer[payload_start:payload_end]))
                    position = payload_end
                else:
                    self._start_data_frame(header)
                    position = self._read_payload(buffer, payload_start, end, events)
        except ProtocolError as error:
            self.failed = error
            events.append(error)
            self._buffer = b""
            return events
        self._buffer = buffer[position:] if position < end else b""
        return events

    def _check_header(self, header: FrameHeader) -> None:
        """The rules that a frame's header alone decides (§5.1, §5.2, §5.4, §5.5, RFC 7692)."""
        if header.rsv1 or header.rsv2 or header.rsv3:
            # §5.2: "MUST be 0 unless an extension is negotiated that defines meanings"
            if header.rsv2 or header.rsv3 or self.compression is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set, no extension negotiated")
            if header.opcode not in (Opcode.TEXT, Opcode.BINARY):
                # RFC 7692 §6: RSV1 only on the first frame of a data message
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV1 on a control or continuation frame")
        if header.opcode not in OPCODE_NAMES:  # §5.2: "MUST _Fail the WebSocket Connection_"
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {header.opcode:#x}")
        if header.masked != self.mask_expected:
            # §5.1: a client masks every frame it sends; a server masks none.
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "unmasked frame from a client" if self.mask_expected
                                else "masked frame from a server")
        if header.opcode & CONTROL:
            if not header.fin:  # §5.5: "Control frames themselves MUST NOT be fragmented."
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if header.length > MAX_CONTROL_PAYLOAD:  # §5.5
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame longer than 125 bytes")
        elif header.opcode == Opcode.CONTINUATION:
            if self._opcode is None:  # §5.4: a continuation continues something
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame with no message started")
        elif self._opcode is not None:  # §5.4: fragments of two messages never interleave
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new data frame inside a fragmented message")

    def _control_frame(self, header: FrameHeader, payload: bytes) -> Event:
        """§5.5: a whole control frame, unmasked, as its event."""
        if header.masking_key is not None:
            payload = apply_mask(payload, header.masking_key)
        payload = bytes(payload)
        if self.on_frame is not None:
            self.on_frame(header, payload, False)
        if header.opcode == Opcode.PING:
            return Ping(payload)
        if header.opcode == Opcode.PONG:
            return Pong(payload)
        return parse_close_payload(payload)  # I.6

    def _start_data_frame(self, header: FrameHeader) -> None:
        """Charge the frame against the message's budget before reading its payload (§10.4)."""
        if header.opcode == Opcode.CONTINUATION:
            self._cost += FRAGMENT_CHARGE + header.length
        else:  # the first frame of a message
            self._opcode, self._cost, self._compressed = header.opcode, header.length, header.rsv1
            if header.rsv1 and self._inflater is None:
                self._inflater = self.compression.inflater(self.max_size)
        # --max-size bounds what the application gets (§10.4): a compressed message may take a
        # little more on the wire than it inflates to, but no more than DEFLATE's worst case
        # (II.4), and what it inflates to is bounded by its inflater (RFC 7692 §7.2.2).
        limit = self.max_size if not self._compressed else deflate_bound(self.max_size)
        if self._cost > limit:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message over the limit of {self.max_size} bytes")
        self._frame, self._remaining = header, header.length
        if self.on_frame is not None:  # --trace, the wire panel: where this frame's pieces start
            self._frame_start = len(self._parts)

    def _read_payload(self, buffer: bytes, position: int, end: int, events: list[Event]) -> int:
        """Take what has arrived of the current data frame's payload; return the new position.
        At the end of the frame, the end of the message if FIN is set (§5.4)."""
        frame, remaining = self._frame, self._remaining
        take = remaining if remaining <= end - position else end - position
        if take == 0 and remaining:
            return position  # nothing of the payload yet
        piece = buffer[position:position + take]
        if frame.masking_key is not None:  # §5.3: payload byte i uses key[i MOD 4]
            key, phase = frame.masking_key, (frame.length - remaining) & 3  # this piece starts at i
            piece = apply_mask(piece, key[phase:] + key[:phase] if phase else key)
        self._remaining = remaining = remaining - take
        last = remaining == 0 and frame.fin  # the message's last bytes
        if self._compressed:  # RFC 7692 §7.2.2: inflated as it arrives, within max_size
            piece = self._inflater.inflate(piece)
            if last:
                piece += self._inflater.finish()
        if self._opcode == Opcode.TEXT:
            self._check_utf8(piece, last)
        parts = self._parts
        if parts:
            parts.append(piece)
        else:
            self._parts = parts = [piece]
        if remaining:
            return position + take
        # The end of the frame.
        self._frame = None
        if self.on_frame is not None:  # this frame's own payload: its pieces, unmasked (inflated)
            self.on_frame(frame, b"".join(parts[self._frame_start:]), self._compressed)
        if last:  # and of the message
            events.append(Message(self._opcode, parts[0] if len(parts) == 1 else b"".join(parts)))
            if self._compressed and not self._inflater.keep_context:
                self._inflater = None
            self._opcode, self._parts, self._decoder, self._compressed = None, NOTHING, None, False
        return position + take

    def _check_utf8(self, piece: bytes, last: bool) -> None:
        """§8.1: a text message is UTF-8, checked as it arrives ("fail fast")."""
        try:
            if self._decoder is None and last:  # the whole text is this piece
                piece.decode("utf-8")
                return
            if self._decoder is None:
                self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
            self._decoder.decode(piece, last)
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, "text message is not valid UTF-8") from None


# ---------------------------------------------------------------------------------------------
# I.6 Closing (§5.5.1, §7.4)
# ---------------------------------------------------------------------------------------------
#
# Either side may start the closing handshake with a Close frame; the other answers with its
# own, and then the server ends TCP (§7.1.1).  A Close carries a status code and a reason:
#
#     +--------+--------+--------------------------------------------+
#     | status code     | reason: UTF-8, up to 123 bytes (125 - 2)   |
#     +--------+--------+--------------------------------------------+


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
    """The payload of a close frame; the reason is trimmed (on a character boundary) so that
    the frame stays within 125 bytes (§5.5).  ValueError for a code that may not be sent."""
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code (§5.5.1)")
        return b""
    if not is_sendable_close_code(code):
        raise ValueError(f"close code {code} may not be sent (§7.4.1, §7.4.2)")
    data = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2]
    return code.to_bytes(2, "big") + data.decode("utf-8", "ignore").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# I.7 The protocol: one connection's state machine, sans I/O (§4, §5.5, §7)
# ---------------------------------------------------------------------------------------------


class ConnectionClosed(WebSocketError):
    """The connection is closed; `code` and `reason` say how (1006: no close frame at all)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class State:
    """The states of a connection: the numbers of the browser's `readyState` (WHATWG WebSockets:
    CONNECTING 0, OPEN 1, CLOSING 2, CLOSED 3), which the tutorial compares with
    `WebSocket.OPEN`.  Plain numbers, like `Opcode`: the broadcast checks the state of every
    client for every message, and an enum member costs about 70 ns a lookup on Python 3.11."""

    CONNECTING = 0  # §4.1: the client waits for the answer to its opening handshake
    OPEN = 1  # §4.1 "_The WebSocket Connection is Established_": messages flow both ways
    CLOSING = 2  # §7.1.3 "_The WebSocket Closing Handshake is Started_": we sent a Close
    # No frame goes either way any more: the peer's Close came and ours went (§7.1.3's handshake
    # is over), or TCP ended (§7.1.4).  What is left is ending TCP, which `close_transport` and
    # `close_expected` decide (§7.1.1); the browser says CLOSED only once that is done too.
    CLOSED = 3


class Protocol:
    """One WebSocket connection as a state machine, sans I/O: bytes in, events and bytes out.

    Feed it what the peer sent (`receive_data`, `receive_eof`), take the events it decoded one
    at a time (`next_event`), tell it what to send (`send_text`, `send_close`, ...), then write
    what `data_to_send()` returns and act on its three decisions:

    - `close_transport`: close the TCP connection now (after writing what is queued);
    - `half_close_transport`: send EOF now but go on reading (after failing the connection);
    - `close_expected`: the peer should end the connection soon; give up after a timeout.

    It never touches a socket or a clock: the walkthrough drives it with literal bytes, and
    `Connection` drives it with an asyncio stream and timers.

    The closing handshake (§7), from either side:

                     send_close(), or failing the connection (§7.1.7)
           OPEN ─────────────────────────────────────────────────────► CLOSING
             │            our Close frame goes out                        │
             │                                                            │ the peer's Close
             │ the peer's Close arrives: answer it, echoing its code      ▼ arrives
             └──────────────────────────────────────────────────────► CLOSED ◄── receive_eof(),
                                                                                 from any state
    Then §7.1.1: the server closes TCP first, the client waits for that.  A client starts in
    CONNECTING: the first bytes it receives are the server's answer to its handshake (§4.1).

    Events are handled in the order they arrived, when `next_event` hands them out: a Ping is
    answered then (§5.5.2), a Close answered then (§5.5.1), a broken rule fails the connection
    then (§7.1.7).  So a message that arrived before a Close is delivered, and may be answered,
    before the Close is: nothing overtakes what came first.
    """

    __slots__ = ("client", "state", "receiver", "subprotocol", "compression", "close_received",
                 "close_sent", "failure", "handshake_failure", "close_transport",
                 "half_close_transport", "close_expected", "pending_bytes", "_events", "_next",
                 "_outgoing", "_opening", "_head")

    def __init__(self, *, client: bool = False, max_size: int = DEFAULT_MAX_SIZE,
                 opening: OpeningHandshake | None = None, compression: Compression | None = None,
                 on_frame: Callable[[FrameHeader, bytes, bool], None] | None = None) -> None:
        self.client = client
        self.state = State.CONNECTING if opening is not None else State.OPEN
        # §5.1: a server expects every frame masked, a client expects none masked.
        self.receiver = Receiver(mask_expected=not client, max_size=max_size, on_frame=on_frame,
                                 compression=compression)
        self.compression = compression  # permessage-deflate, if negotiated (II.4)
        self.subprotocol: str | None = None
        self.close_received: Close | None = None  # the peer's Close frame, once it came
        self.close_sent: Close | None = None  # ours
        self.failure: ProtocolError | None = None  # why this side failed the connection
        self.handshake_failure: HandshakeFailed | None = None  # a client's failed handshake
        self.close_transport = False
        self.half_close_transport = False
        self.close_expected = False
        self.pending_bytes = 0  # what the queued frames cost, QUEUED_FRAME_CHARGE each included
        self._events: list[Event] | tuple = NOTHING  # received, not handed out yet; a list and an
        self._next = 0  # index: a deque would cost 600 bytes for every idle connection
        self._outgoing: list[Frame] | tuple = NOTHING
        self._opening = opening
        self._head = b""  # a client's part of the server's answer, until its end

    # -- bytes in ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take the next bytes from the peer; their events wait for `next_event`."""
        if self.state == State.CONNECTING:
            self._receive_handshake_answer(data)
        elif self.close_received is None:  # §1.4: what follows a Close is discarded
            events = self.receiver.feed(data)
            if not events:
                return
            if self._next >= len(self._events):
                self._events, self._next = events, 0
            else:
                self._events.extend(events)

    def receive_eof(self) -> None:
        """The peer ended the TCP connection (or it broke): §7.1.4, the connection is closed."""
        if self.state == State.CONNECTING:
            self.handshake_failure = HandshakeFailed("the connection closed before the server answered")
        self.state = State.CLOSED
        self.close_transport = True
        self.close_expected = False

    def _receive_handshake_answer(self, data: bytes) -> None:
        """§4.1: a client reads the server's answer (bounded), checks it, and is then OPEN."""
        start = max(0, len(self._head) - 3)
        self._head += data
        found = find_end_of_head(self._head, start)
        if found is None:
            if len(self._head) > DEFAULT_MAX_HEADER_BYTES:
                self._fail_handshake(HandshakeFailed(f"response head over {DEFAULT_MAX_HEADER_BYTES} bytes"))
            return
        head, rest = self._head[:found[0]], self._head[found[1]:]
        self._head = b""
        try:
            opening = self._opening
            agreed = check_response(parse_response(head), opening.key, opening.subprotocols, opening.extensions)
        except HandshakeFailed as failure:
            self._fail_handshake(failure)
            return
        self.subprotocol = agreed.subprotocol
        if agreed.deflate is not None:
            self.compression = self.receiver.compression = client_compression(agreed.deflate)
        self.state = State.OPEN
        if rest:  # frames the server sent right after its answer
            self.receive_data(rest)

    def _fail_handshake(self, failure: HandshakeFailed) -> None:
        self.handshake_failure = failure
        self.state = State.CLOSED
        self.close_transport = True

    # -- events out --------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event received, reacted to as the rules say; None when none is waiting.

        `Message`, `Ping`, `Pong` or `Close` as they arrived, or the `ProtocolError` with which
        this side has just failed the connection."""
        events = self._events
        if self._next >= len(events):
            return None
        event = events[self._next]
        self._next += 1
        if self._next == len(events):
            self._events, self._next = NOTHING, 0
        kind = type(event)
        if kind is Message:
            return event
        if kind is Ping:
            if self.close_received is None:  # §5.5.2: a Pong, unless a Close was received
                self._queue(self._frame(Opcode.PONG, event.payload))  # the same Application data
        elif kind is Close:
            self._close_received(event)
        elif kind is ProtocolError:
            self.fail(event.code, event.reason)
        return event  # a Pong needs nothing from the protocol (§5.5.3): keepalive looks at it

    def _close_received(self, close: Close) -> None:
        self.close_received = close
        self._events, self._next = NOTHING, 0  # §1.4: "a peer discards any further data received"
        if self.state == State.OPEN:  # §5.5.1: answer with a Close, echoing the status code
            self._send_close_frame(close.code, "")
        self.state = State.CLOSED
        if self.client:
            self.close_expected = True  # §7.1.1: the client waits for the server to end TCP
        else:
            self.close_transport = True  # §7.1.1: the server ends TCP first, at once

    # -- sending -----------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Queue a text message (§5.6: its payload is UTF-8)."""
        self.send_message(Opcode.TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Queue a binary message."""
        self.send_message(Opcode.BINARY, bytes(data))

    def send_message(self, opcode: int, payload: bytes) -> None:
        """Queue one data message as one frame; ConnectionClosed unless OPEN (§5.5.1: no data
        after this side's Close; §1.4: none after the peer's)."""
        if self.state != State.OPEN:
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        compression = self.compression
        if compression is not None and len(payload) >= compression.threshold:  # RFC 7692 §6
            self._queue(self._frame(opcode, compression.deflater.compress(payload), rsv1=True))
        else:
            self._queue(self._frame(opcode, payload))

    def send_frame(self, frame: Frame, cost: int) -> bool:
        """Queue a server frame encoded once for many connections (a broadcast); False, and
        nothing queued, unless OPEN.  `cost` is `frame_size(frame) + QUEUED_FRAME_CHARGE`."""
        if self.state != State.OPEN:  # the tutorial's `readyState === WebSocket.OPEN`
            return False
        outgoing = self._outgoing
        if outgoing:
            outgoing.append(frame)
        else:
            self._outgoing = [frame]
        self.pending_bytes += cost
        return True

    def send_ping(self, payload: bytes = b"") -> None:
        """§5.5.2: a Ping; the peer answers with a Pong carrying the same payload."""
        if self.state != State.OPEN:  # after a Close either way, no Pong would come (§5.5.2, §1.4)
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        self._queue(self._frame(Opcode.PING, payload[:MAX_CONTROL_PAYLOAD]))

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """§7.1.2 Start the WebSocket Closing Handshake: queue a Close, then wait for the peer's.

        ValueError for a code that may not be sent (1005, 1006, 1015, or out of range)."""
        payload = build_close_payload(code, reason)  # checks the code before anything changes
        if self.state != State.OPEN:
            return
        self._queue(self._frame(Opcode.CLOSE, payload))
        self.close_sent = Close(code, reason)
        self.state = State.CLOSING
        self.close_expected = True

    def fail(self, code: int, reason: str, *, discard_queued: bool = False) -> None:
        """§7.1.7 Fail the WebSocket Connection: a Close with `code`, then end TCP.

        Called for a broken rule (through `next_event`) and by the I/O layer for its own
        reasons (a client too slow to read, a keepalive timeout).  Nothing more is decoded:
        "the endpoint MUST NOT continue to attempt to process data (including a responding
        Close frame)".  TCP is half-closed at once, and the connection is closed when the peer
        ends it or the close timeout does; closing a socket with unread bytes would send a
        reset, which can destroy the Close frame before the peer reads it.  `discard_queued`
        drops the frames still waiting, so that the Close does not wait behind them.
        """
        if self.failure is not None or self.state == State.CLOSED:
            return
        self.failure = ProtocolError(code, reason)
        self.receiver.failed = self.failure
        self._events, self._next = NOTHING, 0
        if discard_queued:
            self._outgoing, self.pending_bytes = NOTHING, 0
        if self.state == State.OPEN:
            self._send_close_frame(code, reason)
            self.state = State.CLOSING
        self.half_close_transport = True
        self.close_expected = True

    def _send_close_frame(self, code: int | None, reason: str) -> None:
        self._queue(self._frame(Opcode.CLOSE, build_close_payload(code, reason)))
        self.close_sent = Close(code, reason)

    def _frame(self, opcode: int, payload: bytes, rsv1: bool = False) -> Frame:
        if self.client:  # §5.3: a fresh, unpredictable masking key for every frame
            return encode_frame(opcode, payload, masking_key=os.urandom(4), rsv1=rsv1)
        return encode_server_frame(opcode, payload, rsv1)

    def _queue(self, frame: Frame) -> None:
        if self._outgoing:
            self._outgoing.append(frame)
        else:
            self._outgoing = [frame]
        self.pending_bytes += frame_size(frame) + QUEUED_FRAME_CHARGE

    # -- bytes out ---------------------------------------------------------------------------

    def data_to_send(self, limit: int | None = None) -> list[Frame] | tuple:
        """The frames to write now, in order, taken off the queue.  With `limit`, only as many
        as fit in that many bytes (always at least one); the others wait for the next call."""
        outgoing = self._outgoing
        if limit is None or self.pending_bytes <= limit:
            self._outgoing, self.pending_bytes = NOTHING, 0
            return outgoing
        taken, size = 0, 0
        while taken < len(outgoing):
            cost = frame_size(outgoing[taken]) + QUEUED_FRAME_CHARGE
            if taken and size + cost > limit:
                break
            size, taken = size + cost, taken + 1
        self._outgoing = outgoing[taken:] or NOTHING
        self.pending_bytes -= size
        return outgoing[:taken]

    # -- how it ended (§7.1.5, §7.1.6) -------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        """§7.1.5 "The WebSocket Connection Close Code": the code of the Close frame received,
        1005 if it had none; 1006 once the connection is closed and none was received (also
        after this side failed it: its own code is in `failure`).  None until then."""
        if self.close_received is not None:
            code = self.close_received.code
            return CloseCode.NO_STATUS_RCVD if code is None else code
        return CloseCode.ABNORMAL_CLOSURE if self.state == State.CLOSED else None

    @property
    def close_reason(self) -> str:
        """§7.1.6 "The WebSocket Connection Close Reason": the reason in the Close received."""
        return self.close_received.reason if self.close_received is not None else ""



# ---------------------------------------------------------------------------------------------
# I.8 The broadcast
# ---------------------------------------------------------------------------------------------
#
# The tutorial's server, in Node `ws`:
#
#     socket.on('message', function(message) {
#         server.clients.forEach(function(client) {
#             if (client.readyState === WebSocket.OPEN) {
#                 client.send(message);
#             }
#         });
#     });


class ChatRoom:
    """The tutorial's chat: every message goes to every open client, the sender too.

    `server.clients` is `clients`; `client.readyState === WebSocket.OPEN` is checked by
    `Protocol.send_frame`, which queues nothing for a client that is not OPEN; `client.send`
    is `Connection.send_frame_bytes` (Part II), which queues and never waits, so no client's
    socket holds up the next client.

    Two differences, both on purpose.  Text stays text and binary stays binary: the tutorial
    passes the `Buffer` it received to `send()`, which `ws` 8 sends as binary, and browsers then
    show "[object Blob]" for every chat line.  And the frame is encoded once, the same bytes
    queued for every client: with permessage-deflate (Part II), the clients that agreed the same
    parameters (in practice every browser) share one `Compression`, and the room keeps them
    grouped by it, so a message is compressed once per group, not once per client.
    """

    def __init__(self) -> None:
        self.clients: set[Connection] = set()
        self._groups: dict[Compression | None, set[Connection]] = {}

    def join(self, client: Connection) -> None:
        self.clients.add(client)
        self._groups.setdefault(client.protocol.compression, set()).add(client)

    def leave(self, client: Connection) -> None:
        self.clients.discard(client)
        group = self._groups.get(client.protocol.compression)
        if group is not None:
            group.discard(client)
            if not group:
                del self._groups[client.protocol.compression]

    def broadcast(self, message: Message) -> None:
        """Send `message` to every open client (the tutorial's `server.clients.forEach`)."""
        # (No client joins or leaves while this runs: `send_frame_bytes` only queues, and a
        # client it drops for being too slow leaves the room later, in its own task.)
        plain = None  # the uncompressed frame, encoded at most once for every group
        for compression, group in self._groups.items():
            if compression is None or len(message.payload) < compression.threshold:
                plain = plain or encode_server_frame(message.opcode, message.payload)
                frame = plain
            else:  # RFC 7692 §6: compressed once for the whole group, RSV1 on its (only) frame
                frame = encode_server_frame(message.opcode, compression.deflater.compress(message.payload), rsv1=True)
            cost = frame_size(frame) + QUEUED_FRAME_CHARGE  # what it costs each client's budget (Part II)
            for client in group:
                client.send_frame_bytes(frame, cost)


# ---------------------------------------------------------------------------------------------
# I.9 The server's main path
# ---------------------------------------------------------------------------------------------
#
# `new WebSocket.Server({ port: 8080 })` and `server.on('connection', ...)`: for each TCP
# connection, read the request head, answer it (a page, a refusal, or 101), then read messages
# and broadcast each one until the connection closes.  Before the 101 the server asks who is
# there: a Host it answers for (DNS rebinding), a page of its own origin (§10.2), the access
# token if it has one, and room in the chat; the machinery of each is in Part II.


class WebSocketServer:
    """The chat server: WebSocket on any path, static files for plain GET and HEAD."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.room = ChatRoom()
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self._handshaking: set[asyncio.Task] = set()  # handlers still reading a request head
        self._compressions: dict[DeflateParameters, Compression] = {}  # one per parameters agreed
        self.bus: RedisChatBus | None = None  # with --redis, every message goes through it
        self._end_of_turn: EndOfTurnWrites | None = None  # shared by every connection, once started
        self.access: AccessRules | None = None  # who may connect (Part II), once the port is known
        self.admission = Admission(self.config.max_clients, self.config.max_clients_per_address)  # Part II
        self.pace = Pace(self.config.pace_bytes, self.config.pace_timeout)  # Part II: fairness
        self.wires = WirePanel(self.config, self.admission)  # Part II: the page's "On the wire" panel

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls else "http"

    async def start(self) -> None:
        """Listen; each connection is handled by `_handle`, in a task of its own."""
        settle_the_allocator()  # Part II: speed
        config = self.config
        self._end_of_turn = EndOfTurnWrites(asyncio.get_running_loop())  # Part II: batched writes
        listen = asyncio.start_server if config.tls is None else TLSGate(config).start_server  # TLS: Part II
        if config.redis is not None:  # Part II: one chat for several processes
            self.bus = RedisChatBus(config.redis, self.room.broadcast, timeout=config.redis_timeout,
                                    max_size=config.limits.max_size)
            await self.bus.start()
        self._server = await listen(self._handle, config.host, config.port, limit=READ_SIZE,
                                    reuse_port=config.reuse_port or None)
        self.access = access_rules(config, self.port)  # Part II: Host, Origin, access token

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection, from its first byte to its end; nothing it does reaches the others."""
        task = asyncio.current_task()
        self._handlers.add(task)
        self._handshaking.add(task)
        try:
            connection = await self._handshake(reader, writer)
            if connection is not None and connection.subprotocol == WIRE_SUBPROTOCOL:
                await self.wires.serve(connection)  # a page's second connection, for its wire panel (Part II)
            elif connection is not None:  # the request head, its parse and the handshake are gone:
                await self._chat(connection)  # an idle client holds only its connection
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ssl.SSLError as error:  # e.g. a client that refused our certificate after the handshake
            log.info("TLS error from %s: %s", writer.get_extra_info("peername"), tls_failure(error))
        except asyncio.CancelledError:  # shutdown() ends connections it cannot close politely
            pass
        except Exception:  # a bug: log it, keep serving everyone else
            log.exception("unexpected error")
        finally:
            self._handlers.discard(task)
            self._handshaking.discard(task)
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Connection | None:
        """Read and answer the request: a page, a refusal, or 101 and the connection."""
        config = self.config
        peer = writer.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        name = f"{address}:{peer[1]}" if isinstance(peer, tuple) else address
        try:
            received = await read_http_head(reader, config.max_header_bytes, config.handshake_timeout)
            if received is None:  # nothing was asked (an idle preconnect): nothing to answer
                writer.close()
                return None
            head, rest = received
            if config.trace:  # (escaped, and credentials left out: Part II)
                log.info("%s handshake request:%s", name, trace_head(head.decode("latin-1")))
            request = parse_request(head, config.max_header_lines)  # Part II: strict HTTP/1.1
            if isinstance(peer, tuple):
                address = client_address(peer[0], request.header("x-forwarded-for"), config.trusted_proxies)
                name = f"{address}:{peer[1]}"
            body_length(request)  # framing that two readers could read two ways is refused (400)
            self.access.check_host(request)  # every request, pages too: DNS rebinding (421, Part II)
            if not is_websocket_request(request):  # the pages, on the same port (Part II)
                await answer_http(writer, chat_page_response(config, self.access, request))
                return None
            handshake = check_request(request, access=self.access,  # §10.2: the Origin (403)
                                      subprotocols=self.wires.subprotocols, compression=config.compression)
            self.access.check_access(request)  # --access-token: its cookie or a Bearer token (401)
            self.admission.check(address)  # --max-clients, --max-clients-per-address (503, Part II)
        except HTTPError as error:  # the one place a refusal becomes a response
            log.info("refused %s: %s %s", name, error.status, escape_controls(error.reason))
            await answer_http(writer, build_error_response(error.status, error.reason, error.headers))
            return None
        self._handshaking.discard(asyncio.current_task())
        response = build_switching_protocols(handshake)
        if config.trace:
            log.info("%s handshake response:%s", name, trace_head(response.decode("latin-1")))
        writer.write(response)
        return self._open(reader, writer, head, request, handshake, rest, name, address)

    def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, request: Request,
              handshake: Handshake, rest: bytes, name: str, address: str) -> Connection:
        """The connection the handshake agreed, with the frames that came right after the head."""
        config = self.config
        protocol = Protocol(max_size=config.limits.max_size, compression=self.shared_compression(handshake.deflate))
        protocol.subprotocol = handshake.subprotocol
        wire = self.wires.tap(head, request, handshake, address)  # Part II: if its page asked to see the wire
        return Connection(reader, writer, protocol, limits=config.limits, trace=config.trace, name=name, wire=wire,
                          end_of_turn=self._end_of_turn, pace=self.pace, address=address, early=rest)

    async def _chat(self, connection: Connection) -> None:
        """The tutorial's `socket.on('message', ...)` and `socket.on('close', ...)`."""
        protocol = connection.protocol
        self.room.join(connection)
        self.admission.enter(connection.address)  # (counted from here: no await since its check)
        log.info("%s connected (%d open)", connection.name, len(self.room.clients))
        try:
            while True:  # (no local name holds the last message while the client is idle)
                if self.bus is None:
                    self.room.broadcast(await connection.recv_message())
                else:  # --redis: through the shared stream, to every process's room (Part II)
                    await self.bus.publish_from(connection, await connection.recv_message())
                if self.pace.lagging:  # Part II: a sender waits while what it sent fills up readers
                    await self.pace.wait(connection)
        except ConnectionClosed:
            pass
        finally:
            self.room.leave(connection)
            self.admission.leave(connection.address)
            self.pace.forget(connection)
            if connection.state != State.CLOSED:
                connection.abort()
            how = f"close code {describe_close(connection.close_code, connection.close_reason)}"
            if protocol.failure:
                how += f", after failing it with {describe_close(protocol.failure.code, protocol.failure.reason)}"
            log.info("%s disconnected: %s (%d open)", connection.name, how, len(self.room.clients))

    async def shutdown(self, code: int = CloseCode.GOING_AWAY) -> None:
        """Stop accepting, close every client with `code` (1001, going away), wait for them."""
        if self._server is not None:
            self._server.close()
        for task in tuple(self._handshaking):  # idle or half-sent requests: nothing to wait for
            task.cancel()
        for client in tuple(self.room.clients):
            if client.state == State.OPEN:
                client.start_close(code, "server shutting down")
        self.wires.close_all(code, "server shutting down")  # Part II: each after the chat it shows
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=self.config.limits.close_timeout + 1)
        for task in tuple(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=1)
        if self._server is not None:
            await self._server.wait_closed()
        if self.bus is not None:
            await self.bus.close()

    def shared_compression(self, parameters: DeflateParameters | None) -> Compression | None:
        """The Compression shared by every connection that agreed these parameters: one
        deflater for all of them, so that a broadcast is compressed once (Part II)."""
        if parameters is None:
            return None
        compression = self._compressions.get(parameters)
        if compression is None:
            deflater = MessageDeflater(parameters.server_max_window_bits or 15, self.config.compression_level)
            compression = Compression(parameters, deflater, self.config.compression_threshold)
            self._compressions[parameters] = compression
        return compression


# =============================================================================================
# PART II — FOR REAL USE
# =============================================================================================
#
# Everything below is what a server exposed to real clients needs besides the protocol: HTTP
# read as strictly as frames, the pages on the same port, compression, limits and budgets in
# bytes, batched writes, the client, TLS, Redis for several processes, speed, the chat page's
# wire panel, the command line.
# Part I calls into it; nothing here changes a rule of Part I.

# ---------------------------------------------------------------------------------------------
# II.1 Limits, budgets and speed
# ---------------------------------------------------------------------------------------------

# Default limits.  Each one is also a command-line flag and a constructor argument (and
# DEFAULT_MAX_SIZE, in I.5, too).
DEFAULT_MAX_BUFFER = 4 << 20  # --max-buffer: bytes waiting to be sent to one client
DEFAULT_PING_INTERVAL = 20.0  # --ping-interval: seconds between keepalive pings
DEFAULT_PING_TIMEOUT = 20.0  # --ping-timeout: seconds to wait for the pong
DEFAULT_CLOSE_TIMEOUT = 5.0  # --close-timeout: seconds to wait for the peer's close frame
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # --handshake-timeout: seconds for the whole request head
DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # --max-header-bytes: request line + headers
DEFAULT_MAX_HEADER_LINES = 100  # --max-header-lines

#: A continuation frame costs this many bytes of the --max-size budget on top of its payload:
#: any flood of empty fragments ends after at most max_size / FRAGMENT_CHARGE frames, and a
#: message of N fragments may carry max_size minus (N - 1) x 64 bytes (`Receiver`).
FRAGMENT_CHARGE = 64

#: A frame waiting to be sent costs this many bytes of the --max-buffer budget on top of its
#: own length: its slot in the queue, and for a frame of its own (a pong) its object header.
#: So a flood of tiny frames is bounded as surely as a few large ones.
QUEUED_FRAME_CHARGE = 64

#: How much one read asks of the stream; also the StreamReader's limit.
READ_SIZE = 256 * 1024

#: What an idle connection holds instead of empty lists of its own (56 bytes each): its queues
#: become lists when something is put in them, and this shared empty tuple again when emptied.
NOTHING: tuple = ()


def settle_the_allocator() -> None:
    """Free one large block, once, so that reads stop costing system calls of their own.

    asyncio's socket transport reads into a fresh 256 KiB buffer at every recv() (and shrinks
    it to what arrived).  glibc's malloc (Linux) serves a block that large with mmap() and
    gives it back with munmap(): three system calls and a page fault per read, about half of
    the server's system time per small-message round trip, measured.  glibc also raises that
    threshold for good once a block above it has been freed (mallopt(3), "dynamic mmap
    threshold"); then the read buffers come from the heap.  Elsewhere this is one allocation
    and one free.  Without it the figure depends on whatever the process happened to free
    first, which is why runs of the same code differed by half."""
    bytes(2 * READ_SIZE)


# -- masking large payloads faster than I.3's definition (`python -m tests.bench_mask`) --------

#: From this size up, `apply_mask` hands the work to `mask_lanes`: the four-lane
#: `bytes.translate` technique is faster than the integer XOR there (README, Performance).
MASK_LANES_FROM = 2 * 1024

#: XOR with a constant byte k, as a `bytes.translate` table: _XOR_TABLES[k][b] == b ^ k.
_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def mask_lanes(data: bytes | bytearray | memoryview, masking_key: bytes) -> bytearray:
    """§5.3 for large payloads, the same bytes as `apply_mask`'s definition (the walkthrough
    checks them byte for byte).  Bytes 0, 4, 8, ... are all XORed with masking_key[0]; bytes
    1, 5, 9, ... with masking_key[1]; and so on.  So the payload is four strided lanes, and XOR
    with one constant byte is a 256-entry lookup table: `bytes.translate` maps a whole lane in C."""
    out = bytearray(data)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR_TABLES[masking_key[lane]])
    return out


# -- frames queued for writing -----------------------------------------------------------------

#: From this payload size up, a server frame is queued as (header, payload) and the two are
#: written one after the other: joining them would copy the whole payload once more.
LARGE_PAYLOAD = 64 * 1024

#: A frame ready to write: its bytes, or for a large payload its header and its payload.
Frame = Union[bytes, tuple]


def encode_server_frame(opcode: int, payload: bytes | bytearray, rsv1: bool = False) -> Frame:
    """An unmasked frame (`encode_frame`, I.2), ready to queue; a large payload is not copied
    into it."""
    header = frame_header(opcode, len(payload), rsv1=rsv1)
    if len(payload) < LARGE_PAYLOAD:
        return header + payload
    return header, payload


def frame_size(frame: Frame) -> int:
    """How many bytes a frame takes on the wire."""
    return len(frame) if type(frame) is bytes else len(frame[0]) + len(frame[1])



# ---------------------------------------------------------------------------------------------
# II.2 HTTP/1.1 (RFC 9110 semantics, RFC 9112 syntax): the request head both servers read
# ---------------------------------------------------------------------------------------------
#
#   request-head = request-line *( field-line CRLF ) CRLF          ; RFC 9112 §2.1
#   request-line = method SP request-target SP HTTP-version CRLF  ; §3
#   field-line   = field-name ":" OWS field-value OWS             ; §5
#
# A WebSocket begins as an HTTP request, and this port also serves the pages: so the server
# must read HTTP as carefully as frames.  Both servers (sse_server.py too) read every request
# head with the functions below and nothing else.  Each refusal is an `HTTPError` with its
# status; nothing here can raise anything else, whatever the bytes (the tests fuzz it).

STATUS_PHRASES = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
    417: "Expectation Failed", 421: "Misdirected Request", 426: "Upgrade Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

#: RFC 9110 §5.6.2: a method and a header name are tokens.
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
#: RFC 9110 §5.5: a field value is visible characters, obs-text, SP and HTAB; no other control.
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: RFC 9112 §3.2: a request target is visible ASCII, nothing else (no space, no control).
_TARGET = re.compile(rb"[\x21-\x7e]+")
#: RFC 3986 §3.2.2: a reg-name is unreserved characters, percent-encodings and sub-delims.
_REG_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%")
#: RFC 9112 §2.2: the head ends with an empty line; a recipient may take a bare LF for CRLF.
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


class HeaderFields:
    """The header fields of a request or a response: lower-cased name -> every value."""

    headers: dict[str, list[str]]

    def header(self, name: str) -> str | None:
        """The field's value; a field sent several times is one comma-joined list (RFC 9110 §5.3)."""
        values = self.headers.get(name.lower())
        return None if values is None else ", ".join(values)

    def tokens(self, name: str) -> list[str]:
        """The comma-separated list in a field, lower-cased (RFC 9110 §5.6.1)."""
        value = self.header(name) or ""
        return [item.strip().lower() for item in value.split(",") if item.strip()]


@dataclasses.dataclass
class Request(HeaderFields):
    """An HTTP/1.1 request head (RFC 9112 §3): request line and header fields."""

    method: str
    target: str  # as sent
    version: tuple[int, int]
    headers: dict[str, list[str]]
    path: str = "/"  # the target's path, still percent-encoded ("*" for OPTIONS *)
    query: str = ""


@dataclasses.dataclass
class Response(HeaderFields):
    """An HTTP/1.1 response head (RFC 9112 §4): what a client reads back."""

    status: int
    reason: str
    headers: dict[str, list[str]]


def find_end_of_head(buffer: bytes, start: int = 0) -> tuple[int, int] | None:
    """Where the head in `buffer` ends: (end of the head, start of what follows), or None.

    Readers call it as bytes arrive, with `start` a few bytes before the new ones, so that
    reading a head stays linear in its size."""
    found = _END_OF_HEAD.search(buffer, start)
    return None if found is None else (found.start(), found.end())


def no_head_received(buffer: bytes, timed_out: bool) -> None:
    """A reader's verdict when a head did not arrive whole: nothing to answer if nothing was
    sent (an idle or keep-alive connection), else 408 for a head not finished in time
    (RFC 9110 §15.5.9) or 400 for a connection closed in the middle of one."""
    if buffer.strip(b"\r\n"):
        if timed_out:
            raise HTTPError(408, "request head not received in time")
        raise HTTPError(400, "connection closed in the middle of the request head")


def parse_decimal(text: str, max_digits: int = 18) -> int | None:
    """A decimal number as RFC 9110 writes one (1*DIGIT), or None: ASCII digits only, and at
    most `max_digits` of them.  `str.isdigit()` alone also takes "²" and "٣", and `int()` of
    a few thousand digits is slow enough to be an attack (so Python refuses it)."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def parse_request(head: bytes, max_header_lines: int = DEFAULT_MAX_HEADER_LINES) -> Request:
    """Parse a request head (everything before the empty line) in one linear pass.

    RFC 9112 §2.2: lines end with CRLF, a bare LF is tolerated, and an empty line before the
    request line is ignored.  §3: request-line = method SP request-target SP HTTP-version.
    §3.2: exactly one Host.  §5: field-name ":" OWS value OWS, and no obsolete line folding.
    """
    lines = head.lstrip(b"\r\n").split(b"\n")
    if len(lines) - 1 > max_header_lines:
        raise HTTPError(431, f"more than {max_header_lines} header lines")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    http_version = parse_http_version(version)
    if not method or not set(method) <= _TOKEN_CHARS:
        raise HTTPError(400, "malformed method")
    path, query = parse_request_target(method, target)
    headers = parse_header_lines(lines[1:])
    check_host(headers, http_version)
    return Request(method.decode("ascii"), target.decode("ascii"), http_version, headers, path, query)


def parse_http_version(version: bytes) -> tuple[int, int]:
    """RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT.

    Another major version is answered 505 (RFC 9110 §15.6.6); that is also what an HTTP/2
    client's preface "PRI * HTTP/2.0" gets.  A higher minor version is read as 1.1, the
    highest this server implements (RFC 9110 §2.5)."""
    if not (len(version) == 8 and version.startswith(b"HTTP/") and version[5:6].isdigit()
            and version[6:7] == b"." and version[7:8].isdigit()):
        raise HTTPError(400, "malformed HTTP version")
    major, minor = version[5] - 0x30, version[7] - 0x30
    if major != 1:
        raise HTTPError(505, f"HTTP/{major}.{minor} is not supported: this server speaks HTTP/1.1")
    return 1, min(minor, 1)


def parse_request_target(method: bytes, target: bytes) -> tuple[str, str]:
    """RFC 9112 §3.2: (path, query) of the target, the path still percent-encoded.

    Three forms are served: origin-form `/path?query` (what browsers send), absolute-form
    `http://host/path?query` (which a server must accept, §3.2.2) and, for OPTIONS only,
    asterisk-form `*` (§3.2.4).  The authority of the absolute-form is checked by hand
    (`is_valid_authority`): an address like `http://[::1` is exactly what general URL parsers
    stumble on."""
    if not _TARGET.fullmatch(target):
        raise HTTPError(400, "malformed request target")
    text = target.decode("ascii")
    if text.startswith("/"):
        path, _, query = text.partition("?")
        return path, query
    if text == "*" and method == b"OPTIONS":
        return "*", ""
    scheme, separator, rest = text.partition("://")
    if not separator or scheme.lower() not in ("http", "https", "ws", "wss"):
        raise HTTPError(400, "malformed request target")
    end_of_authority = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    if not is_valid_authority(rest[:end_of_authority]):  # §3.2.2, RFC 9110 §4.2.1: a host is required
        raise HTTPError(400, "malformed request target: invalid authority")
    path, _, query = rest[end_of_authority:].partition("?")
    return path or "/", query


def parse_header_lines(lines: list[bytes]) -> dict[str, list[str]]:
    """RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; names are tokens.

    §5.1: no whitespace between the name and the colon (`Host : x` is refused, not guessed
    at: proxies have been fooled that way).  §5.2: obsolete line folding is refused.
    RFC 9110 §5.5: a value holding a control character other than HTAB is refused."""
    headers: dict[str, list[str]] = {}
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if line[0] in b" \t":
            raise HTTPError(400, "obsolete line folding in headers")
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            raise HTTPError(400, "malformed header line")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise HTTPError(400, f"control character in the {name.decode('ascii')} header")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.strip(b" \t").decode("latin-1"))
    return headers


def check_host(headers: dict[str, list[str]], version: tuple[int, int]) -> None:
    """RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    HTTP/1.1 request message that lacks a Host header field and to any request message that
    contains more than one Host header field line or a Host header field with an invalid
    field value."  Two Hosts are how requests are smuggled past a proxy that reads the other."""
    hosts = headers.get("host", [])
    if len(hosts) > 1 or (not hosts and version >= (1, 1)):
        raise HTTPError(400, "exactly one Host header is required")
    if hosts and not is_valid_authority(hosts[0], empty_allowed=True):
        raise HTTPError(400, "malformed Host header")


def is_valid_authority(text: str, *, empty_allowed: bool = False) -> bool:
    """RFC 3986 §3.2: host [":" port], where host is an IP literal in brackets, or an IPv4
    address or registered name.  No userinfo: RFC 9110 §4.2.4 makes it an error in http(s)
    URIs.  An empty host is invalid in an absolute-form target (RFC 9110 §4.2.1) and allowed
    in a Host header (RFC 9110 §7.2, for a target with no authority)."""
    if not text:
        return empty_allowed
    if text.startswith("["):  # IP-literal = "[" IPv6address "]" (IPvFuture is not served)
        end = text.find("]")
        if end < 0:
            return False
        try:
            ipaddress.IPv6Address(text[1:end])
        except ValueError:
            return False
        port = text[end + 1:]
    else:
        host, colon, port = text.partition(":")
        if not host or not set(host) <= _REG_NAME_CHARS:
            return False
        port = colon + port
    # port = *DIGIT after a ":" (RFC 3986 §3.2.3); at most 5 digits, since a port is 16 bits.
    return not port or (port[0] == ":" and len(port) <= 6 and (port[1:] == "" or port[1:].isascii() and port[1:].isdigit()))


def body_length(request: Request) -> int | None:
    """RFC 9112 §6: how the request's body is delimited: its length in bytes (0 when there is
    no body), or None for the chunked transfer coding (§7.1).

    Every framing that two readers could read two ways is refused (§6.3, request smuggling):
    both Transfer-Encoding and Content-Length, a Transfer-Encoding in HTTP/1.0, a coding list
    that does not end with chunked, and Content-Length values that disagree (RFC 9110 §8.6
    allows a list of identical ones).  A coding this server cannot decode is 501 (§6.1)."""
    codings = request.headers.get("transfer-encoding")
    lengths = request.headers.get("content-length")
    if codings is not None:
        if lengths is not None:
            raise HTTPError(400, "both Transfer-Encoding and Content-Length")
        if request.version < (1, 1):
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        names = request.tokens("transfer-encoding")
        if not names or names[-1] != "chunked":
            raise HTTPError(400, "chunked must be the last transfer coding")
        if len(names) > 1:
            raise HTTPError(501, f"transfer coding {names[0]!r} is not implemented")
        return None
    if lengths is None:
        return 0
    values = {item.strip() for value in lengths for item in value.split(",")}
    length = parse_decimal(values.pop()) if len(values) == 1 else None
    if length is None:
        raise HTTPError(400, "Content-Length is not one number")
    return length


def parse_response(head: bytes) -> Response:
    """RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]; what a
    client reads.  Raises `HandshakeFailed`: for a client, an unreadable answer is a failure."""
    lines = head.split(b"\n")
    version, _, rest = lines[0].rstrip(b"\r").partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise HandshakeFailed(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
    try:
        headers = parse_header_lines(lines[1:])
    except HTTPError as error:
        raise HandshakeFailed(f"malformed response: {error.reason}", int(code)) from None
    return Response(int(code), reason.decode("latin-1"), headers)


def build_response(status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                   *, head_only: bool = False) -> bytes:
    """An HTTP/1.1 response (RFC 9112 §4); the body is left out for HEAD."""
    lines = [f"HTTP/1.1 {status} {STATUS_PHRASES.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def build_error_response(status: int, reason: str, headers: Iterable[tuple[str, str]] = (),
                         *, head_only: bool = False) -> bytes:
    """A refusal: the status, a one-line plain-text reason, and the connection closed
    (`headers` may say otherwise about Connection, as the 426 answer does)."""
    body = f"{status} {reason}\n".encode("utf-8")
    headers = list(headers)
    if not any(name.lower() == "connection" for name, _ in headers):
        headers.append(("Connection", "close"))
    return build_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Content-Length", str(len(body))), *headers],
                          body, head_only=head_only)


# ---------------------------------------------------------------------------------------------
# II.3 Static files on the same port
# ---------------------------------------------------------------------------------------------

STATIC_DIR = Path(__file__).resolve().parent / "static"


def resolve_static_path(root: str | os.PathLike, path: str, index: str) -> Path:
    """Map a request's path (still percent-encoded) to a file under `root`.

    The careful way, as `http.server`'s translate_path does it: percent-decode once, as UTF-8
    (so `%2e%2e` is `..` here and refused like it, and `%c0%ae`, an overlong ".", is no name
    at all), refuse backslashes and NUL (another OS's separators), refuse any segment that
    starts with a dot (`..`, `.`, and hidden files: `.env`, `.git/config`), then resolve
    symlinks and check that the result is still inside the root, and not hidden either.  `/`
    serves `index`.  Raises `FileNotFoundError`, or `PermissionError` for a symlink that leads
    out, like opening a file would: each caller answers those in its own way.
    """
    if not path.startswith("/") or path.startswith("//"):  # "*", or a "//host/..." path
        raise FileNotFoundError(path)
    try:
        path = urllib.parse.unquote(path, errors="strict") if "%" in path else path
    except UnicodeDecodeError:
        raise FileNotFoundError(path) from None
    if "\\" in path or "\x00" in path:
        raise FileNotFoundError(path)
    segments = [s for s in path.split("/") if s]
    # `.` and `..` (RFC 3986 §3.3 dot-segments), and every other name that starts with a dot:
    # by convention a hidden file (`.env`, `.git/config`, `.htpasswd`), which a folder of pages
    # may hold without meaning to publish it.  404, not 403: nothing says it exists.
    if any(s.startswith(".") for s in segments):
        raise FileNotFoundError(path)
    base = Path(root).resolve()
    candidate = base.joinpath(*segments) if segments else base / index
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a name the OS refuses
        raise FileNotFoundError(path) from None
    if real != base and base not in real.parents:  # a symlink that leads out
        raise PermissionError(path)
    if any(part.startswith(".") for part in real.relative_to(base).parts):  # a link to a hidden file
        raise FileNotFoundError(path)
    if not real.is_file():
        raise FileNotFoundError(path)
    return real


def content_type(path: Path) -> str:
    """The Content-Type of a static file; text gets charset=utf-8."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    return kind


# -- what a browser may do with a page: the security headers of every static answer -----------
#
# The pages run inline code, and show what strangers type.  They take care never to run it
# (textContent, never innerHTML), and the browser is told to enforce that care as well:
#
#   Content-Security-Policy (CSP Level 3): the page may do what it does and nothing else.
#       default-src 'none'        nothing by default: no images, fonts, frames, plugins, workers
#       script-src 'sha256-...'   its own inline <script>, by hash, and no other script: an
#                                 injected <script> or onerror= attribute does not run
#       style-src 'sha256-...'    its own inline <style>, by hash
#       connect-src 'self'        WebSocket, EventSource and fetch to this origin only.  CSP
#                                 Level 3 §6.7.2.8 makes 'self' match ws: and wss: on the same
#                                 host and port as the http: or https: page; Chromium and Firefox
#                                 do, WebKit since 2022 (an older Safari would block the chat)
#       base-uri 'none', form-action 'none'   no <base> to re-point relative URLs, no form may
#                                 submit anywhere (the pages' forms are handled by script)
#       frame-ancestors 'none'    no other page may show this one in a frame (clickjacking:
#                                 a page that frames the chat could trick clicks into it)
#   X-Frame-Options: DENY         the same for browsers older than frame-ancestors (RFC 7034)
#   X-Content-Type-Options: nosniff   the Content-Type is the type: a text file is never run
#                                 as a script or read as HTML (Fetch, "X-Content-Type-Options")
#   Referrer-Policy: no-referrer  a link followed from a page does not tell where it came from
#                                 (Referrer Policy §3.1)
#
# Hashes rather than 'unsafe-inline' (which would let an injected script run too), and hashes
# computed here, from the page as it is served, rather than written down once: a page that is
# edited keeps working and keeps its protection, with nothing else to update.  (Moving the
# code to .js and .css files with script-src 'self' would do as well, at the price of three
# requests per page instead of one; the pages stay single files that also work when opened
# from disk.)  The hash is of the element's text as the browser's parser sees it: UTF-8, with
# CRLF and CR turned into LF (HTML §13.2.3.5), so a checkout with Windows line ends still matches.

#: Inline <script> and <style> elements (not those with src=, which load a file: 'self' then).
_INLINE_ELEMENT = re.compile(r"<(script|style)(\s[^>]*)?>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
_SRC_ATTRIBUTE = re.compile(r"\ssrc\s*=", re.IGNORECASE)

#: The policy of everything that is not an HTML page (a stylesheet, an image, a refusal): it
#: loads nothing and may be framed by no one.
LOCKED_DOWN_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def content_security_policy(page: bytes) -> str:
    """The CSP of an HTML page: its own inline scripts and styles (by their SHA-256), connections
    to its own origin, nothing else."""
    text = page.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    sources: dict[str, list[str]] = {"script": [], "style": []}
    for element, attributes, content in _INLINE_ELEMENT.findall(text):
        kind = element.lower()
        if kind == "script" and attributes and _SRC_ATTRIBUTE.search(attributes):
            source = "'self'"  # a script file of this site (the hash would be of nothing)
        else:
            source = "'sha256-%s'" % base64.b64encode(hashlib.sha256(content.encode("utf-8")).digest()).decode()
        if source not in sources[kind]:
            sources[kind].append(source)
    return "; ".join(["default-src 'none'",
                      "script-src " + (" ".join(sources["script"]) or "'none'"),
                      "style-src " + (" ".join(sources["style"]) or "'none'"),
                      "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"])


def security_headers(policy: str = LOCKED_DOWN_POLICY) -> list[tuple[str, str]]:
    """What every static answer carries (the table above)."""
    return [("Content-Security-Policy", policy), ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]


def static_response(root: str | os.PathLike, request: Request, index: str) -> bytes:
    """Answer a plain GET or HEAD from `root` (RFC 9110 §9.3.1, §9.3.2); 405 otherwise.
    Every answer carries `security_headers`.  The connection closes after it."""
    head_only = request.method == "HEAD"
    if request.method not in ("GET", "HEAD"):
        return build_error_response(405, f"method {request.method} is not allowed here",
                                    [("Allow", "GET, HEAD"), *security_headers()], head_only=head_only)
    try:
        path = resolve_static_path(root, request.path, index)
        body = path.read_bytes()
    except PermissionError:
        return build_error_response(403, "forbidden", security_headers(), head_only=head_only)
    except OSError:
        return build_error_response(404, "not found", security_headers(), head_only=head_only)
    kind = content_type(path)
    policy = content_security_policy(body) if kind.startswith("text/html") else LOCKED_DOWN_POLICY
    headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-cache"), ("Connection", "close"), *security_headers(policy)]
    return build_response(200, headers, body, head_only=head_only)


# ---------------------------------------------------------------------------------------------
# II.4 Compression: permessage-deflate (RFC 7692), between frames and messages
# ---------------------------------------------------------------------------------------------
#
#   Sec-WebSocket-Extensions = extension-list            ; RFC 6455 §9.1
#   extension-list  = 1#extension
#   extension       = extension-token *( ";" extension-param )
#   extension-param = token [ "=" ( token | quoted-string ) ]
#
# Every browser offers permessage-deflate on every WebSocket.  A compressed message is the
# DEFLATE data (RFC 1951) of its payload, flushed, with the last 4 bytes 00 00 ff ff removed;
# RSV1 on its first frame says so (§6, §7.2.1).  What this server chooses, and why:
#
# - It always answers `server_no_context_takeover` (§7.1.1.1 lets a server do so unasked): each
#   message it sends is compressed on its own.  Then a broadcast is compressed once and the
#   same frame goes to every client, and no compression window is kept per connection.  (With
#   context takeover each client would need its own compressor, 64-300 KiB each, and its own
#   compression of every message: 1,000 compressions for a broadcast to 1,000 clients.)
# - It always answers `client_no_context_takeover` (§7.1.1.2, likewise): each message a client
#   sends stands alone, so an idle connection holds no zlib state at all, and a message is
#   inflated by a decompressor made for it alone.
# - A message shorter than `--compression-threshold` bytes (128 by default) goes uncompressed
#   (RSV1 clear, which any message may be, §6): below that, deflate saves a few bytes of a chat
#   line for about 9 µs of work, or makes it longer (16 bytes become 18; README, Performance).
# - Compression settings came from measuring the chat's own lines and a JSON feed (README).
#
# Nothing here is negotiated that zlib cannot keep to: it has no raw deflate with an 8-bit
# window, so an offer that demands `server_max_window_bits=8` is declined.  An offer the server
# cannot honour, or a malformed header, is declined and the connection goes on uncompressed:
# never a 400 (refusing the handshake for an extension is how Node `ws` once locked Firefox out).

PERMESSAGE_DEFLATE = "permessage-deflate"

#: §7.2.1: the empty stored block that ends a flush: removed after compressing, appended
#: before inflating.
DEFLATE_TAIL = b"\x00\x00\xff\xff"

DEFAULT_COMPRESSION_LEVEL = 1  # --compression-level: within a few % of level 6's ratio here
DEFAULT_COMPRESSION_THRESHOLD = 128  # --compression-threshold: bytes; shorter goes uncompressed

#: RFC 9110 §5.6.2 token characters, as str (for extension names and parameter values).
_TOKEN = frozenset(chr(byte) for byte in _TOKEN_CHARS)


def parse_extensions(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """RFC 6455 §9.1: a Sec-WebSocket-Extensions value as [(name, [(param, value), ...]), ...],
    in order; a parameter without "=" has the value None.  ValueError if malformed.

    >>> parse_extensions('permessage-deflate; client_max_window_bits, x; a="1"')
    [('permessage-deflate', [('client_max_window_bits', None)]), ('x', [('a', '1')])]
    """
    extensions: list[tuple[str, list[tuple[str, str | None]]]] = []
    position, end = 0, len(value)

    def skip_space() -> None:
        nonlocal position
        while position < end and value[position] in " \t":
            position += 1

    def token() -> str:
        nonlocal position
        start = position
        while position < end and value[position] in _TOKEN:
            position += 1
        if start == position:
            raise ValueError(f"a token was expected at {start} in {value!r}")
        return value[start:position]

    def quoted_token() -> str:
        """§9.1: a quoted-string value must be a token once unquoted."""
        nonlocal position
        position += 1  # the opening quote
        start = position
        while position < end and value[position] != '"':
            position += 1
        if position == end:
            raise ValueError(f"unterminated quoted string in {value!r}")
        text = value[start:position].replace("\\", "")
        position += 1
        if not text or not set(text) <= _TOKEN:
            raise ValueError(f"a quoted value must be a token: {text!r}")
        return text

    while True:
        skip_space()
        if position < end and value[position] == ",":  # empty list elements are allowed
            position += 1
            continue
        if position == end:
            return extensions
        name, parameters = token().lower(), []
        skip_space()
        while position < end and value[position] == ";":
            position += 1
            skip_space()
            parameter = token().lower()
            skip_space()
            argument = None
            if position < end and value[position] == "=":
                position += 1
                skip_space()
                argument = quoted_token() if position < end and value[position] == '"' else token()
                skip_space()
            parameters.append((parameter, argument))
        extensions.append((name, parameters))
        skip_space()
        if position < end and value[position] != ",":
            raise ValueError(f"',' or ';' was expected at {position} in {value!r}")


def window_bits(value: str | None) -> int | None:
    """§7.1.2: a window size parameter is a decimal 8-15, without leading zeros."""
    if value is None or not (value.isascii() and value.isdigit()) or value.startswith("0"):
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


@dataclasses.dataclass(frozen=True)
class DeflateParameters:
    """permessage-deflate as agreed (§7.1): who keeps context, and each side's window."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None  # None: not in the answer (15, the default)
    client_max_window_bits: int | None = None

    def header(self) -> str:
        """The answer, as a Sec-WebSocket-Extensions value (§7.1)."""
        parts = [PERMESSAGE_DEFLATE]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


def read_deflate_parameters(parameters: list[tuple[str, str | None]]) -> dict[str, str | None] | None:
    """§7: each parameter known and at most once, with a valid value; None otherwise."""
    seen: dict[str, str | None] = {}
    for name, value in parameters:
        if name in seen:  # §7: "MUST NOT include ... more than once"
            return None
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:  # §7.1.1: these have no value
                return None
        elif name == "server_max_window_bits":
            if window_bits(value) is None:  # §7.1.2.1: a value is required
                return None
        elif name == "client_max_window_bits":
            if value is not None and window_bits(value) is None:  # §7.1.2.2: value optional in an offer
                return None
        else:  # §7: an unknown parameter declines the offer
            return None
        seen[name] = value
    return seen


def negotiate_deflate(header: str | None) -> DeflateParameters | None:
    """§5, §7.1: the server's answer to the first offer it can honour, or None (declined:
    the connection goes on uncompressed)."""
    if not header:
        return None
    try:
        offers = parse_extensions(header)
    except ValueError:  # a malformed header declines every offer in it, no more
        return None
    for name, parameters in offers:
        offer = read_deflate_parameters(parameters) if name == PERMESSAGE_DEFLATE else None
        if offer is None:
            continue
        server_bits = window_bits(offer.get("server_max_window_bits"))
        if server_bits == 8:  # zlib has no raw deflate with a 256-byte window: cannot honour it
            continue
        # §7.1.2.1: a server_max_window_bits offered must be answered, with the same value or
        # less; §7.1.1.1 and §7.1.1.2: both no_context_takeover may be answered unasked.
        return DeflateParameters(server_no_context_takeover=True, client_no_context_takeover=True,
                                 server_max_window_bits=server_bits)
    return None


def client_deflate_offer() -> str:
    """What our client offers, as Chromium does: permessage-deflate, and any client window."""
    return f"{PERMESSAGE_DEFLATE}; client_max_window_bits"


def check_deflate_answer(parameters: list[tuple[str, str | None]]) -> DeflateParameters:
    """§7.1: a client's checks of the server's permessage-deflate answer to our offer; each
    broken rule fails the connection (HandshakeFailed)."""
    answer = read_deflate_parameters(parameters)
    if answer is None:
        raise HandshakeFailed("invalid permessage-deflate parameters in the answer", 101)
    if "client_max_window_bits" in answer:
        bits = window_bits(answer["client_max_window_bits"])
        if bits is None:  # §7.1.2.2: in an answer it needs a value
            raise HandshakeFailed("client_max_window_bits without a value in the answer", 101)
        if bits == 8:  # zlib cannot compress with a 256-byte window: we cannot keep to it
            raise HandshakeFailed("the server asks for an 8-bit window, which zlib cannot make", 101)
    return DeflateParameters(
        server_no_context_takeover="server_no_context_takeover" in answer,
        client_no_context_takeover="client_no_context_takeover" in answer,
        server_max_window_bits=window_bits(answer.get("server_max_window_bits")),
        client_max_window_bits=window_bits(answer.get("client_max_window_bits")))


class MessageDeflater:
    """Compresses messages one by one, each on its own (§7.2.1 without context takeover).

    A full flush ends every message: it empties the output like a sync flush (so the data
    ends with 00 00 ff ff, which is removed) and also resets the compressor, so no message
    refers back to an earlier one.  One deflater can then serve every connection that uses
    the same window size, and a broadcast is compressed once."""

    def __init__(self, window: int = 15, level: int = DEFAULT_COMPRESSION_LEVEL) -> None:
        self.window = window
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, -window)

    def compress(self, payload: bytes | bytearray) -> bytes:
        data = self._zlib.compress(payload) + self._zlib.flush(zlib.Z_FULL_FLUSH)
        return data[:-4]  # the flush always ends with DEFLATE_TAIL


def deflate_bound(size: int) -> int:
    """The most bytes DEFLATE data (RFC 1951) may take for `size` bytes of content, whatever
    the compressor's settings: zlib's `deflateBound` when it cannot assume its defaults (a
    small memLevel, as `websockets` uses, means small stored blocks, 5 bytes of header each).
    Every browser and the usual libraries compress with zlib.  So a message that inflates to
    `size` bytes, random bytes included, is never refused for its size on the wire; what it
    inflates to is bounded by its inflater."""
    return size + ((size + 7) >> 3) + ((size + 63) >> 6) + 5


class MessageInflater:
    """Inflates the messages of one peer, each bounded to `max_size` bytes of output.

    §8.1 and RFC 6455 §10.4: a few kilobytes can inflate to gigabytes.  Each call asks zlib for
    at most what is left of the budget, plus one byte: past the budget the message is refused
    (1009) after at most `max_size` + 1 bytes were made, whatever came in.  Invalid DEFLATE data
    fails the connection with 1007 (data not consistent with the message)."""

    def __init__(self, max_size: int, keep_context: bool = False) -> None:
        self.max_size = max_size
        self.keep_context = keep_context  # the peer's messages may refer back to its earlier ones
        self._zlib = zlib.decompressobj(-15)  # a 15-bit window reads data made with any smaller
        self.size = 0  # bytes made for the message in progress

    def inflate(self, data: bytes | bytearray) -> bytes:
        try:
            out = self._zlib.decompress(data, self.max_size - self.size + 1)
        except zlib.error as error:
            raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA, f"invalid compressed data ({error})") from None
        self.size += len(out)
        if self.size > self.max_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message over the limit of {self.max_size} bytes once inflated")
        return out

    def finish(self) -> bytes:
        """The end of a message: the flush's tail goes back on (§7.2.2); then the next one."""
        out = b"" if self._zlib.eof else self.inflate(DEFLATE_TAIL)
        self.size = 0
        if self._zlib.eof:  # the peer set BFINAL (§7.2.3.4): that stream is over
            self._zlib = zlib.decompressobj(-15)
        return out


@dataclasses.dataclass(frozen=True)
class Compression:
    """permessage-deflate on one connection, as its Protocol and Receiver use it: the
    parameters agreed, the deflater for what this side sends (shared on the server), and the
    threshold below which messages go uncompressed.  Shared by every connection that agreed
    the same parameters: nothing in it changes."""

    parameters: DeflateParameters
    deflater: MessageDeflater
    threshold: int = DEFAULT_COMPRESSION_THRESHOLD
    peer_keeps_context: bool = False  # the peer's messages may refer back: one inflater per connection

    def inflater(self, max_size: int) -> MessageInflater:
        return MessageInflater(max_size, keep_context=self.peer_keeps_context)


# ---------------------------------------------------------------------------------------------
# II.5 The connection: the pump between an asyncio stream and a Protocol
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Limits:
    """The limits of one connection; each has a default, a flag and a test."""

    max_size: int = DEFAULT_MAX_SIZE
    max_buffer: int = DEFAULT_MAX_BUFFER
    ping_interval: float = DEFAULT_PING_INTERVAL
    ping_timeout: float = DEFAULT_PING_TIMEOUT
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT


async def read_http_head(reader: asyncio.StreamReader, max_bytes: int,
                         timeout: float | None = None) -> tuple[bytes, bytes] | None:
    """Read up to the empty line that ends an HTTP head: (head, the bytes that came after it).

    None when the peer sent nothing at all (it closed, or stayed silent for `timeout`): there
    is no request to answer.  HTTPError 408 when a head began but did not end within `timeout`
    (the whole head, not each read: a slowloris client sends a byte now and then), 431 past
    `max_bytes`, 400 when the peer closed in the middle.  Linear: each new chunk is searched
    only from just before its start.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    buffer = b""
    while True:
        read = reader.read(max_bytes + 4 - len(buffer))
        try:
            chunk = await (read if deadline is None else asyncio.wait_for(read, max(0.0, deadline - loop.time())))
        except asyncio.TimeoutError:
            chunk = None
        if not chunk:
            no_head_received(buffer, timed_out=chunk is None)
            return None
        start = max(0, len(buffer) - 3)
        buffer += chunk
        found = find_end_of_head(buffer, start)
        if found is not None:
            return buffer[:found[0]], buffer[found[1]:]
        if len(buffer) > max_bytes:
            raise HTTPError(431, f"request head over {max_bytes} bytes")


async def answer_http(writer: asyncio.StreamWriter, response: bytes) -> None:
    """Send a plain HTTP answer, then close; a short linger lets the client finish sending."""
    writer.write(response)
    try:
        await asyncio.wait_for(writer.drain(), 5)
        if writer.can_write_eof():
            writer.write_eof()
    except (asyncio.TimeoutError, OSError):
        pass
    writer.close()


class EndOfTurnWrites:
    """The connections that have frames to write at the end of this turn of the event loop.

    A broadcast queues one frame for each of, say, 1,000 clients.  One `loop.call_soon` per
    client would cost a callback handle, a copy of the context and a call through it for each:
    measured, a third of the server's Python time per delivery.  So the connections line up
    here instead, and one callback per turn writes for all of them, in the order they came.
    A server shares one among all its connections; a client connection has its own.
    """

    __slots__ = ("_handle", "_loop", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[Connection] = []
        self._handle: asyncio.Handle | None = None

    def add(self, connection: Connection) -> None:
        self._waiting.append(connection)
        if self._handle is None:
            self._handle = self._loop.call_soon(self._write_all)

    def _write_all(self) -> None:
        waiting, self._waiting, self._handle = self._waiting, [], None
        for connection in waiting:
            try:
                connection.flush()
            except Exception:  # one connection's failure must not keep the others' frames back
                log.exception("%s: writing failed", connection.name)
                connection.abort()


#: --pace-timeout: seconds a client may stay more than --pace-bytes behind (by default a quarter
#: of --max-buffer) before senders stop waiting for it (`Pace`).
DEFAULT_PACE_TIMEOUT = 1.0


class Pace:
    """Fairness: a client that floods the chat is slowed down to what the others can take.

    Every message a sender sends is queued for every client, so one sender that writes as fast
    as it can (a raw socket loop) makes the server queue, per read, up to READ_SIZE bytes of
    messages for each client, faster than any of them reads: without a brake, clients that read
    as fast as they can pile up --max-buffer bytes in a fraction of a second and are dropped as
    "too slow", while the flooder, which needs to read nothing, stays.

    The brake is the sender's own reading, as TCP would have it.  `Connection.send_frame_bytes`
    notes here every client that has more than `bytes` (--pace-bytes) queued: a laggard.  After
    each message it broadcast, a sender's task (`WebSocketServer._chat`) waits while laggards
    remain, for each one until it has drained below `bytes`; meanwhile it reads nothing more
    from its socket, so the kernel's buffers fill and TCP slows the flooder down.  Its messages
    then reach the room at the pace of the clients that take them, and nobody is dropped.  A
    chat at human speed never queues that much: the brake costs nothing until it is needed
    (one test of a dictionary per message).

    A client that stopped reading must not stall the chat: each laggard is waited for at most
    `timeout` (--pace-timeout) from the moment it fell behind.  Past that it is on its own: the
    senders go on, and its --max-buffer drops it as before (1008), unless it catches up first.
    So an ordinary client is dropped only when it is itself too slow, and a stalled one holds
    the chat back for at most `timeout` seconds."""

    __slots__ = ("bytes", "lagging", "timeout")

    def __init__(self, max_bytes: int, timeout: float) -> None:
        self.bytes, self.timeout = max_bytes, timeout
        self.lagging: dict[Connection, float] = {}  # laggard -> when it fell behind (loop time)

    def falls_behind(self, client: Connection) -> None:
        if client not in self.lagging:
            self.lagging[client] = client._loop.time()

    def forget(self, client: Connection) -> None:
        self.lagging.pop(client, None)

    async def wait(self, sender: Connection) -> None:
        """Wait until every laggard has drained below `bytes`, or stalled past `timeout`.  The
        sender's own frames leave meanwhile at the end of each turn, as if it were idle."""
        loop = asyncio.get_running_loop()
        sender._pumping = False
        sender.flush()
        for client, since in tuple(self.lagging.items()):
            while client.state == State.OPEN and client.protocol.pending_bytes > self.bytes:
                left = since + self.timeout - loop.time()
                if left <= 0:  # stalled: no longer waited for (its own --max-buffer decides)
                    break
                if client._drain_task is None:  # queued this turn, not written yet: write it now
                    client.flush()
                    if client._drain_task is None:
                        continue
                await asyncio.wait((client._drain_task,), timeout=left)
            else:  # drained, or closing: no longer a laggard
                self.lagging.pop(client, None)


class Connection:
    """One WebSocket connection over an asyncio stream: the pump around a `Protocol`.

    It moves bytes and time, nothing else: what the stream delivers goes into the protocol,
    what the protocol queues goes out, and the protocol's decisions are carried out (close
    TCP, half-close it, expect the peer to close).  Two timers keep the connection honest:
    keepalive pings with their pong deadline, and the close timeout.

    Reading is pulled: `recv()` reads from the socket only when no message is waiting, so a
    busy reader applies TCP backpressure to its peer.  Pings are answered from there.

    Writing never waits.  Frames leave in one write per batch: those queued by the task that
    handles a received message when that task next waits for the peer, those queued from
    elsewhere (a broadcast) at the end of the event loop's turn (`EndOfTurnWrites`).  When a
    peer stops reading, its socket buffer fills and frames wait in the protocol's queue, still
    shared with the other clients.  What one client holds, queue plus socket buffer, is bounded by
    `max_buffer` bytes (plus the one frame that crossed it): past that the client is dropped
    with 1008, policy violation (1013, "try again later", would tell a client that did nothing
    wrong to blame the server's load), and the others never notice.
    """

    __slots__ = ("_behind", "_close_timer", "_closed_waiter", "_drain_task", "_end_of_turn", "_flush_waiting",
                 "_half_closed", "_high_water", "_loop", "_pace", "_ping_payload", "_ping_timer", "_pong_timer",
                 "_pumping", "_receiving", "address", "limits", "name", "protocol", "reader", "trace", "transport",
                 "wire", "writer")  # no per-connection __dict__: idle clients stay small

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 protocol: Protocol | None = None, *, limits: Limits | None = None,
                 trace: bool = False, name: str | None = None,
                 end_of_turn: EndOfTurnWrites | None = None, pace: Pace | None = None,
                 address: str | None = None, wire: WireTap | None = None, early: bytes = b"") -> None:
        self.reader, self.writer, self.transport = reader, writer, writer.transport
        self.limits = limits or Limits()
        self.protocol = protocol or Protocol(max_size=self.limits.max_size)
        self.trace = trace
        self.wire = wire  # the tap of its page's wire panel (II.10), if that page asked; else None
        if trace or wire is not None:
            self.protocol.receiver.on_frame = self._frame_decoded
        if wire is not None:  # once the page stops watching, this connection costs what any other does
            wire.on_stop.append(self._unwatch)
        peer = writer.get_extra_info("peername")
        self.name = name or (f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer))
        self.address = address or (peer[0] if isinstance(peer, tuple) else str(peer))  # the client's, for caps
        self._pace = pace  # the server's (a broadcast's frames may make this client a laggard), or None
        # Past this many bytes queued, send_frame_bytes takes its slow path (`_fall_behind`).
        self._behind = min(self.limits.max_buffer, pace.bytes) if pace is not None and pace.bytes else self.limits.max_buffer
        self._loop = asyncio.get_running_loop()
        self._high_water = self.transport.get_write_buffer_limits()[1]
        self._end_of_turn = end_of_turn or EndOfTurnWrites(self._loop)
        self._flush_waiting = False  # in the end-of-turn line already?
        self._drain_task: asyncio.Task | None = None
        self._half_closed = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None  # the keepalive ping waiting for its pong
        self._receiving = False  # is a task inside recv_message()?
        self._pumping = False  # is that task handling what it read (until it next waits)?
        self._closed_waiter: asyncio.Future | None = None  # close() waiting for another reader
        if self.limits.ping_interval > 0:
            self._ping_timer = self._loop.call_later(self.limits.ping_interval, self._keepalive)
        if early:  # what the peer sent right after its request head (already frames)
            if wire is not None:
                wire.bytes_in(early)
            self.protocol.receive_data(early)

    @property
    def state(self) -> State:
        return self.protocol.state

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_code

    @property
    def close_reason(self) -> str:
        return self.protocol.close_reason

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    @property
    def buffered_bytes(self) -> int:
        """What this client holds, as `max_buffer` counts it: queued frames and socket buffer."""
        return self.protocol.pending_bytes + self.transport.get_write_buffer_size()

    # -- receiving -----------------------------------------------------------------------------

    async def recv_message(self) -> Message:
        """The next data message; raises `ConnectionClosed` once the connection is closed.

        One task receives at a time; another task may send, or `close()`, meanwhile.
        """
        if self._receiving:
            raise RuntimeError("recv() called while another task is already receiving")
        self._receiving = True
        protocol = self.protocol
        try:
            while True:
                event = protocol.next_event()
                if type(event) is Message:
                    return event
                if event is not None:
                    self._handle_control(event)
                    continue
                if protocol.state == State.CLOSED:
                    await self._wait_for_tcp_end()
                    raise ConnectionClosed(protocol.close_code, protocol.close_reason)
                self._pumping = False
                if protocol.pending_bytes:
                    # About to wait for the peer, which may be waiting for our answer: send what
                    # is queued now (frames queued while handling one read still leave together).
                    self.flush()
                try:  # (the read is not a coroutine of its own: one frame less per idle client)
                    data = await self.reader.read(READ_SIZE)
                except OSError:
                    data = b""
                self._pumping = True
                if data:
                    if self.wire is not None:  # the page's wire panel: the bytes as they came
                        self.wire.bytes_in(data)
                    protocol.receive_data(data)
                else:  # the peer's TCP is gone
                    protocol.receive_eof()
                    self._after_protocol()
        finally:
            self._receiving = False

    def _handle_control(self, event: Event) -> None:
        """What the protocol handed back besides messages; it has already reacted to them."""
        kind = type(event)
        if kind is Pong:
            if event.payload == self._ping_payload:  # §5.5.3: the answer to our keepalive ping
                self._ping_payload = None
                if self._pong_timer is not None:
                    self._pong_timer.cancel()
                    self._pong_timer = None
        elif kind is Ping:
            if self.buffered_bytes > self.limits.max_buffer:  # pongs count against the budget
                self._drop_slow_client()
                return
        elif kind is ProtocolError:
            log.info("%s failing the connection: %s %s", self.name, event.code, escape_controls(event.reason))
        self._after_protocol()

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

    # -- sending -------------------------------------------------------------------------------

    def send_nowait(self, data: str | bytes) -> None:
        """Queue a text (`str`) or binary (`bytes`) message; never waits.  From the task that
        receives, it leaves when that task next waits in `recv()`; from elsewhere, at the end
        of the loop's turn.  ConnectionClosed once this side may no longer send."""
        if self._queue_message(data):
            self._schedule_flush()

    async def send(self, data: str | bytes) -> None:
        """Send a message now; waits while the peer is not reading."""
        if self._queue_message(data):
            self.flush()
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    def _queue_message(self, data: str | bytes) -> bool:
        if self.buffered_bytes > self.limits.max_buffer:
            self._drop_slow_client()
            return False
        if isinstance(data, str):
            self.protocol.send_text(data)
        else:
            self.protocol.send_binary(data)
        return True

    def send_frame_bytes(self, frame: Frame, cost: int | None = None) -> None:
        """Queue a server frame encoded once for many clients (`ChatRoom.broadcast`, which
        passes its `cost`, `frame_size(frame) + QUEUED_FRAME_CHARGE`, computed once).

        The hot path of a broadcast: one call per client and message, so it is kept short.  The
        socket buffer is counted only while it is full (a drain is awaited): otherwise it holds
        less than the transport's high-water mark, and the queue empties at the end of the turn."""
        protocol = self.protocol
        if protocol.pending_bytes > self._behind or self._drain_task is not None:  # behind: the slow path
            if self._fall_behind():
                return
        if protocol.send_frame(frame, frame_size(frame) + QUEUED_FRAME_CHARGE if cost is None else cost):
            if not (self._flush_waiting or self._pumping or self._drain_task is not None):
                self._flush_waiting = True
                self._end_of_turn.add(self)

    def _fall_behind(self) -> bool:
        """A client with frames waiting: dropped (True) past --max-buffer; past --pace-bytes, a
        laggard that the senders wait for (`Pace`)."""
        pending = self.protocol.pending_bytes
        if pending > self.limits.max_buffer or (
                self._drain_task is not None and pending + self.transport.get_write_buffer_size() > self.limits.max_buffer):
            self._drop_slow_client()
            return True
        if self._pace is not None and pending > self._pace.bytes > 0:
            self._pace.falls_behind(self)
        return False

    def _drop_slow_client(self) -> None:
        self.protocol.fail(CloseCode.POLICY_VIOLATION,
                           f"client too slow: over {self.limits.max_buffer} bytes waiting",
                           discard_queued=True)
        log.info("%s failing the connection: 1008 client too slow", self.name)
        self._after_protocol()

    def _schedule_flush(self) -> None:
        """Write at the end of this turn of the event loop, unless this connection's own task
        is handling what it read: it flushes before it next waits (see `recv_message`), and a turn of
        the loop saved is a good part of a small message's round trip.  (So a task that
        receives and then awaits something other than `recv()` should `send()`, which writes
        at once, rather than `send_nowait()`.)"""
        if not (self._flush_waiting or self._pumping or self._drain_task is not None):
            self._flush_waiting = True
            self._end_of_turn.add(self)

    def flush(self) -> None:
        """Write what the protocol has queued, in batches that fit the socket buffer, then
        carry out its decision about the transport."""
        self._flush_waiting = False  # (if it is still in the end-of-turn line, it finds nothing)
        if self._drain_task is not None:  # the writer task flushes once the socket drains
            return
        protocol, transport = self.protocol, self.transport
        if transport.is_closing():
            protocol.data_to_send()  # nobody will read it
            return
        while protocol.pending_bytes:
            if transport.get_write_buffer_size() > self._high_water:
                self._drain_task = self._loop.create_task(self._write_when_drained())
                return
            self._write(protocol.data_to_send(self._high_water))
        if protocol.close_transport:
            transport.close()
        elif protocol.half_close_transport and not self._half_closed:
            self._half_closed = True
            if transport.can_write_eof():
                transport.write_eof()

    def _write(self, frames: list[Frame]) -> None:
        if self.trace or self.wire is not None:
            self._show(frames)
        transport = self.transport
        if len(frames) == 1 and type(frames[0]) is bytes:
            transport.write(frames[0])
        elif all(type(frame) is bytes for frame in frames):
            transport.write(b"".join(frames))
        else:  # large payloads go to the socket as they are, after their header
            for frame in frames:
                for chunk in (frame if type(frame) is tuple else (frame,)):
                    transport.write(chunk)

    async def _write_when_drained(self) -> None:
        """The writer of a client that does not keep up: wait for its socket, then flush."""
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.protocol.data_to_send()
        finally:
            self._drain_task = None
        self.flush()

    def _after_protocol(self) -> None:
        """After the protocol took a step: write what it queued, arm or stop the timers."""
        protocol = self.protocol
        if protocol.close_expected and self._close_timer is None:
            self._close_timer = self._loop.call_later(self.limits.close_timeout, self.abort)
        self.flush()
        if protocol.state == State.CLOSED and self.transport.is_closing():
            self._closed()

    # -- closing -------------------------------------------------------------------------------

    def start_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (§7.1.2) without waiting for its end.  ValueError for
        a code that may not be sent."""
        self.protocol.send_close(code, reason)
        self._after_protocol()

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (§7.1.2) and wait, at most close_timeout, for its end."""
        self.start_close(code, reason)
        deadline = self._loop.time() + self.limits.close_timeout + 1
        if self._receiving:  # another task's recv() will read the peer's close: wait for it
            self._closed_waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._closed_waiter), deadline - self._loop.time())
            except asyncio.TimeoutError:
                self.abort()
            return
        # Read on until the peer's close frame and the end of TCP, as recv() would.
        while self.protocol.state != State.CLOSED and self._loop.time() < deadline:
            try:
                await asyncio.wait_for(self.recv_message(), deadline - self._loop.time())
            except (ConnectionClosed, asyncio.TimeoutError):
                break
        await self._wait_for_tcp_end()
        self.abort()

    async def _wait_for_tcp_end(self) -> None:
        """§7.1.1: the client waits, within close_timeout, for the server to close TCP first."""
        if not self.protocol.client or self.transport.is_closing():
            return
        deadline = self._loop.time() + self.limits.close_timeout
        try:
            while await asyncio.wait_for(self.reader.read(READ_SIZE), max(0.0, deadline - self._loop.time())):
                pass  # whatever still comes is discarded
        except (asyncio.TimeoutError, OSError):
            pass
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now: the end of patience with an unresponsive peer (§7.1.1),
        or of a connection nobody reads any more."""
        self.protocol.receive_eof()
        if self.protocol.pending_bytes or self._drain_task is not None:
            self.transport.abort()  # a peer that does not read: do not wait for it
        else:
            self.transport.close()
        self._closed()

    def _closed(self) -> None:
        if self.wire is not None:
            self.wire.ended(self.protocol.close_code, self.protocol.close_reason)
            self.wire = None
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        for timer in (self._ping_timer, self._pong_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = self._close_timer = None

    # -- keepalive -----------------------------------------------------------------------------

    def _keepalive(self) -> None:
        """Every ping_interval, a ping; a peer that sends no pong within ping_timeout is gone."""
        self._ping_timer = self._loop.call_later(self.limits.ping_interval, self._keepalive)
        if self.protocol.state != State.OPEN or self._ping_payload is not None:
            return  # closing, or the last ping's deadline is still running
        self._ping_payload = os.urandom(4)
        self.protocol.send_ping(self._ping_payload)
        self._pong_timer = self._loop.call_later(self.limits.ping_timeout, self._pong_missing)
        self.flush()

    def _pong_missing(self) -> None:
        self._pong_timer = None
        # No code fits a silent peer exactly; like `websockets`, 1011: the server cannot go on.
        self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        log.info("%s failing the connection: 1011 keepalive ping timeout", self.name)
        self._after_protocol()

    # -- tracing, and the page's wire panel -------------------------------------------------------

    def _frame_decoded(self, header: FrameHeader, payload: bytes, inflated: bool) -> None:
        """Each frame the Receiver decoded (its `on_frame`), for --trace and the wire panel."""
        if self.trace:
            log.info("%s <<< %s", self.name, header.describe(payload, inflated))
        if self.wire is not None:
            self.wire.frame_decoded(header, payload, inflated)

    def _unwatch(self) -> None:
        """The wire panel's tap stopped: let it go, and the decoder's hook unless --trace."""
        self.wire = None
        if not self.trace:
            self.protocol.receiver.on_frame = None

    def _show(self, frames: list[Frame]) -> None:
        """Frames about to be written, for --trace and the wire panel."""
        if self.trace:
            for frame in frames:
                self._trace_out(frame)
        if self.wire is not None:
            self.wire.frames_out(frames)

    def _trace_out(self, frame: Frame) -> None:
        if type(frame) is tuple:
            frame = b"".join(frame)
        header, payload_start = parse_frame_header(frame)
        payload = frame[payload_start:]
        if header.masking_key is not None:
            payload = apply_mask(payload, header.masking_key)
        if header.rsv1:  # compressed on its own (II.4): it inflates on its own too
            payload = inflate_alone(payload, self.limits.max_size)
        log.info("%s >>> %s", self.name, header.describe(payload, inflated=header.rsv1))


# ---------------------------------------------------------------------------------------------
# II.6 The client: the other side of the handshake (§4.1), for tests and the terminal
# ---------------------------------------------------------------------------------------------


class HandshakeFailed(WebSocketError):
    """§4.1: the client fails the connection, because the server's answer to its opening
    handshake is not an acceptance; `status` is the status the server answered, if any."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def new_key() -> str:
    """§4.1 item 7: "a nonce consisting of a randomly selected 16-byte value", in base64."""
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def parse_ws_url(url: str) -> tuple[bool, str, int, str]:
    """§3: ws-URI = "ws:" "//" host [ ":" port ] path [ "?" query ]; wss: for TLS.  Returns
    (secure, host, port, resource name); ValueError for anything else (a fragment too)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"not a WebSocket URL: {url!r} ({error})") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.fragment:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return secure, parts.hostname, port or (443 if secure else 80), resource


def build_client_request(host: str, port: int, resource: str, key: str, *, secure: bool = False,
                         origin: str | None = None, subprotocols: Iterable[str] = (),
                         extensions: str | None = None, access_token: str | None = None) -> bytes:
    """§4.1: the client's opening handshake, the request of §1.2 (§4.1 item 12: other header
    fields may follow, here `Authorization: Bearer` for a server with --access-token)."""
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if secure else 80):  # §4.1 item 4: the port only when not the default
        authority += f":{port}"
    lines = [f"GET {resource} HTTP/1.1", f"Host: {authority}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}"]
    if origin:  # §4.1 item 8: browsers always send it; other clients may
        lines.append(f"Origin: {origin}")
    subprotocols = list(subprotocols)
    if subprotocols:  # item 10, in order of preference
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    lines.append(f"Sec-WebSocket-Version: {WEBSOCKET_VERSION}")  # item 9
    if extensions:  # item 11
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    if access_token:  # RFC 6750 §2.1
        lines.append(f"Authorization: Bearer {access_token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def check_response(response: Response, key: str, offered_subprotocols: Iterable[str] = (),
                   offered_extensions: Iterable[str] = ()) -> Handshake:
    """§4.1, the client's checks of the server's answer; returns what was agreed.

    Each broken rule is a `HandshakeFailed`: "the client MUST _Fail the WebSocket Connection_".
    """
    if response.status != 101:  # item 1: anything else is not an upgrade
        raise HandshakeFailed(f"the server answered {response.status} {response.reason}", response.status)
    if response.tokens("upgrade") != ["websocket"]:  # item 2: the value "websocket", nothing else
        raise HandshakeFailed("the 101 answer lacks Upgrade: websocket", 101)
    if "upgrade" not in response.tokens("connection"):  # item 3
        raise HandshakeFailed("the 101 answer lacks Connection: Upgrade", 101)
    if response.header("sec-websocket-accept") != accept_key(key):  # item 4
        raise HandshakeFailed("wrong Sec-WebSocket-Accept: the server did not read our key", 101)
    offered, deflate = set(offered_extensions), None
    try:
        extensions = parse_extensions(response.header("sec-websocket-extensions") or "")
    except ValueError as error:
        raise HandshakeFailed(f"malformed Sec-WebSocket-Extensions: {error}", 101) from None
    for name, parameters in extensions:  # item 5
        if name not in offered:
            raise HandshakeFailed(f"the server chose the extension {name!r}, which was not offered", 101)
        if name == PERMESSAGE_DEFLATE:
            if deflate is not None:
                raise HandshakeFailed("the server chose permessage-deflate twice", 101)
            deflate = check_deflate_answer(parameters)
    subprotocol = response.header("sec-websocket-protocol")  # item 6
    if subprotocol is not None and subprotocol not in set(offered_subprotocols):
        raise HandshakeFailed(f"the server chose the subprotocol {subprotocol!r}, which was not offered", 101)
    return Handshake(response.header("sec-websocket-accept"), subprotocol, deflate)



@dataclasses.dataclass(frozen=True)
class OpeningHandshake:
    """What a client offered in its opening handshake, to check the server's answer against."""

    key: str
    subprotocols: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()


def client_compression(parameters: DeflateParameters) -> Compression:
    """A client's side of permessage-deflate as the server answered it (§7.1.1.2, §7.1.2.2): a
    deflater of its own, with the window the server allows, and a persistent inflater unless
    the server said server_no_context_takeover."""
    return Compression(parameters, MessageDeflater(parameters.client_max_window_bits or 15),
                       peer_keeps_context=not parameters.server_no_context_takeover)



async def connect(url: str, *, origin: str | None = None, subprotocols: Iterable[str] = (),
                  limits: Limits | None = None, timeout: float = 10.0, compression: bool = True,
                  cafile: str | None = None, trace: bool = False, access_token: str | None = None) -> Connection:
    """Open a client connection to a ws:// URL: the server's mirror (§4.1).

    The client masks every frame (§5.3) and fails the connection unless the server's answer
    passes `check_response`: 101, the upgrade headers, `Sec-WebSocket-Accept` computed from
    the key it sent (proof that a WebSocket server read this very request), and nothing it did
    not offer.  With `compression` it offers permessage-deflate as Chromium does (II.4).
    A wss:// URL is TLS, the server's certificate verified (II.7; `cafile` for a private
    CA).  `access_token` is sent as `Authorization: Bearer` (a server's --access-token).  Raises
    `HandshakeFailed`, `OSError` (`ssl.SSLCertVerificationError` among them) or
    `asyncio.TimeoutError`.
    """
    secure, host, port, resource = parse_ws_url(url)
    limits = limits or Limits(ping_interval=0)
    settle_the_allocator()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tls = {"ssl": client_tls_context(cafile), "server_hostname": host} if secure else {}
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=READ_SIZE, **tls), timeout)
    key = new_key()
    subprotocols = tuple(subprotocols)
    extensions = client_deflate_offer() if compression else None
    protocol = Protocol(client=True, max_size=limits.max_size,
                        opening=OpeningHandshake(key, subprotocols, (PERMESSAGE_DEFLATE,) if compression else ()))
    try:
        writer.write(build_client_request(host, port, resource, key, secure=secure, origin=origin,
                                          subprotocols=subprotocols, extensions=extensions,
                                          access_token=access_token))
        while protocol.state == State.CONNECTING:
            data = await asyncio.wait_for(reader.read(READ_SIZE), max(0.0, deadline - loop.time()))
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
        if protocol.handshake_failure is not None:
            raise protocol.handshake_failure
    except BaseException:
        writer.transport.abort()
        raise
    return Connection(reader, writer, protocol, limits=limits, trace=trace)


# ---------------------------------------------------------------------------------------------
# II.7 TLS (https://, wss://) and what a proxy in front may tell
# ---------------------------------------------------------------------------------------------
#
# A page served over https may open only wss:// WebSockets and https event streams, so real
# sites need TLS.  Both servers take it from the standard `ssl` module with its defaults
# (`create_default_context`: modern ciphers, no compression, certificates verified by clients),
# TLS 1.2 at least (RFC 8996 retired 1.0 and 1.1), and ALPN "http/1.1" (RFC 7301): these
# servers speak HTTP/1.1, and say so.  The TLS handshake has the same deadline as the request
# head that follows it, so a client that opens TCP and never speaks TLS is dropped in time.
#
# Before TLS starts, a connection to the TLS port is looked at (`TLSGate`): a connection that
# says nothing costs little (asyncio's TLS protocol takes some 300 KiB from its first moment, a
# 256 KiB read buffer among it), a plain HTTP request gets a 400 that says to use https://,
# and TLS handshakes under way are capped, in all and per client address.  SIGHUP loads the
# certificate again (`reload_certificate`), for the next connections.


class LoggedSSLObject(ssl.SSLObject):
    """An SSLObject that says, in one log line, why a TLS handshake failed.

    asyncio drops a failed handshake (plain HTTP on the TLS port, garbage, a client that
    refuses our certificate) without a word unless in debug mode.  `SSLContext.sslobject_class`
    is the documented way to hook in."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLError as error:
            if not isinstance(error, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
                log.info("TLS handshake failed: %s", tls_failure(error))
            raise


def tls_failure(error: Exception) -> str:
    """A TLS error in a few words, with the likely cause when it is the usual one."""
    reason = getattr(error, "reason", None) or str(error)
    if reason in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"):
        return f"{reason} (plain HTTP, or no TLS at all, on a TLS port)"
    return reason


def server_tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """The TLS side of a server: the certificate chain in `certfile` (PEM; the key may be in
    it too) and the private key in `keyfile`.  ValueError, naming the file, if they cannot be
    loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.sslobject_class = LoggedSSLObject
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        files = certfile if keyfile is None else f"{certfile} and {keyfile}"
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
        hint = ""
        if isinstance(error, ssl.SSLError) and keyfile is None:
            hint = f" (is the private key in {certfile}? If not, give it with --keyfile)"
        elif isinstance(error, ssl.SSLError):
            hint = " (PEM files, and the key must be the certificate's)"
        raise ValueError(f"cannot load the certificate and key from {files}: {reason}{hint}") from None
    return context


def client_tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """The TLS side of a client: the server's certificate and host name are verified, against
    the system's trusted certificates or, with `cafile`, a private CA's.  There is no switch
    to turn that off: a client that does not verify talks to whoever answers."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def reload_certificate(config, logger: logging.Logger) -> bool:
    """SIGHUP: load `config.certfile` and `config.keyfile` again, into a new context that
    replaces `config.tls` for the connections that come next (those open keep theirs).

    A new context, not `load_cert_chain` again into the one in use: that call loads the chain,
    then the key, and OpenSSL drops the old key as soon as a new certificate does not match it
    (SSL_CTX_use_certificate(3)); a reload that fails halfway (a certificate renewed, its new
    key not copied yet) would leave a context that can finish no handshake.  Built aside and
    swapped in whole, a failed reload keeps the old one, and says why in one line.  (Both the
    asyncio gate and the threaded server read `config.tls` for each new connection.)"""
    if config.tls is None or not getattr(config, "certfile", None):
        logger.info("SIGHUP: no certificate to reload (TLS is not served from --certfile): ignored")
        return False
    try:
        config.tls = server_tls_context(config.certfile, config.keyfile)
    except ValueError as error:
        logger.warning("SIGHUP: the certificate was not reloaded, the old one stays in use: %s", error)
        return False
    logger.info("SIGHUP: reloaded the certificate from %s; new connections use it", config.certfile)
    return True


def reload_on_sighup(action: Callable[[], None]) -> Callable[[], None]:
    """Run `action` (in the main thread, between two bytecodes) on SIGHUP, where the platform has
    one (Windows has not); return a function that puts the previous handler back.  Without it,
    SIGHUP (a closed terminal, or an operator's `kill -HUP`) ends the process silently.  A plain
    `signal.signal` handler, for the reason `stop_on_signals` gives."""
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None:
        return lambda: None
    previous = signal.signal(sighup, lambda signum, frame: action())
    return lambda: signal.signal(sighup, previous)


# -- the TLS port's gate: what a connection costs before its TLS handshake (asyncio) -----------

DEFAULT_MAX_TLS_HANDSHAKES = 32  # --max-tls-handshakes: TLS handshakes under way at once
DEFAULT_MAX_TLS_HANDSHAKES_PER_ADDRESS = 8  # --max-tls-handshakes-per-address: of them, from one address

#: How many first bytes are looked at: enough for an HTTP method and its space.
SNIFF_SIZE = 32

#: The answer to plain HTTP on the TLS port: what to do instead, in one line.
PLAIN_HTTP_ON_TLS = "this port speaks TLS: use https:// (or wss://)"


def sniff_tls_port(first: bytes) -> str | None:
    """What the first bytes on a TLS port are: "tls", "http", "neither", or None while they
    may still become either.

    A TLS record begins with its content type (RFC 8446 §5.1): 22 for the ClientHello's
    handshake record.  An HTTP/1.1 request begins with its method (RFC 9112 §3: a token; every
    method in use is ASCII letters) and a space.  A first byte that is not a letter is left to
    TLS, which refuses what is not a ClientHello with an alert (RFC 8446 §6) and a log line;
    letters that are not a method and a space are neither."""
    if not first:
        return None
    if not (65 <= first[0] <= 90 or 97 <= first[0] <= 122):
        return "tls"
    letters = len(first) - len(first.lstrip(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
    if letters < len(first):
        return "http" if first[letters] == 32 and letters <= 20 else "neither"
    return None if letters <= 20 else "neither"


def plain_http_answer(text: str = PLAIN_HTTP_ON_TLS) -> bytes:
    """400 (RFC 9110 §15.5.1: the request cannot be served as sent), and what to do instead."""
    body = f"{text}\n".encode()
    return build_response(400, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                                ("Connection", "close")], body)


class HandshakeSlots:
    """TLS handshakes under way: at most `total` at once, and `per_address` from one address, so
    that one client that opens many connections and stalls them cannot take every slot.  Used
    from the event loop and from threads (sse_server): a lock."""

    def __init__(self, total: int = DEFAULT_MAX_TLS_HANDSHAKES,
                 per_address: int = DEFAULT_MAX_TLS_HANDSHAKES_PER_ADDRESS) -> None:
        self.total, self.per_address = total, per_address
        self.in_use = 0
        self._by_address: dict[str, int] = {}
        self._lock = threading.Lock()
        self.full_since_logged = False  # for one log line when the limit is reached, not one per connection

    def acquire(self, address: str) -> bool:
        with self._lock:
            held = self._by_address.get(address, 0)
            if self.in_use >= self.total or held >= self.per_address:
                return False
            self.in_use += 1
            self._by_address[address] = held + 1
            return True

    def release(self, address: str) -> None:
        with self._lock:
            held = self._by_address.get(address, 0) - 1
            if held > 0:
                self._by_address[address] = held
            else:
                self._by_address.pop(address, None)
            self.in_use -= 1
            if self.in_use < self.total // 2:
                self.full_since_logged = False

    def note_full(self, logger: logging.Logger, what: str) -> None:
        """One log line when connections start waiting (or being turned away), not one each."""
        if not self.full_since_logged:
            self.full_since_logged = True
            logger.warning("TLS handshakes at their limit (%d in all, %d per address): %s", self.total,
                           self.per_address, what)


def feed_protocol(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand `data` to a protocol as a transport would: through its buffer, or data_received."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            count = min(len(buffer), len(view))
            buffer[:count] = view[:count]
            protocol.buffer_updated(count)
            view = view[count:]
    else:
        protocol.data_received(data)


class TLSGate:
    """The TLS port of `WebSocketServer`: `start_server` stands in for `asyncio.start_server(...,
    ssl=...)`, and calls the same `client_connected_cb(reader, writer)` once TLS is up.

    asyncio's own TLS server gives every accepted connection its TLS protocol at once: about
    300 KiB (a 256 KiB read buffer among it) for a connection that may never send a byte, so a
    thousand silent connections took 300 MB.  Here a connection starts as a `TLSDoorman`, a few
    hundred bytes, which reads at most SNIFF_SIZE bytes and decides (`sniff_tls_port`):

    - nothing within --handshake-timeout: closed (it cost little meanwhile);
    - plain HTTP: a 400 that says to use https://, then closed;
    - TLS: when a handshake slot is free for its address (`HandshakeSlots`), `loop.start_tls`
      on the same transport, with the bytes already read handed to the TLS protocol first;
      until then it waits, paused, within the same deadline.

    Only public asyncio calls (create_server, start_tls, pause_reading, set_protocol through
    start_tls): it runs on every event loop asyncio has, the Windows proactor included."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.slots = HandshakeSlots(config.max_tls_handshakes, config.max_tls_handshakes_per_address)
        self.waiting: collections.deque[TLSDoorman] = collections.deque()  # read TLS, no slot yet
        self.doormen: set[TLSDoorman] = set()
        self.upgrades: set[asyncio.Task] = set()
        self.callback: Callable | None = None
        self.limit = READ_SIZE
        self.server: asyncio.base_events.Server | None = None

    async def start_server(self, client_connected_cb: Callable, host: str, port: int, *, limit: int = READ_SIZE,
                           reuse_port: bool | None = None) -> TLSGate:
        self.callback, self.limit = client_connected_cb, limit
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: TLSDoorman(self), host, port, reuse_port=reuse_port)
        return self

    # What WebSocketServer uses of an asyncio Server:
    @property
    def sockets(self) -> tuple:
        return self.server.sockets

    def close(self) -> None:
        """Stop accepting; end the connections still at the gate."""
        self.server.close()
        for doorman in tuple(self.doormen):
            doorman.transport.abort()
        for task in tuple(self.upgrades):
            task.cancel()

    async def wait_closed(self) -> None:
        if self.upgrades:
            await asyncio.wait(self.upgrades, timeout=1)
        await self.server.wait_closed()

    def admit(self, doorman: TLSDoorman) -> None:
        """A connection that began TLS: its handshake now, or when a slot frees."""
        if self.slots.acquire(doorman.address):
            self._start_tls(doorman)
        else:
            self.slots.note_full(log, "new ones wait for a free slot, within --handshake-timeout")
            self.waiting.append(doorman)

    def _released(self, address: str) -> None:
        self.slots.release(address)
        for doorman in tuple(self.waiting):  # the oldest first, each address within its share
            if doorman.transport.is_closing():
                self.waiting.remove(doorman)
            elif self.slots.acquire(doorman.address):
                self.waiting.remove(doorman)
                self._start_tls(doorman)
            if self.slots.in_use >= self.slots.total:
                break

    def _start_tls(self, doorman: TLSDoorman) -> None:
        self.doormen.discard(doorman)
        doorman.timer.cancel()  # start_tls has the rest of the deadline as its own
        task = asyncio.get_running_loop().create_task(self._upgrade(doorman))
        self.upgrades.add(task)
        task.add_done_callback(self.upgrades.discard)

    async def _upgrade(self, doorman: TLSDoorman) -> None:
        loop = asyncio.get_running_loop()
        transport, first = doorman.transport, bytes(doorman.buffer[:doorman.received])
        reader = asyncio.StreamReader(limit=self.limit)
        protocol = asyncio.StreamReaderProtocol(reader, self.callback)
        timeout = max(doorman.deadline - loop.time(), 0.01)
        try:
            starting = loop.create_task(loop.start_tls(transport, protocol, self.config.tls, server_side=True,
                                                       ssl_handshake_timeout=timeout))
            # The bytes the doorman read must reach the TLS protocol before anything read after
            # them.  start_tls, once it runs, makes the TLS protocol the transport's, and
            # schedules (call_soon) its connection_made, then resume_reading.  One turn of the
            # loop lets it run that far; what is scheduled now runs after both, and before any
            # byte that resume_reading lets in (those come at a later turn).  (Python 3.11's TLS
            # protocol would keep bytes given before connection_made; 3.10's would drop them.)
            await asyncio.sleep(0)
            tls_protocol = transport.get_protocol()
            if tls_protocol is not doorman and not transport.is_closing():
                loop.call_soon(feed_protocol, tls_protocol, first)
            app_transport = await starting
        except (OSError, asyncio.TimeoutError) as error:  # late, or the client left
            if not isinstance(error, ssl.SSLError):  # (a refused handshake LoggedSSLObject has said)
                log.info("TLS handshake from %s failed: %s", doorman.address, error or type(error).__name__)
            transport.abort()
            return
        finally:
            self._released(doorman.address)
        protocol.connection_made(app_transport)  # the reader and writer, and client_connected_cb


class TLSDoorman(asyncio.BufferedProtocol):
    """A connection to the TLS port until it has shown its first bytes (`TLSGate`).  It holds its
    transport, a timer and at most SNIFF_SIZE bytes."""

    def __init__(self, gate: TLSGate) -> None:
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.buffer: bytearray | None = None  # made when the first bytes come
        self.received = 0
        self.draining = False  # after the 400: what the client still sends is read and dropped
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if isinstance(peer, tuple) else str(peer)
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.gate.config.handshake_timeout
        self.timer = loop.call_at(self.deadline, self._late)
        self.gate.doormen.add(self)

    def _late(self) -> None:
        if not self.draining:
            log.info("no TLS handshake from %s within %g s: closed", self.address, self.gate.config.handshake_timeout)
        self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.buffer is None:
            self.buffer = bytearray(SNIFF_SIZE)
        if self.draining:
            return memoryview(self.buffer)
        return memoryview(self.buffer)[self.received:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.draining:
            return
        self.received += nbytes
        verdict = sniff_tls_port(bytes(self.buffer[:self.received]))
        if verdict is None:
            return
        self.transport.pause_reading()
        if verdict == "tls":
            self.gate.admit(self)
        elif verdict == "http":
            log.info("plain HTTP from %s on the TLS port: answered 400 (use https://)", self.address)
            self._answer_and_close(plain_http_answer())
        else:
            log.info("neither TLS nor HTTP from %s on the TLS port (%r): closed", self.address,
                     bytes(self.buffer[:self.received]))
            self.transport.close()

    def _answer_and_close(self, answer: bytes) -> None:
        """Send `answer`, then read and drop what the client still sends, for a second at most:
        closing with its request unread would make the kernel reset the connection, and the
        client could lose the answer (RFC 9112 §9.6)."""
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.draining = True
        self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(1.0, self._late)
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.doormen.discard(self)
        if self in self.gate.waiting:
            self.gate.waiting.remove(self)
        if self.timer is not None:
            self.timer.cancel()


#: What an address written by a proxy in X-Forwarded-For may contain (IPv4, IPv6, a port).
_ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF.:[]")


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The client's address, for the logs.  Behind a proxy the TCP peer is the proxy, which
    puts the client's address in X-Forwarded-For.  But anyone can send that header: it is
    believed only when the connection comes from a proxy given with --trusted-proxy, and then
    only its last hop that no trusted proxy wrote (the ones before could be the client's own
    invention).  Anything that does not look like an address is ignored."""
    trusted = set(trusted_proxies)
    if peer not in trusted or not forwarded_for:
        return peer
    for hop in reversed([item.strip() for item in forwarded_for.split(",")]):
        if not hop or len(hop) > 64 or not set(hop) <= _ADDRESS_CHARS:
            return peer
        if hop not in trusted:
            return hop
    return peer


# ---------------------------------------------------------------------------------------------
# II.8 Redis: RESP2 by hand, for several processes
# ---------------------------------------------------------------------------------------------
#
# One Python process is one core; with --redis several processes share one chat and one event
# stream.  Redis is a service the user runs, not a package: this is its protocol, RESP2
# ("REdis Serialization Protocol"), written out, and two small clients over it (an asyncio one
# here, a blocking one in sse_server.py).  A command is an array of bulk strings; a reply is
# one of five types, told apart by their first byte:
#
#   +OK\r\n                                  simple string
#   -ERR unknown command 'asdf'\r\n          error
#   :1000\r\n                                integer
#   $5\r\nhello\r\n     $-1\r\n              bulk string, and the null bulk string
#   *2\r\n$5\r\nhello\r\n:1\r\n   *-1\r\n    array (of any of these, nested), and the null array
#
# Both servers use Redis *streams* (XADD, XREAD): an append-only log with ids, which a reader
# that was away can read from where it stopped.  Pub/sub (PUBLISH, SUBSCRIBE) would deliver to
# whoever is subscribed at that instant and to nobody else ("at-most-once"): a process that is
# reconnecting to Redis would silently miss what was published meanwhile.

DEFAULT_REDIS_PORT = 6379
DEFAULT_REDIS_TIMEOUT = 2.0  # --redis-timeout: seconds to connect, and for each command
#: The bounds of a reply: a bulk string, the elements of an array, how deep arrays nest, a line.
MAX_REDIS_BULK = 64 << 20
MAX_REDIS_ELEMENTS = 1 << 20
MAX_REDIS_DEPTH = 8
MAX_REDIS_LINE = 64 * 1024


class RedisError(WebSocketError):
    """Redis could not be used: unreachable, too slow, or it answered something unreadable."""


class RedisUnreachable(RedisError):
    """No connection to Redis: the command was not sent, so it certainly did not happen.  (Any
    other RedisError after a command was sent leaves its outcome unknown: Redis may have run
    it and then failed to answer in time.)"""


class RedisReplyError(RedisError):
    """Redis answered a command with an error reply (`-ERR ...`): a value, raised by clients."""


def encode_command(*arguments: bytes | str | int) -> bytes:
    """A command as Redis reads it: an array of bulk strings.

    >>> encode_command("LLEN", "mylist")
    b'*2\\r\\n$4\\r\\nLLEN\\r\\n$6\\r\\nmylist\\r\\n'
    """
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        data = argument if isinstance(argument, bytes) else str(argument).encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


#: A reply: str (simple string), RedisReplyError, int, bytes or None (bulk), list or None (array).
Reply = Union[str, int, bytes, list, None, RedisReplyError]

_INCOMPLETE = object()  # "wait for more bytes"
_ARRAY_STARTED = object()  # an array header was read; its elements follow


class RESPParser:
    """RESP2 replies, sans I/O: feed it bytes as they come, it returns the replies they complete.

    Incremental (a reply may be split anywhere), linear in its input, and bounded: a bulk string
    longer than `max_bulk`, an array of more than `max_elements`, arrays nested deeper than
    `max_depth` or a line longer than `max_line` raise RedisError before anything that size is
    kept.  Error replies are values (RedisReplyError), not raised: the client decides."""

    def __init__(self, max_bulk: int = MAX_REDIS_BULK, max_elements: int = MAX_REDIS_ELEMENTS,
                 max_depth: int = MAX_REDIS_DEPTH, max_line: int = MAX_REDIS_LINE) -> None:
        self.max_bulk, self.max_elements, self.max_depth, self.max_line = max_bulk, max_elements, max_depth, max_line
        self._buffer = bytearray()  # what arrived and was not parsed yet, from _position on
        self._position = 0
        self._arrays: list[list] = []  # the arrays being filled: [elements left, elements so far]

    def feed(self, data: bytes) -> list[Reply]:
        del self._buffer[:self._position]  # (cheap: a bytearray drops its head in place)
        self._buffer += data
        self._position = 0
        replies: list[Reply] = []
        while True:
            item = self._item()
            if item is _INCOMPLETE:
                return replies
            if item is _ARRAY_STARTED:
                continue
            while self._arrays:  # an element of the innermost array, which may now be complete
                array = self._arrays[-1]
                array[1].append(item)
                array[0] -= 1
                if array[0]:
                    break
                item = self._arrays.pop()[1]
            else:
                replies.append(item)

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n", self._position)
        if end < 0:
            if len(self._buffer) - self._position > self.max_line:
                raise RedisError(f"a reply line longer than {self.max_line} bytes")
            return None
        line, self._position = bytes(self._buffer[self._position:end]), end + 2
        return line

    def _item(self):
        start = self._position
        line = self._line()
        if line is None:
            return _INCOMPLETE
        if not line:
            raise RedisError("an empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return self._integer(rest)
        if kind == b"$":
            length = self._integer(rest)
            if length == -1:
                return None
            if not 0 <= length <= self.max_bulk:
                raise RedisError(f"a bulk string of {length} bytes (the limit is {self.max_bulk})")
            end = self._position + length
            if len(self._buffer) < end + 2:
                self._position = start  # the whole string, and its CRLF, first
                return _INCOMPLETE
            if self._buffer[end:end + 2] != b"\r\n":
                raise RedisError("a bulk string not followed by CRLF")
            data, self._position = bytes(self._buffer[self._position:end]), end + 2
            return data
        if kind == b"*":
            count = self._integer(rest)
            if count == -1:
                return None
            if not 0 <= count <= self.max_elements:
                raise RedisError(f"an array of {count} elements (the limit is {self.max_elements})")
            if count == 0:
                return []
            if len(self._arrays) >= self.max_depth:
                raise RedisError(f"arrays nested deeper than {self.max_depth}")
            self._arrays.append([count, []])
            return _ARRAY_STARTED
        raise RedisError(f"an unknown reply type {kind!r}")

    @staticmethod
    def _integer(text: bytes) -> int:
        """`:[<+|->]<value>`: decimal digits with an optional sign, at most a signed 64-bit."""
        digits = text[1:] if text[:1] in (b"-", b"+") else text
        if not digits or len(digits) > 19 or not digits.isdigit():
            raise RedisError(f"not an integer: {text[:30]!r}")
        return int(text)


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, from `redis[s]://[[user]:password@]host[:port][/db]`.

    `rediss://` is Redis over TLS (the server's certificate verified against the system's CAs,
    or `cafile`'s: --redis-cafile); a user name is Redis 6's ACL user (`AUTH user password`).
    The password may stay out of the URL, and so out of `ps`: REDIS_PASSWORD in the
    environment.  It is never shown: not in `repr`, not in any message (`redact_redis_url`)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_REDIS_PORT
    password: str | None = dataclasses.field(default=None, repr=False)
    db: int = 0
    username: str | None = None
    tls: bool = False
    cafile: str | None = None

    @classmethod
    def parse(cls, url: str, cafile: str | None = None, environ: dict | None = None) -> RedisAddress:
        """ValueError for anything but a redis:// or rediss:// URL; its message never holds the
        password.  Without a password in the URL, REDIS_PASSWORD (from `environ`, by default
        the process's environment) is used when it is set."""
        shown = redact_redis_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise ValueError(f"not a redis:// URL: {shown!r} ({redact_redis_url(str(error))})") from None
        path = parts.path.strip("/")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or (path and not path.isdigit()):
            raise ValueError(f"not a redis:// or rediss:// URL, redis[s]://[[user]:password@]host[:port][/db]: {shown!r}")
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        if password is None:
            password = (os.environ if environ is None else environ).get("REDIS_PASSWORD") or None
        username = urllib.parse.unquote(parts.username) if parts.username else None
        if cafile is not None and parts.scheme != "rediss":
            raise ValueError(f"--redis-cafile is for rediss:// (Redis over TLS), not {shown!r}")
        address = cls(parts.hostname, port or DEFAULT_REDIS_PORT, password, int(path or 0), username,
                      parts.scheme == "rediss", cafile)
        try:
            address.tls_context()  # a CA file that cannot be read is said now, not at each connection
        except OSError as error:
            raise ValueError(f"--redis-cafile {cafile}: cannot be loaded ({error.strerror or error})") from None
        return address

    def __str__(self) -> str:
        """Where Redis is, for the logs (never for an answer to a client): no password."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"

    def setup_commands(self) -> list[tuple]:
        """What a client says first on a new connection: AUTH and SELECT, when given."""
        commands = []
        if self.password is not None:
            commands.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands

    def tls_context(self) -> ssl.SSLContext | None:
        """For rediss://: the server's certificate and name verified (`cafile`, or the system's
        CAs), TLS 1.2 at least; no ALPN (Redis speaks RESP, not HTTP).  None for redis://."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def redact_redis_url(text: str) -> str:
    """`text` with the password of any URL in it replaced by `***`: what a refused --redis says."""
    return re.sub(r"(\w+://[^/?#@\s:]*:)\S*@", r"\1***@", text)  # (to the last @: a password may hold / or @)


class RESPConnection(asyncio.Protocol):
    """The bytes of one connection to Redis: commands out; replies in, through a RESPParser,
    each to the oldest command still waiting (Redis answers in order).  Once the connection
    fails, so does every command waiting on it, with the same RedisError."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = RESPParser()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.failure: RedisError | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def send(self, arguments: tuple) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(encode_command(*arguments))
        return future

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.parser.feed(data)
        except RedisError as error:
            self.fail(error)
            return
        for reply in replies:
            if not self.waiting:
                self.fail(RedisError("Redis sent a reply to no command"))
                return
            future = self.waiting.popleft()
            if not future.done():  # (a command whose task was cancelled still has its place)
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisError("Redis closed the connection" if exc is None else f"lost Redis: {exc}"))

    def fail(self, error: RedisError) -> None:
        if self.failure is None:
            self.failure = error
            self.transport.abort()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.failure)
                future.exception()  # retrieved here: nobody else may be waiting any more


class AsyncRedis:
    """Commands to Redis from coroutines, pipelined on one connection (RESPConnection):
    several coroutines may send at once; each gets the reply to its own command.

    Every command has a deadline (`timeout`); when a reply is late the connection is given up
    (it could no longer tell which reply is whose), failing the commands in flight, and the next
    command connects again, no sooner than `backoff` after a failed attempt: a Redis that comes
    back is used again without anyone restarting anything."""

    def __init__(self, address: RedisAddress, timeout: float = DEFAULT_REDIS_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._connection: RESPConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._retry_at = 0.0
        self.backoff = 0.1

    async def command(self, *arguments: bytes | str | int) -> Reply:
        """Send one command and wait for its reply; RedisReplyError for an error reply,
        RedisUnreachable if it could not be sent, another RedisError if no reply came in time."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        connection = await self._connected(deadline)
        reply = await self._reply(connection, arguments, deadline)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def _reply(self, connection: RESPConnection, arguments: tuple, deadline: float) -> Reply:
        loop = asyncio.get_running_loop()
        late = RedisError(f"Redis did not answer {arguments[0]} within {self.timeout:g} s")
        timer = loop.call_at(deadline, connection.fail, late)
        try:
            return await connection.send(arguments)
        finally:
            timer.cancel()

    async def _connected(self, deadline: float) -> RESPConnection:
        if self._connection is not None and self._connection.failure is None:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is not None and self._connection.failure is None:
                return self._connection
            loop = asyncio.get_running_loop()
            where = f"Redis at {self.address}"
            if loop.time() < self._retry_at:
                raise RedisUnreachable(f"{where} is unreachable (retrying)")
            try:
                tls = self.address.tls_context()
                _, connection = await asyncio.wait_for(
                    loop.create_connection(RESPConnection, self.address.host, self.address.port, ssl=tls,
                                           server_hostname=self.address.host if tls else None),
                    max(0.0, deadline - loop.time()))
            except (OSError, asyncio.TimeoutError) as error:  # (ssl.SSLError too: a certificate refused)
                self._retry_at = loop.time() + self.backoff
                self.backoff = min(self.backoff * 2, 2.0)
                raise RedisUnreachable(f"cannot reach {where}: {error or 'timed out'}") from None
            self.backoff = 0.1
            # AUTH and SELECT go first on the wire, before any command queued behind this lock.
            for setup in self.address.setup_commands():
                try:
                    reply = await self._reply(connection, setup, deadline)
                except RedisError as error:
                    reply = error
                if isinstance(reply, RedisError):
                    connection.fail(RedisError(f"Redis refused {setup[0]}"))
                    raise RedisUnreachable(f"{where} refused {setup[0]}: {reply}") from None
            self._connection = connection
            return connection

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.fail(RedisError("the Redis client is closed"))
            self._connection = None


def stream_entries(reply: Reply) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of an XRANGE or XREVRANGE reply, or of one stream in an XREAD reply:
    [(id, {field: value})].  RedisError if the reply is not of that shape."""
    if reply is None:
        return []
    entries = []
    try:
        for entry_id, fields in reply:
            entries.append((entry_id.decode("ascii"), dict(zip(fields[::2], fields[1::2]))))
    except (TypeError, ValueError, AttributeError, UnicodeDecodeError):
        raise RedisError("a stream reply of an unexpected shape") from None
    return entries


def read_entries(reply: Reply) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of an XREAD reply for one stream ([[key, entries]]), or [] for null."""
    if reply is None:
        return []
    if not isinstance(reply, list) or len(reply) != 1 or not isinstance(reply[0], list) or len(reply[0]) != 2:
        raise RedisError("an XREAD reply of an unexpected shape")
    return stream_entries(reply[0][1])


def stream_id(text: str) -> tuple[int, int] | None:
    """A stream entry id, "milliseconds-sequence", as numbers to compare; None if it is not one."""
    milliseconds, dash, sequence = text.partition("-")
    first, second = parse_decimal(milliseconds, 20), parse_decimal(sequence, 20)
    return None if not dash or first is None or second is None else (first, second)


#: Every --redis process's chat goes through this stream, trimmed to about this many entries.
CHAT_STREAM = "push:chat"
CHAT_STREAM_LENGTH = 1000


def chat_message(fields: dict[bytes, bytes], max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """The message a chat stream entry carries: `type` text or binary, `data` its bytes, at most
    `max_size` of them, and for text valid UTF-8 (§8.1: a browser fails the connection with
    1007 on text that is not).  ValueError, saying what is wrong, for anything else."""
    kind, data = fields.get(b"type"), fields.get(b"data")
    if kind not in (b"text", b"binary"):
        raise ValueError(f"type {kind[:20]!r} is neither text nor binary" if kind is not None else "no type")
    if not isinstance(data, bytes):
        raise ValueError("no data")
    if len(data) > max_size:
        raise ValueError(f"{len(data)} bytes of data, over --max-size ({max_size})")
    if kind == b"text":
        try:
            codecs.decode(data, "utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"text that is not UTF-8 (byte {error.start})") from None
    return Message(Opcode.TEXT if kind == b"text" else Opcode.BINARY, data)


class RedisChatBus:
    """The chat shared by every process with the same --redis (II.8's stream).

    A message from a local client is added to the stream (XADD); one reader per process reads
    the stream (XREAD BLOCK) and hands every entry to the local room, which broadcasts it.  So
    every client of every process sees every message in the stream's order, once: the sender's
    process does not broadcast it itself, it waits for it like everyone else.

    While Redis is unreachable nothing is broadcast: a message the stream did not take is
    refused to its sender (`publish` raises, and the server tells the sender it was not
    delivered), never delivered to some clients and not others.  The reader reconnects by
    itself, with backoff, and goes on from the last id it read: what was added while it was
    away is read then, nothing skipped, nothing twice.

    What the stream holds is input like any client's frames: anything with access to Redis can
    XADD to it, and an older or newer version of this server may write other fields.  Each
    entry is checked (`chat_message`) before it reaches the room: a bad one is skipped and
    logged, and the reader goes on."""

    def __init__(self, address: RedisAddress, deliver: Callable[[Message], None], *,
                 timeout: float = DEFAULT_REDIS_TIMEOUT, stream: str = CHAT_STREAM,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.address, self.deliver, self.timeout, self.stream = address, deliver, timeout, stream
        self.max_size = max_size  # --max-size: what a local client could not send, Redis cannot either
        self.commands = AsyncRedis(address, timeout)
        self._reader_task: asyncio.Task | None = None
        self.last_id: str | None = None  # of the last entry read; None before the first read

    async def start(self) -> None:
        """Find where the stream ends now, then read from there in a task of its own.  If Redis
        cannot be reached yet, the reader keeps trying; the server starts anyway."""
        reader = AsyncRedis(self.address, self.timeout + 5)  # its own connection: XREAD blocks it
        try:
            await self._find_the_end(reader)
        except RedisError as error:
            log.warning("the chat's Redis is unreachable: %s (retrying)", error)
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _find_the_end(self, reader: AsyncRedis) -> None:
        newest = stream_entries(await reader.command("XREVRANGE", self.stream, "+", "-", "COUNT", 1))
        self.last_id = newest[0][0] if newest else "0-0"

    async def publish(self, message: Message) -> str:
        """Add a local client's message to the stream; its id.  RedisUnreachable if it was
        certainly not added (also while this process is not reading the stream yet: it would
        not know where its own message is), another RedisError if Redis did not confirm it."""
        if self.last_id is None:
            raise RedisUnreachable("this process has not reached the chat's Redis yet")
        kind = b"text" if message.opcode == Opcode.TEXT else b"binary"
        return (await self.commands.command("XADD", self.stream, "MAXLEN", "~", CHAT_STREAM_LENGTH, "*",
                                            "type", kind, "data", bytes(message.payload))).decode("ascii")

    async def publish_from(self, connection: Connection, message: Message) -> None:
        """A local client's message goes to the shared stream, and reaches every room (this
        one too) from there.  If the stream did not take it, its sender is told, and nobody
        got it."""
        try:
            await self.publish(message)
        except RedisError as error:
            unsent = isinstance(error, RedisUnreachable)
            log.warning("%s: a message was %s: %s", connection.name, "not delivered" if unsent else "not confirmed", error)
            if connection.state == State.OPEN:
                connection.send_nowait(NOT_DELIVERED if unsent else NOT_CONFIRMED)

    async def _read(self, reader: AsyncRedis) -> None:
        backoff = 0.1
        unreachable = self.last_id is None
        while True:
            try:
                if self.last_id is None:  # start after what is already there
                    await self._find_the_end(reader)
                reply = await reader.command("XREAD", "COUNT", 1000, "BLOCK", 5000, "STREAMS", self.stream, self.last_id)
                if unreachable:
                    log.info("Redis is back: the chat goes on from %s", self.last_id)
                    unreachable, backoff = False, 0.1
                for entry_id, fields in read_entries(reply):
                    self.last_id = entry_id
                    try:
                        message = chat_message(fields, self.max_size)
                    except ValueError as error:  # skipped, said once, and the chat goes on
                        log.warning("skipped the entry %s of %s: %s", escape_controls(entry_id), self.stream, error)
                        continue
                    try:
                        self.deliver(message)
                    except Exception:  # a bug: said, and the reader lives on
                        log.exception("delivering the entry %s failed", escape_controls(entry_id))
            except asyncio.CancelledError:
                await reader.close()
                raise
            except RedisError as error:
                if not unreachable:
                    log.warning("the chat's Redis is unreachable: %s (reconnecting)", error)
                    unreachable = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        await self.commands.close()


# ---------------------------------------------------------------------------------------------
# II.9 Who may connect: hosts, origins and credentials (both servers)
# ---------------------------------------------------------------------------------------------
#
# A server on the visitor's own machine is still reachable from every page the visitor opens.
# Three defences, each against one attack:
#
# - The Host header, against DNS rebinding: a page at http://evil.example:8080 has its name
#   re-resolved to 127.0.0.1, and its requests then reach this server, with `Host:
#   evil.example:8080` and an `Origin` of the same.  A server on loopback answers only the Hosts
#   that name loopback (`localhost`, 127.0.0.1, [::1], on any port) or that `--allowed-host`
#   names; anything else is 421, Misdirected Request (RFC 9110 §15.5.20).
# - The Origin header, against cross-site requests: a page elsewhere may make the visitor's
#   browser open the chat (a WebSocket is not bound by the same-origin policy: cross-site
#   WebSocket hijacking, RFC 6455 §10.2) or POST a "simple" request with no preflight (Fetch,
#   "CORS protocol": CORS hides the answer, it does not stop the request).  So a request that
#   carries an Origin must come from this server's own pages (scheme and a Host that passed the
#   check above) or from an origin that `--allow-origin` names: 403 otherwise.  A request with
#   no Origin is not a browser page's (curl, a script), and nothing is forged there.
# - A credential, against everyone else: a browser cannot put a header on a WebSocket or an
#   EventSource, but it sends cookies, so the access token travels in a cookie (HttpOnly, so no
#   script reads it; SameSite=Strict, so no other site's page sends it), set by opening a link
#   that carries it once (`?access=TOKEN`); programs may send `Authorization: Bearer TOKEN`.
#   Tokens are compared in constant time (hmac.compare_digest) and never logged.

#: The cookie that carries the access token (--access-token).
ACCESS_COOKIE = "access"

#: The query parameter of the link that sets that cookie.
ACCESS_PARAMETER = "access"


def host_name_and_port(host: str) -> tuple[str, int | None]:
    """A Host value (valid: `is_valid_authority`) as its name, lower-cased, IPv6 brackets off,
    and its port, if any."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
    return name.lower(), int(port) if port else None


def is_loopback_name(name: str) -> bool:
    """`localhost` and the names under it (RFC 6761 §6.3), and loopback addresses (127.0.0.0/8,
    ::1)."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def listens_on_loopback(address: str) -> bool:
    """Does a server bound to `address` (--host) answer only this machine?"""
    return is_loopback_name(address.strip("[]").lower())


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer TOKEN` (RFC 6750 §2.1), if any."""
    scheme, _, token = (request.header("authorization") or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def cookie_value(request: Request, name: str) -> str | None:
    """The value of the cookie `name` (RFC 6265 §5.4: `Cookie: a=1; b=2`), read by hand: a
    malformed Cookie header must not raise."""
    for field in request.headers.get("cookie", []):
        for pair in field.split(";"):
            key, equals, value = pair.strip().partition("=")
            if equals and key == name:
                return value.strip().strip('"')
    return None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison: how long it takes says nothing about how much of a guess was
    right."""
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


@dataclasses.dataclass(frozen=True)
class AccessRules:
    """Who may reach one server: its Host names, the origins of the pages allowed to use it,
    and the access token, if any.  Each check raises the HTTPError that answers it."""

    loopback: bool  # bound to loopback only (listens_on_loopback)
    port: int  # the port the server listens on, once bound
    allowed_hosts: tuple[str, ...] = ()  # --allowed-host: NAME or NAME:PORT
    allowed_origins: tuple[str, ...] = ()  # --allow-origin
    access_token: str | None = None  # --access-token, or ACCESS_TOKEN in the environment

    def check_host(self, request: Request) -> None:
        """421 unless the Host is one this server answers for (DNS rebinding)."""
        host = request.header("host")
        if host is None:  # HTTP/1.0 without Host: only reachable by address, not by a name
            return
        name, port = host_name_and_port(host)
        for allowed in self.allowed_hosts:
            allowed_name, allowed_port = host_name_and_port(allowed.lower())
            if name == allowed_name and (allowed_port is None or allowed_port == port):
                return
        # A loopback name on any port: a rebound name is never one, and a proxy on this machine
        # (another port) passes on the Host the browser sent, port included (`$http_host`).
        if (self.loopback or self.allowed_hosts) and not is_loopback_name(name):
            raise HTTPError(421, f"this server does not answer for the host {escape_controls(host[:100])!r}")

    def is_own_origin(self, origin: str, request: Request) -> bool:
        """Is `origin` one of this server's own pages: its scheme, and the Host it was asked by
        (which `check_host` has checked, so a rebound name never gets here)?"""
        host = (request.header("host") or "").lower()
        return bool(host) and origin.lower() in (f"http://{host}", f"https://{host}")

    def check_origin(self, request: Request) -> None:
        """403 for a browser page of another origin than this server's own or those allowed."""
        origin = request.header("origin")
        if origin is None or "*" in self.allowed_origins:
            return
        if origin.lower() in {allowed.lower() for allowed in self.allowed_origins}:
            return
        if not self.is_own_origin(origin, request):
            raise HTTPError(403, f"origin {escape_controls(origin[:100])!r} is not allowed")

    def check_access(self, request: Request) -> None:
        """401 unless the request carries the access token, in its cookie or as a Bearer token
        (when there is one to carry)."""
        if self.access_token is None:
            return
        given = cookie_value(request, ACCESS_COOKIE) or bearer_token(request)
        if not token_matches(given, self.access_token):
            raise HTTPError(401, "an access token is required: open the link that carries it",
                            [("WWW-Authenticate", 'Bearer realm="access"')])

    def access_link_answer(self, request: Request, secure: bool) -> bytes | None:
        """For a GET whose query carries `access=TOKEN`: 303 to the same path without it, with
        the cookie set when the token is right (401 when it is wrong); None for any other request."""
        if self.access_token is None or request.method != "GET":
            return None
        given = urllib.parse.parse_qs(request.query).get(ACCESS_PARAMETER)
        if not given:
            return None
        if not token_matches(given[-1], self.access_token):
            raise HTTPError(401, "wrong access token", [("WWW-Authenticate", 'Bearer realm="access"')])
        cookie = f"{ACCESS_COOKIE}={self.access_token}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
        return build_response(303, [("Location", request.path), ("Set-Cookie", cookie), ("Content-Length", "0"),
                                    ("Cache-Control", "no-store"), ("Connection", "close")])


def token_from(flag_value: str | None, variable: str) -> str | None:
    """A token from its flag, else from the environment variable `variable` (which, unlike a
    command line, `ps` does not show); None when neither is set, or when empty."""
    return flag_value or os.environ.get(variable) or None


# ---------------------------------------------------------------------------------------------
# II.10 The wire, shown to the page that asks: the chat page's "On the wire" panel
# ---------------------------------------------------------------------------------------------
#
# A browser's developer tools show a page its messages, never its frames: not the header's
# bits, not the masking key, not what compression made of a message.  The server reads and
# writes every one of those bytes, so it can show them to the page, and only to it:
#
#   1. The page opens a second WebSocket asking for the subprotocol `wire` (§1.9: what the
#      messages of a connection mean is a subprotocol's business).  The server answers it with
#      one message, a ticket: a random string nobody else has.
#   2. The page opens its chat connection as `...?wire=TICKET`.  The server ties that connection
#      to the `wire` connection holding the ticket (from the same client address), and reports
#      there, as JSON text messages, the chat connection's opening handshake, each frame it
#      received (as it arrived: masked, perhaps compressed) and each frame it sent.
#
# So a client that does not ask sees exactly the chat: nothing on its connection changes.  The
# holder of a ticket sees the frames of the connection that presented it, nobody else's.  The
# reports travel on a connection nobody watches, so no report is ever itself reported.  A
# connection nobody watches pays one test of `Connection.wire` per read and per write.  And the
# reports are bounded: each shows at most WIRE_SHOWN bytes of a payload; at most --wire-rate
# frames a second are reported for a connection (a burst of one second's worth), and none while
# the page has more than WIRE_BACKLOG bytes of reports still to read; the frames left out are
# counted, and the next report says how many.

#: The subprotocol of the page's second connection, which carries the reports (§1.9, §4.2.2).
WIRE_SUBPROTOCOL = "wire"

#: The query parameter with which the page's chat connection presents its ticket.
WIRE_QUERY = "wire"

DEFAULT_WIRE_RATE = 50.0  # --wire-rate: frames reported per second per watched connection; 0: off
WIRE_SHOWN = 64  # bytes of a payload shown in a report (hex), and 4 x that of its text; the rest is cut
WIRE_BACKLOG = 64 * 1024  # bytes of reports waiting for the page (at most half of --max-buffer)

#: What the server says, closing a page's `wire` connection at once, when it shows no wire.
WIRE_OFF = "this server shows no wire (--wire-rate 0)"

#: §7.4.1 / §11.7: the name of each close code a report may name.
_CLOSE_NAMES = {code.value: code.name.replace("_", " ").lower() for code in CloseCode}


@dataclasses.dataclass(slots=True)
class ArrivingFrame:
    """An incoming frame as the tap keeps it: its header, the header's bytes as they came
    (masking key included), and the start of its payload, still masked."""

    header: FrameHeader
    header_bytes: bytes
    shown: bytes = b""


class WireTap:
    """One chat connection's frames, as reports for the page that asked: sans I/O.

    Bytes go in as the server read them (`bytes_in`), then the same frames as its `Receiver`
    decoded them (`frame_decoded`, its `on_frame`), and the frames it writes (`frames_out`).
    Reports come out through `send`, one JSON text each; the clock and "is the page behind?"
    (`busy`) are given, so the walkthrough drives it with literal bytes.

    Incoming, the bytes are split into frames by the one header decoder (I.2), keeping of each
    its header and its first WIRE_SHOWN payload bytes, masked, as they came; the decoder then
    hands over the same frames, in the same order, unmasked and, if compressed, inflated: the
    two views are paired by counting.  A frame the decoder never hands over (one after it failed
    the connection, or after a Close) is never reported."""

    def __init__(self, send: Callable[[str], None], rate: float, clock: Callable[[], float],
                 busy: Callable[[], bool] = lambda: False, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.send: Callable[[str], None] | None = send  # None once the tap stopped
        self.rate, self.clock, self.busy, self.max_size = rate, clock, busy, max_size
        self.on_stop: list[Callable[[], None]] = []  # called once it stops (the page left, or the connection ended)
        self.burst = max(rate, 1.0)  # one second's worth of reports at once, and at least one
        self._tokens, self._refilled = self.burst, clock()
        self.skipped = 0  # frames left out since the last report
        self._buffer = b""  # an incoming header, not whole yet
        self._frame: ArrivingFrame | None = None  # the incoming frame being read
        self._left = 0  # what is still to come of its payload
        self._arrived = 0  # incoming frames read whole so far
        self._decoded = 0  # incoming frames the decoder has handed over so far
        self._waiting: dict[int, tuple[ArrivingFrame, int]] = {}  # frame number -> (frame, left out before it)
        self._lost = False  # a header the decoder refuses: after it the bytes are no longer frames

    @property
    def watching(self) -> bool:
        return self.send is not None

    def stop(self) -> None:
        """Report nothing more, and hold nothing: neither the page's connection nor frames."""
        if self.send is not None:
            self.send = self.busy = None
            self._waiting, self._frame, self._buffer = {}, None, b""
            for callback in self.on_stop:
                callback()

    def _admit(self) -> bool:
        """--wire-rate, as a token bucket, and the page's backlog: may one more report go?
        If not, it is counted as left out."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1 or self.busy():
            self.skipped += 1
            return False
        self._tokens -= 1
        return True

    def _take_skipped(self) -> int:
        """How many were left out since the last report admitted; the next one says so."""
        skipped, self.skipped = self.skipped, 0
        return skipped

    def _report(self, report: dict, skipped: int) -> None:
        report["skipped"] = skipped
        try:
            self.send(json.dumps(report, separators=(",", ":")))
        except ConnectionClosed:  # the page's `wire` connection is closing: it sees nothing more
            self.stop()

    # -- the opening handshake -------------------------------------------------------------------

    def handshake(self, head: bytes, request: Request, handshake: Handshake) -> None:
        """§4.2.2: the request as the server read it, and the accept key worked out step by step."""
        if self.send is None or not self._admit():
            return
        key = request.header("sec-websocket-key") or ""
        response = build_switching_protocols(handshake).decode("latin-1")  # what the server wrote
        self._report({"type": "handshake", "request": "\n".join(head_lines(head.decode("latin-1"))),
                      "key": key, "guid": GUID, "sha1": hashlib.sha1((key + GUID).encode("ascii")).hexdigest(),
                      "accept": handshake.accept, "offered": request.header("sec-websocket-extensions") or "",
                      "extensions": handshake.deflate.header() if handshake.deflate else "",
                      "response": "\n".join(head_lines(response))}, self._take_skipped())

    # -- frames in ---------------------------------------------------------------------------------

    def bytes_in(self, data: bytes) -> None:
        """Bytes as read from the client, before the decoder sees them: split into frames."""
        if self.send is None or self._lost:
            return
        buffer = self._buffer + data if self._buffer else data
        position, end = 0, len(buffer)
        while position < end:
            if self._frame is None:
                try:
                    parsed = parse_frame_header(buffer, position)
                except ProtocolError:  # the decoder fails the connection on it: nothing more to show
                    self._lost, self._buffer = True, b""
                    return
                if parsed is None:
                    break
                header, payload_start = parsed
                self._frame = ArrivingFrame(header, bytes(buffer[position:payload_start]))
                self._left, position = header.length, payload_start
            frame = self._frame
            take = min(self._left, end - position)
            if len(frame.shown) < WIRE_SHOWN:
                frame.shown += buffer[position:position + min(take, WIRE_SHOWN - len(frame.shown))]
            position, self._left = position + take, self._left - take
            if self._left == 0:  # read whole: reported once the decoder has it too
                self._arrived += 1
                if self._admit():
                    self._waiting[self._arrived] = (frame, self._take_skipped())
                self._frame = None
        self._buffer = buffer[position:] if position < end else b""

    def frame_decoded(self, header: FrameHeader, payload: bytes, inflated: bool) -> None:
        """The decoder's view of the next incoming frame: its payload unmasked (and inflated)."""
        self._decoded += 1
        waiting = self._waiting.pop(self._decoded, None)
        if waiting is None or self.send is None:
            return
        frame, skipped = waiting
        unmasked = bytes(apply_mask(frame.shown, header.masking_key)) if header.masking_key else frame.shown
        self._report(frame_report("client", header, frame.header_bytes, frame.shown, unmasked, payload, inflated),
                     skipped)

    # -- frames out --------------------------------------------------------------------------------

    def frames_out(self, frames: Iterable[Frame]) -> None:
        """Frames as the server writes them to the client (unmasked, §5.1)."""
        for frame in frames:
            if self.send is None or not self._admit():
                continue
            header_bytes = frame[0] if type(frame) is tuple else frame
            header, payload_start = parse_frame_header(header_bytes)
            payload = frame[1] if type(frame) is tuple else frame[payload_start:]
            decoded = inflate_alone(payload, self.max_size) if header.rsv1 else payload
            shown = bytes(payload[:WIRE_SHOWN])
            self._report(frame_report("server", header, header_bytes[:payload_start], shown, shown, decoded,
                                      header.rsv1), self._take_skipped())

    def ended(self, code: int | None, reason: str) -> None:
        """The TCP connection is gone: how the WebSocket connection ended (§7.1.5, §7.1.6)."""
        if self.send is not None and self._admit():
            self._report({"type": "end", "code": code, "reason": reason}, self._take_skipped())
        self.stop()


def inflate_alone(payload: bytes | bytearray, max_size: int) -> bytes:
    """A compressed message that stands alone (II.4: this server takes no context over), as it
    inflates, at most `max_size` bytes of it: for --trace and the wire panel."""
    return zlib.decompressobj(-15).decompress(bytes(payload) + DEFLATE_TAIL, max_size)


def frame_report(sender: str, header: FrameHeader, header_bytes: bytes, shown: bytes, unmasked: bytes,
                 payload: bytes, inflated: bool) -> dict:
    """One frame, field by field as the diagram has them (I.2), for the page.

    `shown` is the start of the payload as it was on the wire, `unmasked` the same bytes after
    unmasking, `payload` the whole payload as the decoder made it (inflated if `inflated`)."""
    report = {"type": "frame", "from": sender, "header": header_bytes.hex(), "fin": header.fin,
              "rsv1": header.rsv1, "rsv2": header.rsv2, "rsv3": header.rsv3, "opcode": header.opcode,
              "name": OPCODE_NAMES.get(header.opcode, "RESERVED"), "mask": header.masked, "length": header.length,
              "maskingKey": header.masking_key.hex() if header.masking_key else None, "payload": shown.hex(),
              "unmasked": unmasked.hex() if header.masked else None, "inflated": len(payload) if inflated else None}
    if header.opcode == Opcode.CLOSE:
        try:
            close = parse_close_payload(payload)
            report["close"] = {"code": close.code, "name": _CLOSE_NAMES.get(close.code, ""), "reason": close.reason}
        except ProtocolError as error:
            report["close"] = {"code": None, "name": "", "reason": f"(invalid close payload: {error.reason})"}
    elif header.opcode == Opcode.TEXT:  # (its start: a cut never splits a character)
        report["text"] = codecs.getincrementaldecoder("utf-8")("replace").decode(payload[:WIRE_SHOWN * 4])
    return report


def wire_ticket(query: str) -> str | None:
    """The ticket in a chat request's query (`?wire=TICKET`), if there is one."""
    for field in query.split("&"):
        name, _, value = field.partition("=")
        if name == WIRE_QUERY:
            return urllib.parse.unquote(value)
    return None


class WirePanel:
    """The server's side of the panel: which `wire` connection holds which ticket, and taps.

    Each `wire` connection is counted like a chat connection (--max-clients and per address),
    and watches at most one chat connection at a time: its page's latest."""

    def __init__(self, config: ServerConfig, admission: Admission) -> None:
        self.rate, self.max_size, self.admission = config.wire_rate, config.limits.max_size, admission
        self.backlog = min(WIRE_BACKLOG, config.limits.max_buffer // 2)  # never dropped for its reports
        self.subprotocols = (WIRE_SUBPROTOCOL, *config.subprotocols)
        self._watchers: dict[str, Connection] = {}  # ticket -> the `wire` connection that holds it
        self._taps: dict[str, WireTap] = {}  # ticket -> the tap on its latest chat connection
        self._closing: tuple[int, str] | None = None  # (code, reason) once the server shuts down

    def tap(self, head: bytes, request: Request, handshake: Handshake, address: str) -> WireTap | None:
        """A tap for a chat connection whose request presents a ticket held from its address."""
        ticket = wire_ticket(request.query) if self.rate > 0 and handshake.subprotocol != WIRE_SUBPROTOCOL else None
        watcher = self._watchers.get(ticket) if ticket else None  # (a `wire` connection is never watched)
        if watcher is None or watcher.address != address or watcher.state != State.OPEN:
            return None
        previous = self._taps.pop(ticket, None)
        if previous is not None:  # the page reconnected: watch the new connection instead
            previous.stop()
        tap = WireTap(watcher.send_nowait, self.rate, asyncio.get_running_loop().time,
                      lambda: watcher.buffered_bytes > self.backlog, self.max_size)
        tap.on_stop.append(lambda: self._tap_stopped(ticket))
        self._taps[ticket] = tap
        tap.handshake(head, request, handshake)
        return tap

    def _tap_stopped(self, ticket: str) -> None:
        """At shutdown, a page's `wire` connection closes once what it shows has ended."""
        watcher = self._watchers.get(ticket)
        if self._closing is not None and watcher is not None and watcher.state == State.OPEN:
            watcher.start_close(*self._closing)

    def close_all(self, code: int, reason: str) -> None:
        """Shutdown: close every page's `wire` connection, each after the chat connection it
        shows has ended (so that its page sees that closing handshake to the end)."""
        self._closing = (code, reason)
        for ticket, watcher in tuple(self._watchers.items()):
            tap = self._taps.get(ticket)
            if (tap is None or not tap.watching) and watcher.state == State.OPEN:
                watcher.start_close(code, reason)

    async def serve(self, connection: Connection) -> None:
        """A page's `wire` connection: its ticket, then reports until it closes.  The page sends
        nothing on it; whatever it sends is read and ignored (so that its close is read).  With
        the panel off (--wire-rate 0) it is closed at once, saying why (WIRE_OFF): a browser
        fails a connection whose answer names no subprotocol when it asked for one (§4.1)."""
        if self.rate <= 0:
            await connection.close(CloseCode.NORMAL_CLOSURE, WIRE_OFF)
            return
        ticket = secrets.token_urlsafe(16)
        self._watchers[ticket] = connection
        self.admission.enter(connection.address)
        log.info("%s is watching the wire", connection.name)
        try:
            connection.send_nowait(json.dumps({"type": "ticket", "ticket": ticket}))
            if self._closing is not None:  # (it opened while the server was shutting down)
                connection.start_close(*self._closing)
            while True:
                await connection.recv_message()
        except ConnectionClosed:
            pass
        finally:
            del self._watchers[ticket]
            tap = self._taps.pop(ticket, None)
            if tap is not None:
                tap.stop()
            self.admission.leave(connection.address)
            if connection.state != State.CLOSED:
                connection.abort()
            log.info("%s stopped watching the wire", connection.name)


# ---------------------------------------------------------------------------------------------
# II.11 The server's configuration and the command line
# ---------------------------------------------------------------------------------------------


#: --max-clients: open chat connections in one process.  What an idle connection costs (a few
#: KiB of RSS, one file descriptor) is not what this guards: it is there so that a flood of
#: connections is refused with a clean 503 before the process runs out of file descriptors or
#: memory (at --max-buffer each, a full chat of busy clients is the budget to size it by).
#: High enough for the benchmark's 10,000 idle connections.
DEFAULT_MAX_CLIENTS = 20_000

#: --max-clients-per-address: open chat connections from one client address, so that one host
#: cannot take the whole --max-clients.  A browser opens one per tab; an office or a carrier
#: NAT puts many people behind one address, hence a few hundred.  Loopback addresses are never
#: capped: on this machine they are the user's own programs and tests, or a proxy in front,
#: whose clients all come from 127.0.0.1 (with --trusted-proxy, X-Forwarded-For's address is
#: capped instead: `client_address`).  So the benchmark's 1,000 clients from 127.0.0.1 pass.
DEFAULT_MAX_CLIENTS_PER_ADDRESS = 256

#: Retry-After (RFC 9110 §10.2.3) of a 503 for a full chat: seconds.
FULL_RETRY_AFTER = 5


class Admission:
    """--max-clients and --max-clients-per-address: the open chat connections, counted in all
    and by client address; a handshake over either cap is refused with 503 and Retry-After
    (RFC 9110 §15.6.4), which the chat page answers by retrying later (it backs off)."""

    __slots__ = ("by_address", "max_clients", "open", "per_address")

    def __init__(self, max_clients: int, per_address: int) -> None:
        self.max_clients, self.per_address = max_clients, per_address
        self.open = 0
        self.by_address: dict[str, int] = {}

    def check(self, address: str) -> None:
        retry = [("Retry-After", str(FULL_RETRY_AFTER))]
        if self.max_clients and self.open >= self.max_clients:
            raise HTTPError(503, f"the chat is full ({self.max_clients} connections); try again later", retry)
        if self.per_address and self.by_address.get(address, 0) >= self.per_address and not is_loopback_name(address):
            raise HTTPError(503, f"too many connections from one address ({self.per_address}); try again later", retry)

    def enter(self, address: str) -> None:
        self.open += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1

    def leave(self, address: str) -> None:
        self.open -= 1
        left = self.by_address.pop(address, 1) - 1
        if left:
            self.by_address[address] = left


#: The query of the request with which the chat page asks whether it holds the access cookie
#: (`chat_page_response`): a browser shows script no status of a refused WebSocket handshake.
ACCESS_CHECK = "access-check"


def access_rules(config: ServerConfig, port: int) -> AccessRules:
    """The chat server's `AccessRules` (II.9), from its configuration and the port it got."""
    return AccessRules(loopback=listens_on_loopback(config.host), port=port,
                       allowed_hosts=tuple(config.allowed_hosts),
                       allowed_origins=tuple(config.allowed_origins or ()), access_token=config.access_token)


def chat_page_response(config: ServerConfig, access: AccessRules, request: Request) -> bytes:
    """A plain HTTP request on the chat's port.  The pages hold no secret, so they are served
    without the access token; `?access=TOKEN` sets its cookie (303); and `?access-check` is the
    page asking whether its cookie is good (204, else 401) after its socket closed before it
    opened, so that it can say "access token required" rather than retry in silence."""
    link = access.access_link_answer(request, secure=config.tls is not None)
    if link is not None:
        return link
    if request.query == ACCESS_CHECK and request.method == "GET":
        access.check_access(request)
        return build_response(204, [("Cache-Control", "no-store"), ("Connection", "close")])
    return static_response(config.static_dir, request, config.index)


#: Header fields that carry a credential: never written to a log (--trace).
_SECRET_FIELDS = re.compile(r"(?im)^((?:cookie|authorization|proxy-authorization)[ \t]*:).*$")
_SECRET_QUERY = re.compile(r"(?i)([?&]access=)[^&\s]*")


def head_lines(text: str) -> list[str]:
    """The lines of a request or response head as they may be shown: control characters
    escaped (a peer's header cannot forge a log line) and credentials left out."""
    text = _SECRET_QUERY.sub(r"\1[not shown]", _SECRET_FIELDS.sub(r"\1 [not shown]", text))
    return [escape_controls(line) for line in text.replace("\r\n", "\n").split("\n") if line]


def trace_head(text: str) -> str:
    """A request or response head for --trace, one indented line per header line."""
    return "".join(f"\n    {line}" for line in head_lines(text))


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
    compression: bool = True  # --compression deflate (the default) or off
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    compression_threshold: int = DEFAULT_COMPRESSION_THRESHOLD
    tls: ssl.SSLContext | None = None  # --certfile/--keyfile: https:// and wss://
    certfile: str | None = None  # where `tls` was loaded from: SIGHUP loads them again
    keyfile: str | None = None
    max_tls_handshakes: int = DEFAULT_MAX_TLS_HANDSHAKES  # --max-tls-handshakes
    max_tls_handshakes_per_address: int = DEFAULT_MAX_TLS_HANDSHAKES_PER_ADDRESS
    trusted_proxies: list[str] = dataclasses.field(default_factory=list)  # --trusted-proxy
    redis: RedisAddress | None = None  # --redis: the chat shared by several processes
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
    reuse_port: bool = False  # --reuse-port: several processes listen on one port (SO_REUSEPORT)
    allowed_hosts: list[str] = dataclasses.field(default_factory=list)  # --allowed-host (II.9)
    access_token: str | None = None  # --access-token or ACCESS_TOKEN (II.9)
    max_clients: int = DEFAULT_MAX_CLIENTS  # --max-clients: open chat connections, 0 for no cap
    max_clients_per_address: int = DEFAULT_MAX_CLIENTS_PER_ADDRESS  # --max-clients-per-address
    pace_bytes: int | None = None  # --pace-bytes (Pace, II.5): None for a quarter of --max-buffer
    pace_timeout: float = DEFAULT_PACE_TIMEOUT  # --pace-timeout
    wire_rate: float = DEFAULT_WIRE_RATE  # --wire-rate (II.10): 0 turns the page's wire panel off

    def __post_init__(self) -> None:
        if self.pace_bytes is None:
            self.pace_bytes = self.limits.max_buffer // 4


#: What the sender of a message that could not be shared (--redis) receives instead: either
#: it certainly reached nobody, or Redis took it but did not say so in time (it may be shown to
#: everyone a moment later, or to nobody; never to some and not others).
NOT_DELIVERED = "[not delivered] (the chat's Redis is unreachable; try again)"
NOT_CONFIRMED = "[not confirmed] (the chat's Redis did not answer in time: your message may still reach everyone, or no one)"


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    """Make Ctrl-C (SIGINT), SIGTERM and, on Windows, Ctrl-Break set `stop`; return a function
    that puts the previous handlers back.

    `loop.add_signal_handler` would be the asyncio way, but Windows has none (it raises
    NotImplementedError).  A plain `signal.signal` handler works on every platform: Python
    runs it in the main thread, and `call_soon_threadsafe` both hands the news to the loop and
    wakes the loop if it is asleep in select()."""
    def handler(signum, frame) -> None:
        loop.call_soon_threadsafe(stop.set)

    previous = {}
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, handler)
    return lambda: [signal.signal(signum, old) for signum, old in previous.items()]


def exposure_warning(config: ServerConfig) -> str | None:
    """The line a server open to the network without an access token logs at start, or None."""
    if listens_on_loopback(config.host) or config.access_token is not None:
        return None
    others = ", ".join(config.allowed_origins or ()) or "no other"
    return (f"Listening on {config.host} without --access-token: anyone who can reach this address may chat "
            f"(browser pages: this server's own, and {others})")


async def run_server(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then close every client with 1001 (going away)."""
    server = WebSocketServer(config)
    try:
        await server.start()
    except OSError as error:  # the address: in use, not ours, or not an address of this machine
        raise StartupFailed(f"cannot listen on {config.host} port {config.port}: "
                            f"{os.strerror(error.errno) if error.errno else error}") from None
    host = f"[{config.host}]" if ":" in config.host else config.host
    log.info("Serving the chat on %s://%s:%d/ (WebSocket on %s://%s:%d/) ...", server.scheme,
             host, server.port, "wss" if config.tls else "ws", host, server.port)
    if config.redis is not None:
        log.info("The chat is shared through Redis at %s (stream %s)", config.redis, CHAT_STREAM)
    warning = exposure_warning(config)
    if warning:
        log.warning("%s", warning)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    restore = stop_on_signals(loop, stop)
    restore_sighup = reload_on_sighup(lambda: loop.call_soon_threadsafe(reload_certificate, config, log))
    try:
        await stop.wait()
    finally:
        restore()  # a second Ctrl-C during the shutdown below interrupts it
        restore_sighup()
    log.info("Shutting down: closing %d client(s) with 1001", len(server.room.clients))
    await server.shutdown()


def describe_message(message: str | bytes) -> str:
    """A message for a terminal: text as it is, binary as its size and first bytes in hex."""
    if isinstance(message, str):
        return message
    more = " …" if len(message) > 16 else ""
    return f"[binary, {len(message)} bytes: {message[:16].hex(' ')}{more}]"


async def run_client(url: str, trace: bool, cafile: str | None = None, access_token: str | None = None) -> None:
    """`--connect`: typed lines are sent as text; received messages are printed, their control
    characters escaped (a peer's ESC sequence would command the terminal: colours, the title,
    OSC 52 the clipboard).  The client ends when stdin ends (Ctrl-D) or when the server closes
    the connection."""
    connection = await connect(url, trace=trace, cafile=cafile, access_token=access_token)
    sys.stdout.write(f"connected to {url}; type a line to send it, Ctrl-D to quit\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        # A daemon thread: a blocking readline() cannot be cancelled, and it must not keep the
        # process alive once the server has closed the connection.
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:  # the loop is closed: the client has ended
            pass

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()

    async def printer() -> None:
        async for message in connection:
            sys.stdout.write(f"< {escape_controls(describe_message(message))}\n")
            sys.stdout.flush()
        sys.stdout.write(f"connection closed: {connection.close_code} {escape_controls(connection.close_reason)}\n")
        sys.stdout.flush()

    printing = loop.create_task(printer())
    try:
        while not printing.done():
            getting = loop.create_task(lines.get())
            await asyncio.wait({getting, printing}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break
            line = getting.result()
            if line is None:
                break
            await connection.send(line.rstrip("\r\n"))
    finally:
        if connection.state == State.OPEN:
            await connection.close()
        printing.cancel()
        await asyncio.gather(printing, return_exceptions=True)


#: C0 and C1 control characters, DEL included: what a terminal may take for a command.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x1b`): what a peer sent
    (a close reason, a header, a message) cannot forge a log line or command a terminal."""
    return _CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], text)


def describe_close(code: int | None, reason: str) -> str:
    """A close code and its reason for a log line: `1001 (going away)`, or `1006` alone."""
    return f"{code} ({escape_controls(reason)})" if reason else str(code)


def port_number(text: str) -> int:
    """--port, for argparse: 0 (any free port) to 65535; anything else is one line and exit 2."""
    port = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def existing_folder(text: str) -> str:
    """--static, for argparse: a folder that exists, or one line and exit 2 (rather than a
    server that answers every page with 404)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return text


#: What an access token may hold: RFC 6750's b64token, which also fits a cookie value unquoted.
_ACCESS_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


class StartupFailed(WebSocketError):
    """The server cannot start: one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="WebSocket chat server (RFC 6455 by hand), or a terminal client with --connect.")
    parser.add_argument("--host", "--bind", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8080, help="port to listen on, 0 for any free one (default: 8080)")
    parser.add_argument("--static", type=existing_folder, default=str(STATIC_DIR), metavar="DIR",
                        help="folder of the pages served over plain HTTP (default: static/)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, metavar="N",
                        help=f"largest message in bytes; larger ones close with 1009 (default: {DEFAULT_MAX_SIZE})")
    parser.add_argument("--max-buffer", type=int, default=DEFAULT_MAX_BUFFER, metavar="N",
                        help="bytes waiting to be sent to one client (queued frames and socket buffer) "
                             f"before it is dropped with 1008 (default: {DEFAULT_MAX_BUFFER})")
    parser.add_argument("--ping-interval", type=float, default=DEFAULT_PING_INTERVAL, metavar="S",
                        help=f"seconds between keepalive pings, 0 to disable (default: {DEFAULT_PING_INTERVAL:g})")
    parser.add_argument("--ping-timeout", type=float, default=DEFAULT_PING_TIMEOUT, metavar="S",
                        help=f"seconds to wait for a pong (default: {DEFAULT_PING_TIMEOUT:g})")
    parser.add_argument("--close-timeout", type=float, default=DEFAULT_CLOSE_TIMEOUT, metavar="S",
                        help=f"seconds to wait for the peer's close frame (default: {DEFAULT_CLOSE_TIMEOUT:g})")
    parser.add_argument("--handshake-timeout", type=float, default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="S",
                        help=f"seconds to receive the whole request head (default: {DEFAULT_HANDSHAKE_TIMEOUT:g})")
    parser.add_argument("--max-header-bytes", type=int, default=DEFAULT_MAX_HEADER_BYTES, metavar="N",
                        help=f"largest request head (default: {DEFAULT_MAX_HEADER_BYTES})")
    parser.add_argument("--max-header-lines", type=int, default=DEFAULT_MAX_HEADER_LINES, metavar="N",
                        help=f"most header lines in a request (default: {DEFAULT_MAX_HEADER_LINES})")
    parser.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                        help="also accept browser pages from this origin, e.g. https://app.example "
                             "(repeatable; default: only this server's own pages)")
    parser.add_argument("--access-token", metavar="TOKEN",
                        help="require this token to chat: open the page once as /?access=TOKEN (it sets a "
                             "cookie), or send Authorization: Bearer TOKEN; with --connect, the token to send "
                             "(default: the ACCESS_TOKEN environment variable, which ps does not show; else none)")
    parser.add_argument("--max-clients", type=int, default=DEFAULT_MAX_CLIENTS, metavar="N",
                        help=f"open chat connections; more are refused with 503, 0 for no cap (default: {DEFAULT_MAX_CLIENTS})")
    parser.add_argument("--max-clients-per-address", type=int, default=DEFAULT_MAX_CLIENTS_PER_ADDRESS, metavar="N",
                        help="open chat connections from one client address (loopback is not capped); more are "
                             f"refused with 503, 0 for no cap (default: {DEFAULT_MAX_CLIENTS_PER_ADDRESS})")
    parser.add_argument("--pace-bytes", type=int, metavar="N",
                        help="bytes queued for one client past which the senders of the chat wait for it to "
                             "drain: a flooder is slowed to the pace of its readers; 0 turns this off "
                             "(default: a quarter of --max-buffer)")
    parser.add_argument("--pace-timeout", type=float, default=DEFAULT_PACE_TIMEOUT, metavar="S",
                        help="seconds a client may stay behind before senders stop waiting for it (then "
                             f"--max-buffer decides) (default: {DEFAULT_PACE_TIMEOUT:g})")
    parser.add_argument("--subprotocol", action="append", default=[], metavar="NAME",
                        help="a subprotocol to accept (repeatable)")
    parser.add_argument("--wire-rate", type=float, default=DEFAULT_WIRE_RATE, metavar="N",
                        help="frames a second shown to a page's \"On the wire\" panel, for the page's own "
                             f"connection only; 0 turns the panel off (default: {DEFAULT_WIRE_RATE:g})")
    parser.add_argument("--compression", choices=("deflate", "off"), default="deflate",
                        help="permessage-deflate (RFC 7692) when the client offers it (default: deflate)")
    parser.add_argument("--compression-level", type=int, default=DEFAULT_COMPRESSION_LEVEL, metavar="N",
                        help=f"zlib level, 1 (fast) to 9 (small) (default: {DEFAULT_COMPRESSION_LEVEL})")
    parser.add_argument("--compression-threshold", type=int, default=DEFAULT_COMPRESSION_THRESHOLD, metavar="N",
                        help="messages shorter than N bytes go uncompressed "
                             f"(default: {DEFAULT_COMPRESSION_THRESHOLD})")
    add_deployment_arguments(parser, "https:// and wss://", "chat")
    parser.add_argument("--trace", action="store_true", help="log the handshake and every frame, dissected")
    parser.add_argument("--connect", metavar="URL", help="run the terminal client against URL instead")
    parser.add_argument("--cafile", metavar="FILE",
                        help="with --connect wss://...: trust the CA certificates in FILE (default: the system's)")
    return parser


def add_deployment_arguments(parser: argparse.ArgumentParser, serves: str, shares: str) -> None:
    """The flags both servers share: TLS, a proxy in front, several processes."""
    parser.add_argument("--certfile", metavar="FILE",
                        help=f"serve {serves}: the certificate chain, PEM (the key may be in it)")
    parser.add_argument("--keyfile", metavar="FILE", help="the private key of --certfile, if not in it "
                        "(SIGHUP loads both again, for new connections)")
    parser.add_argument("--max-tls-handshakes", type=int, default=DEFAULT_MAX_TLS_HANDSHAKES, metavar="N",
                        help="with --certfile: TLS handshakes under way at once; more wait or are turned "
                             f"away (default: {DEFAULT_MAX_TLS_HANDSHAKES})")
    parser.add_argument("--max-tls-handshakes-per-address", type=int, default=DEFAULT_MAX_TLS_HANDSHAKES_PER_ADDRESS,
                        metavar="N", help="of those, from one client address "
                                          f"(default: {DEFAULT_MAX_TLS_HANDSHAKES_PER_ADDRESS})")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                        help="believe X-Forwarded-For from this proxy's address: the client's address, for "
                             "the logs and the per-address caps (repeatable)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                        help="also answer requests for this Host name: the name clients use, behind a "
                             "proxy too; on loopback any other name is refused, 421, against DNS "
                             "rebinding (repeatable; default: loopback's names only on loopback)")
    parser.add_argument("--redis", metavar="URL",
                        help=f"share the {shares} with every server on this Redis, "
                             "redis[s]://[[user]:password@]host[:port][/db] (rediss: over TLS; the password "
                             "may come from REDIS_PASSWORD instead) (default: this process alone)")
    parser.add_argument("--redis-cafile", metavar="FILE",
                        help="with --redis rediss://...: trust the CA certificates in FILE (default: the system's)")
    parser.add_argument("--redis-timeout", type=float, default=DEFAULT_REDIS_TIMEOUT, metavar="S",
                        help=f"seconds Redis may take to connect or to answer (default: {DEFAULT_REDIS_TIMEOUT:g})")
    parser.add_argument("--reuse-port", action="store_true",
                        help="let other processes listen on the same port (SO_REUSEPORT; the kernel "
                             f"spreads new connections over them; with --redis they share one {shares})")


def check_deployment_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks of the flags both servers share: TLS, Redis, --reuse-port."""
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.redis_cafile and not args.redis:
        parser.error("--redis-cafile needs --redis rediss://...")
    if args.max_tls_handshakes < 1 or args.max_tls_handshakes_per_address < 1:
        parser.error("--max-tls-handshakes and --max-tls-handshakes-per-address must be at least 1")
    if args.redis_timeout <= 0:
        parser.error("--redis-timeout must be above 0")
    if args.reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        parser.error("--reuse-port: this platform has no SO_REUSEPORT (run the processes on "
                     "several ports behind a proxy instead)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("max_size", "max_buffer", "max_header_bytes", "max_header_lines"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("ping_timeout", "close_timeout", "handshake_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    if args.ping_interval < 0:
        parser.error("--ping-interval must be 0 (off) or more")
    if not 1 <= args.compression_level <= 9 or args.compression_threshold < 0:
        parser.error("--compression-level must be 1 to 9, --compression-threshold 0 or more")
    for name in ("max_clients", "max_clients_per_address", "pace_bytes"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 (off) or more")
    if args.pace_timeout <= 0:
        parser.error("--pace-timeout must be above 0")
    if not 0 <= args.wire_rate < float("inf"):
        parser.error("--wire-rate must be 0 (off) or more")
    access_token = token_from(args.access_token, "ACCESS_TOKEN")
    if access_token is not None and not _ACCESS_TOKEN.fullmatch(access_token):
        parser.error("--access-token (or ACCESS_TOKEN): letters, digits and -._~+/ only (it goes in a cookie "
                     "and a header), e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())'")
    check_deployment_arguments(parser, args)
    try:
        tls = server_tls_context(args.certfile, args.keyfile) if args.certfile else None
        redis = RedisAddress.parse(args.redis, args.redis_cafile) if args.redis else None
    except ValueError as error:  # a configuration the server cannot start with: one line, exit 2
        log.error("%s", error)
        return 2
    try:
        if args.connect:
            asyncio.run(run_client(args.connect, args.trace, args.cafile, access_token))
            return 0
        limits = Limits(args.max_size, args.max_buffer, args.ping_interval, args.ping_timeout,
                        args.close_timeout)
        config = ServerConfig(args.host, args.port, args.static, limits=limits,
                              allowed_origins=args.allow_origin, subprotocols=args.subprotocol,
                              handshake_timeout=args.handshake_timeout,
                              max_header_bytes=args.max_header_bytes,
                              max_header_lines=args.max_header_lines, trace=args.trace,
                              compression=args.compression == "deflate",
                              compression_level=args.compression_level,
                              compression_threshold=args.compression_threshold,
                              tls=tls, certfile=args.certfile, keyfile=args.keyfile,
                              max_tls_handshakes=args.max_tls_handshakes,
                              max_tls_handshakes_per_address=args.max_tls_handshakes_per_address,
                              trusted_proxies=args.trusted_proxy, redis=redis,
                              redis_timeout=args.redis_timeout, reuse_port=args.reuse_port,
                              allowed_hosts=args.allowed_host, access_token=access_token,
                              max_clients=args.max_clients, max_clients_per_address=args.max_clients_per_address,
                              pace_bytes=args.pace_bytes, pace_timeout=args.pace_timeout,
                              wire_rate=args.wire_rate)
        asyncio.run(run_server(config))
    except KeyboardInterrupt:  # Ctrl-C in the client, or a second one during the shutdown
        pass
    except StartupFailed as error:
        log.error("%s", error)
        return 2
    except ssl.SSLCertVerificationError as error:
        log.error("the server's certificate failed verification (%s); for a private CA, give its "
                  "certificate with --cafile", error.verify_message)
        return 1
    except (OSError, WebSocketError, ValueError, asyncio.TimeoutError) as error:
        log.error("%s", error or type(error).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
