"""Mutation testing: proof that the walkthrough bites.

    python -m tests.mutate                    # every mutant of every region (about 7 minutes on 2 cores)
    python -m tests.mutate --list             # only list the mutants
    python -m tests.mutate --module ws --region decoder --jobs 4
    python -m tests.mutate --limit 40 --seed 7   # 40 mutants drawn at random (the same 40 for seed 7)

Each mutant breaks one rule in a copy of the two modules: a comparison turned (`<` to `<=`,
`==` to `!=`, `in` to `not in`), a condition negated, an `and` made an `or`, one operand of a
condition dropped, a `not` removed, a `raise` or a statement dropped, an integer constant moved
by one (125, 0x80, 1002, 18 digits...), a string constant changed, a close code, an opcode or a
state named for another, `min` for `max`, an arithmetic operator swapped.  The mutant is written
into a temporary folder next to a copy of `tests/` and `static/`, and the chapters that teach
its region run against it (`python -m unittest -f`, in a child process with a timeout, fastest
chapters first).  A failing test catches it; a test run that does not end in time catches it too
(reported TIMEOUT); a run that passes misses it.

The regions are sections of the modules: Part I of both, and the parsers of Part II (HTTP,
permessage-deflate's extension header, the chunked transfer coding).  A mutant no test could
catch, because it changes nothing anyone can observe, is listed in `EQUIVALENT` with the reason:
reported apart and left out of the percentage.  Its key names the module, the function and the
mutation, not a line number, so it survives edits elsewhere.

Standard library only; not collected by unittest discovery (not named test*.py).  The same code
gives the same mutants in the same order.  Every temporary folder and child process is removed
on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import copy
import dataclasses
import json
import os
import queue
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_FILES = {"ws": "ws_server.py", "sse": "sse_server.py"}


# ---------------------------------------------------------------------------------------------
# The regions, and the chapters that teach each one
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Region:
    module: str  # "ws" or "sse"
    section: str  # the section header in the module: "# I.5 The decoder ..." is "I.5"
    name: str
    tests: tuple[str, ...]  # unittest names, run in this order with --failfast: fastest first
    only: tuple[str, ...] = ()  # the top-level names taken from the section, if not all of it
    skip: tuple[str, ...] = ()  # top-level names left out (tables that state no rule)

    @property
    def label(self) -> str:
        return f"{self.module}:{self.section} {self.name}"


T01, T02, T03, T04, T05 = ("tests.test_01_http", "tests.test_02_ws_handshake", "tests.test_03_ws_framing",
                           "tests.test_04_ws_compression", "tests.test_05_ws_protocol")
T07, T08 = "tests.test_07_sse_format", "tests.test_08_sse_client"
T06 = "tests.test_06_ws_server."  # the slower chapters: only the classes that exercise the region
T09 = "tests.test_09_sse_server."

REGIONS = (
    Region("ws", "I.1", "handshake", (T02, T04, T06 + "Test01TheHandshakeOnTheWire")),
    Region("ws", "I.2", "frame", (T03, T04, T05)),
    Region("ws", "I.3", "masking", (T03,)),
    Region("ws", "I.4", "messages", (T03, T05, T04)),
    Region("ws", "I.5", "decoder", (T03, T04, T05)),
    Region("ws", "I.6", "closing", (T03, T05)),
    Region("ws", "I.7", "protocol", (T05, T03, T04)),
    Region("ws", "I.8", "broadcast", (T05, T04, T06 + "Test03TheChat", T06 + "Test04Compression")),
    Region("ws", "I.9", "server", tuple(T06 + name for name in (
        "Test01TheHandshakeOnTheWire", "Test02ThePagesOnTheWire", "Test03TheChat", "Test04Compression",
        "Test05BadInputAndOthersKeepGoing", "Test08ShutdownAndTrace", "Test11WhoMayConnect",
        "Test12TheAccessToken", "Test13Caps", "Test16TheWirePanel", "Test17TheWirePanelTurnedOff"))),
    Region("ws", "II.2", "http", (T01, T02), skip=("STATUS_PHRASES",)),
    Region("ws", "II.4", "extensions", (T04,), only=(
        "_TOKEN", "PERMESSAGE_DEFLATE", "parse_extensions", "window_bits", "DeflateParameters",
        "read_deflate_parameters", "negotiate_deflate", "client_deflate_offer", "check_deflate_answer")),
    Region("sse", "I.1", "format", (T07, T08)),
    Region("sse", "I.2", "parser", (T08, T07)),
    Region("sse", "I.3", "response", (T07, T09 + "Test01TheStream")),
    Region("sse", "I.4", "clock", (T09 + "Test02TheClock",)),
    Region("sse", "I.5", "history", (T07, T09 + "Test04Resumption")),
    Region("sse", "I.6", "cors", (T07, T09 + "Test10CORS", T09 + "Test11CORSWithAnAllowList")),
    Region("sse", "II.2", "chunked", (T07,)),
)


# ---------------------------------------------------------------------------------------------
# Mutants judged equivalent: no test could tell them from the original
# ---------------------------------------------------------------------------------------------

#: key (see `Mutant.key`) -> why no test can catch it.
EQUIVALENT: dict[str, str] = {
    'ws:apply_mask: negate: `n >= MASK_LANES_FROM`  [in `if n >= MASK_LANES_FROM:`]':
        '`mask_lanes` and the XOR of two integers give the same bytes at every length: which one runs changes only the speed',
    'ws:apply_mask: comparison: `n >= MASK_LANES_FROM` -> `n > MASK_LANES_FROM`  [in `if n >= MASK_LANES_FROM:`]':
        '`mask_lanes` and the XOR of two integers give the same bytes at every length: which one runs changes only the speed',
    'ws:apply_mask: operator: `n // 4` -> `n * 4`  [in `repeated_key = (masking_key * (n // 4 + 1))[:n]`]':
        'the key is repeated further than n bytes, then cut to n: the same bytes (a longer intermediate only)',
    'ws:apply_mask: constant: `1` -> `2`  [in `repeated_key = (masking_key * (n // 4 + 1))[:n]`]':
        'the key is repeated further than n bytes, then cut to n: the same bytes (a longer intermediate only)',
    'ws:Receiver.__init__: drop: `self._remaining = 0`':
        "`_start_data_frame` sets it on a message's first frame before anything reads it (a continuation with no message is refused first)",
    'ws:Receiver.__init__: constant: `0` -> `1`  [in `self._remaining = 0`]':
        "`_start_data_frame` sets it on a message's first frame before anything reads it (a continuation with no message is refused first)",
    'ws:Receiver.__init__: drop: `self._frame_start = 0`':
        'set by `_start_data_frame` (when `on_frame` is given, the only case it is read) before `_read_payload` reads it',
    'ws:Receiver.__init__: constant: `0` -> `1`  [in `self._frame_start = 0`]':
        'set by `_start_data_frame` (when `on_frame` is given, the only case it is read) before `_read_payload` reads it',
    'ws:Receiver.__init__: drop: `self._cost = 0`':
        "`_start_data_frame` sets it on a message's first frame before anything reads it (a continuation with no message is refused first)",
    'ws:Receiver.__init__: constant: `0` -> `1`  [in `self._cost = 0`]':
        "`_start_data_frame` sets it on a message's first frame before anything reads it (a continuation with no message is refused first)",
    'ws:Receiver.__init__: drop: `self._compressed = False`':
        "`_start_data_frame` sets it on a message's first frame before anything reads it (a continuation with no message is refused first)",
    'ws:Receiver.__init__: constant: `False` -> `True`  [in `self._compressed = False`]':
        "`_start_data_frame` sets it on a message's first frame before anything reads it (a continuation with no message is refused first)",
    'ws:Receiver.feed: drop: `self._buffer = b""`':
        'after an error `feed` returns at once and never reads the buffer again: only memory is kept longer',
    'ws:Receiver.feed: comparison: `position < end` -> `position <= end`  [in `self._buffer = buffer[position:] if position < end else b""`]':
        "at position == end, buffer[end:] is b'' as well",
    'ws:Receiver._read_payload: comparison: `remaining <= end - position` -> `remaining < end - position`  [in `take = remaining if remaining <= end - position else end ...`]':
        'when they are equal both branches take the same number of bytes',
    'ws:Receiver._read_payload: constant: `0` -> `-1`  [in `if take == 0 and remaining:`]':
        'an empty piece then goes through unmasking, inflating and the UTF-8 check, and joins into the same payload: nothing observable changes',
    'ws:Receiver._read_payload: constant: `False` -> `True`  [in `self._opcode, self._parts, self._decoder, self._compresse...`]':
        "the next message's first frame sets `_compressed` (in `_start_data_frame`) before it is read",
    'ws:parse_close_payload: constant: `1` -> `0`  [in `if len(payload) == 1:`]':
        'an empty payload returned just before; a 1-byte payload then gives a code below 256, refused just after with the same close code 1002',
    'ws:parse_close_payload: drop raise: `raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close payload of 1 b...`':
        "a 1-byte payload then gives a code below 256, refused just after with the same close code 1002 (only the reason's text differs)",
    'ws:Protocol.__init__: constant: `0` -> `1`  [in `self._next = 0`]':
        'with `_events` empty, any `_next` reads as nothing waiting, and `receive_data` replaces both: only memory differs',
    'ws:Protocol.next_event: drop: `self._events, self._next = NOTHING, 0`':
        'with `_events` empty, any `_next` reads as nothing waiting, and `receive_data` replaces both: only memory differs',
    'ws:Protocol.next_event: constant: `0` -> `1`  [in `self._events, self._next = NOTHING, 0`]':
        'with `_events` empty, any `_next` reads as nothing waiting, and `receive_data` replaces both: only memory differs',
    'ws:Protocol._close_received: constant: `0` -> `1`  [in `self._events, self._next = NOTHING, 0`]':
        'with `_events` empty, any `_next` reads as nothing waiting, and `receive_data` replaces both: only memory differs',
    'ws:Protocol.fail: constant: `0` -> `1`  [in `self._events, self._next = NOTHING, 0`]':
        'with `_events` empty, any `_next` reads as nothing waiting, and `receive_data` replaces both: only memory differs',
    'ws:Protocol._receive_handshake_answer: min/max: `max(0, len(self._head) - 3)` -> `min(0, len(self._head) - 3)`  [in `start = max(0, len(self._head) - 3)`]':
        'the search then starts at 0 (a negative start is 0): the same first match, found more slowly',
    'ws:Protocol._receive_handshake_answer: constant: `3` -> `4`  [in `start = max(0, len(self._head) - 3)`]':
        'an end of head (4 bytes at most) that starts one byte earlier lies wholly in the bytes searched before: the same first match',
    'ws:Protocol._receive_handshake_answer: constant: `0` -> `1`  [in `head, rest = self._head[:found[0]], self._head[found[1]:]`]':
        'the head then ends with its blank line, which the header-line parser skips',
    'ws:Protocol._receive_handshake_answer: drop: `self._head = b""`':
        'once OPEN, `_head` is never read again: only memory is kept',
    'ws:Protocol.data_to_send: drop operand: `limit is None or self.pending_bytes <= limit` -> `limit is None`  [in `if limit is None or self.pending_bytes <= limit:`]':
        'when everything fits, the loop takes every frame and leaves the queue empty: the same result by the longer path',
    'ws:Protocol.data_to_send: comparison: `self.pending_bytes <= limit` -> `self.pending_bytes < limit`  [in `if limit is None or self.pending_bytes <= limit:`]':
        'when everything fits exactly, the loop takes every frame: the same result by the longer path',
    'ws:Protocol.data_to_send: drop operand: `outgoing[taken:] or NOTHING` -> `outgoing[taken:]`  [in `self._outgoing = outgoing[taken:] or NOTHING`]':
        'an empty list instead of the shared empty tuple: both are empty and falsy wherever the queue is read',
    'ws:ChatRoom.broadcast: drop operand: `plain or encode_server_frame(message.opcode, message.payload)` -> `encode_server_frame(message.opcode, message.payload)`  [in `plain = plain or encode_server_frame(message.opcode, mess...`]':
        'the same bytes encoded again for each group: speed only',
    'ws:WebSocketServer.start: drop: `settle_the_allocator()`':
        'an allocator tuning for speed and memory; nothing a client sees',
    'ws:WebSocketServer.start: drop operand: `config.reuse_port or None` -> `config.reuse_port`  [in `self._server = await listen(self._handle, config.host, co...`]':
        'False and None both leave SO_REUSEPORT unset (asyncio tests its truth)',
    'sse:EventStreamParser._process_line: drop operand: `colon and value.startswith(" ")` -> `value.startswith(\' \')`  [in `if colon and value.startswith(" "): # one leading space i...`]':
        'without a colon the value is empty, and an empty value does not start with a space',
    'sse:cors_headers: drop operand: `origin is not None and origin in allowed` -> `origin in allowed`  [in `if origin is not None and origin in allowed:`]':
        'None is never in a tuple of strings',

    'ws:parse_decimal: comparison: `0 < len(text) <= max_digits` -> `0 <= len(text) <= max_digits`  [in `if 0 < len(text) <= max_digits and text.isascii() and tex...`]':
        "an empty text is not digits either (''.isdigit() is False)",
    'ws:parse_decimal: constant: `0` -> `-1`  [in `if 0 < len(text) <= max_digits and text.isascii() and tex...`]':
        "an empty text is not digits either (''.isdigit() is False)",
    'sse:ChunkedDecoder._start_chunk: constant: `1` -> `2`  [in `size_text = line.split(b";", 1)[0].strip(b" \\t")`]':
        "only the part before the first ';' is kept, however many splits are made",
    'sse:format_event: string: `\'event\'` -> `\'even\'`  [in `_check_single_line("event", event)`]':
        "changes only the wording of a message for people (the error's text), no rule",
    'sse:format_event: string: `\'id\'` -> `\'i\'`  [in `_check_single_line("id", id)`]':
        "changes only the wording of a message for people (the error's text), no rule",
    'sse:UNKNOWN_POSITION: string: `\'Events were missed: your l...` -> `\'Events were missed: your l...`  [in `UNKNOWN_POSITION = "Events were missed: your last event i...`]':
        "changes only the wording of a message for people (the error's text), no rule (the reset event's text)",

    'sse:EventStreamParser._process_line: string: `\':\'` -> `\';\'`  [in `if line.startswith(":"):`]':
        "a line starting with ':' then has the field name '' and one starting with ';' is then a comment: neither name is a field, both lines are ignored either way",
    'ws:parse_http_version: constant: `8` -> `9`  [in `if not (len(version) == 8 and version.startswith(b"HTTP/"...`] (#2)':
        'the length is checked to be 8 first, so `version[7:9]` is the same single byte as `version[7:8]`',
    'ws:parse_request_target: drop operand: `not separator or scheme.lower() not in ("http", "https", "ws", "wss")` -> `scheme.lower() not in (\'http\', \'https\', \'ws\', \'wss\')`  [in `if not separator or scheme.lower() not in ("http", "https...`]':
        'without "://" the scheme is the whole target and the authority empty, which is refused with the same 400',
    'ws:parse_request_target: comparison: `i >= 0` -> `i > 0`  [in `end_of_authority = min((i for i in (rest.find("/"), rest....`]':
        'a "/" or "?" at index 0 then stays in the authority, where neither is allowed: the same 400 as the empty authority',
    'ws:parse_request_target: constant: `0` -> `1`  [in `end_of_authority = min((i for i in (rest.find("/"), rest....`]':
        'a "/" or "?" at index 0 then stays in the authority, where neither is allowed: the same 400 as the empty authority',
    'ws:parse_header_lines: string: `b\' \\t\'` -> `b\' \'`  [in `if line[0] in b" \\t":`]':
        'a line starting with a tab has no token for a name: the same 400, in other words',
    'ws:parse_header_lines: drop raise: `raise HTTPError(400, "obsolete line folding in headers")`':
        'a folded line has no token for a name: the same 400, in other words',
    'ws:is_valid_authority: comparison: `end < 0` -> `end <= 0`  [in `if end < 0:`]':
        'the text starts with "[", so find("]") is -1 or at least 1, never 0',
    'ws:is_valid_authority: constant: `0` -> `1`  [in `if end < 0:`]':
        'the text starts with "[", so find("]") is -1 or at least 1, never 0 (nor 1 with a valid address inside)',
    'ws:is_valid_authority: constant: `0` -> `-1`  [in `if end < 0:`]':
        'with no "]" the port part is the whole text, which starts with "[", not ":": refused all the same',
    'ws:parse_extensions.quoted_token: drop raise: `raise ValueError(f"unterminated quoted string in {value!r}")`':
        'the position goes past the end, and the next token read raises ValueError anyway',
    'ws:parse_extensions: drop: `skip_space()` (#7)':
        'every path to it has just skipped spaces (after the name, a parameter name or a value)',
    'sse:EventStreamParser.__init__: constant: `False` -> `True`  [in `self._after_cr = False`]':
        'it can only drop a leading LF of the stream, a blank line before anything, which dispatches and changes nothing',
    'sse:EventStreamParser._feed_text: drop operand: `not rest and text.endswith("\\r")` -> `text.endswith(\'\\r\')`  [in `self._after_cr = not rest and text.endswith("\\r")`]':
        'a text that ends with CR always leaves nothing after its last line break',
    'sse:stream_opening: constant: `0` -> `1`  [in `opening = [StoredEvent.from_payload(0, format_retry(retry...`]':
        'the retry line is only bytes: its StoredEvent id is never written',
    'ws:WebSocketServer.start: drop: `self._end_of_turn = EndOfTurnWrites(asyncio.get_running_loop())`':
        'each Connection then makes its own EndOfTurnWrites: the same frames leave at the end of the same turn, in more callbacks (speed only)',
    'ws:WebSocketServer._handshake: drop: `writer.close()`':
        "an idle preconnect: `_handle`'s finally aborts the transport, and with nothing written or unread the client sees the same EOF",
}


# ---------------------------------------------------------------------------------------------
# Finding the mutation points
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Mutant:
    index: int
    region: Region
    file: str
    line: int
    function: str  # the qualified name of the definition it is in
    description: str
    start: int  # byte offsets of the replaced text in the module's source
    end: int
    replacement: bytes
    key: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


SECTION = re.compile(r"^# (I{1,2}\.\d+) ")
DIVIDER = re.compile(r"^# =+$")

COMPARE_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
NEGATING = (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)  # their swap is the negation
BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
              ast.Div: ast.Mult, ast.Mod: ast.FloorDiv, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
              ast.BitXor: ast.BitOr, ast.LShift: ast.RShift, ast.RShift: ast.LShift}
#: A named constant replaced by its neighbour: close codes, opcodes, states.
NAMED_SWAP = {
    "CloseCode": {"NORMAL_CLOSURE": "GOING_AWAY", "GOING_AWAY": "NORMAL_CLOSURE",
                  "PROTOCOL_ERROR": "UNSUPPORTED_DATA", "UNSUPPORTED_DATA": "PROTOCOL_ERROR",
                  "NO_STATUS_RCVD": "ABNORMAL_CLOSURE", "ABNORMAL_CLOSURE": "NO_STATUS_RCVD",
                  "INVALID_FRAME_PAYLOAD_DATA": "PROTOCOL_ERROR", "POLICY_VIOLATION": "MESSAGE_TOO_BIG",
                  "MESSAGE_TOO_BIG": "POLICY_VIOLATION", "MANDATORY_EXTENSION": "INTERNAL_ERROR",
                  "INTERNAL_ERROR": "MANDATORY_EXTENSION"},
    "Opcode": {"CONTINUATION": "TEXT", "TEXT": "BINARY", "BINARY": "TEXT", "CLOSE": "PING", "PING": "PONG",
               "PONG": "PING"},
    "State": {"CONNECTING": "OPEN", "OPEN": "CLOSING", "CLOSING": "OPEN", "CLOSED": "CLOSING"},
}
#: Arguments of Python's own API, not rules of a protocol (and "utf-" is an alias of "utf-8").
API_STRINGS = {"utf-8", "ascii", "latin-1", "ignore", "strict", "replace", "big", "little"}
MESSAGE_CALL = re.compile(r"(Error|Failed|Exception|Closed)$")  # their string arguments are prose
LOGGERS = {"log", "logging", "logger"}


def one_line(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def call_name(node: ast.AST) -> str:
    func = node.func if isinstance(node, ast.Call) else node
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def is_log_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id in LOGGERS)


def is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def mutated_string(value: str | bytes) -> str | bytes:
    """A string constant changed: its last character dropped, or a lone character moved by one."""
    if len(value) > 1:
        return value[:-1]
    if isinstance(value, bytes):
        return bytes([(value[0] + 1) % 256]) if value else b"x"
    return chr(ord(value) + 1) if value else "x"


class Finder:
    """Walks one region's top-level statements and proposes every mutation, in source order."""

    def __init__(self, source: bytes, region: Region, file: str) -> None:
        self.source = source
        self.region = region
        self.file = file
        self.line_starts = [0]
        for line in source.split(b"\n"):
            self.line_starts.append(self.line_starts[-1] + len(line) + 1)
        self.found: list[tuple[int, int, str, str, int, int, bytes]] = []  # (line, col, ...) for sorting
        self.scope: list[str] = []
        self.statement: ast.AST | None = None

    # -- positions and text --------------------------------------------------------------------

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.line_starts[node.lineno - 1] + node.col_offset,
                self.line_starts[node.end_lineno - 1] + node.end_col_offset)

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.source[start:end].decode("utf-8")

    def add(self, node: ast.AST, replacement: str, description: str, *, context: bool = True) -> None:
        start, end = self.span(node)
        if context and self.statement is not None and self.statement is not node:
            description += f"  [in `{one_line(self.text(self.statement).splitlines()[0], 60)}`]"
        function = ".".join(self.scope) or "<module>"
        self.found.append((node.lineno, node.col_offset, function, description, start, end,
                           replacement.encode("utf-8")))

    def replace_expr(self, node: ast.AST, new: ast.AST, kind: str) -> None:
        new_text = ast.unparse(new)
        self.add(node, f"({new_text})", f"{kind}: `{one_line(self.text(node))}` -> `{one_line(new_text)}`")

    # -- the walk ------------------------------------------------------------------------------

    def top_level(self, tree: ast.Module, start: int, end: int) -> None:
        for statement in tree.body:
            if not start <= statement.lineno < end:
                continue
            names = self.defined_names(statement)
            if self.region.only and not set(names) & set(self.region.only):
                continue
            if set(names) & set(self.region.skip):
                continue
            self.scope = [names[0]] if names and not isinstance(statement, (ast.FunctionDef, ast.ClassDef)) else []
            self.stmt(statement, in_function=False)

    @staticmethod
    def defined_names(statement: ast.stmt) -> list[str]:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return [statement.name]
        targets = statement.targets if isinstance(statement, ast.Assign) else \
            [statement.target] if isinstance(statement, (ast.AnnAssign, ast.AugAssign)) else []
        names = []
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    names.append(node.id)
        return names

    def body(self, statements: list[ast.stmt], in_function: bool) -> None:
        for i, statement in enumerate(statements):
            if i == 0 and is_docstring(statement):
                continue
            last = i == len(statements) - 1
            self.stmt(statement, in_function, last=last)

    def stmt(self, node: ast.stmt, in_function: bool, last: bool = False) -> None:
        outer = self.statement
        self.statement = node
        try:
            self._stmt(node, in_function, last)
        finally:
            self.statement = outer

    def drop(self, node: ast.stmt, what: str = "drop") -> None:
        first = self.text(node).splitlines()[0]
        self.add(node, "pass", f"{what}: `{one_line(first)}`", context=False)

    def _stmt(self, node: ast.stmt, in_function: bool, last: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.scope.append(node.name)
            self.arguments(node.args)
            self.body(node.body, in_function=True)
            self.scope.pop()
        elif isinstance(node, ast.ClassDef):
            self.scope.append(node.name)
            self.body(node.body, in_function=False)
            self.scope.pop()
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
                return
            if in_function and any(isinstance(n, (ast.Attribute, ast.Subscript))
                                   for t in node.targets for n in ast.walk(t)):
                self.drop(node)
            self.expr(node.value)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.expr(node.value)
        elif isinstance(node, ast.AugAssign):
            if in_function:
                self.drop(node)
            op = BINOP_SWAP.get(type(node.op))
            if op is not None:
                new = copy.deepcopy(node)
                new.op = op()
                new_text = ast.unparse(new)
                self.add(node, new_text, f"operator: `{one_line(self.text(node))}` -> `{one_line(new_text)}`",
                         context=False)
            self.expr(node.value)
        elif isinstance(node, ast.Expr):
            if is_log_call(node.value):
                return
            if in_function and isinstance(node.value, ast.Call) and not self.message_only(node.value):
                self.drop(node)
            self.expr(node.value)
        elif isinstance(node, ast.Raise):
            if in_function:
                self.drop(node, "drop raise")
            if node.exc is not None:
                self.expr(node.exc)
        elif isinstance(node, ast.Return):
            if node.value is None and in_function and not last:
                self.drop(node, "drop return")
            elif node.value is not None:
                self.expr(node.value)
        elif isinstance(node, (ast.If, ast.While)):
            self.negate(node.test)
            self.expr(node.test)
            self.body(node.body, in_function)
            self.body(node.orelse, in_function)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter)
            self.body(node.body, in_function)
            self.body(node.orelse, in_function)
        elif isinstance(node, ast.Try):
            self.body(node.body, in_function)
            for handler in node.handlers:
                self.body(handler.body, in_function)
            self.body(node.orelse, in_function)
            self.body(node.finalbody, in_function)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr)
            self.body(node.body, in_function)
        elif isinstance(node, ast.Assert):
            self.negate(node.test)
            self.expr(node.test)
        # pass, break, continue, import, global, nonlocal, delete: nothing to mutate

    @staticmethod
    def message_only(call: ast.Call) -> bool:
        """`super().__init__(f"...")` in an exception: it sets only the text people read."""
        return (isinstance(call.func, ast.Attribute) and call.func.attr == "__init__"
                and isinstance(call.func.value, ast.Call) and call_name(call.func.value) == "super"
                and all(isinstance(a, ast.JoinedStr) or (isinstance(a, ast.Call) and isinstance(a.func, ast.Attribute)
                        and isinstance(a.func.value, ast.JoinedStr)) for a in call.args))

    def arguments(self, args: ast.arguments) -> None:
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.expr(default)

    def negate(self, test: ast.expr) -> None:
        """`if x:` -> `if not (x):`, unless another mutant already does exactly that."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return  # removing the `not` is the same mutant
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], NEGATING):
            return  # swapping the operator is the same mutant
        if isinstance(test, ast.Constant):
            return  # `while True`
        self.add(test, f"not ({self.text(test)})", f"negate: `{one_line(self.text(test))}`")

    def expr(self, node: ast.AST, prose: bool = False) -> None:
        """Propose the mutations of an expression and of everything in it.  `prose`: a string
        here is a message for people (an error's text), not a rule."""
        if isinstance(node, ast.JoinedStr):
            return  # an f-string is a message
        if isinstance(node, ast.Call):
            if is_log_call(node):
                return
            name = call_name(node)
            if name in ("min", "max") and isinstance(node.func, ast.Name):
                new = copy.deepcopy(node)
                new.func.id = "max" if name == "min" else "min"
                self.replace_expr(node, new, "min/max")
            message = bool(MESSAGE_CALL.search(name))
            self.expr(node.func)
            for argument in node.args:
                self.expr(argument, prose=message)
            for keyword in node.keywords:
                self.expr(keyword.value, prose=message)
            return
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                new = copy.deepcopy(node)
                new.ops[i] = COMPARE_SWAP[type(op)]()
                self.replace_expr(node, new, "comparison")
            for operand in [node.left, *node.comparators]:  # a boundary: moved both ways
                if isinstance(operand, ast.Constant):
                    self.constant(operand, prose, compared=True)
                else:
                    self.expr(operand)
            return
        elif isinstance(node, ast.BoolOp):
            new = copy.deepcopy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.replace_expr(node, new, "and/or")
            for i in range(len(node.values)):
                new = copy.deepcopy(node)
                del new.values[i]
                self.replace_expr(node, new.values[0] if len(new.values) == 1 else new, "drop operand")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.replace_expr(node, node.operand, "drop not")
        elif isinstance(node, ast.IfExp):
            self.negate(node.test)
        elif isinstance(node, ast.BinOp):
            op = BINOP_SWAP.get(type(node.op))
            if op is not None:
                new = copy.deepcopy(node)
                new.op = op()
                self.replace_expr(node, new, "operator")
        elif isinstance(node, ast.Constant):
            self.constant(node, prose, compared=False)
            return
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            other = NAMED_SWAP.get(node.value.id, {}).get(node.attr)
            if other is not None:
                new_text = f"{node.value.id}.{other}"
                self.add(node, new_text, f"name: `{self.text(node)}` -> `{new_text}`")
            return
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            for generator in node.generators:
                for condition in generator.ifs:
                    self.negate(condition)
        elif isinstance(node, ast.Lambda):
            self.arguments(node.args)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)):
                continue
            if isinstance(child, ast.comprehension):
                self.expr(child.iter)
                for condition in child.ifs:
                    self.expr(condition)
                continue
            self.expr(child)

    def constant(self, node: ast.Constant, prose: bool, compared: bool) -> None:
        """An integer moved by one (both ways when it is compared with), a boolean flipped, a
        string changed: not an empty one outside a comparison (then mostly a start value)."""
        value = node.value
        if isinstance(value, bool):
            self.add(node, repr(not value), f"constant: `{value}` -> `{not value}`")
        elif isinstance(value, int):
            for new in (value + 1, value - 1) if compared else (value + 1,):
                self.add(node, f"({new})", f"constant: `{self.text(node)}` -> `{new}`")
        elif isinstance(value, (str, bytes)) and not prose and (value or compared) and value not in API_STRINGS:
            new = mutated_string(value)
            self.add(node, f"({new!r})", f"string: `{one_line(repr(value), 30)}` -> `{one_line(repr(new), 30)}`")


def section_lines(lines: list[str], section: str) -> tuple[int, int]:
    """The 1-based line range [start, end) of a section, from its header to the next one."""
    start = None
    for number, line in enumerate(lines, 1):
        match = SECTION.match(line)
        if start is None:
            if match and match.group(1) == section:
                start = number
        elif match or DIVIDER.match(line):
            return start, number
    if start is None:
        raise SystemExit(f"no section {section} found")
    return start, len(lines) + 1


def find_mutants(regions: tuple[Region, ...]) -> list[Mutant]:
    mutants: list[Mutant] = []
    sources = {module: (ROOT / file).read_bytes() for module, file in MODULE_FILES.items()}
    trees = {module: ast.parse(source) for module, source in sources.items()}
    for region in regions:
        source, file = sources[region.module], MODULE_FILES[region.module]
        start, end = section_lines(source.decode("utf-8").splitlines(), region.section)
        finder = Finder(source, region, file)
        finder.top_level(trees[region.module], start, end)
        seen_sources: set[bytes] = set()
        seen_keys: dict[str, int] = {}
        for line, _col, function, description, s, e, replacement in sorted(
                finder.found, key=lambda found: (found[0], found[1])):
            signature = b"%d:%d:" % (s, e) + replacement
            if signature in seen_sources or source[s:e] == replacement:
                continue
            seen_sources.add(signature)
            key = f"{region.module}:{function}: {description}"
            seen_keys[key] = seen_keys.get(key, 0) + 1
            if seen_keys[key] > 1:
                key += f" (#{seen_keys[key]})"
            mutants.append(Mutant(len(mutants) + 1, region, file, line, function, description, s, e,
                                  replacement, key))
    return mutants


def mutated_source(mutant: Mutant, sources: dict[str, bytes]) -> bytes:
    source = sources[mutant.region.module]
    return source[:mutant.start] + mutant.replacement + source[mutant.end:]


# ---------------------------------------------------------------------------------------------
# Running the chapters against a mutant
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    status: str  # CAUGHT, TIMEOUT, MISSED, INVALID (did not compile), STOPPED (interrupted)
    seconds: float
    detail: str = ""  # the first test that failed


#: The program of a forking server: it imports the standard library once, then forks one child
#: per test run, which runs unittest in a mutant's folder.  It saves each run the interpreter's
#: start and those imports (about 0.3 s of the 0.5 s a fast chapter takes).
FORK_SERVER = r"""
import os, sys, json, traceback
import argparse, asyncio, base64, binascii, bisect, codecs, collections, contextlib, dataclasses, enum
import hashlib, http.client, http.server, itertools, json, logging, mimetypes, random, re, runpy, secrets
import select, selectors, shutil, signal, socket, socketserver, sqlite3, ssl, struct, subprocess, tempfile
import threading, time, tracemalloc, unittest, urllib.parse, zlib
from typing import Callable, Iterable, Iterator, Union
signal.signal(signal.SIGINT, signal.SIG_DFL)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setpgid(0, 0)
            out = os.open(job["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.chdir(job["folder"])
            sys.path.insert(0, job["folder"])
            program = unittest.main(module=None, argv=["python -m unittest", "-q", "-f", *job["tests"]], exit=False)
            code = 0 if program.result.wasSuccessful() else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    try:
        os.setpgid(pid, pid)  # (the child does it too: whichever comes first)
    except OSError:
        pass
    sys.stdout.write(f"{pid}\n")
    sys.stdout.flush()
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(f"{os.waitstatus_to_exitcode(status)}\n")
    sys.stdout.flush()
"""


class ForkServer:
    """One forking server (`FORK_SERVER`) in a session of its own, away from the terminal's Ctrl-C."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=cwd, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self.buffer = b""

    def read_line(self, deadline: float | None) -> bytes | None:
        """The next line the server writes; None at the deadline; EOFError if it is gone."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return None
            data = os.read(fd, 4096)
            if not data:
                raise EOFError("the fork server ended")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class Runner:
    """Runs unittest in child processes, each in its own process group, each in a temporary copy
    of the project; kills and removes all of them on the way out.

    The copy of the project made once (`base`) is compiled once: each run copies it with its
    timestamps, so the unchanged files are not compiled again; the mutated module has no
    compiled copy and nothing writes one."""

    def __init__(self, workdir: Path, jobs: int, fork: bool = True) -> None:
        self.workdir = workdir
        self.sources = {module: (ROOT / file).read_bytes() for module, file in MODULE_FILES.items()}
        self.live: set[int] = set()  # process groups of the test runs under way
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", PYTHONPATH="")
        self.env.pop("PYTHONSTARTUP", None)
        self.base = workdir / "base"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "bench*", "mutate.py")
        shutil.copytree(ROOT / "tests", self.base / "tests", ignore=ignore)
        shutil.copytree(ROOT / "static", self.base / "static", ignore=ignore)
        for file in MODULE_FILES.values():
            shutil.copy2(ROOT / file, self.base / file)
        compileall.compile_dir(self.base, quiet=1)
        self.fork = fork and hasattr(os, "fork") and os.name == "posix"
        self.servers: queue.Queue[ForkServer] = queue.Queue()
        self.all_servers: list[ForkServer] = []
        if self.fork:
            for _ in range(jobs):
                self.new_server()

    def new_server(self) -> None:
        server = ForkServer(self.env, self.workdir)
        with self.lock:
            self.all_servers.append(server)
        self.servers.put(server)

    def copy(self, name: str, replaced: dict[str, bytes]) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=name + "-", dir=self.workdir))
        mutated = {MODULE_FILES[module] for module in replaced}

        def ignore(directory: str, names: list[str]) -> list[str]:  # the mutated module, compiled or not
            here = Path(directory)
            if here == self.base:
                return [name for name in names if name in mutated]
            if here == self.base / "__pycache__":
                return [name for name in names if name.split(".")[0] + ".py" in mutated]
            return []

        shutil.copytree(self.base, folder, dirs_exist_ok=True, ignore=ignore)
        for module, source in replaced.items():
            (folder / MODULE_FILES[module]).write_bytes(source)
        return folder

    def run(self, name: str, tests: tuple[str, ...], replaced: dict[str, bytes], timeout: float) -> Outcome:
        if self.stopping.is_set():
            return Outcome("STOPPED", 0.0)
        folder = self.copy(name, replaced)
        started = time.monotonic()
        try:
            try:
                code, output = (self.run_forked if self.fork else self.run_process)(folder, tests, timeout)
            except (OSError, EOFError, ValueError):  # a fork server broke: this run in a process of its own
                code, output = self.run_process(folder, tests, timeout)
            seconds = time.monotonic() - started
            if self.stopping.is_set():
                return Outcome("STOPPED", seconds)
            if code is None:
                return Outcome("TIMEOUT", seconds, f"no end after {timeout:.0f} s")
            if code == 0:
                return Outcome("MISSED", seconds)
            return Outcome("CAUGHT", seconds, first_failure(output))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def run_forked(self, folder: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
        """The exit code of the run (None after the timeout) and what it printed."""
        server = self.servers.get()
        output = folder / "unittest-output.txt"
        try:
            server.process.stdin.write((json.dumps({"folder": str(folder), "tests": list(tests),
                                                    "output": str(output)}) + "\n").encode())
            server.process.stdin.flush()
            pid = int(server.read_line(None))
            with self.lock:
                self.live.add(pid)
            if self.stopping.is_set():
                self.kill(pid)
            line = server.read_line(time.monotonic() + timeout)
            if line is None:  # too long: kill it; the server then reports its end
                self.kill(pid)
                server.read_line(None)
            with self.lock:
                self.live.discard(pid)
            text = output.read_text("utf-8", "replace") if output.exists() else ""
            self.servers.put(server)
            return (None if line is None else int(line)), text
        except (OSError, EOFError, ValueError):  # the server is gone (stopped, or broken): another one
            server.close()
            if self.stopping.is_set():
                return 0, ""
            self.new_server()
            raise

    def run_process(self, folder: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
        command = [sys.executable, "-m", "unittest", "-q", "-f", *tests]
        process = subprocess.Popen(command, cwd=folder, env=self.env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=(os.name == "posix"))
        with self.lock:
            self.live.add(process.pid)
        if self.stopping.is_set():
            self.kill(process.pid)
        try:
            output, _ = process.communicate(timeout=timeout)
            code = process.returncode
        except subprocess.TimeoutExpired:
            self.kill(process.pid)
            output, _ = process.communicate()
            code = None
        finally:
            with self.lock:
                self.live.discard(process.pid)
        return code, output.decode("utf-8", "replace")

    @staticmethod
    def kill(pid: int) -> None:
        """Kill a test run and whatever it started (its process group)."""
        try:
            if os.name == "posix":
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            live = list(self.live)
        for pid in live:
            self.kill(pid)

    def close(self) -> None:
        self.stop()
        with self.lock:
            servers = list(self.all_servers)
        for server in servers:
            server.close()


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAIL|ERROR): (\S+) \(([\w.]+)\)", output, re.MULTILINE)
    if match:
        parts = match.group(2).split(".")
        if parts[-1] != match.group(1):
            parts.append(match.group(1))
        return ".".join(parts[-3:])
    lines = [line for line in output.splitlines() if line.strip()]
    return one_line(lines[-1], 80) if lines else ""


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def select_regions(args: argparse.Namespace) -> tuple[Region, ...]:
    regions = tuple(r for r in REGIONS if args.module in (None, r.module))
    if args.region:
        wanted = {name.lower() for name in args.region}
        regions = tuple(r for r in regions if {r.name, r.section.lower(), f"{r.module}:{r.name}",
                                                f"{r.module}:{r.section.lower()}"} & wanted)
    if not regions:
        raise SystemExit(f"no region matches; the regions: {', '.join(r.label for r in REGIONS)}")
    return regions


def interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: stop the test runs and clean up."""
    raise KeyboardInterrupt


def percent(caught: int, missed: int) -> str:
    total = caught + missed
    return f"{100 * caught / total:.1f}%" if total else "-"


def summary_line(label: str, results: list[tuple[Mutant, Outcome]]) -> str:
    counted = [(m, o) for m, o in results if m.key not in EQUIVALENT and o.status != "INVALID"]
    caught = sum(o.status in ("CAUGHT", "TIMEOUT") for _, o in counted)
    timeouts = sum(o.status == "TIMEOUT" for _, o in counted)
    missed = sum(o.status == "MISSED" for _, o in counted)
    equivalent = sum(m.key in EQUIVALENT for m, _ in results)
    extra = f", {timeouts} by timeout" if timeouts else ""
    return (f"{label:<24} mutants {len(counted):4d}, caught {caught:4d} ({percent(caught, missed)}{extra}),"
            f" missed {missed:3d}; equivalent {equivalent}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", choices=sorted(MODULE_FILES), help="only this module's regions")
    parser.add_argument("--region", action="append", help="only this region (name, section or module:name); "
                        "repeatable: " + ", ".join(f"{r.module}:{r.name}" for r in REGIONS))
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="test runs at once")
    parser.add_argument("--limit", type=int, help="only this many mutants (the first, or drawn with --seed)")
    parser.add_argument("--seed", type=int, help="with --limit: draw the mutants at random with this seed")
    parser.add_argument("--timeout", type=float, help="seconds for one test run (default: from the "
                        "unmutated run of the same chapters)")
    parser.add_argument("--no-fork", action="store_true", help="a new interpreter for every test run "
                        "(slower; what happens anyway where there is no fork)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also name the test that caught each mutant")
    args = parser.parse_args(argv)

    regions = select_regions(args)
    mutants = find_mutants(regions)
    unknown = set(EQUIVALENT) - {m.key for m in find_mutants(REGIONS)} if not args.region and not args.module else set()
    if args.limit is not None and args.limit < len(mutants):
        if args.seed is not None:
            mutants = sorted(random.Random(args.seed).sample(mutants, args.limit), key=lambda m: m.index)
        else:
            mutants = mutants[:args.limit]

    if args.list:
        for m in mutants:
            mark = "  [equivalent]" if m.key in EQUIVALENT else ""
            print(f"{m.index:4d}  {m.where:<20} {m.region.label:<22} {m.function}: {m.description}{mark}")
        print(f"{len(mutants)} mutants")
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="mutate-"))
    previous = signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    results: dict[int, Outcome] = {}
    interrupted = False
    executor = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    runner = None
    try:
        runner = Runner(workdir, max(1, args.jobs), fork=not args.no_fork)
        # The chapters must pass unmutated, and their time sets the timeout.
        suites = sorted({m.region.tests for m in mutants})
        baselines = dict(zip(suites, executor.map(
            lambda tests: runner.run("baseline", tests, {}, 120.0), suites)))
        for tests, outcome in baselines.items():
            if outcome.status != "MISSED":  # "missed" here: the unmutated code passes
                print(f"the unmutated code fails {' '.join(tests)}: {outcome.status} {outcome.detail}",
                      file=sys.stderr)
                return 2
        timeouts = {tests: args.timeout or max(5.0, 2 * outcome.seconds + 4) for tests, outcome in baselines.items()}
        print(f"# {len(mutants)} mutants, {len(suites)} sets of chapters, {args.jobs} jobs; "
              f"unmutated runs took {max(o.seconds for o in baselines.values()):.1f} s at most", flush=True)

        def job(mutant: Mutant) -> Outcome:
            replaced = mutated_source(mutant, runner.sources)
            try:
                compile(replaced, mutant.file, "exec")
            except SyntaxError as error:
                return Outcome("INVALID", 0.0, str(error))
            return runner.run(f"m{mutant.index}", mutant.region.tests, {mutant.region.module: replaced},
                              timeouts[mutant.region.tests])

        futures = [(m, executor.submit(job, m)) for m in mutants]
        for done, (mutant, future) in enumerate(futures, 1):
            outcome = results[mutant.index] = future.result()
            status = outcome.status
            if mutant.key in EQUIVALENT:
                status = "EQUIV" if outcome.status == "MISSED" else "EQUIV?"  # caught: not equivalent
            detail = f"  <- {outcome.detail}" if args.verbose and outcome.detail else ""
            if outcome.status == "TIMEOUT":
                detail = f"  ({outcome.detail})"
            print(f"{status:<8} {mutant.where:<20} {mutant.function}: {mutant.description}{detail}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still clean up
        if runner is not None:
            runner.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        if runner is not None:
            runner.close()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        print("\ninterrupted: every test run stopped, every temporary folder removed", file=sys.stderr)
        return 130

    elapsed = time.monotonic() - started
    done = [(m, results[m.index]) for m in mutants if m.index in results]
    print()
    print("# Per region")
    for region in regions:
        print(summary_line(region.label, [(m, o) for m, o in done if m.region is region]))
    print(summary_line("all", done))
    invalid = [(m, o) for m, o in done if o.status == "INVALID"]
    if invalid:
        print(f"\n# {len(invalid)} mutants did not compile (a bug of this tool), left out:")
        for m, o in invalid:
            print(f"  {m.where}  {m.function}: {m.description}  ({o.detail})")
    equivalent = [(m, o) for m, o in done if m.key in EQUIVALENT]
    if equivalent:
        print(f"\n# Equivalent ({len(equivalent)}), left out of the percentage:")
        for m, o in equivalent:
            flag = "  !! CAUGHT: not equivalent, remove it from EQUIVALENT" if o.status != "MISSED" else ""
            print(f"  {m.where:<20} {m.function}: {m.description}{flag}\n      why: {EQUIVALENT[m.key]}")
    missed = [(m, o) for m, o in done if o.status == "MISSED" and m.key not in EQUIVALENT]
    print(f"\n# Missed ({len(missed)}):")
    for m, _ in missed:
        print(f"  {m.where:<20} {m.region.label:<22} {m.function}: {m.description}")
    if unknown:
        print(f"\n# {len(unknown)} EQUIVALENT keys match no mutant any more (the code changed): "
              + "; ".join(sorted(unknown)))
    counted = [(m, o) for m, o in done if m.key not in EQUIVALENT and o.status != "INVALID"]
    caught = sum(o.status in ("CAUGHT", "TIMEOUT") for _, o in counted)
    print(f"\nmutants: {len(counted)}, caught {caught} ({percent(caught, len(missed))}), missed {len(missed)}; "
          f"equivalent {len(equivalent)}; {elapsed:.0f} s with {args.jobs} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
