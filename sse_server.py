#!/usr/bin/env python3
"""Server-Sent Events (WHATWG HTML §9.2), server and client, on http.server.

    python sse_server.py                         # the clock on http://127.0.0.1:8088/
    curl -N http://127.0.0.1:8088/sse            # the raw event stream
    curl -d hello http://127.0.0.1:8088/publish  # an event for every open page
    python sse_server.py --connect http://127.0.0.1:8088/sse   # terminal client

Theory of operation.  This is the express tutorial's clock (`app.get('/sse', ...)`: three
headers, then every second `data: {"message":"当前时间: ..."}` and a blank line), done by the
spec, then made to hold up in real use.  The file reads top down, in two parts.

Part I, "The tutorial's protocol", is what the tutorial teaches, in the order a learner meets
it.  It is the code that runs, not a simplified copy: Part II calls it.

  I.1 The format (WHATWG HTML §9.2.5): `format_event` writes what the tutorial's `res.write`
      writes; nothing can be injected through it.
  I.2 The browser's parser and dispatch (WHATWG HTML §9.2.5, §9.2.6): `EventStreamParser`,
      fed bytes, returns the events an EventSource hands to `onmessage` (and its other
      listeners).  Pure: no sockets.
  I.3 The stream's response: where it is (`STREAM_PATHS`), its head (`stream_headers`: each
      header and why, and why not `Connection: keep-alive`), its first bytes (`stream_opening`:
      `retry:` first).
  I.4 The clock: `run_every` (the tutorial's `setInterval(..., 1000)`) and `clock_message`
      (its `{"message": ...}` JSON).
  I.5 Resuming with `Last-Event-ID` (WHATWG HTML §9.2.4): `History` keeps the last events in
      memory; `first_events` replays what a reconnecting client missed, or says it cannot.
  I.6 CORS (Fetch, "CORS protocol"): `cors_headers`, `preflight_headers`: what a page may read.

Part II, "For real use", begins at the divider `PART II — FOR REAL USE`: the limits, the chunked
coding (RFC 9112 §7.1) both ways, `POST /publish`, the hub (one fan-out for every event, slow
subscribers, departures), the history in SQLite (`--store`) and in Redis (`--redis`, several
processes), the HTTP handler (a thread per connection, strict request heads, deadlines), the
server (the clock's thread, heartbeats, shutdown), the client (`--connect`), the command line.

Not everything is in this file.  The HTTP/1.1 request layer is `ws_server.py`'s, imported:
`parse_request` and its `Request`, `find_end_of_head`, `no_head_received`, `body_length`,
`parse_decimal`, `HTTPError` (every refusal) and the header limits' defaults; the static
files (`static_response`, `STATIC_DIR`); TLS and proxies (`server_tls_context`,
`client_tls_context`, `tls_failure`, `client_address`, the deployment options); and the Redis
RESP2 client (`RESPParser`, `encode_command`, `RedisAddress`, `RedisError`, `stream_entries`,
`read_entries`, `stream_id`).
Standard library only, on every platform Python runs on: `http.server.ThreadingHTTPServer`
gives each client its own thread.
"""

from __future__ import annotations

import argparse
import bisect
import codecs
import collections
import dataclasses
import http.client
import itertools
import json
import logging
import os
import re
import select
import selectors
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

if sys.version_info < (3, 10):  # dataclass(slots=True) and more: say so, rather than fail on them
    sys.stderr.write(f"{os.path.basename(__file__)}: Python 3.10 or later is needed; this is "
                     f"Python {sys.version.split()[0]}\n")
    sys.exit(2)

import ws_server  # the HTTP/1.1 layer both servers share, its static files, TLS, the Redis client
from ws_server import HTTPError

log = logging.getLogger("sse_server")


# =============================================================================================
# PART I — THE TUTORIAL'S PROTOCOL
# =============================================================================================
#
# The tutorial's server (express), line by line, and where each line went:
#
#   const port = 8088                                       DEFAULT_PORT                  I.3
#   app.all('*', ... 'Access-Control-Allow-Origin', '*')    cors_headers                  I.6
#   app.get('/sse', (req, res) => {                         STREAM_PATHS                  I.3
#     res.set({'Content-Type': ..., 'Cache-Control': ...,   stream_headers                I.3
#              'Connection': 'keep-alive'})
#     setInterval(() => { ... }, 1000)                      run_every, clock_message      I.4
#     res.write(`data: ${JSON.stringify(data)}\n\n`)        format_event                  I.1
#
# and its page:  new EventSource(url); source.onmessage = ...    EventStreamParser        I.2


# ---------------------------------------------------------------------------------------------
# I.1 The format (WHATWG HTML §9.2.5)
# ---------------------------------------------------------------------------------------------
#
# The tutorial writes each event by hand:
#
#     res.write(`data: ${JSON.stringify(data)}\n\n`)
#
# a `data` field, then a blank line, which ends the event (the browser dispatches it).  In full:
#
#   stream  = [ bom ] *event
#   event   = *( comment / field ) end-of-line
#   comment = colon *any-char end-of-line
#   field   = 1*name-char [ colon [ space ] *any-char ] end-of-line
#   end-of-line = ( cr lf / cr / lf )
#
# A field's value runs to the end of its line, so a value that contains a line break would start
# a new field: that is how fields are injected.  (JSON.stringify never leaves a raw line break in
# its output, which is why the tutorial's one `data:` line is safe.)  `data` may span lines (one
# `data:` line each); `event` and `id` may not, and `format_event` refuses them rather than
# silently rewriting them.

#: The three end-of-line forms of WHATWG HTML §9.2.5, and no others.  `str.splitlines()` would
#: also split on U+2028, U+0085, form feed ... (which an EventSource keeps inside a line) and
#: drops a final empty line.
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _check_single_line(field: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"an event's {field} cannot contain CR or LF: {value!r}")


def format_event(data: str, *, event: str | None = None, id: str | None = None,
                 retry: int | None = None) -> str:
    """One event in the `text/event-stream` format (WHATWG HTML §9.2.5), ending with its blank
    line.  The tutorial's res.write(`data: ${JSON.stringify(data)}\\n\\n`) is
    format_event(json.dumps(data)) here (Python's JSON adds spaces and escapes non-ASCII).

    >>> format_event("two\\nlines", event="note", id="7")
    'event: note\\nid: 7\\ndata: two\\ndata: lines\\n\\n'

    Multi-line data becomes one `data:` line per line (split on CR, LF and CRLF only); the parser
    joins them back with LF.  ValueError for an `event` or `id` with CR or LF (they would inject
    fields), an `id` with NUL (WHATWG HTML §9.2.6: the browser ignores such an id) and a
    negative `retry`.
    """
    lines = []
    if event is not None:
        _check_single_line("event", event)
        lines.append(f"event: {event}")
    if id is not None:
        _check_single_line("id", id)
        if "\x00" in id:
            raise ValueError(f"an event's id cannot contain NUL: {id!r}")
        lines.append(f"id: {id}")
    if retry is not None:
        if retry < 0:
            raise ValueError(f"retry must be a number of milliseconds: {retry!r}")
        lines.append(f"retry: {int(retry)}")
    lines.extend("data: " + line for line in LINE_BREAK.split(data))
    return "\n".join(lines) + "\n\n"


def format_comment(text: str = "") -> str:
    """A comment (WHATWG HTML §9.2.5: a line starting with a colon), one per line of `text`;
    ignored by parsers, and still traffic: what keeps proxies from closing an idle stream
    (§9.2.7, the heartbeat of II.8)."""
    return "".join(f": {line}\n" if line else ":\n" for line in LINE_BREAK.split(text))


def format_retry(milliseconds: int) -> str:
    """The `retry` field alone (WHATWG HTML §9.2.6): the reconnection time, and a blank line
    that dispatches no event (no data)."""
    if milliseconds < 0:
        raise ValueError(f"retry must be a number of milliseconds: {milliseconds!r}")
    return f"retry: {int(milliseconds)}\n\n"


# ---------------------------------------------------------------------------------------------
# I.2 The browser's parser and dispatch (WHATWG HTML §9.2.5 parsing, §9.2.6 interpreting)
# ---------------------------------------------------------------------------------------------
#
# The tutorial's page:
#
#     source = new EventSource('http://localhost:8088/sse/')
#     source.onmessage = function (event) { ... JSON.parse(event.data) ... }
#
# The browser reads the stream line by line, collects fields, and at each blank line dispatches
# the event it collected to its listeners.  `EventStreamParser` does the same, rule for rule;
# the tests run the spec's examples through it, and the client (II.9) is built on it.

@dataclasses.dataclass(frozen=True)
class ServerSentEvent:
    """What EventSource dispatches: a MessageEvent's `type`, `data` and `lastEventId`.

    `type` picks the listeners: `source.onmessage` hears the events of type "message" only (no
    `event:` field); an event named `note` reaches `source.addEventListener('note', ...)`."""

    data: str
    type: str = "message"
    last_event_id: str = ""


class EventStreamParser:
    """Feed it the bytes of a stream as they come; it returns the events a browser would fire.

    Pure (no sockets), incremental (a line or a CRLF may be split across two `feed` calls),
    linear in its input however it is cut: each piece is searched for line breaks once, and the
    pieces of an unfinished line are joined only when its end arrives.  After the stream ends,
    `last_event_id` is what a browser would send as `Last-Event-ID` when it reconnects (WHATWG
    HTML §9.2.4), and `retry` its reconnection time.

    A browser keeps any line however long.  `max_line`, if given, bounds one line's length in
    characters (`LineTooLong` past it): a client's defence against a server that sends one
    endless line (the client of Part II, `--max-line`).
    """

    def __init__(self, last_event_id: str = "", retry: int | None = None, max_line: int | None = None) -> None:
        # WHATWG HTML §9.2.6: "decoded using the UTF-8 decode algorithm": invalid bytes become
        # U+FFFD, whatever charset the Content-Type names.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # has the first character (maybe a BOM) been seen?
        self._partial: list[str] = []  # the pieces of a line whose end has not arrived
        self._partial_length = 0
        self.max_line = max_line
        self._after_cr = False  # the last line ended with CR: a LF right after it is its pair
        self._data: list[str] = []  # WHATWG HTML §9.2.6 "data buffer", one entry per data line
        self._event_type = ""  # "event type buffer"
        # A reconnection starts a new parse but keeps the source's last event ID and retry.
        self._last_event_id_buffer = last_event_id  # "last event ID buffer"
        self.last_event_id = last_event_id  # the source's "last event ID string"
        self.retry = retry  # "reconnection time" in ms, once the stream sets it

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        return self._feed_text(self._decoder.decode(data))

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):  # WHATWG HTML §9.2.6: one leading BOM is ignored
                text = text[1:]
        if self._after_cr and text.startswith("\n"):  # the LF of a CRLF split across feeds
            text = text[1:]
        self._after_cr = False
        lines = LINE_BREAK.split(text)
        rest = lines.pop()  # what follows the last line break: the start of an unfinished line
        if lines:  # the unfinished line so far ends here
            lines[0] = "".join(self._partial) + lines[0]
            self._partial, self._partial_length = [], 0
            self._after_cr = not rest and text.endswith("\r")
        if rest:
            self._partial.append(rest)
            self._partial_length += len(rest)
        if self.max_line is not None and max([self._partial_length, *map(len, lines)]) > self.max_line:
            raise LineTooLong(f"the server sent a line longer than {self.max_line} characters")
        events = []
        for line in lines:
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _process_line(self, line: str) -> ServerSentEvent | None:
        """WHATWG HTML §9.2.6: a blank line dispatches; a colon first is a comment; else a
        field."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):  # one leading space is dropped, and only one
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self._last_event_id_buffer = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None  # any other field is ignored

    def _dispatch(self) -> ServerSentEvent | None:
        """WHATWG HTML §9.2.6 "dispatch the event"."""
        self.last_event_id = self._last_event_id_buffer  # set even when nothing is dispatched
        if not self._data:
            self._event_type = ""
            return None
        data, self._data = "\n".join(self._data), []  # the joined lines, without the last LF
        event_type, self._event_type = self._event_type or "message", ""
        return ServerSentEvent(data, event_type, self.last_event_id)


# ---------------------------------------------------------------------------------------------
# I.3 The stream's response (WHATWG HTML §9.2.2)
# ---------------------------------------------------------------------------------------------
#
# The tutorial answers `GET /sse` with three headers, and then writes events:
#
#     app.get('/sse', (req, res) => {
#         res.set({
#             'Content-Type': 'text/event-stream',
#             'Cache-Control': 'no-cache',
#             'Connection': 'keep-alive',
#         })
#
# (its response, as recorded, says `Content-Type: text/event-stream,utf-8`).  Here:
# `stream_headers` is the head the handler sends (`_send_stream_head`, II.7), `stream_opening`
# the first bytes of the body, and then the hub writes each event as it happens (II.4).

DEFAULT_PORT = 8088  # --port: the tutorial's `const port = 8088`

#: Where the stream is.  The tutorial serves `app.get('/sse', ...)` and its page asks for
#: `/sse/`: express matches both (its routing is not strict by default), and so do we.
STREAM_PATHS = ("/sse", "/sse/")

#: The tutorial's response says `Content-Type: text/event-stream,utf-8`.  A media type's
#: parameters follow a semicolon (RFC 9110 §8.3.1): the right spelling is this one.  Browsers
#: accept the tutorial's only by accident: Fetch's "extract a MIME type" reads the comma as
#: separating two header values and skips the invalid second one, `utf-8`.  The charset tells a
#: browser nothing new: it decodes every event stream as UTF-8 (WHATWG HTML §9.2.6), whatever the
#: header says, and the type's registration (HTML, "IANA considerations") allows `charset` only
#: as `utf-8`, for old servers' sake.  It is sent for other clients, which would guess otherwise.
EVENT_STREAM_TYPE = "text/event-stream; charset=utf-8"

#: --retry: ms a browser waits before it reconnects (WHATWG HTML §9.2.6 "retry"); the tutorial
#: sends none, so its browser waits its own default, a few seconds.
DEFAULT_RETRY = 3000


def stream_headers(chunked: bool) -> list[tuple[str, str]]:
    """The stream's own response headers, sent with status 200 (WHATWG HTML §9.2.2: anything
    but a 200 with this type makes the browser give up).  `chunked` for an HTTP/1.1 request.

    The handler adds what every answer carries: the CORS headers (I.6), `Connection: close`
    (below), and http.server's `Server` and `Date`.  `curl -i http://127.0.0.1:8088/sse`:

        HTTP/1.1 200 OK
        Server: sse_server
        Date: ...
        Content-Type: text/event-stream; charset=utf-8
        Cache-Control: no-cache
        X-Accel-Buffering: no
        Transfer-Encoding: chunked
        Access-Control-Allow-Origin: *
        Connection: close
    """
    headers = [
        # 'Content-Type': 'text/event-stream': what the body is (the spelling: EVENT_STREAM_TYPE).
        ("Content-Type", EVENT_STREAM_TYPE),
        # 'Cache-Control': 'no-cache': a cache may not answer a later request with a stored copy
        # without asking the server first (RFC 9111 §5.2.2.4); a live stream is never current.
        ("Cache-Control", "no-cache"),
        # Not in the tutorial: nginx buffers a proxied response by default, which would hold
        # events back until its buffer fills; this header turns that off for this response.
        ("X-Accel-Buffering", "no"),
    ]
    # An endless body must say how it ends (RFC 9112 §6.3).  HTTP/1.1: in chunks, one per event,
    # and the last chunk when the server stops (II.2); Node adds this header by itself,
    # http.server does not.  HTTP/1.0 has no chunks: its stream ends when the connection does.
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    # No 'Connection': 'keep-alive'.  An HTTP/1.1 connection persists unless one side says
    # `close` (RFC 9112 §9.3), so keep-alive says nothing.  And `Connection` is hop-by-hop (RFC
    # 9110 §7.6.1), about this one connection: behind a proxy it reaches the proxy, not the
    # browser, which the proxy may well speak HTTP/2 to, where the field is forbidden (RFC 9113
    # §8.2.2).  The handler says the opposite, `Connection: close`: nothing follows a stream on
    # its connection, and once the stream ends the server closes it (RFC 9112 §9.6).
    return headers


def stream_opening(retry: int, first: list[StoredEvent], chunked: bool) -> bytes:
    """The body's first bytes, before any live event: the `retry` field (WHATWG HTML §9.2.6),
    then `first`, what `first_events` found (I.5): the events missed, or a `reset`.

    `retry` comes first so that even a stream that breaks at once has told the browser how long
    to wait before it reconnects.  It dispatches nothing (see `format_retry`)."""
    opening = [StoredEvent.from_payload(0, format_retry(retry).encode()), *first]
    return b"".join(event.chunk if chunked else event.payload for event in opening)


# ---------------------------------------------------------------------------------------------
# I.4 The clock: the tutorial's setInterval
# ---------------------------------------------------------------------------------------------
#
#     setInterval(() => {
#         const data = { message: `当前时间: ${new Date().toLocaleTimeString()}` }
#         res.write(`data: ${JSON.stringify(data)}\n\n`)
#     }, 1000)
#
# The tutorial starts one timer per connection, and stops none: `req.on('close', () =>
# clearInterval())` passes no timer, so every timer outlives its client.  Here one timer ticks
# for every client: `run_every`, in a thread of its own, calls the server's tick (II.8), which
# publishes `clock_message()` like any event (`Hub.tick`, II.4): formatted once (I.1), numbered
# and kept for Last-Event-ID (I.5), written to every open stream.

DEFAULT_CLOCK = 1.0  # --clock: seconds between ticks (the tutorial's 1000 ms)

#: The tutorial's "当前时间: " ("current time: ") and toLocaleTimeString(), in the server's time.
CLOCK_FORMAT = "Current time: %H:%M:%S"


def run_every(interval: float, action: Callable[[], None], stopping: threading.Event) -> None:
    """`setInterval(action, interval * 1000)` as a loop for a thread: call `action` every
    `interval` seconds until `stopping` is set.  The ticks keep to their schedule however long
    each `action` takes, up to an interval; after a stall, one tick at once, not a burst of the
    missed ones."""
    deadline = time.monotonic() + interval
    while not stopping.wait(max(0.0, deadline - time.monotonic())):
        action()
        deadline += interval
        deadline = max(deadline, time.monotonic())  # after a stall, do not burst


def clock_message() -> str:
    """The tutorial's tick, `JSON.stringify({message: ...})`: its page shows the `message` of
    `JSON.parse(event.data)`."""
    return json.dumps({"message": time.strftime(CLOCK_FORMAT)})


# ---------------------------------------------------------------------------------------------
# I.5 Resuming: Last-Event-ID and the history (WHATWG HTML §9.2.4)
# ---------------------------------------------------------------------------------------------
#
# The tutorial's events have no id, so a browser that reconnects (after the `retry` wait) asks
# again from nothing and never sees what was sent meanwhile.  Here events carry an `id:` (I.1,
# `StoredEvent.numbered`); the browser keeps the last one (the parser's `last_event_id`, I.2) and sends it back in
# the `Last-Event-ID` request header when it reconnects; the server answers with what the client
# missed, from the events it kept, then live events.  An id it cannot resume from gets a `reset`
# event: never a guess.  The hub calls `first_events` between two events (`Hub.subscribe`,
# II.4), so nothing falls between the replay and the live events, and nothing comes twice.
#
# `History` keeps the events in memory; `--store` keeps them in SQLite too (`SQLiteHistory`,
# II.5), `--redis` shares them among processes (`RedisHistory`, II.6): both are Histories.

DEFAULT_HISTORY = 1000  # --history: events kept for Last-Event-ID replay


@dataclasses.dataclass(frozen=True)
class StoredEvent:
    """An event as it goes on the wire, encoded once for every subscriber: what the history
    keeps and replays, and what the hub writes (II.4)."""

    id: int | str  # a number here, a stream entry id ("milliseconds-sequence") with --redis
    payload: bytes  # the formatted event, UTF-8: what an HTTP/1.0 stream carries
    chunk: bytes  # the same as one chunk (II.2): what an HTTP/1.1 stream carries

    @classmethod
    def from_payload(cls, id: int | str, payload: bytes) -> StoredEvent:
        return cls(id, payload, encode_chunk(payload))

    @classmethod
    def numbered(cls, id: int | str, data: str, event: str | None = None) -> StoredEvent:
        """The event `data` (named `event`) with its id, formatted once (WHATWG HTML §9.2.5)."""
        return cls.from_payload(id, format_event(data, event=event, id=str(id)).encode())


class History:
    """The last `maxlen` events, for `Last-Event-ID` (WHATWG HTML §9.2.4).  Ids are consecutive
    integers.

    Ids must not repeat across server runs: a client holding id 57 from an earlier run must not
    be mistaken for one that saw this run's event 57.  So, kept in memory, the first id is the
    start time in microseconds: any id of an earlier run is then "too old" here.

    `store` numbers an event and makes it durable (nothing to do in memory); `append` then
    makes it part of the history.  The hub calls them in that order, so what is replayed was
    stored.  A `shared` history (several processes) appends what it reads back, not what it
    stored: see `RedisHistory`.
    """

    shared = False

    def __init__(self, maxlen: int, first_id: int | None = None) -> None:
        self._events: collections.deque[StoredEvent] = collections.deque(maxlen=maxlen)
        self.next_id = first_id if first_id is not None else time.time_ns() // 1000

    def parse_id(self, last_event_id: str) -> int | None:
        """The position a client's Last-Event-ID names, or None if it names none: ids here are
        decimal numbers (ASCII digits, at most 18, so no id can cost a long `int()`)."""
        return ws_server.parse_decimal(last_event_id)

    def store(self, data: str, event: str | None = None) -> StoredEvent:
        """Number the event and keep it durably before it is acknowledged (in memory there is
        nothing to keep: see SQLiteHistory); StoreError if that fails (then it is not kept, and
        its id goes to the next one)."""
        return StoredEvent.numbered(self.next_id, data, event)

    def append(self, event: StoredEvent) -> None:
        self._events.append(event)
        self.next_id = event.id + 1

    def newest_id(self) -> str:
        """The id of the newest event: where a reset puts a client."""
        return str(self.next_id - 1)

    def catch_up(self, last_id: int) -> None:
        """Wait until this history has caught up with `last_id` (see RedisHistory): in one
        process, it always has."""

    def forget(self) -> None:
        """Nothing kept can be resumed from any more (the store lost it; see RedisHistory)."""
        self._events.clear()

    def after(self, last_id: int) -> list[StoredEvent] | None:
        """Every kept event after `last_id`, in order; None when `last_id` is not one this
        history can resume from (never issued, or older than the oldest kept)."""
        oldest = self.next_id - len(self._events)  # the id of _events[0], if any
        if not oldest - 1 <= last_id < self.next_id:
            return None
        return list(itertools.islice(self._events, last_id - oldest + 1, None))

    def close(self) -> None:
        pass


def last_event_id(request: ws_server.Request) -> str | None:
    """The request's `Last-Event-ID` header (WHATWG HTML §9.2.4): the last event ID string,
    UTF-8 encoded (header values are read as latin-1, byte for byte, so they are decoded again
    here); None without one."""
    value = request.header("last-event-id")
    if not value:
        return None
    return value.encode("latin-1").decode("utf-8", "replace").strip()


#: What a `reset` event says (its data is JSON with a `message`, as the clock's is).
UNKNOWN_POSITION = "Events were missed: your last event id is unknown here or older than the history kept."


def first_events(history: History, last_event_id: str | None) -> list[StoredEvent]:
    """What a subscriber gets before live events: what it missed since `last_event_id`, or a
    `reset` event when that id cannot be resumed from; nothing without a Last-Event-ID."""
    if last_event_id is None:
        return []
    position = history.parse_id(last_event_id)
    missed = None if position is None else history.after(position)
    if missed is None:
        return [reset_event(history, UNKNOWN_POSITION, last_event_id)]
    return missed


def reset_event(history: History, message: str, last_event_id: str | None = None) -> StoredEvent:
    """The spec cannot tell a client it missed events; this event does.  Its id is the
    newest event's, so the client's Last-Event-ID is current again after it."""
    reason: dict[str, str] = {"message": message}
    if last_event_id is not None:
        reason["last_event_id"] = last_event_id[:100]
    return StoredEvent.numbered(history.newest_id(), json.dumps(reason), "reset")


# ---------------------------------------------------------------------------------------------
# I.6 CORS (Fetch standard, "CORS protocol")
# ---------------------------------------------------------------------------------------------
#
# The tutorial answers every request with CORS headers:
#
#     app.all('*', function (req, res, next) {
#         res.header('Access-Control-Allow-Origin', '*')
#         res.header('Access-Control-Allow-Headers', 'Content-Type, Authorization, X-Requested-With')
#         res.header('Access-Control-Allow-Methods', 'PUT,POST,GET,DELETE,OPTIONS')
#         res.header('Access-Control-Allow-Credentials', true)
#         if (req.method == 'OPTIONS') { res.sendStatus(200) } else { next() }
#     })
#
# because its page, opened from a file or another server (a file's Origin is `null`), reads
# from http://localhost:8088: another origin.  A page may read a response from another origin only if the response says so
# (Access-Control-Allow-Origin).  The handler adds `cors_headers` to every answer, refusals
# included, so that such a page can read why it was refused (`_send_head`, II.7).
#
# `*` allows any page, but never with credentials (cookies): browsers reject `*` together with
# Access-Control-Allow-Credentials: true, which is what the tutorial sends, so its
# `new EventSource(url, {withCredentials: true})` cannot work.  With an allow-list
# (--allow-origin) the matching origin is echoed, credentials are allowed, and `Vary: Origin`
# tells caches that the answer depends on the request's Origin.

#: What we serve (the tutorial lists PUT and DELETE, which it serves nowhere).
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"
#: Sent by a preflight: Last-Event-ID for fetch-based EventSource polyfills (a browser's own
#: EventSource needs no preflight), Content-Type for JSON publishers, Authorization for tokens.
ALLOWED_HEADERS = "Last-Event-ID, Content-Type, Cache-Control, Authorization"


def cors_headers(origin: str | None, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    """The CORS headers of an answer to a request with this `Origin`."""
    if "*" in allowed:
        return [("Access-Control-Allow-Origin", "*")]
    headers = [("Vary", "Origin")]
    if origin is not None and origin in allowed:
        headers += [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true")]
    return headers


def preflight_headers() -> list[tuple[str, str]]:
    """The answer to a CORS preflight (`OPTIONS`, `do_OPTIONS`): which methods and headers a
    page from another origin may use, cached by the browser for Max-Age seconds.  The tutorial
    sends these with every answer; they mean something only in the answer to a preflight."""
    return [("Access-Control-Allow-Methods", ALLOWED_METHODS),
            ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
            ("Access-Control-Max-Age", "86400")]


# CORS decides what a page may read, not what it may send: a "simple" POST (a form, a no-cors
# fetch) reaches the server with no preflight, and the browser only hides the answer.  Who may
# publish or subscribe (the Host, the Origin, the tokens) is decided before anything is done,
# by ws_server's `AccessRules`, in the handler (II.7).


# =============================================================================================
# =============================================================================================
# ==                                                                                         ==
# ==    PART II — FOR REAL USE                                                               ==
# ==                                                                                         ==
# ==    What the tutorial leaves out and a server needs once it meets many clients, slow     ==
# ==    ones, proxies, restarts and several processes: limits, framing, publishing, the      ==
# ==    hub, durable and shared histories, a strict HTTP handler, the client, the command    ==
# ==    line.  Everything here calls Part I for the protocol; nothing here redefines it.     ==
# ==                                                                                         ==
# =============================================================================================
# =============================================================================================


# ---------------------------------------------------------------------------------------------
# II.1 The limits (each one a command-line option)
# ---------------------------------------------------------------------------------------------

DEFAULT_HEARTBEAT = 15.0  # --heartbeat: seconds between comment lines (WHATWG HTML §9.2.7: ~15 s)
DEFAULT_MAX_CLIENTS = 1000  # --max-clients: open streams; more are told to come back later
#: --max-clients-per-address: open streams from one client address (X-Forwarded-For from a
#: --trusted-proxy), so that one address cannot take every slot.  32: a browser opens at most 6
#: HTTP/1.1 connections to one server, so one person with a few tabs and browsers, or a
#: household or small office behind one NAT address, stays under it, while filling the
#: default --max-clients takes at least 32 addresses.
DEFAULT_MAX_CLIENTS_PER_ADDRESS = 32
DEFAULT_MAX_BODY = 64 * 1024  # --max-body: bytes in one POST /publish
DEFAULT_MAX_QUEUE = 256  # --max-queue: events waiting for one slow subscriber before it is dropped
DEFAULT_WRITE_TIMEOUT = 10.0  # --write-timeout: seconds one write may wait for a slow subscriber
DEFAULT_REQUEST_TIMEOUT = 10.0  # --request-timeout: seconds for a whole request head, and for its body
DEFAULT_MAX_HEADER_BYTES = ws_server.DEFAULT_MAX_HEADER_BYTES  # --max-header-bytes
DEFAULT_MAX_HEADER_LINES = ws_server.DEFAULT_MAX_HEADER_LINES  # --max-header-lines

#: A stream refused for capacity is not a 503: an EventSource gives up for good after any
#: status but 200 (WHATWG HTML §9.2.2).  It is a 200 whose body is a `retry:` of this many
#: times --retry (at least `MIN_CAPACITY_RETRY` ms), a comment saying why, and the end: the
#: browser comes back by itself after that wait, later than an ordinary reconnection, so that
#: a full server is not hammered.
CAPACITY_RETRY_FACTOR = 5
MIN_CAPACITY_RETRY = 1000

#: The environment variables the tokens may come from (a command line is visible in `ps`).
PUBLISH_TOKEN_VARIABLE = "SSE_PUBLISH_TOKEN"
ACCESS_TOKEN_VARIABLE = "ACCESS_TOKEN"


# ---------------------------------------------------------------------------------------------
# II.2 HTTP/1.1 framing: the chunked transfer coding (RFC 9112 §7.1)
# ---------------------------------------------------------------------------------------------
#
#   chunked-body = *chunk last-chunk trailer-section CRLF
#   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF     ; size in hex
#   last-chunk   = 1*("0") [ chunk-ext ] CRLF
#
# An HTTP/1.1 response must say where its body ends: Content-Length (unknown for an endless
# stream), chunked, or closing the connection.  Chunked lets the server end the stream cleanly
# (the last chunk) and a client tell a complete stream from a cut one.  Each event is one chunk,
# written in one send.  HTTP/1.0 clients have no chunked coding: their stream ends at close.
# The other way, a server must be able to read a chunked request body (RFC 9112 §7.1): a
# publisher that streams its body does not know its length in advance.

LAST_CHUNK = b"0\r\n\r\n"


def encode_chunk(payload: bytes) -> bytes:
    """One chunk (RFC 9112 §7.1): the size in hex, CRLF, the bytes, CRLF."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class ChunkedDecoder:
    """The chunked coding backwards, sans I/O: feed it bytes, it returns whole chunks' data.

    Bounded: at most `max_size` bytes of data in all (413 past it), lines (size, extensions,
    trailers) of at most `max_line` bytes; anything malformed is a 400.  Once `done`, the bytes
    after the body are in `unused` (the next request on the connection).  Chunk extensions and
    trailer fields are read and ignored, as RFC 9112 §7.1.1 and §7.1.2 allow.
    """

    def __init__(self, max_size: int, max_line: int = 4096) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self.done = False
        self.unused = b""
        self.size = 0  # data bytes decoded so far
        self._buffer = b""
        self._remaining: int | None = None  # of the chunk being read; None between chunks
        self._in_trailers = False

    def feed(self, data: bytes) -> list[bytes]:
        """The data of every chunk that these bytes complete, in order."""
        chunks: list[bytes] = []
        if self.done:
            self.unused += data
            return chunks
        buffer = self._buffer + data
        while not self.done:
            if self._remaining is not None:  # the chunk's data, then its CRLF
                if len(buffer) < self._remaining + 2:
                    break
                chunk, end = buffer[:self._remaining], buffer[self._remaining:self._remaining + 2]
                if end != b"\r\n":
                    raise HTTPError(400, "chunk data not followed by CRLF")
                chunks.append(chunk)
                buffer, self._remaining = buffer[self._remaining + 2:], None
                continue
            line_end = buffer.find(b"\r\n")
            if (line_end if line_end >= 0 else len(buffer)) > self.max_line:  # ended or still arriving
                raise HTTPError(400, "a line of the chunked coding is too long")
            if line_end < 0:
                break
            line, buffer = buffer[:line_end], buffer[line_end + 2:]
            if self._in_trailers:
                if not line:  # the empty line that ends the body
                    self.done, self.unused = True, buffer
                    buffer = b""
                continue
            self._start_chunk(line)
        self._buffer = buffer
        return chunks

    def _start_chunk(self, line: bytes) -> None:
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
            raise HTTPError(400, "malformed chunk size")
        size = int(size_text, 16)
        if size == 0:  # the last chunk: trailer fields follow, then an empty line
            self._in_trailers = True
            return
        self.size += size
        if self.size > self.max_size:
            raise HTTPError(413, f"body over {self.max_size} bytes")
        self._remaining = size


# ---------------------------------------------------------------------------------------------
# II.3 Publishing: POST /publish, and its refusals
# ---------------------------------------------------------------------------------------------
#
# Not in the tutorial: any client may send an event to every open stream.  The decisions are
# pure; each refusal is an `HTTPError`, answered in one place (`SSERequestHandler.refuse`).

PUBLISH_PATH = "/publish"

#: Event names nobody may publish: `reset` is the server's own "you missed events" notice
#: (I.5), which a page must be able to trust; `open` and `error` are the events EventSource
#: fires itself (WHATWG HTML §9.2.3), so a published one would reach `onopen` / `onerror`.
RESERVED_EVENT_NAMES = ("reset", "open", "error")


def check_event_name(name: str) -> str | None:
    """Why `name` cannot be an event's name, or None when it can: one non-empty line (a line
    break would inject fields), not one of `RESERVED_EVENT_NAMES`."""
    if not name or LINE_BREAK.search(name):
        return "the event name must be one non-empty line"
    if name in RESERVED_EVENT_NAMES:
        return f"the event name {name!r} is reserved: the server or the browser itself sends it"
    return None


def publish_event_name(query: str) -> str | None:
    """`?event=NAME` names the published event (its `event:` field, WHATWG HTML §9.2.6); 400
    unless the query is UTF-8 (as the stream is, WHATWG HTML §9.2.6), names at most one event,
    and the name is one non-empty line (a line break would inject fields) that is not reserved
    (`RESERVED_EVENT_NAMES`)."""
    try:
        names = urllib.parse.parse_qs(query, keep_blank_values=True, errors="strict").get("event")
    except UnicodeDecodeError:
        raise HTTPError(400, "the query is not UTF-8") from None
    if names and len(names) > 1:
        raise HTTPError(400, "the query names the event more than once")
    name = names[0] if names else None
    if name is not None:
        reason = check_event_name(name)
        if reason is not None:
            raise HTTPError(400, reason)
    return name


def publish_text(body: bytes) -> str:
    """An event stream is UTF-8 (WHATWG HTML §9.2.6), so a published body must be too (400
    otherwise), and not empty (400): an event with no data is never dispatched (WHATWG HTML
    §9.2.6), and the page refuses to publish one too.

    Its line breaks may be LF, CR or CRLF: each line becomes a `data:` line (`format_event`),
    and the browser joins them with LF, so every kind arrives as LF (`LINE_BREAK_NOTICE`)."""
    if not body:
        raise HTTPError(400, "the body is empty: there is nothing to publish")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "the body is not UTF-8 text") from None


#: What a publish whose text has CR or CRLF line breaks is answered with (200 instead of 204),
#: so that nobody is surprised when they arrive as LF.
LINE_BREAK_NOTICE = (b"published; its CR and CRLF line breaks arrive as LF: an event's data lines "
                     b"are joined with LF (WHATWG HTML \xc2\xa79.2.6)\n")


# ---------------------------------------------------------------------------------------------
# II.4 The hub: subscribers, slow ones, departures, one fan-out for every event
# ---------------------------------------------------------------------------------------------
#
# The tutorial writes to each response from that response's own timer.  Here an event is
# formatted once (`StoredEvent`, I.5) and the hub hands it to every open stream: straight into
# each socket that can take it, into a bounded backlog for a slow one (`Subscriber`), and a
# client that left is noticed at once (`DepartureWatcher`), not at the next write.


class SSEError(Exception):
    """Base of the errors this module raises on purpose (HTTP refusals are `HTTPError`)."""


#: What a publisher is told when the store fails: the log has the details (a file's path,
#: Redis's address), which are nobody else's business.
STORE_UNAVAILABLE = "the event store is unavailable: the event was not published"
STORE_UNCONFIRMED = "the event store did not confirm the event: it may be published, or not"


class StoreError(SSEError):
    """The store cannot keep an event, or cannot be opened: the message names the store (its
    file, or Redis), for the log; `public` is what a publisher is told (no address, no path)."""

    def __init__(self, message: str, public: str = STORE_UNAVAILABLE) -> None:
        super().__init__(message)
        self.public = public


class ShuttingDown(SSEError):
    """The hub takes no new subscribers: the server is stopping."""


class TooManyStreams(SSEError):
    """The hub takes no new subscriber now: --max-clients streams are open, or
    --max-clients-per-address from this address.  The message says which."""


class Subscriber:
    """One open stream, and its whole delivery: the first events, the live ones, the backlog
    of a slow client, the drop.  Its socket is written two ways, never both at once:

    - by the publisher, directly, while the subscriber keeps up: a non-blocking send of the
      event's bytes into the socket buffer, so one event reaches a thousand subscribers without
      waking a thousand threads;
    - by the subscriber's own thread (`stream`), when the socket buffer is full ("draining"):
      the publisher then only appends to `backlog`, at most `max_queue` events, and wakes the
      thread, which writes them with a deadline.  A subscriber that falls further behind is
      dropped: it can reconnect with Last-Event-ID and catch up from the history, and the
      others never wait.

    The socket is non-blocking from the start of the stream: neither writer ever blocks in a
    send, and the thread waits for room with a selector, with a deadline (`write_all`).
    """

    __slots__ = ("sock", "chunked", "max_queue", "lock", "signal", "backlog", "draining", "closed",
                 "reason", "peer", "address")

    def __init__(self, sock: socket.socket, chunked: bool, max_queue: int, peer: str = "",
                 address: str | None = None) -> None:
        self.sock = sock
        self.chunked = chunked
        self.max_queue = max_queue
        self.lock = threading.Lock()
        # A one-bit signal "there is work": released = raised, held = lowered.  A bare lock, not a
        # threading.Event, which adds a Condition and a deque (about 1 KiB per subscriber).  It is
        # raised only under `lock`; only the subscriber's thread lowers it: under `lock` when it
        # finds nothing to write, and by waiting on it.
        self.signal = threading.Lock()
        self.signal.acquire()
        self.backlog: list[bytes] = []
        self.draining = True  # the thread owns the socket until the head and replay are out
        self.closed = False
        self.reason = ""
        self.peer = peer
        self.address = address  # what --max-clients-per-address counts (None: not counted)

    # -- the publisher's side ------------------------------------------------------------------

    def deliver(self, event: StoredEvent) -> None:
        """Send now if the socket takes it, else queue for the subscriber's thread."""
        data = event.chunk if self.chunked else event.payload
        with self.lock:
            if self.closed:
                return
            if self.draining:
                if len(self.backlog) >= self.max_queue:
                    self._drop(f"too slow, {self.max_queue} events waiting")
                    return
                self.backlog.append(data)
                self._raise_signal()
                return
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError):  # the socket (or TLS) buffer is full
                sent = 0
            except OSError as error:  # EPIPE, ECONNRESET: the client has gone
                self._drop(f"gone ({error.strerror or error})")
                return
            if sent < len(data):
                self.backlog.append(data[sent:])
                self.draining = True
                self._raise_signal()

    # -- the subscriber's thread ---------------------------------------------------------------

    def stream(self, first: bytes, write_timeout: float) -> None:
        """Write `first` (retry, then the replay or a reset), then whatever the publisher could
        not, until the stream is closed; end it with the last chunk when the server stops."""
        self.sock.setblocking(False)
        write_all(self.sock, first, write_timeout)
        while not self.closed:
            backlog = self._take_backlog()
            if backlog:
                write_all(self.sock, b"".join(backlog), write_timeout)
            else:
                self.signal.acquire()  # sleep until raised; it stays lowered: the backlog is taken next
        if self.reason == "server shutting down" and self.chunked:
            write_all(self.sock, LAST_CHUNK, 1.0)  # a clean end: the stream is complete

    def _take_backlog(self) -> list[bytes]:
        """The bytes to write, or [] (and the socket goes back to the publisher) when none."""
        with self.lock:
            backlog, self.backlog = self.backlog, []
            if not backlog and not self.closed:
                self.draining = False
                self.signal.acquire(blocking=False)  # lower it: everything is written
            return backlog

    # -- the end -------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """End the stream: its thread wakes, writes what it must, and leaves."""
        with self.lock:
            if not self.closed:
                self.closed, self.reason = True, reason
                self._raise_signal()

    def drop(self, reason: str) -> None:
        """End the stream now, even in the middle of a write: the socket is shut down."""
        with self.lock:
            self._drop(reason)

    def _raise_signal(self) -> None:
        if self.signal.locked():
            self.signal.release()

    def _drop(self, reason: str) -> None:
        if not self.closed:
            self.closed, self.reason = True, reason
        self._raise_signal()
        try:  # a thread waiting to write to this socket wakes up with an error
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def write_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Write every byte to a non-blocking socket within `timeout` seconds, or raise
    TimeoutError (or OSError).  A selector waits for room only when the socket is full: it is
    created then, so a subscriber that keeps up costs no file descriptor of its own.
    (`selectors` picks epoll, kqueue or, on Windows, select: whatever the platform has.)"""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    selector = None
    try:
        while view:
            wait_for = selectors.EVENT_WRITE
            try:
                sent = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                sent = 0
            except ssl.SSLWantReadError:  # TLS must read something first (a renegotiation)
                sent, wait_for = 0, selectors.EVENT_READ
            view = view[sent:]
            if view:
                if selector is None:
                    selector = selectors.DefaultSelector()
                    selector.register(sock, wait_for)
                else:
                    selector.modify(sock, wait_for)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise TimeoutError(f"no progress writing for {timeout:g} s")
    finally:
        if selector is not None:
            selector.close()


class DepartureWatcher:
    """Notices at once that a subscriber left: one thread and one selector for every stream.

    A subscriber's thread sleeps on its signal, not on its socket, so on its own a threaded
    server learns that a client left only when a write to it fails: at the next event, or on a
    quiet stream at the next heartbeat (15 s).  Until then the departed client keeps its
    thread and its socket: the "zombie streams" users of SSE servers complain about most.

    An event stream carries nothing from the client after its request.  So a subscriber's
    socket that becomes readable means the client has left (EOF, or a reset), or broke that
    rule by sending more: either way its stream is over, and the watcher drops it, which wakes
    its thread.  One selector (`selectors`: epoll, kqueue or select(), whatever the platform
    has) watches them all: no timer, no poll and no thread per subscriber, and nothing at all
    while nobody leaves.  Heartbeats stay: only they find a client whose network vanished
    without a FIN, and they keep proxies from closing quiet streams (WHATWG HTML §9.2.7).

    Where select() is all there is (Windows), one selector watches at most `SELECT_CAPACITY`
    sockets; streams beyond that are found out by their next write, as before.
    """

    SELECT_CAPACITY = 500  # Windows' select() takes at most 512 sockets

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.capacity = self.SELECT_CAPACITY if selectors.DefaultSelector is selectors.SelectSelector else None
        self._selector = selectors.DefaultSelector()
        self._wakeup = socket.socketpair()  # a byte written here makes select() return
        self._wakeup[0].setblocking(False)
        self._selector.register(self._wakeup[0], selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="sse-departures", daemon=True)
        self._thread.start()

    def watch(self, subscriber: Subscriber) -> None:
        with self._lock:
            if self._closed:
                return
            if self.capacity is not None and len(self._selector.get_map()) > self.capacity:
                return
            try:
                self._selector.register(subscriber.sock, selectors.EVENT_READ, subscriber)
            except (KeyError, ValueError, OSError):  # already watched, or already closed
                return
            self._wakeup[1].send(b"\0")  # select() again, with this socket in the set

    def forget(self, subscriber: Subscriber) -> None:
        with self._lock:
            if not self._closed:
                try:
                    self._selector.unregister(subscriber.sock)
                except (KeyError, ValueError):
                    pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wakeup[1].send(b"\0")
        self._thread.join(timeout=5)
        self._selector.close()
        for sock in self._wakeup:
            sock.close()

    def _run(self) -> None:
        while True:
            try:
                ready = self._selector.select()
            except (OSError, ValueError):  # a socket closed while select() watched it
                self._forget_closed()
                continue
            for key, _ in ready:
                if key.data is None:  # the wakeup: new sockets to watch, or the end
                    try:
                        self._wakeup[0].recv(4096)
                    except BlockingIOError:
                        pass
                    if self._closed:
                        return
                    continue
                self.forget(key.data)
                key.data.drop(departure_reason(key.fileobj))

    def _forget_closed(self) -> None:
        with self._lock:
            for key in list(self._selector.get_map().values()):
                if key.fileobj.fileno() < 0:
                    self._selector.unregister(key.fileobj)


def departure_reason(sock: socket.socket) -> str:
    """Why a subscriber's socket became readable: a look at its next byte, left in place (the
    plain socket's recv: TLS cannot peek)."""
    try:
        data = socket.socket.recv(sock, 1, socket.MSG_PEEK)
    except BlockingIOError:
        return "it left"
    except OSError as error:
        return f"its connection broke ({error.strerror or error})"
    return "it closed its end of the connection" if not data else "it sent bytes after its request"


#: What a `reset` event says when a shared store lost its history (see RedisHistory).
HISTORY_LOST = "Events may have been missed: the shared event store lost its history (Redis restarted or was emptied)."


class Hub:
    """Numbers, keeps and fans out events.

    Two locks, so that nothing slow happens where subscribers wait.  `_publishing` orders the
    publishers: one at a time, an event is numbered and stored (an SQLite insert may wait for
    the disk).  `_lock` orders what is fast: the event joins the history and goes to every
    subscriber, and a new subscriber is added between two events, never during one.  So each
    subscriber sees ids in order, replay + live has no gap and no duplicate, and an event is
    acknowledged, replayed and sent if and only if it was stored.
    """

    def __init__(self, history: History, *, max_clients: int = DEFAULT_MAX_CLIENTS,
                 max_queue: int = DEFAULT_MAX_QUEUE, trace: bool = False,
                 max_clients_per_address: int = DEFAULT_MAX_CLIENTS_PER_ADDRESS) -> None:
        self.history = history
        self.max_clients = max_clients
        self.max_clients_per_address = max_clients_per_address
        self._per_address: collections.Counter[str] = collections.Counter()  # open streams by address
        self.max_queue = max_queue
        self.trace = trace
        self._publishing = threading.Lock()
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()  # replaced, never mutated: cheap to iterate
        self._emptied = threading.Condition(threading.Lock())
        self._closed = False
        self.departures = DepartureWatcher()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, sock: socket.socket, *, chunked: bool, last_event_id: str | None,
                  peer: str = "", address: str | None = None) -> tuple[Subscriber, list[StoredEvent]]:
        """Add a subscriber; return it and its first events (`first_events`, I.5: what it
        missed since `last_event_id`, or a `reset` event when that id cannot be resumed), found
        under the lock, between two events.  TooManyStreams when `max_clients` are already
        open, or `max_clients_per_address` from `address`; ShuttingDown once the hub is closed."""
        position = None if last_event_id is None else self.history.parse_id(last_event_id)
        if position is not None:
            self.history.catch_up(position)  # (outside the lock: deliveries go on meanwhile)
        with self._lock:
            if self._closed:
                raise ShuttingDown
            if len(self._subscribers) >= self.max_clients:
                raise TooManyStreams(f"the server is full ({self.max_clients} streams open)")
            # Loopback is not capped per address: on this machine it is a test, a benchmark, or a
            # proxy without --trusted-proxy, whose clients all come from 127.0.0.1 (as in the chat).
            if (address is not None and self._per_address[address] >= self.max_clients_per_address
                    and not ws_server.is_loopback_name(address)):
                raise TooManyStreams(f"{self.max_clients_per_address} streams are already open from this address")
            first = first_events(self.history, last_event_id)
            subscriber = Subscriber(sock, chunked, self.max_queue, peer, address)
            self._subscribers += (subscriber,)
            if address is not None:
                self._per_address[address] += 1
        self.departures.watch(subscriber)
        return subscriber, first

    def history_lost(self) -> None:
        """The shared store lost events (RedisHistory): every subscriber may have missed some,
        so every subscriber gets a reset, and nothing kept before can be resumed from."""
        with self._lock:
            self.history.forget()
            reset = reset_event(self.history, HISTORY_LOST)
            for subscriber in self._subscribers:
                subscriber.deliver(reset)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.departures.forget(subscriber)
        with self._lock:
            if subscriber in self._subscribers and subscriber.address is not None:
                self._per_address[subscriber.address] -= 1
                if not self._per_address[subscriber.address]:
                    del self._per_address[subscriber.address]
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
        with self._emptied:
            self._emptied.notify_all()

    def publish(self, data: str, event: str | None = None) -> int | str:
        """Number, store, keep and send one event to every subscriber; return its id.

        StoreError when the store cannot keep it: then it is not sent, not kept, and its id
        goes to the next event.  ValueError for an event name that cannot be sent (see
        `format_event`).  A shared history (--redis) is only stored into here: every process,
        this one too, gets the event back from it and delivers it then (`deliver`)."""
        with self._publishing:
            stored = self.history.store(data, event)
            if not self.history.shared:
                self.deliver(stored)
        return stored.id

    def deliver(self, stored: StoredEvent) -> None:
        """Keep a stored event and send it to every subscriber, between two subscriptions."""
        with self._lock:
            self.history.append(stored)
            for subscriber in self._subscribers:
                subscriber.deliver(stored)
            count = len(self._subscribers)
        if self.trace:
            log.info("event %s to %d subscribers: %r", stored.id, count, stored.payload)

    def tick(self, data: str) -> None:
        """The clock's tick.  In one process it is an event like a publish.  With a shared
        history each process ticks for its own subscribers (so one tick a second each, however
        many processes), with no id and not kept: a tick a second old is not worth replaying,
        and a client's Last-Event-ID stays that of the last real event (WHATWG HTML §9.2.6: no
        id field, no change)."""
        if self.history.shared:
            self._send_to_all(StoredEvent.from_payload(0, format_event(data).encode()))
        else:
            self.publish(data)

    def send_comment(self, text: str) -> None:
        """A comment to every subscriber: not numbered, not kept (a heartbeat)."""
        self._send_to_all(StoredEvent.from_payload(0, format_comment(text).encode()))

    def _send_to_all(self, event: StoredEvent) -> None:
        with self._lock:
            for subscriber in self._subscribers:
                subscriber.deliver(event)

    def close(self, timeout: float = 2.0) -> None:
        """Wake every subscriber's thread to end its stream; wait for them (bounded)."""
        with self._lock:
            self._closed = True
            subscribers = self._subscribers
        for subscriber in subscribers:
            subscriber.close("server shutting down")
        if not self.wait_empty(timeout):
            for subscriber in self._subscribers:  # stuck writing to a client that does not read
                subscriber.drop("server shutting down")
            self.wait_empty(1.0)
        self.departures.close()

    def wait_empty(self, timeout: float) -> bool:
        with self._emptied:
            return self._emptied.wait_for(lambda: not self._subscribers, timeout)


# ---------------------------------------------------------------------------------------------
# II.5 The history on disk: SQLite (--store FILE)
# ---------------------------------------------------------------------------------------------

#: How long opening an SQLite store may wait for a lock another process holds, before it is
#: reported as in use (see `SQLiteHistory`).
STORE_LOCK_WAIT = 1.0


class SQLiteHistory(History):
    """The history, also kept in an SQLite file (`--store`), so that a restarted server still
    replays what its clients missed, and continues the ids.

    One store belongs to one server process.  Two servers numbering events in one file would
    hand out the same ids and refuse each other's inserts, so the file is opened in SQLite's
    EXCLUSIVE locking mode and locked at once: a second server is refused at its start, on
    every platform (SQLite does the locking; no `fcntl` needed).  Several processes need a
    shared bus instead of a shared file.  Every error names the file.
    """

    COLUMNS = [("id", "INTEGER"), ("payload", "BLOB")]

    def __init__(self, path: str, maxlen: int) -> None:
        self.path = path
        self._maxlen = maxlen
        self._db: sqlite3.Connection | None = None
        try:
            # One connection, used by one publisher at a time (the hub's publishing lock).
            self._db = sqlite3.connect(path, timeout=STORE_LOCK_WAIT, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before the first access
            self._db.execute("PRAGMA journal_mode=WAL")  # no fsync per event; a crash loses little
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN EXCLUSIVE")  # takes the lock now, and keeps it
            self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
            self._db.execute("COMMIT")
            columns = [(row[1], row[2].upper()) for row in self._db.execute("PRAGMA table_info(events)")]
            if columns != self.COLUMNS:
                raise StoreError(f"{path}: not an event store (its table 'events' has the columns "
                                 f"{', '.join(name for name, _ in columns)})")
            rows = self._db.execute("SELECT id, payload FROM events ORDER BY id DESC LIMIT ?", (maxlen,)).fetchall()
        except sqlite3.OperationalError as error:
            self.close()
            if "locked" in str(error):
                raise StoreError(f"{path}: in use by another server process; one store belongs to one "
                                 f"process (several processes need a shared bus, not a shared file)") from None
            if "readonly" in str(error) or "unable to open" in str(error) or "disk I/O" in str(error):
                raise StoreError(f"{path}: cannot be opened for writing ({error}): can this user write "
                                 "to the file and to its folder?") from None
            raise StoreError(f"{path}: {error}") from None
        except sqlite3.Error as error:  # "file is not a database", ...
            self.close()
            raise StoreError(f"{path}: {error}") from None
        except StoreError:
            self.close()
            raise
        super().__init__(maxlen, rows[0][0] + 1 if rows else None)
        self._events.extend(StoredEvent.from_payload(id, payload) for id, payload in reversed(rows))

    def store(self, data: str, event_name: str | None = None) -> StoredEvent:
        """Number the event, INSERT it (and now and then trim old ones) in one transaction."""
        event = super().store(data, event_name)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO events (id, payload) VALUES (?, ?)", (event.id, event.payload))
            if event.id % 256 == 0:  # trim now and then, not at every event
                db.execute("DELETE FROM events WHERE id <= ?", (event.id - self._maxlen,))
            db.execute("COMMIT")
        except sqlite3.Error as error:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise StoreError(f"{self.path}: the event could not be stored ({error})") from None
        return event

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


# ---------------------------------------------------------------------------------------------
# II.6 Several processes: the history in a Redis stream (--redis URL)
# ---------------------------------------------------------------------------------------------
#
# One process keeps its history itself.  Several processes behind one address must agree on
# one sequence of events, so that a client may reconnect to any of them with its Last-Event-ID.
# With --redis that sequence is a Redis stream (ws_server.py II.8 has the protocol):
#
#   publish  = XADD push:events MAXLEN ~ <history> * data <text> [event <name>]
#              -> the entry's id ("1733040000000-0"), which becomes the event's id; 204 only then
#   fan-out  = one reader thread per process: XREAD BLOCK from the last id it read
#              -> every entry, in the stream's order, to this process's subscribers
#
# A process does not send its own publishes directly: it reads them back like every other
# entry, so every subscriber of every process sees the same events in the same order.  The
# reader keeps the last `--history` entries it read; a reconnecting client is answered from
# them under the hub's lock, so nothing falls between its replay and its live events.  Its id
# must name an entry that this process read: a well-formed id that is not there (trimmed
# away, or from before Redis restarted empty: a newer stream reuses the same kind of ids) gets
# the `reset` event, never a guess.

EVENT_STREAM = "push:events"
READ_BLOCK_MS = 1000  # XREAD BLOCK: how long one read waits; the reader notices a stop this fast

# What comes back from Redis is input like any request: anyone who can write to the Redis (or
# a process of another version) may XADD an entry with no `data`, bytes that are not UTF-8,
# an `event` with a line break or the name `reset`, or megabytes.  Each entry read is checked
# (`entry_event`) against what this server's own publish would accept; one that fails is
# skipped (the reader moves past it) and logged once, with its id, and never stops the reader
# or a start.


class BadEntry(SSEError):
    """An entry of the event stream that this server would never have written: skipped."""


def entry_event(entry_id: str, fields: dict[bytes, bytes], max_body: int = DEFAULT_MAX_BODY,
                max_name: int = DEFAULT_MAX_HEADER_BYTES) -> StoredEvent:
    """The event of one stream entry, checked like a publish (II.3): its fields `data` and
    maybe `event` and nothing else, UTF-8, data not empty and at most `max_body` bytes (--max-
    body), a name that `check_event_name` accepts and at most `max_name` bytes (it came from a
    request head), an id that is a stream id.  BadEntry, saying why, otherwise."""
    if ws_server.stream_id(entry_id) is None:
        raise BadEntry("its id is not a stream id")
    other = sorted(name.decode("latin-1") for name in fields if name not in (b"data", b"event"))
    if other:
        raise BadEntry(f"fields this server does not write ({', '.join(other)[:100]})")
    data, event = fields.get(b"data"), fields.get(b"event")
    if not data:
        raise BadEntry("no data" if data is None else "empty data")
    if len(data) > max_body:
        raise BadEntry(f"its data has {len(data)} bytes, over --max-body ({max_body})")
    if event is not None and len(event) > max_name:
        raise BadEntry(f"its event name has {len(event)} bytes, over {max_name}")
    try:
        text, name = data.decode("utf-8"), None if event is None else event.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEntry("it is not UTF-8 text") from None
    if name is not None:
        reason = check_event_name(name)
        if reason is not None:
            raise BadEntry(reason)
    return StoredEvent.numbered(entry_id, text, name)


class BlockingRedis:
    """One blocking connection to Redis (for threads), over ws_server's RESP codec.

    Each command has a deadline (`timeout`, to connect and for the whole reply); a failure
    closes the connection and raises RedisError, and the next command connects again, no
    sooner than `backoff` after a failed attempt.  One command at a time (a lock)."""

    def __init__(self, address: ws_server.RedisAddress, timeout: float = ws_server.DEFAULT_REDIS_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._parser = ws_server.RESPParser()
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.1
        self._closed = False

    def command(self, *arguments: bytes | str | int) -> ws_server.Reply:
        """Send one command, return its reply; RedisReplyError for an error reply, RedisError
        if Redis cannot be reached or does not answer in time."""
        with self._lock:
            sock = self._connected()
            try:
                reply = self._exchange(sock, arguments)
            except (OSError, ws_server.RedisError) as error:
                self._disconnect()
                if isinstance(error, socket.timeout):
                    raise ws_server.RedisError(f"Redis did not answer {arguments[0]} within {self.timeout:g} s") from None
                raise ws_server.RedisError(f"lost Redis during {arguments[0]}: {error}") from None
        if isinstance(reply, ws_server.RedisReplyError):
            raise reply
        return reply

    def _exchange(self, sock: socket.socket, arguments: tuple) -> ws_server.Reply:
        deadline = time.monotonic() + self.timeout
        sock.settimeout(self.timeout)
        sock.sendall(ws_server.encode_command(*arguments))
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(ws_server.READ_SIZE)
            if not data:
                raise ws_server.RedisError("Redis closed the connection")
            replies = self._parser.feed(data)
            if len(replies) > 1:
                raise ws_server.RedisError("more replies than commands")
            if replies:
                return replies[0]

    def _connected(self) -> socket.socket:
        if self._closed:
            raise ws_server.RedisError("the Redis client is closed")
        if self._sock is not None:
            if not self._closed_by_peer(self._sock):
                return self._sock
            self._disconnect()
        if time.monotonic() < self._retry_at:
            raise ws_server.RedisUnreachable(f"Redis at {self.address} is unreachable (retrying)")
        try:
            tls = self.address.tls_context()
            sock = socket.create_connection((self.address.host, self.address.port), timeout=self.timeout)
            if tls is not None:  # rediss://: the handshake, within the same timeout
                try:
                    sock = tls.wrap_socket(sock, server_hostname=self.address.host)
                except OSError:
                    sock.close()
                    raise
        except OSError as error:  # (ssl.SSLError too: a certificate refused)
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 2.0)
            raise ws_server.RedisUnreachable(f"cannot reach Redis at {self.address}: "
                                             f"{error or 'timed out'}") from None
        self._sock, self._parser = sock, ws_server.RESPParser()
        self._backoff = 0.1
        try:
            for setup in self.address.setup_commands():  # AUTH, SELECT: before anything else
                reply = self._exchange(sock, setup)
                if isinstance(reply, ws_server.RedisReplyError):
                    raise ws_server.RedisError(f"Redis refused {setup[0]}: {reply}")
        except (OSError, ws_server.RedisError) as error:
            self._disconnect()
            raise ws_server.RedisUnreachable(f"Redis at {self.address}: {error}") from None
        return sock

    @staticmethod
    def _closed_by_peer(sock: socket.socket) -> bool:
        """Between two commands Redis sends nothing: if the connection is readable, Redis closed
        it (it restarted, or dropped an idle client).  Then connect again before sending, rather
        than write a command into a dead connection and not know whether it ran."""
        readable, _, _ = select.select([sock], [], [], 0)  # (select() is on every platform)
        return bool(readable)

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def interrupt(self) -> None:
        """Wake a command blocked in another thread (XREAD BLOCK), for a shutdown: it fails."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # (close() alone does not wake a blocked recv)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.interrupt()
        with self._lock:
            self._disconnect()


class RedisHistory(History):
    """The history of every process sharing one Redis: the ids are the stream's entry ids.

    `store` is the XADD; `append` is called by the hub for each entry the reader (`follow`)
    reads back.  The positions a client can resume from are the ids kept here, and `base`: the
    position just before the oldest kept entry when nothing between them is missing (the
    entry that fell out of the window, or where reading started)."""

    shared = True

    def __init__(self, address: ws_server.RedisAddress, maxlen: int,
                 timeout: float = ws_server.DEFAULT_REDIS_TIMEOUT, stream: str = EVENT_STREAM,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        super().__init__(maxlen, first_id=0)
        self.address, self.maxlen, self.timeout, self.stream = address, maxlen, timeout, stream
        self.max_body = max_body  # entries with more data are skipped (entry_event)
        self._keys: collections.deque[tuple[int, int]] = collections.deque(maxlen=maxlen)
        self._base: tuple[int, int] | None = None
        self.position: str | None = None  # the last id read, where the next XREAD starts
        self._position_is_entry = False  # False for "0-0", and once Redis lost the entry
        self._changed = threading.Condition()  # the kept entries and the position
        self._commands = BlockingRedis(address, timeout)  # XADD, under the hub's publishing lock
        self._reader = BlockingRedis(address, timeout + READ_BLOCK_MS / 1000)

    def parse_id(self, last_event_id: str) -> tuple[int, int] | None:
        return ws_server.stream_id(last_event_id)

    def store(self, data: str, event: str | None = None) -> StoredEvent:
        """XADD the event; it is stored once Redis has answered with its id."""
        fields = ["data", data] + (["event", event] if event is not None else [])
        format_event(data, event=event)  # a name that cannot be sent is refused before it is kept
        if self.position is None:
            raise StoreError("the event was not stored: this process has not reached Redis yet")
        try:
            reply = self._commands.command("XADD", self.stream, "MAXLEN", "~", max(self.maxlen, 1), "*", *fields)
            return StoredEvent.numbered(reply.decode("ascii"), data, event)
        except ws_server.RedisUnreachable as error:
            raise StoreError(f"the event was not stored: {error}") from None  # (a client is told less)
        except (ws_server.RedisError, AttributeError, UnicodeDecodeError) as error:
            raise StoreError(f"the event was not confirmed by Redis ({error or 'an unexpected reply'}): "
                             f"it may still be sent, or not", STORE_UNCONFIRMED) from None

    def append(self, event: StoredEvent) -> None:
        key = ws_server.stream_id(event.id)
        with self._changed:
            if len(self._keys) == self.maxlen:  # the oldest falls out of the window
                self._base = self._keys[0] if self._keys else key
            self._events.append(event)
            self._keys.append(key)
            self.position, self._position_is_entry = event.id, True
            self._changed.notify_all()

    def newest_id(self) -> str:
        with self._changed:
            if self._events:
                return self._events[-1].id
            return "%d-%d" % self._base if self._base is not None else "0-0"

    def after(self, last_id: tuple[int, int]) -> list[StoredEvent] | None:
        with self._changed:
            if last_id == self._base:
                return list(self._events)
            index = bisect.bisect_left(self._keys, last_id)
            if index < len(self._keys) and self._keys[index] == last_id:
                return list(itertools.islice(self._events, index + 1, None))
            return None

    def catch_up(self, last_id: tuple[int, int]) -> None:
        """A client may come with an id this process has not read yet (it saw the entry on
        another process a moment ago): wait, a bounded time, for the reader to get there."""
        def reached() -> bool:
            position = ws_server.stream_id(self.position) if self.position else None
            return position is not None and position >= last_id
        with self._changed:
            self._changed.wait_for(reached, self.timeout)

    def forget(self) -> None:
        """The stream lost entries (Redis restarted empty, or was flushed, or trimmed past
        us), and this process cannot know which: no id from before can be resumed from, not
        even the last one read (another process may have read further, and its clients seen
        entries that are gone).  What remains is a new position, "0-<now in ms>", which no
        XADD * makes: the reset events carry it, and everything read from now on is after it."""
        with self._changed:
            self._events.clear()
            self._keys.clear()
            self._base = (0, time.time_ns() // 1_000_000)
            self._position_is_entry = False

    def follow(self, hub: Hub, stopping: threading.Event) -> None:
        """The reader thread: every entry of the stream to `hub.deliver`, in order, until
        `stopping`.  Redis going away is logged once; reading resumes by itself from the last
        id read, after checking that Redis still has that entry (`hub.history_lost` if not).
        An entry this server would not have written is skipped and logged (`entry_event`);
        anything else that goes wrong is logged and read past, with a growing pause if it
        repeats: nothing an entry holds ends this thread."""
        backoff, unreachable, failures = 0.1, self.position is None, 0
        while not stopping.is_set():
            entry_id = None  # the entry being handled, if the error is about one
            try:
                if self.position is None:
                    self._start()
                elif unreachable:
                    self._check_position(hub)
                if unreachable:
                    log.info("Redis is back: events go on after %s", self.position)
                    unreachable, backoff = False, 0.1
                reply = self._reader.command("XREAD", "COUNT", 1000, "BLOCK", READ_BLOCK_MS,
                                             "STREAMS", self.stream, self.position)
                entries = ws_server.read_entries(reply)
                for entry_id, fields in entries:
                    event = self.checked_event(entry_id, fields)
                    if event is None:
                        self.skip(entry_id)
                    else:
                        hub.deliver(event)
                entry_id = None
                if not entries:  # a quiet second: is the stream still the one we read (a FLUSHALL)?
                    self._check_position(hub)
                failures = 0
            except ws_server.RedisError as error:
                if stopping.is_set():
                    break
                if not unreachable:
                    log.warning("the event stream's Redis is unreachable: %s (reconnecting)", error)
                    unreachable = True
                stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as error:  # a bug, or an entry no check foresaw: never the end of reading
                if stopping.is_set():
                    break
                failures += 1
                where = f" at entry {ws_server.escape_controls(entry_id)}, skipped" if entry_id else ""
                log.error("the Redis reader failed%s: %s (going on)", where,
                          ws_server.escape_controls(f"{type(error).__name__}: {error}"))
                if entry_id is not None:
                    self.skip(entry_id)
                stopping.wait(min(0.1 * 2 ** min(failures - 1, 5), 2.0))  # repeated: a growing pause

    def checked_event(self, entry_id: str, fields: dict[bytes, bytes]) -> StoredEvent | None:
        """The entry's event (`entry_event`), or None, logged with the entry's id, when it is
        not one this server would have written."""
        try:
            return entry_event(entry_id, fields, self.max_body)
        except BadEntry as error:
            log.warning("skipped the event stream's entry %s: %s", ws_server.escape_controls(entry_id[:60]),
                        ws_server.escape_controls(str(error)))
            return None

    def skip(self, entry_id: str) -> None:
        """Read past an entry without keeping it: the next XREAD starts after it."""
        with self._changed:
            self.position, self._position_is_entry = entry_id, True
            self._changed.notify_all()

    def start_reading(self) -> None:
        """Where reading starts (`_start`), once; if Redis cannot be reached yet (or answers
        something unexpected), the reader thread keeps trying, and publishing waits for it."""
        try:
            self._start()
        except ws_server.RedisError as error:
            log.warning("the event stream's Redis is unreachable: %s (retrying)", error)
        except Exception as error:  # never the end of a start: the reader tries again
            log.error("reading the event stream failed: %s (retrying)",
                      ws_server.escape_controls(f"{type(error).__name__}: {error}"))

    def _start(self) -> None:
        """Keep the newest `maxlen` entries already in the stream, for clients that resume;
        read from the newest on (an empty stream: from the beginning, "0-0")."""
        newest = ws_server.stream_entries(self._reader.command("XREVRANGE", self.stream, "+", "-",
                                                               "COUNT", max(self.maxlen, 1)))
        with self._changed:
            for entry_id, fields in reversed(newest[:self.maxlen]):
                event = self.checked_event(entry_id, fields)
                if event is not None:  # a bad entry is skipped at start too: it never stops one
                    self._events.append(event)
                    self._keys.append(ws_server.stream_id(entry_id))
            self.position, self._position_is_entry = (newest[0][0], True) if newest else ("0-0", False)
            if not newest or not self.maxlen:
                self._base = ws_server.stream_id(self.position)
            self._changed.notify_all()

    def _check_position(self, hub: Hub) -> None:
        """After a new connection: is the last entry read still there?  If Redis restarted
        empty (or was flushed, or trimmed what this process had not read yet), it is not, and
        events may have been missed: every subscriber is told, and reading goes on from here."""
        if not self._position_is_entry:
            return  # nothing read since the start or since the last loss: nothing to lose
        found = self._reader.command("XRANGE", self.stream, self.position, self.position)
        if not ws_server.stream_entries(found):
            log.warning("Redis no longer has event %s (restarted empty, flushed or trimmed): "
                        "subscribers get a reset", self.position)
            hub.history_lost()

    def close(self) -> None:
        self._reader.close()
        self._commands.close()


# ---------------------------------------------------------------------------------------------
# II.7 The HTTP handler: one thread per connection
# ---------------------------------------------------------------------------------------------


#: The answer to plain HTTP on the TLS port (ws_server.plain_http_answer): there is no wss:// here.
PLAIN_HTTP_ON_TLS = "this port speaks TLS: use https://"


def peek_first_bytes(sock: socket.socket, deadline: float) -> tuple[str | None, bytes]:
    """What a connection to the TLS port begins with (`ws_server.sniff_tls_port`): ("tls", ...)
    with nothing taken from the socket, for the TLS library to read; ("http" or "neither",
    the bytes); (None, b"") if nothing came before `deadline` or the client closed."""
    taken = b""
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            peeked = sock.recv(ws_server.SNIFF_SIZE - len(taken), socket.MSG_PEEK)
        except TimeoutError:
            return None, taken
        if not peeked:
            return None, taken
        verdict = ws_server.sniff_tls_port(taken + peeked)
        if verdict is not None:
            return verdict, taken + peeked
        # Only letters so far: not TLS whatever follows, so they may be taken, and the next
        # peek waits for more (peeking again at the same bytes would not wait).
        taken += sock.recv(len(peeked))


def answer_and_drain(sock: socket.socket, answer: bytes, deadline: float) -> None:
    """Send `answer`, end our side, and read what the client still sends (a second at most, 64
    KiB at most): closing with its request unread would make the kernel reset the connection,
    and the client could lose the answer (RFC 9112 §9.6)."""
    try:
        sock.settimeout(max(deadline - time.monotonic(), 1.0))
        sock.sendall(answer)
        sock.shutdown(socket.SHUT_WR)
        until, drained = time.monotonic() + 1.0, 0
        while drained < 65536 and (remaining := until - time.monotonic()) > 0:
            sock.settimeout(remaining)
            data = sock.recv(4096)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass


def read_request_head(sock: socket.socket, unread: bytes, max_bytes: int,
                      timeout: float) -> tuple[bytes, bytes] | None:
    """Read one request head from a blocking socket: (head, the bytes after it), or None when
    the client sent nothing (it closed, or an idle keep-alive connection timed out).

    `timeout` bounds the whole head, not each read: a slowloris client that sends one byte a
    second is dropped after `timeout` seconds all the same (408).  The threaded twin of
    `ws_server.read_http_head`, with the same rules and the same `find_end_of_head`."""
    deadline = time.monotonic() + timeout
    buffer, start = unread, 0
    while True:
        found = ws_server.find_end_of_head(buffer, start)
        if found is not None:
            return buffer[:found[0]], buffer[found[1]:]
        if len(buffer) > max_bytes:
            raise HTTPError(431, f"request head over {max_bytes} bytes")
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(max_bytes + 4 - len(buffer))
        except TimeoutError:
            chunk = None
        if not chunk:
            ws_server.no_head_received(buffer, timed_out=chunk is None)
            return None
        start = max(0, len(buffer) - 3)
        buffer += chunk


#: The query parameter of an access link, in a logged request line: its value is replaced.
_ACCESS_IN_QUERY = re.compile(r"([?&]%s=)[^&#\s]*" % re.escape(ws_server.ACCESS_PARAMETER), re.IGNORECASE)


def loggable_request_line(line: str) -> str:
    """A request line for the log: the token of an access link (`?access=TOKEN`) replaced, and
    control characters escaped (a request line is the client's text)."""
    return ws_server.escape_controls(_ACCESS_IN_QUERY.sub(r"\1[redacted]", line))


def capacity_retry(retry: int) -> int:
    """The `retry:` of a stream refused for capacity: `CAPACITY_RETRY_FACTOR` times --retry,
    at least `MIN_CAPACITY_RETRY` ms."""
    return max(CAPACITY_RETRY_FACTOR * retry, MIN_CAPACITY_RETRY)


def come_back_later(retry: int, reason: str) -> bytes:
    """The body of a stream refused for capacity (see `CAPACITY_RETRY_FACTOR`): the `retry:`
    to wait, a comment saying why, and nothing else: the stream ends there, and an EventSource
    reconnects after the wait, as after any end of a stream (WHATWG HTML §9.2.3)."""
    return (format_retry(capacity_retry(retry)) + format_comment(f"refused: {reason}; come back later")).encode()


# Who may do what (ws_server's `AccessRules`, II.9 there; the checks run in `handle_one_request`,
# `do_OPTIONS`, `_stream` and `_publish`):
#
#   every request       the Host (DNS rebinding): on loopback only loopback's names, and
#                       --allowed-host's; 421 otherwise.  A `?access=TOKEN` link: 303 with the cookie.
#   the stream          any page may read it (CORS `*`, never with credentials) unless
#                       --allow-origin names the pages that may: 403 for the others.  With
#                       --access-token: the token, in the cookie or as a Bearer token (401).
#   POST /publish       only this server's own pages and --allow-origin's (403 for any other
#   and its preflight   Origin: a form or a no-cors fetch needs no preflight, so CORS alone
#                       would publish it); with --publish-token, `Authorization: Bearer` with it
#                       (401), else with --access-token, the access token (401).  No Origin: not a
#                       browser's page (curl), allowed.
#   the pages           served to anyone: they hold no secret.


class SSERequestHandler(BaseHTTPRequestHandler):
    """`GET /sse`: the stream.  `POST /publish`: an event for all.  `OPTIONS`: CORS preflight.
    Other GET and HEAD: static files.  HTTP/1.1, so the publisher's connection is kept alive.

    http.server's own request parser is not used: it falls back to HTTP/0.9 (an answer with no
    status line) for a version it does not know, takes `Host : x`, two Hosts or none, and
    bounds each read of a head but not the whole of it.  Every head is read by
    `read_request_head` and parsed by `ws_server.parse_request`, the strict parser both servers
    share; every refusal, from there or from the pure checks (I.6, II.3), is an `HTTPError`
    answered in one place, `refuse`.
    """

    protocol_version = "HTTP/1.1"
    server_version = "sse_server"  # the Server header (RFC 9110 §10.2.4): the name, no versions (`version_string`)
    default_request_version = "HTTP/1.1"  # so that even a refusal of a garbled head has a status line
    rbufsize = 0  # requests are read from the socket by read_request_head, not through rfile
    server: SSEServer

    def setup(self) -> None:
        self.tls_ready = self.server.config.tls is None or self._start_tls()
        super().setup()
        self.unread = b""  # what the client sent after the last request: the next one begins it
        self.request_head: ws_server.Request | None = None
        self.body_left = 0  # the request's body not read yet: 0, a length, or None (chunked)

    def _start_tls(self) -> bool:
        """With TLS, before anything else, in this thread, within --request-timeout: look at the
        first bytes without taking them (MSG_PEEK, on every platform), then the handshake, with
        the context in use now (SIGHUP may have replaced it).  Plain HTTP gets a 400 saying to
        use https://; a client that sends nothing, or not TLS, or refuses the certificate, is
        one log line.  The slot taken in `SSEServer.verify_request` is given back here."""
        raw, address = self.request, self.client_address[0]
        deadline = time.monotonic() + self.server.config.request_timeout
        try:
            verdict, first = peek_first_bytes(raw, deadline)
            if verdict == "http":
                log.info("plain HTTP from %s on the TLS port: answered 400 (use https://)", address)
                answer_and_drain(raw, ws_server.plain_http_answer(PLAIN_HTTP_ON_TLS), deadline)
                return False
            if verdict != "tls":
                log.info("TLS handshake with %s failed: %s", address,
                         "no bytes in time" if verdict is None else f"neither TLS nor HTTP ({first!r})")
                return False
            wrapped = self.server.config.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            self.request = wrapped  # (wrap_socket took the descriptor over: `raw` is detached)
            wrapped.settimeout(max(deadline - time.monotonic(), 0.001))
            wrapped.do_handshake()
            return True
        except (OSError, ValueError) as error:
            log.info("TLS handshake with %s failed: %s", address, ws_server.tls_failure(error))
            return False
        finally:
            self.server.tls_slots.release(address)

    def handle(self) -> None:
        if self.tls_ready:
            super().handle()

    def finish(self) -> None:
        super().finish()
        if isinstance(self.request, ssl.SSLSocket):  # the server closes the socket it accepted, detached
            self.server.shutdown_request(self.request)

    def version_string(self) -> str:
        """The `Server` field without http.server's `Python/3.x.y`: RFC 9110 §10.2.4 warns that
        detail in it makes a server easier to attack (known holes of a known version), and a
        client needs none of it."""
        return self.server_version

    def address_string(self) -> str:
        """The client's address for the logs: the proxy's X-Forwarded-For if the proxy is trusted
        (--trusted-proxy), else the TCP peer's (see ws_server.client_address)."""
        forwarded_for = self.request_head.header("x-forwarded-for") if self.request_head else None
        return ws_server.client_address(self.client_address[0], forwarded_for, self.server.config.trusted_proxies)

    def handle_one_request(self) -> None:
        """Read one request within --request-timeout, parse it, dispatch to `do_<METHOD>`."""
        config = self.server.config
        self.close_connection = True
        self.request_head, self.body_left, self.command = None, 0, ""
        self.requestline, self.request_version = "", self.default_request_version
        try:
            received = read_request_head(self.connection, self.unread, config.max_header_bytes,
                                         config.request_timeout)
            if received is None:  # nothing was asked: nothing to answer
                return
            head, self.unread = received
            self.requestline = loggable_request_line(head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1"))
            request = ws_server.parse_request(head, config.max_header_lines)
            self.request_head, self.command, self.path = request, request.method, request.target
            self.request_version = "HTTP/%d.%d" % request.version
            self.body_left = ws_server.body_length(request)  # until it is known, the connection cannot go on
            # RFC 9112 §9.3: HTTP/1.1 keeps the connection unless told otherwise; a body nobody
            # reads ends it too (its bytes would be read as the next request).
            self.close_connection = ("close" in request.tokens("connection") or request.version < (1, 1)
                                     or (self.body_left != 0 and (request.method, request.path) != ("POST", PUBLISH_PATH)))
            access = self.server.access
            access.check_host(request)  # first, for every request: DNS rebinding (421)
            method = getattr(self, f"do_{request.method}", None)
            if method is None:
                raise HTTPError(501, f"method {request.method} is not implemented", [("Allow", ALLOWED_METHODS)])
            link = access.access_link_answer(request, secure=self.server.config.tls is not None)
            if link is not None:  # ?access=TOKEN: the cookie set, and the same path without it
                self.close_connection = True
                log.info("access granted to %s by its link", self.address_string())
                self._write(link)
                return
            method()
        except HTTPError as error:
            self.refuse(error)
        except OSError:  # the client went away or stopped reading; nobody is left to answer
            self.close_connection = True
        finally:
            self.wfile.flush()

    # -- dispatch (handle_one_request calls do_<METHOD>) -----------------------------------------

    def do_GET(self) -> None:
        if self.request_head.path in STREAM_PATHS:
            self._stream()
        else:
            self._static()

    def do_HEAD(self) -> None:
        if self.request_head.path in STREAM_PATHS:
            raise HTTPError(405, "the stream is GET only", [("Allow", "GET, OPTIONS")])
        self._static()

    def do_POST(self) -> None:
        path = self.request_head.path
        if path == PUBLISH_PATH:
            self._publish()
        elif path in STREAM_PATHS:
            raise HTTPError(405, f"POST goes to {PUBLISH_PATH}", [("Allow", "GET, OPTIONS")])
        else:
            raise HTTPError(404, f"POST goes to {PUBLISH_PATH}")

    def do_OPTIONS(self) -> None:
        """A CORS preflight (Fetch standard, "CORS protocol"): which methods and headers a page
        from another origin may use.  204 with the answer; browsers cache it for Max-Age s.
        For /publish, and for the stream with --allow-origin: 403 for a page not allowed."""
        path = self.request_head.path
        if path == PUBLISH_PATH or (path in STREAM_PATHS and self.server.config.allowed_origins):
            self.server.access.check_origin(self.request_head)
        self._send_head(204, [*preflight_headers(), ("Content-Length", "0")])

    # -- the stream ----------------------------------------------------------------------------

    def _stream(self) -> None:
        """WHATWG HTML §9.2.2: 200 with the event-stream type (`stream_headers`), then events
        until one side goes away."""
        config, request = self.server.config, self.request_head
        if config.allowed_origins:  # narrowed by --allow-origin; else any page may read it
            self.server.access.check_origin(request)
        self.server.access.check_access(request)
        chunked = request.version >= (1, 1)
        address = self.address_string()
        received = last_event_id(request)
        try:
            subscriber, first = self.server.hub.subscribe(self.connection, chunked=chunked,
                                                          last_event_id=received,
                                                          peer=address, address=address)
        except ShuttingDown:
            # No answer at all: to an EventSource a dropped connection means "reconnect later",
            # whereas a 503 would make it give up for good (WHATWG HTML §9.2.3).
            self.close_connection = True
            return
        except TooManyStreams as full:
            self._come_back_later(chunked, str(full))
            return
        self.close_connection = True  # the stream is the last thing on this connection
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each event goes now
            self._send_stream_head(chunked)
            log.info("subscriber %s joined%s (%d open)", subscriber.peer, describe_first(first),
                     self.server.hub.subscriber_count)
            # Right after `retry:`, a comment saying what the server received and answers
            # (`resumption_comment`); then the replay or the reset, then live events.
            opening = stream_opening(config.retry, [resumption_comment(received, first), *first], chunked)
            subscriber.stream(opening, config.write_timeout)
        except (OSError, TimeoutError) as error:
            subscriber.close(f"write failed ({error})")
        finally:
            self.server.hub.unsubscribe(subscriber)
            log.info("subscriber %s ended: %s (%d open)", subscriber.peer, subscriber.reason,
                     self.server.hub.subscriber_count)

    def _come_back_later(self, chunked: bool, reason: str) -> None:
        """Refused for capacity: not a 503, after which an EventSource never retries (WHATWG
        HTML §9.2.2), but a stream that says `retry:` and ends (`come_back_later`)."""
        self.close_connection = True
        log.info("refused a stream to %s: %s", self.address_string(), reason)
        self._send_stream_head(chunked)
        body = come_back_later(self.server.config.retry, reason)
        self._write(encode_chunk(body) + LAST_CHUNK if chunked else body)

    def _send_stream_head(self, chunked: bool) -> None:
        """The head of I.3 (`stream_headers`), with what `_send_head` adds to every answer,
        sent at once: the browser fires `onopen` on it, before any event."""
        self._send_head(200, stream_headers(chunked))
        self.wfile.flush()

    # -- publishing ----------------------------------------------------------------------------

    def _publish(self) -> None:
        """The body (UTF-8 text) becomes one event for every subscriber; `?event=NAME` names it.
        204 once the event is stored (and sent); 503 if it could not be."""
        config, request = self.server.config, self.request_head
        self.server.access.check_origin(request)  # before anything is read: a forged POST ends here
        self.check_publisher(request)
        event = publish_event_name(request.query)
        text = publish_text(self.read_body(config.max_body))
        try:
            self.server.hub.publish(text, event)
        except StoreError as error:
            log.warning("publish refused: %s", error)  # the details for the log, not for the client
            raise HTTPError(503, error.public) from None
        if "\r" in text:
            self._send_head(200, [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(LINE_BREAK_NOTICE)))])
            self._write(LINE_BREAK_NOTICE)
        else:
            self._send_head(204)

    def check_publisher(self, request: ws_server.Request) -> None:
        """With --publish-token: `Authorization: Bearer` with it, compared in constant time;
        else, with --access-token, the access token (cookie or Bearer); 401 otherwise."""
        token = self.server.config.publish_token
        if token is None:
            self.server.access.check_access(request)
        elif not ws_server.token_matches(ws_server.bearer_token(request), token):
            raise HTTPError(401, "publishing needs the publish token (Authorization: Bearer TOKEN)",
                            [("WWW-Authenticate", 'Bearer realm="publish"')])

    def read_body(self, max_body: int) -> bytes:
        """The request's body, whole (RFC 9112 §6.3): Content-Length bytes, or the chunked coding
        decoded (RFC 9112 §7.1); 413 past `max_body`, 408 past --request-timeout.

        RFC 9110 §10.1.1: a client that sent `Expect: 100-continue` waits for a `100 Continue`
        before it sends the body.  A body that is too large is refused before that, so it is
        never sent at all; an expectation other than 100-continue is 417."""
        length = self.body_left
        if length is not None and length > max_body:
            raise HTTPError(413, f"body over {max_body} bytes")
        expect = self.request_head.tokens("expect")
        if expect and expect != ["100-continue"]:
            raise HTTPError(417, "only Expect: 100-continue is understood")
        if expect and self.request_head.version >= (1, 1):
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline = time.monotonic() + self.server.config.request_timeout
        received, self.unread = self.unread, b""
        if length is None:
            decoder = ChunkedDecoder(max_body)
            chunks = decoder.feed(received)
            while not decoder.done:
                chunks += decoder.feed(self._receive_part_of_body(deadline))
            self.unread = decoder.unused
        else:
            chunks = [received[:length]]
            self.unread, got = received[length:], len(chunks[0])
            while got < length:
                data = self._receive_part_of_body(deadline)
                chunks.append(data[:length - got])
                self.unread, got = data[length - got:], got + len(chunks[-1])
        self.body_left = 0
        return b"".join(chunks)

    def _receive_part_of_body(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self.connection.settimeout(remaining)
            data = self.connection.recv(64 * 1024)
        except TimeoutError:
            raise HTTPError(408, "request body not received in time") from None
        if not data:
            self.close_connection = True
            raise HTTPError(400, "connection closed in the middle of the request body")
        return data

    # -- answers -------------------------------------------------------------------------------

    def refuse(self, error: HTTPError) -> None:
        """The one place a refusal becomes a response: the status, a one-line plain-text reason,
        and the CORS headers (so that a page from another origin can read why)."""
        if self.body_left != 0:  # a body left unread cannot be skipped: the connection ends
            self.close_connection = True
        log.info("refused %s: %s %s", self.address_string(), error.status, ws_server.escape_controls(error.reason))
        body = f"{error.status} {error.reason}\n".encode("utf-8")
        self._send_head(error.status, [("Content-Type", "text/plain; charset=utf-8"),
                                       ("Content-Length", str(len(body))), *error.headers])
        if self.command != "HEAD":
            self._write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals, should any come: through `refuse` too."""
        self.close_connection = True
        self.refuse(HTTPError(code, message or self.responses.get(code, ("error",))[0]))

    def _send_head(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.connection.settimeout(self.server.config.write_timeout)
        self.send_response(status)
        origin = self.request_head.header("origin") if self.request_head else None
        allowed = self.server.config.allowed_origins or ("*",)  # no --allow-origin: any page reads
        for name, value in [*headers, *cors_headers(origin, allowed)]:
            self.send_header(name, value)
        if self.close_connection and self.request_version >= "HTTP/1.1":
            self.send_header("Connection", "close")
        self.end_headers()

    def _write(self, data: bytes) -> None:
        """Write an answer (not a stream) with --write-timeout as the bound."""
        self.connection.settimeout(self.server.config.write_timeout)
        self.wfile.write(data)

    def _static(self) -> None:
        """`/` is the SSE page; other files from --static, with ws_server's traversal checks."""
        self.close_connection = True  # static_response answers with Connection: close
        self._write(ws_server.static_response(self.server.config.static, self.request_head, "sse.html"))

    def log_message(self, format: str, *args) -> None:
        """http.server's request log (with --trace): its request line is `requestline`, which
        `loggable_request_line` has cleaned; the rest is escaped too."""
        if self.server.config.trace:
            log.info("%s %s", self.address_string(), ws_server.escape_controls(format % args))


def describe_first(first: list[StoredEvent]) -> str:
    if len(first) == 1 and first[0].payload.startswith(b"event: reset\n"):
        return ", reset"
    return f", {len(first)} events replayed" if first else ""


def resumption_comment(last_event_id: str | None, first: list[StoredEvent]) -> StoredEvent:
    """What the server received and what it answers, said in the stream itself: a comment
    (WHATWG HTML §9.2.6: EventSource ignores it) written right after `retry:`, on every
    (re)connection.  A browser shows a page neither the `Last-Event-ID` it sent nor whether the
    server replayed or reset; a reader of the raw stream (the "On the wire" panel of sse.html,
    curl) sees both here:

        : no Last-Event-ID: live events from now
        : Last-Event-ID 1733456789000123 received: replaying 3 events, then live events
        : Last-Event-ID 12 is unknown here or older than the history kept: reset, then live events

    The id is the client's own text, cut to 100 characters, its control characters escaped."""
    if last_event_id is None:
        text = "no Last-Event-ID: live events from now"
    else:
        said = ws_server.escape_controls(last_event_id[:100]) or '""'
        if describe_first(first) == ", reset":
            text = f"Last-Event-ID {said} is unknown here or older than the history kept: reset, then live events"
        else:
            text = (f"Last-Event-ID {said} received: replaying {len(first)} "
                    f"event{'' if len(first) == 1 else 's'}, then live events")
    return StoredEvent.from_payload(0, format_comment(text).encode())


# ---------------------------------------------------------------------------------------------
# II.8 The server: the clock's thread, heartbeats, shutdown
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    static: str = str(ws_server.STATIC_DIR)
    retry: int = DEFAULT_RETRY
    heartbeat: float = DEFAULT_HEARTBEAT
    history: int = DEFAULT_HISTORY
    store: str | None = None
    allowed_origins: tuple[str, ...] = ()  # --allow-origin; none: any page reads, our own publish
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_body: int = DEFAULT_MAX_BODY
    max_queue: int = DEFAULT_MAX_QUEUE
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    clock: float = DEFAULT_CLOCK
    trace: bool = False
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_header_lines: int = DEFAULT_MAX_HEADER_LINES
    tls: ssl.SSLContext | None = None  # --certfile/--keyfile: https://
    trusted_proxies: tuple[str, ...] = ()  # --trusted-proxy
    redis: ws_server.RedisAddress | None = None  # --redis: the history shared by several processes
    redis_timeout: float = ws_server.DEFAULT_REDIS_TIMEOUT
    reuse_port: bool = False  # --reuse-port: several processes listen on one port (SO_REUSEPORT)
    allowed_hosts: tuple[str, ...] = ()  # --allowed-host: Host names answered besides loopback's
    publish_token: str | None = None  # --publish-token, or SSE_PUBLISH_TOKEN
    access_token: str | None = None  # --access-token, or ACCESS_TOKEN
    max_clients_per_address: int = DEFAULT_MAX_CLIENTS_PER_ADDRESS
    certfile: str | None = None  # where `tls` was loaded from: SIGHUP loads them again
    keyfile: str | None = None
    max_tls_handshakes: int = ws_server.DEFAULT_MAX_TLS_HANDSHAKES  # --max-tls-handshakes
    max_tls_handshakes_per_address: int = ws_server.DEFAULT_MAX_TLS_HANDSHAKES_PER_ADDRESS


def access_rules(config: ServerConfig, port: int) -> ws_server.AccessRules:
    """Who may reach this server (ws_server II.9): loopback only if bound there, its port, the
    Host names of --allowed-host, the origins of --allow-origin, the access token."""
    return ws_server.AccessRules(ws_server.listens_on_loopback(config.host), port, config.allowed_hosts,
                                 config.allowed_origins, config.access_token)


class SSEServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` with the hub, the clock and the heartbeat.

    `start()` runs it in background threads (tests); `main()` serves in the main thread.
    StoreError when the store cannot be opened.
    """

    daemon_threads = True  # request threads never keep the process alive; close() ends streams
    request_queue_size = 1024  # listen backlog: a thousand subscribers may connect at once

    def __init__(self, config: ServerConfig | None = None, history: History | None = None) -> None:
        self.config = config or ServerConfig()
        if history is None:  # another History may be given (the tests give one whose store fails)
            history = self.open_history(self.config)
        self.hub = Hub(history, max_clients=self.config.max_clients, max_queue=self.config.max_queue,
                       trace=self.config.trace, max_clients_per_address=self.config.max_clients_per_address)
        self._stopping = threading.Event()
        self._background: list[threading.Thread] = []
        self._reader: threading.Thread | None = None
        self.tls_slots = ws_server.HandshakeSlots(self.config.max_tls_handshakes,
                                                  self.config.max_tls_handshakes_per_address)
        try:
            super().__init__((self.config.host, self.config.port), SSERequestHandler)
        except OSError:
            history.close()
            raise
        self.access = access_rules(self.config, self.port)  # once the port is known

    def server_bind(self) -> None:
        if self.config.reuse_port:  # before bind: then other processes may bind the same port
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    @staticmethod
    def open_history(config: ServerConfig) -> History:
        if config.redis is not None:
            return RedisHistory(config.redis, config.history, config.redis_timeout, max_body=config.max_body)
        if config.store:
            return SQLiteHistory(config.store, config.history)
        return History(config.history)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls else "http"

    def verify_request(self, request: socket.socket, client_address: tuple) -> bool:
        """With TLS, a connection takes a handshake slot (`ws_server.HandshakeSlots`) before it
        gets its thread, or is closed at once: each one waiting for its handshake holds a thread
        (some 20 KiB), so their number is bounded, in all and per address (--max-tls-handshakes,
        --max-tls-handshakes-per-address).  The handler gives the slot back
        (`SSERequestHandler._start_tls`), which also does the handshake, in that thread."""
        if self.config.tls is None:
            return True
        if self.tls_slots.acquire(client_address[0]):
            return True
        self.tls_slots.note_full(log, "new connections are closed at once until some finish")
        return False

    def handle_error(self, request, client_address) -> None:
        """A client that resets or times out is routine: a log line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("%s: %s", client_address[0], error)
        else:
            log.exception("error while handling a request from %s", client_address[0])

    def start_background(self) -> None:
        """The clock and the heartbeat; with a shared history, its reader."""
        for interval, action, name in ((self.config.clock, self._tick, "clock"),
                                       (self.config.heartbeat, self._heartbeat, "heartbeat")):
            if interval > 0:
                thread = threading.Thread(target=run_every, args=(interval, action, self._stopping),
                                          name=name, daemon=True)
                thread.start()
                self._background.append(thread)
        if isinstance(self.hub.history, RedisHistory):
            self.hub.history.start_reading()  # before serving, so a first publish finds its place
            self._reader = threading.Thread(target=self.hub.history.follow, args=(self.hub, self._stopping),
                                            name="redis-reader", daemon=True)
            self._reader.start()

    def start(self) -> None:
        """Serve from a background thread (for tests and embedding)."""
        self.start_background()
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="sse-server", daemon=True)
        thread.start()
        self._background.append(thread)

    def _tick(self) -> None:
        """The clock's tick (I.4), for every open stream; a store that fails loses this tick,
        not the clock."""
        try:
            self.hub.tick(clock_message())
        except StoreError as error:
            log.warning("clock tick not sent: %s", error)

    def _heartbeat(self) -> None:
        """A comment to every stream (WHATWG HTML §9.2.7: every 15 s or so): proxies do not
        close a stream that carries traffic, and a client that vanished without a word is found
        out by the write that fails."""
        self.hub.send_comment("heartbeat")

    def stop(self) -> None:
        """End every stream (the last chunk), stop the timers and the listener."""
        self._stopping.set()
        if any(t.name == "sse-server" for t in self._background):
            self.shutdown()  # stops serve_forever running in the background thread
        self.server_close()  # no new clients first: they would find the hub closed
        self.hub.close()
        for thread in self._background:
            thread.join(timeout=5)
        self.hub.history.close()  # after the clock, which may be publishing; wakes the reader
        if self._reader is not None:
            self._reader.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# II.9 The client: python sse_server.py --connect URL
# ---------------------------------------------------------------------------------------------


class StreamFailed(SSEError):
    """WHATWG HTML §9.2.3 "fail the connection": a browser does not reconnect after this.  Also
    what retrying cannot mend: a certificate that fails verification, a name that does not
    resolve, a URL that is not http(s)."""


class LineTooLong(StreamFailed):
    """A line of the stream is longer than the client's `--max-line` (`EventStreamParser`)."""


#: The longest line the client keeps, in characters (--max-line): a browser has no limit.
DEFAULT_MAX_LINE = 1 << 20

#: The longest wait between two connections, whatever `retry:` the server sends: the field is
#: any number of digits (WHATWG HTML §9.2.6), and a wait of years is a client that hung.
MAX_RECONNECTION_TIME = 3600.0


#: Fetch's "HTTP-redirect fetch": the statuses that redirect, and at most 20 redirects.
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 20


def same_origin(first: str, second: str) -> bool:
    """Do two URLs have one origin (scheme, host, port: RFC 6454 §4)?"""
    a, b = urllib.parse.urlsplit(first), urllib.parse.urlsplit(second)
    default = {"http": 80, "https": 443}
    return (a.scheme, a.hostname, a.port or default.get(a.scheme)) == (b.scheme, b.hostname, b.port or default.get(b.scheme))


def open_stream(url: str, last_event_id: str = "", timeout: float | None = None, cafile: str | None = None,
                access_token: str | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET the stream the way EventSource does (WHATWG HTML §9.2.2, §9.2.3): redirects followed
    (EventSource fetches with redirect mode "follow"), Last-Event-ID sent UTF-8 encoded;
    StreamFailed unless 200 with the event-stream type.  https:// verifies the server's certificate and name
    (`cafile` for a private CA).  `access_token` is sent as `Authorization: Bearer`, to the
    first URL's origin only: a redirect elsewhere does not get it.  The caller closes the
    connection."""
    first_url = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise StreamFailed(f"not an http(s) URL: {url}")
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                     context=ws_server.client_tls_context(cafile))
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        headers: dict[str, str | bytes] = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id.encode("utf-8")  # http.client would send latin-1
        if access_token and same_origin(url, first_url):
            headers["Authorization"] = f"Bearer {access_token}"
        try:
            connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                               headers=headers)
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        location = response.getheader("Location")
        if response.status in REDIRECT_STATUSES and location:
            connection.close()
            url = urllib.parse.urljoin(url, location)
            continue
        essence = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if response.status != 200 or essence != "text/event-stream":
            connection.close()
            raise StreamFailed(f"{response.status} {response.reason}, Content-Type {essence or 'none'}")
        return connection, response
    raise StreamFailed(f"more than {MAX_REDIRECTS} redirects")


def read_events(response: http.client.HTTPResponse, parser: EventStreamParser) -> Iterator[ServerSentEvent]:
    """Every event of one connection, as it arrives; returns at the end of the stream."""
    while True:
        data = response.read1(64 * 1024)  # http.client removes the chunked framing
        if not data:
            return
        yield from parser.feed(data)


def follow(url: str, timeout: float | None = 60.0, cafile: str | None = None,
           max_line: int | None = DEFAULT_MAX_LINE, access_token: str | None = None) -> Iterator[ServerSentEvent]:
    """Events from `url` forever, reconnecting like a browser (WHATWG HTML §9.2.3): after the stream ends
    or breaks, wait the reconnection time (at most `MAX_RECONNECTION_TIME`), then ask again with
    Last-Event-ID.  A refusal (not 200 with the right type) raises StreamFailed: a browser gives
    up then too; so does what no retry can mend (`fatal_failure`)."""
    parser = EventStreamParser(max_line=max_line)
    while True:
        try:
            connection, response = open_stream(url, parser.last_event_id, timeout, cafile, access_token)
            try:
                log.info("connected to %s", url)
                yield from read_events(response, parser)
            finally:
                connection.close()
            log.info("stream ended")
        except (OSError, http.client.HTTPException) as error:
            fatal = fatal_failure(error, url)
            if fatal is not None:
                raise StreamFailed(fatal) from None
            log.info("connection lost: %s", error or type(error).__name__)
        delay = reconnection_delay(parser.retry)
        log.info("reconnecting in %g s with Last-Event-ID %r", delay, parser.last_event_id)
        time.sleep(delay)
        parser = EventStreamParser(parser.last_event_id, parser.retry, max_line)


def reconnection_delay(retry: int | None) -> float:
    """Seconds to wait before reconnecting: the stream's `retry` (ms), or the default, clamped to
    `MAX_RECONNECTION_TIME`."""
    return min((DEFAULT_RETRY if retry is None else retry) / 1000, MAX_RECONNECTION_TIME)


def fatal_failure(error: BaseException, url: str) -> str | None:
    """What a failed connection says when retrying cannot mend it; None when it may (a dropped
    or refused connection, a timeout: the server may be back soon)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"{url}: the server's certificate failed verification ({error.verify_message}); "
                "for a private CA, give its certificate with --cafile")
    if isinstance(error, ssl.SSLError):
        return f"{url}: TLS failed ({ws_server.tls_failure(error)}); is the server's port a TLS one?"
    if isinstance(error, socket.gaierror):
        return f"{url}: the host name does not resolve ({error.strerror or error})"
    return None


def event_lines(event: ServerSentEvent) -> str:
    """An event as the terminal client prints it: `[type] id='...' data`.  What the server sent
    is escaped (`ws_server.escape_controls`: ESC, BEL, CR ... as `\x1b`, `\x07`, `\r`), so that
    it cannot move the cursor, retitle the window or rewrite earlier lines; the one exception is
    the LF that joins the lines of multi-line data (WHATWG HTML §9.2.6), printed as a line
    break, each further line indented by four spaces so that it cannot pass for an event."""
    first, *rest = [ws_server.escape_controls(line) for line in event.data.split("\n")]
    head = f"[{ws_server.escape_controls(event.type)}] id={event.last_event_id!r} {first}"
    return "\n".join([head, *("    " + line for line in rest)])


def run_client(url: str, cafile: str | None = None, max_line: int = DEFAULT_MAX_LINE,
               access_token: str | None = None) -> None:
    for event in follow(url, cafile=cafile, max_line=max_line, access_token=access_token):
        print(event_lines(event), flush=True)


# ---------------------------------------------------------------------------------------------
# II.10 The command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Server-Sent Events server (the tutorial's clock, plus POST /publish), "
                    "or a terminal client with --connect.")
    parser.add_argument("--host", "--bind", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=ws_server.port_number, default=DEFAULT_PORT,
                        help=f"port to listen on, 0 for any free one (default: {DEFAULT_PORT})")
    parser.add_argument("--static", type=ws_server.existing_folder, default=str(ws_server.STATIC_DIR), metavar="DIR",
                        help="folder of the pages (default: static/)")
    parser.add_argument("--retry", type=int, default=DEFAULT_RETRY, metavar="MS",
                        help=f"reconnection time sent to clients (default: {DEFAULT_RETRY})")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT, metavar="S",
                        help=f"seconds between heartbeat comments, 0 to disable (default: {DEFAULT_HEARTBEAT:g})")
    parser.add_argument("--clock", type=float, default=DEFAULT_CLOCK, metavar="S",
                        help=f"seconds between clock events, 0 to disable (default: {DEFAULT_CLOCK:g})")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                        help=f"events kept for Last-Event-ID replay (default: {DEFAULT_HISTORY})")
    parser.add_argument("--store", metavar="FILE",
                        help="keep the history in this SQLite file, owned by this process (default: memory)")
    parser.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                        help="a page origin (scheme://host[:port]) allowed to publish and, once any is "
                             "given, the only ones allowed to read the stream; * for any (repeatable; "
                             "default: this server's own pages publish, any page reads)")
    parser.add_argument("--publish-token", metavar="TOKEN",
                        help="POST /publish needs Authorization: Bearer TOKEN "
                             f"(default: ${PUBLISH_TOKEN_VARIABLE}, else none)")
    parser.add_argument("--access-token", metavar="TOKEN",
                        help="the stream needs this token, in the cookie a link ?access=TOKEN sets or as "
                             f"Authorization: Bearer; with --connect, sent (default: ${ACCESS_TOKEN_VARIABLE}, else none)")
    parser.add_argument("--max-clients", type=int, default=DEFAULT_MAX_CLIENTS, metavar="N",
                        help=f"open streams; more are told to come back later (default: {DEFAULT_MAX_CLIENTS})")
    parser.add_argument("--max-clients-per-address", type=int, default=DEFAULT_MAX_CLIENTS_PER_ADDRESS, metavar="N",
                        help="open streams from one client address (behind a proxy: see --trusted-proxy) "
                             f"(default: {DEFAULT_MAX_CLIENTS_PER_ADDRESS})")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="N",
                        help=f"largest POST /publish body in bytes (default: {DEFAULT_MAX_BODY})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                        help=f"events waiting for a slow subscriber before it is dropped (default: {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--write-timeout", type=float, default=DEFAULT_WRITE_TIMEOUT, metavar="S",
                        help=f"seconds a write to a slow subscriber may take (default: {DEFAULT_WRITE_TIMEOUT:g})")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT, metavar="S",
                        help="seconds to receive a whole request head, and again its body "
                             f"(default: {DEFAULT_REQUEST_TIMEOUT:g})")
    parser.add_argument("--max-header-bytes", type=int, default=DEFAULT_MAX_HEADER_BYTES, metavar="N",
                        help=f"largest request head (default: {DEFAULT_MAX_HEADER_BYTES})")
    parser.add_argument("--max-header-lines", type=int, default=DEFAULT_MAX_HEADER_LINES, metavar="N",
                        help=f"most header lines in a request (default: {DEFAULT_MAX_HEADER_LINES})")
    ws_server.add_deployment_arguments(parser, "https://", "event stream")
    parser.add_argument("--trace", action="store_true", help="log every request and every event")
    parser.add_argument("--connect", metavar="URL", help="print the events of URL instead (reconnects)")
    parser.add_argument("--cafile", metavar="FILE",
                        help="with --connect https://...: trust the CA certificates in FILE (default: the system's)")
    parser.add_argument("--max-line", type=int, default=DEFAULT_MAX_LINE, metavar="N",
                        help=f"with --connect: the longest line of the stream kept, in characters "
                             f"(default: {DEFAULT_MAX_LINE})")
    return parser


def exposure_warnings(config: ServerConfig) -> list[str]:
    """What a server reachable from other machines (bound to anything but loopback) should be
    told at start: who can publish, and that any Host name is answered."""
    if ws_server.listens_on_loopback(config.host):
        return []
    warnings = []
    if config.publish_token is None and config.access_token is None:
        warnings.append(f"anyone who can reach {config.host or 'every address'} can publish: give "
                        f"--publish-token (or ${PUBLISH_TOKEN_VARIABLE}) to require a token")
    if not config.allowed_hosts:
        warnings.append("any Host name is answered: give --allowed-host with the name clients use "
                        "(against DNS rebinding)")
    return warnings


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("max_clients", "max_clients_per_address", "max_body", "max_queue", "max_header_bytes",
                 "max_header_lines", "max_line"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.history < 0 or args.retry < 0 or args.write_timeout <= 0 or args.request_timeout <= 0:
        parser.error("--history and --retry must be at least 0, --write-timeout and --request-timeout above 0")
    ws_server.check_deployment_arguments(parser, args)
    if args.redis and args.store:
        parser.error("--redis and --store are two places for one history: choose one")
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell may start us with it ignored
        signal.signal(signum, _interrupt)
    try:
        access_token = ws_server.token_from(args.access_token, ACCESS_TOKEN_VARIABLE)
        if args.connect:
            run_client(args.connect, args.cafile, args.max_line, access_token)
            return 0
        tls = ws_server.server_tls_context(args.certfile, args.keyfile) if args.certfile else None
        config = ServerConfig(args.host, args.port, args.static, args.retry, args.heartbeat, args.history,
                              args.store, tuple(args.allow_origin or ()), args.max_clients,
                              args.max_body, args.max_queue, args.write_timeout, args.clock, args.trace,
                              args.request_timeout, args.max_header_bytes, args.max_header_lines,
                              tls, tuple(args.trusted_proxy),
                              ws_server.RedisAddress.parse(args.redis, args.redis_cafile) if args.redis else None,
                              args.redis_timeout, args.reuse_port, tuple(args.allowed_host),
                              ws_server.token_from(args.publish_token, PUBLISH_TOKEN_VARIABLE), access_token,
                              args.max_clients_per_address, certfile=args.certfile, keyfile=args.keyfile,
                              max_tls_handshakes=args.max_tls_handshakes,
                              max_tls_handshakes_per_address=args.max_tls_handshakes_per_address)
        server = SSEServer(config)
        # SIGHUP: the certificate again, in a thread of its own (not inside whatever the main
        # thread was doing when the signal came, which may hold the logging lock).
        ws_server.reload_on_sighup(lambda: threading.Thread(target=ws_server.reload_certificate, args=(config, log),
                                                            name="sighup", daemon=True).start())
    except KeyboardInterrupt:
        return 0
    except (StoreError, ValueError) as error:  # a configuration the server cannot start with
        log.error("%s", error)
        return 2
    except StreamFailed as error:
        log.error("%s", error)
        return 1
    except OSError as error:  # the address: in use, not ours, or not an address of this machine
        log.error("cannot listen on %s port %d: %s", args.host, args.port,
                  os.strerror(error.errno) if error.errno else error)
        return 2
    host = "127.0.0.1" if config.host in ("", "0.0.0.0") else config.host
    log.info("Serving %s on %s://%s:%d/ (stream at /sse, POST /publish)",
             "the clock" if config.clock > 0 else "events (no clock)", server.scheme, host, server.port)
    if config.redis is not None:
        log.info("Events shared through Redis at %s (stream %s)", config.redis, EVENT_STREAM)
    elif config.store is not None:
        log.info("Events kept in the store %s (the last %d replayed after a restart)", config.store, config.history)
    else:
        log.info("Events kept in memory (the last %d, lost when the server stops)", config.history)
    for warning in exposure_warnings(config):
        log.warning("%s", warning)
    try:
        server.start_background()
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
