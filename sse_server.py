#!/usr/bin/env python3
"""A Server-Sent Events server (and client), per the WHATWG HTML standard, on http.server.

    python sse_server.py                         # the clock on http://127.0.0.1:8088/
    curl -N http://127.0.0.1:8088/sse            # the raw event stream
    curl -d hello http://127.0.0.1:8088/publish  # an event for every open page
    python sse_server.py --connect http://127.0.0.1:8088/sse   # terminal client

Every second every subscriber gets the tutorial's clock, `{"message": "Current time: HH:MM:SS"}`.
`http.server.ThreadingHTTPServer` gives each client its own thread.  Standard library only.
The module reads top to bottom like the spec ("HTML Living Standard", §9.2 Server-sent events):

1. Constants: the media type, default limits.
2. The format (§9.2.5): `format_event` writes one event; nothing can be injected through it.
3. The parser (§9.2.5, §9.2.6): `EventStreamParser`, fed bytes, returns events the way a browser
   dispatches them.  Pure: no sockets.
4. HTTP/1.1 framing of the stream: chunked transfer coding (RFC 9112 §7.1), by hand.
5. The hub: event ids, the history kept for `Last-Event-ID` (memory or SQLite), subscribers with
   a bounded backlog, one fan-out for every event.
6. The HTTP handler (one thread per request): `/sse`, `POST /publish`, CORS, static files.
7. The server: the clock, heartbeats, a clean shutdown.
8. The client: `--connect URL`, which reconnects with `Last-Event-ID` like a browser.
9. The command line.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import dataclasses
import http.client
import itertools
import json
import logging
import re
import select
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Iterator

import ws_server  # for its static-file helpers: one way to map a URL to a file

log = logging.getLogger("sse_server")

# ---------------------------------------------------------------------------------------------
# 1. Constants
# ---------------------------------------------------------------------------------------------

#: §9.2.5: the stream is always UTF-8.  A media type's parameters follow a semicolon (RFC 9110
#: §8.3.1).  The tutorial writes `text/event-stream,utf-8`, which browsers accept only by
#: accident: Fetch's "extract a MIME type" reads the comma as separating two header values and
#: skips the invalid second one, `utf-8`.
EVENT_STREAM_TYPE = "text/event-stream; charset=utf-8"

DEFAULT_PORT = 8088
DEFAULT_RETRY = 3000  # --retry: ms a browser waits before reconnecting (sent first, §9.2.6 "retry")
DEFAULT_HEARTBEAT = 15.0  # --heartbeat: seconds between comment lines (§9.2.7 suggests ~15 s)
DEFAULT_HISTORY = 1000  # --history: events kept for Last-Event-ID replay
DEFAULT_MAX_CLIENTS = 1000  # --max-clients: open streams; more get 503
DEFAULT_MAX_BODY = 64 * 1024  # --max-body: bytes in one POST /publish
DEFAULT_MAX_QUEUE = 256  # --max-queue: events waiting for one slow subscriber before it is dropped
DEFAULT_WRITE_TIMEOUT = 10.0  # --write-timeout: seconds one write may wait for a slow subscriber
DEFAULT_CLOCK = 1.0  # --clock: seconds between clock events (the tutorial's setInterval 1000)
DEFAULT_REQUEST_TIMEOUT = 10.0  # --request-timeout: seconds of silence while reading a request

CLOCK_FORMAT = "Current time: %H:%M:%S"


# ---------------------------------------------------------------------------------------------
# 2. The format (§9.2.5)
# ---------------------------------------------------------------------------------------------
#
#   stream  = [ bom ] *event
#   event   = *( comment / field ) end-of-line
#   comment = colon *any-char end-of-line
#   field   = 1*name-char [ colon [ space ] *any-char ] end-of-line
#   end-of-line = ( cr lf / cr / lf )
#
# A field's value runs to the end of its line, so a value that contains a line break would start
# a new field: that is how fields are injected.  `data` may span lines (one `data:` line each);
# `event` and `id` may not, and `format_event` refuses them rather than silently rewriting them.

#: The three end-of-line forms of §9.2.5, and no others.  `str.splitlines()` would also split on
#: U+2028, U+0085, form feed ... (which an EventSource keeps inside a line) and drops a final
#: empty line.
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _check_single_line(field: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"an event's {field} cannot contain CR or LF: {value!r}")


def format_event(data: str, *, event: str | None = None, id: str | None = None,
                 retry: int | None = None) -> str:
    """One event in the `text/event-stream` format (§9.2.5), ending with its blank line.

    >>> format_event("two\\nlines", event="note", id="7")
    'event: note\\nid: 7\\ndata: two\\ndata: lines\\n\\n'

    Multi-line data becomes one `data:` line per line (split on CR, LF and CRLF only); the parser
    joins them back with LF.  ValueError for an `event` or `id` with CR or LF (they would inject
    fields), an `id` with NUL (§9.2.6: the browser ignores such an id) and a negative `retry`.
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
    """A comment (§9.2.5: a line starting with a colon), one per line of `text`; ignored by
    parsers, and still traffic: what keeps proxies from closing an idle stream (§9.2.7)."""
    return "".join(f": {line}\n" if line else ":\n" for line in LINE_BREAK.split(text))


def format_retry(milliseconds: int) -> str:
    """The `retry` field alone (§9.2.6): the reconnection time, without dispatching an event."""
    if milliseconds < 0:
        raise ValueError(f"retry must be a number of milliseconds: {milliseconds!r}")
    return f"retry: {int(milliseconds)}\n\n"


# ---------------------------------------------------------------------------------------------
# 3. The parser (§9.2.5 parsing, §9.2.6 interpreting), as a browser runs it
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerSentEvent:
    """What EventSource dispatches: a MessageEvent's `type`, `data` and `lastEventId`."""

    data: str
    type: str = "message"
    last_event_id: str = ""


class EventStreamParser:
    """Feed it the bytes of a stream as they come; it returns the events a browser would fire.

    Pure (no sockets), incremental (a line or a CRLF may be split across two `feed` calls),
    linear in its input.  After the stream ends, `last_event_id` is what a browser would send as
    `Last-Event-ID` when it reconnects (§9.2.4), and `retry` its reconnection time.
    """

    def __init__(self, last_event_id: str = "", retry: int | None = None) -> None:
        # §9.2.5: "decoded using the UTF-8 decode algorithm": invalid bytes become U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # has the first character (maybe a BOM) been seen?
        self._partial = ""  # the start of a line whose end has not arrived
        self._after_cr = False  # the last line ended with CR: a LF right after it is its pair
        self._data: list[str] = []  # §9.2.6 "data buffer", one entry per data line
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
            if text.startswith("\ufeff"):  # §9.2.5: one leading BOM is ignored
                text = text[1:]
        if self._after_cr and text.startswith("\n"):  # the LF of a CRLF split across feeds
            text = text[1:]
        self._after_cr = False
        lines = LINE_BREAK.split(self._partial + text)
        self._partial = lines.pop()  # what follows the last line break: an unfinished line
        if lines and not self._partial and text.endswith("\r"):
            self._after_cr = True
        events = []
        for line in lines:
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _process_line(self, line: str) -> ServerSentEvent | None:
        """§9.2.6: a blank line dispatches; a colon first is a comment; else a field."""
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
        """§9.2.6 "dispatch the event"."""
        self.last_event_id = self._last_event_id_buffer  # set even when nothing is dispatched
        if not self._data:
            self._event_type = ""
            return None
        data, self._data = "\n".join(self._data), []  # the joined lines, without the last LF
        event_type, self._event_type = self._event_type or "message", ""
        return ServerSentEvent(data, event_type, self.last_event_id)


# ---------------------------------------------------------------------------------------------
# 4. HTTP/1.1 framing of the stream: chunked transfer coding (RFC 9112 §7.1)
# ---------------------------------------------------------------------------------------------
#
#   chunk      = chunk-size CRLF chunk-data CRLF     ; size in hex
#   last-chunk = "0" CRLF CRLF                       ; (no trailers)
#
# An HTTP/1.1 response must say where its body ends: Content-Length (unknown for an endless
# stream), chunked, or closing the connection.  Chunked lets the server end the stream cleanly
# (the last chunk) and a client tell a complete stream from a cut one.  Each event is one chunk,
# written in one send.  HTTP/1.0 clients have no chunked coding: their stream ends at close.

LAST_CHUNK = b"0\r\n\r\n"


def encode_chunk(payload: bytes) -> bytes:
    """One chunk (RFC 9112 §7.1): the size in hex, CRLF, the bytes, CRLF."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


# ---------------------------------------------------------------------------------------------
# 5. The hub: ids, history, subscribers
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoredEvent:
    """An event as it goes on the wire, encoded once for every subscriber."""

    id: int
    payload: bytes  # the formatted event, UTF-8: what an HTTP/1.0 stream carries
    chunk: bytes  # the same as one chunk: what an HTTP/1.1 stream carries

    @classmethod
    def from_payload(cls, id: int, payload: bytes) -> StoredEvent:
        return cls(id, payload, encode_chunk(payload))


class History:
    """The last `maxlen` events, for `Last-Event-ID` (§9.2.4).  Ids are consecutive integers.

    Ids must not repeat across server runs: a client holding id 57 from an earlier run must not
    be mistaken for one that saw this run's event 57.  So, kept in memory, the first id is the
    start time in microseconds: any id of an earlier run is then "too old" here.
    """

    def __init__(self, maxlen: int, first_id: int | None = None) -> None:
        self._events: collections.deque[StoredEvent] = collections.deque(maxlen=maxlen)
        self.next_id = first_id if first_id is not None else time.time_ns() // 1000

    def append(self, event: StoredEvent) -> None:
        self._events.append(event)
        self.next_id = event.id + 1

    def after(self, last_id: int) -> list[StoredEvent] | None:
        """Every kept event after `last_id`, in order; None when `last_id` is not one this
        history can resume from (never issued, or older than the oldest kept)."""
        oldest = self.next_id - len(self._events)  # the id of _events[0], if any
        if not oldest - 1 <= last_id < self.next_id:
            return None
        return list(itertools.islice(self._events, last_id - oldest + 1, None))

    def close(self) -> None:
        pass


class SQLiteHistory(History):
    """The history, also kept in an SQLite file (`--store`), so a restarted server still
    replays what its clients missed, and continues the ids."""

    def __init__(self, path: str, maxlen: int) -> None:
        # One connection, used under the hub's lock by whichever thread publishes.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # no fsync per event; a crash loses little
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        rows = self._db.execute("SELECT id, payload FROM events ORDER BY id DESC LIMIT ?", (maxlen,)).fetchall()
        super().__init__(maxlen, rows[0][0] + 1 if rows else None)
        self._events.extend(StoredEvent.from_payload(id, payload) for id, payload in reversed(rows))
        self._maxlen = maxlen

    def append(self, event: StoredEvent) -> None:
        super().append(event)
        self._db.execute("INSERT INTO events (id, payload) VALUES (?, ?)", (event.id, event.payload))
        if event.id % 256 == 0:  # trim now and then, not at every event
            self._db.execute("DELETE FROM events WHERE id <= ?", (event.id - self._maxlen,))

    def close(self) -> None:
        self._db.close()


class Subscriber:
    """One open stream.  Its socket is written two ways, never both at once:

    - by the publisher, directly, while the subscriber keeps up: a non-blocking send of the
      event's bytes into the socket buffer, so one event reaches a thousand subscribers without
      waking a thousand threads;
    - by the subscriber's own thread, when the socket buffer is full ("draining"): the publisher
      then only appends to `backlog`, at most `max_queue` events, and wakes the thread, which
      writes them with a deadline.  A subscriber that falls further behind is dropped: it can
      reconnect with Last-Event-ID and catch up from the history, and the others never wait.
    """

    __slots__ = ("sock", "chunked", "max_queue", "lock", "signal", "backlog", "draining", "closed",
                 "reason", "peer")

    def __init__(self, sock: socket.socket, chunked: bool, max_queue: int, peer: str = "") -> None:
        self.sock = sock
        self.chunked = chunked
        self.max_queue = max_queue
        self.lock = threading.Lock()
        # A one-bit signal "there is work": released = raised, held = lowered.  A bare lock, not a
        # threading.Event, which adds a Condition and a deque (about 1 KiB per subscriber).  It is
        # raised and lowered only under `lock`, and only the subscriber's thread waits on it.
        self.signal = threading.Lock()
        self.signal.acquire()
        self.backlog: list[bytes] = []
        self.draining = True  # the thread owns the socket until the head and replay are out
        self.closed = False
        self.reason = ""
        self.peer = peer

    def deliver(self, event: StoredEvent) -> None:
        """Called by the publisher: send now if the socket takes it, else queue for the thread."""
        data = event.chunk if self.chunked else event.payload
        with self.lock:
            if self.closed:
                return
            if self.draining:
                if len(self.backlog) >= self.max_queue:
                    self._drop(f"too slow: {self.max_queue} events waiting")
                    return
                self.backlog.append(data)
                self._raise_signal()
                return
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as error:  # EPIPE, ECONNRESET: the client has gone
                self._drop(f"gone ({error.strerror or error})")
                return
            if sent < len(data):
                self.backlog.append(data[sent:])
                self.draining = True
                self._raise_signal()

    def take_backlog(self) -> list[bytes]:
        """Called by the subscriber's thread: the bytes to write, or [] (and the socket goes
        back to the publisher) when there are none."""
        with self.lock:
            backlog, self.backlog = self.backlog, []
            if not backlog and not self.closed:
                self.draining = False
                self.signal.acquire(blocking=False)  # lower it: everything is written
            return backlog

    def wait(self) -> None:
        """Sleep until the signal is raised (called by the subscriber's thread only)."""
        self.signal.acquire()  # and it stays lowered: the thread now takes the backlog

    def _raise_signal(self) -> None:
        if self.signal.locked():
            self.signal.release()

    def close(self, reason: str) -> None:
        with self.lock:
            if not self.closed:
                self.closed, self.reason = True, reason
                self._raise_signal()

    def _drop(self, reason: str) -> None:
        self.closed, self.reason = True, reason
        self._raise_signal()
        try:  # a thread blocked writing to this socket wakes up with an error
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ShuttingDown(Exception):
    pass


class Hub:
    """Numbers, keeps and fans out events.  One lock orders everything: while one event goes
    out to every subscriber no other is numbered, so each subscriber sees ids in order, and a
    new subscriber is added between two events, never during one: replay + live has no gap and
    no duplicate."""

    def __init__(self, history: History, *, max_clients: int = DEFAULT_MAX_CLIENTS,
                 max_queue: int = DEFAULT_MAX_QUEUE, trace: bool = False) -> None:
        self.history = history
        self.max_clients = max_clients
        self.max_queue = max_queue
        self.trace = trace
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()  # replaced, never mutated: cheap to iterate
        self._emptied = threading.Condition(threading.Lock())
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, sock: socket.socket, *, chunked: bool, last_event_id: str | None,
                  peer: str = "") -> tuple[Subscriber, list[StoredEvent], StoredEvent | None] | None:
        """Add a subscriber; return it, the events to replay, and a `reset` event when
        `last_event_id` cannot be resumed.  None when `max_clients` are already open."""
        with self._lock:
            if self._closed:
                raise ShuttingDown
            if len(self._subscribers) >= self.max_clients:
                return None
            replay: list[StoredEvent] = []
            reset = None
            if last_event_id is not None:
                found = (self.history.after(int(last_event_id))
                         if last_event_id.isascii() and last_event_id.isdigit() else None)
                if found is None:
                    reset = self._reset_event(last_event_id)
                else:
                    replay = found
            subscriber = Subscriber(sock, chunked, self.max_queue, peer)
            self._subscribers += (subscriber,)
            return subscriber, replay, reset

    def _reset_event(self, last_event_id: str) -> StoredEvent:
        """The spec cannot tell a client it missed events; this event does.  Its id is the
        newest event's, so the client's Last-Event-ID is current again after it."""
        newest = self.history.next_id - 1
        data = json.dumps({"message": "Events were missed: your last event id is unknown here "
                                      "or older than the history kept.",
                           "last_event_id": last_event_id[:100]})
        text = format_event(data, event="reset", id=str(newest))
        return StoredEvent.from_payload(newest, text.encode())

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
        with self._emptied:
            self._emptied.notify_all()

    def publish(self, data: str, event: str | None = None) -> int:
        """Number, keep and send one event to every subscriber; return its id.  ValueError for
        an event name that cannot be sent (see `format_event`)."""
        with self._lock:
            id = self.history.next_id
            payload = format_event(data, event=event, id=str(id)).encode()
            stored = StoredEvent.from_payload(id, payload)
            self.history.append(stored)
            for subscriber in self._subscribers:
                subscriber.deliver(stored)
            if self.trace:
                log.info("event %d to %d subscribers: %r", id, len(self._subscribers), payload)
            return id

    def send_comment(self, text: str) -> None:
        """A comment to every subscriber: not numbered, not kept (a heartbeat)."""
        payload = format_comment(text).encode()
        comment = StoredEvent.from_payload(0, payload)
        with self._lock:
            for subscriber in self._subscribers:
                subscriber.deliver(comment)

    def close(self, timeout: float = 2.0) -> None:
        """Wake every subscriber's thread to end its stream; wait for them (bounded)."""
        with self._lock:
            self._closed = True
            subscribers = self._subscribers
        for subscriber in subscribers:
            subscriber.close("server shutting down")
        if not self.wait_empty(timeout):
            for subscriber in self._subscribers:  # stuck writing to a client that does not read
                subscriber.close("server shutting down")
                with subscriber.lock:
                    subscriber._drop("server shutting down")
            self.wait_empty(1.0)

    def wait_empty(self, timeout: float) -> bool:
        with self._emptied:
            return self._emptied.wait_for(lambda: not self._subscribers, timeout)


def write_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Write every byte within `timeout` seconds, or raise TimeoutError (or OSError)."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select.select(): it cannot watch fds above 1023
    poller.register(sock, select.POLLOUT)
    while view:
        try:
            sent = sock.send(view, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        view = view[sent:]
        if view:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError(f"no progress writing for {timeout:g} s")


# ---------------------------------------------------------------------------------------------
# 6. The HTTP handler: one thread per request
# ---------------------------------------------------------------------------------------------

STREAM_PATHS = ("/sse", "/sse/")  # the tutorial's page asks for /sse/, its server serves /sse
PUBLISH_PATH = "/publish"
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"
#: Sent by a preflight: Last-Event-ID because fetch-based EventSource polyfills set it by hand
#: (a browser's own EventSource needs no preflight), Content-Type for JSON publishers.
ALLOWED_HEADERS = "Last-Event-ID, Content-Type, Cache-Control"


class SSERequestHandler(BaseHTTPRequestHandler):
    """`GET /sse`: the stream.  `POST /publish`: an event for all.  `OPTIONS`: CORS preflight.
    Other GET and HEAD: static files.  HTTP/1.1, so the publisher's connection is kept alive."""

    protocol_version = "HTTP/1.1"
    server_version = "sse_server"
    server: SSEServer

    def setup(self) -> None:
        # StreamRequestHandler applies `timeout` to the socket: a client that stops sending in
        # the middle of a request (slowloris) is dropped after --request-timeout seconds.
        self.timeout = self.server.config.request_timeout
        super().setup()

    # -- dispatch (BaseHTTPRequestHandler calls do_<METHOD>) ------------------------------------

    def do_GET(self) -> None:
        if self._path() in STREAM_PATHS:
            self._stream()
        else:
            self._static(head_only=False)

    def do_HEAD(self) -> None:
        if self._path() in STREAM_PATHS:
            self._plain(405, "the stream is GET only", [("Allow", "GET, OPTIONS")], head_only=True)
        else:
            self._static(head_only=True)

    def do_POST(self) -> None:
        if self._path() != PUBLISH_PATH:
            self._discard_body_or_close()
            self._plain(405 if self._path() in STREAM_PATHS else 404,
                        f"POST goes to {PUBLISH_PATH}", [("Allow", "GET, OPTIONS")])
            return
        self._publish()

    def do_OPTIONS(self) -> None:
        """A CORS preflight (Fetch standard, "CORS protocol"): which methods and headers a page
        from another origin may use.  204 with the answer; browsers cache it for Max-Age s."""
        self.send_response(204)
        self._send_cors_headers()
        self.send_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
        self.send_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- the stream ----------------------------------------------------------------------------

    def _stream(self) -> None:
        """§9.2.3: 200 with the event-stream type, then events until one side goes away."""
        if not self._origin_allowed():
            self._plain(403, "origin not allowed")
            return
        config = self.server.config
        chunked = self.request_version != "HTTP/1.0"
        sock = self.connection
        try:
            joined = self.server.hub.subscribe(sock, chunked=chunked, last_event_id=self._last_event_id(),
                                               peer=self.address_string())
        except ShuttingDown:
            # No answer at all: to an EventSource a dropped connection means "reconnect later",
            # whereas a 503 would make it give up for good (§9.2.3).
            self.close_connection = True
            return
        if joined is None:
            # An EventSource does not retry after a 503 (§9.2.3: any status but 200 fails
            # the connection for good); Retry-After is for other clients.
            self._plain(503, f"too many clients ({config.max_clients})", [("Retry-After", "5")])
            return
        subscriber, replay, reset = joined
        self.close_connection = True  # the stream is the last thing on this connection
        self.rfile.close()  # nothing more is read: free its 8 KiB buffer for the stream's lifetime
        try:
            sock.settimeout(None)  # from now on writes are bounded by write_all's deadline
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each event goes now
            self._send_stream_head(chunked)
            self._write_first_events(subscriber, replay, reset)
            self._pump(subscriber)
        except (OSError, TimeoutError) as error:
            subscriber.close(f"write failed ({error})")
        finally:
            self.server.hub.unsubscribe(subscriber)
            log.info("subscriber %s left: %s (%d open)", subscriber.peer, subscriber.reason,
                     self.server.hub.subscriber_count)

    def _send_stream_head(self, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", EVENT_STREAM_TYPE)
        # The stream is live: a cache must not answer a later request with an old copy.
        self.send_header("Cache-Control", "no-cache")
        # nginx buffers responses by default, which would hold events back; this turns it off.
        self.send_header("X-Accel-Buffering", "no")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self._send_cors_headers()
        self.end_headers()

    def _write_first_events(self, subscriber: Subscriber, replay: list[StoredEvent],
                            reset: StoredEvent | None) -> None:
        """`retry` first (§9.2.6), then a reset or the missed events, in one write."""
        events = [StoredEvent.from_payload(0, format_retry(self.server.config.retry).encode())]
        events += [reset] if reset else replay
        data = b"".join(e.chunk if subscriber.chunked else e.payload for e in events)
        write_all(subscriber.sock, data, self.server.config.write_timeout)
        log.info("subscriber %s joined%s (%d open)", subscriber.peer,
                 f", {len(replay)} events replayed" if replay else ", reset" if reset else "",
                 self.server.hub.subscriber_count)

    def _pump(self, subscriber: Subscriber) -> None:
        """The subscriber's thread: sleep until woken, write what the publisher could not."""
        timeout = self.server.config.write_timeout
        while not subscriber.closed:
            backlog = subscriber.take_backlog()
            if backlog:
                write_all(subscriber.sock, b"".join(backlog), timeout)
            else:
                subscriber.wait()
        if subscriber.reason == "server shutting down" and subscriber.chunked:
            write_all(subscriber.sock, LAST_CHUNK, 1.0)  # a clean end: the stream is complete

    def _last_event_id(self) -> str | None:
        """§9.2.4: the header carries the last event ID string, UTF-8 encoded."""
        value = self.headers.get("Last-Event-ID")
        if not value:
            return None
        return value.encode("latin-1", "replace").decode("utf-8", "replace").strip()

    # -- publishing ----------------------------------------------------------------------------

    def _publish(self) -> None:
        """The body (UTF-8 text) becomes one event for every subscriber; `?event=NAME` names it."""
        config = self.server.config
        if not self._origin_allowed():
            self._discard_body_or_close()
            self._plain(403, "origin not allowed")
            return
        length = self.headers.get("Content-Length")
        if length is None or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._plain(411, "send the body with a Content-Length")
            return
        if not length.isdigit():
            self.close_connection = True
            self._plain(400, "Content-Length is not a number")
            return
        if int(length) > config.max_body:
            self.close_connection = True  # the body is not read: the connection cannot go on
            self._plain(413, f"body over {config.max_body} bytes")
            return
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            self.close_connection = True
            return
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self._plain(400, "the body is not UTF-8 text")
            return
        names = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True).get("event")
        event = names[-1] if names else None
        if event is not None and (not event or LINE_BREAK.search(event)):
            self._plain(400, "the event name must be one non-empty line")
            return
        self.server.hub.publish(text, event)
        self.send_response(204)
        self._send_cors_headers()
        self.end_headers()

    def _discard_body_or_close(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and int(length) <= self.server.config.max_body:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    # -- CORS ------------------------------------------------------------------------------------
    #
    # A page may read a response from another origin only if the response says so
    # (Access-Control-Allow-Origin).  `*` allows any page, but never with credentials
    # (cookies): browsers reject `*` together with Access-Control-Allow-Credentials: true, which
    # is what the tutorial sends, so its EventSource({withCredentials: true}) cannot work.  With
    # an allow-list the matching origin is echoed, credentials are allowed, and `Vary: Origin`
    # tells caches the answer depends on the request's Origin.

    def _cors_headers(self) -> list[tuple[str, str]]:
        allowed = self.server.config.allowed_origins
        if "*" in allowed:
            return [("Access-Control-Allow-Origin", "*")]
        headers = [("Vary", "Origin")]
        origin = self.headers.get("Origin") if getattr(self, "headers", None) else None
        if origin is not None and origin in allowed:
            headers += [("Access-Control-Allow-Origin", origin),
                        ("Access-Control-Allow-Credentials", "true")]
        return headers

    def _send_cors_headers(self) -> None:
        for name, value in self._cors_headers():
            self.send_header(name, value)

    def _origin_allowed(self) -> bool:
        """With an allow-list, a browser page from elsewhere may not subscribe or publish.
        CORS alone would not stop it: the browser sends a form-like POST before asking, and
        only hides the answer.  No Origin means no browser page (curl), and our own pages are
        same-origin."""
        allowed = self.server.config.allowed_origins
        origin = self.headers.get("Origin")
        if "*" in allowed or origin is None or origin in allowed:
            return True
        return urllib.parse.urlsplit(origin).netloc == self.headers.get("Host")

    # -- static files and plain answers ------------------------------------------------------

    def _static(self, head_only: bool) -> None:
        """`/` is the SSE page; other files from --static, with ws_server's traversal checks."""
        try:
            path = ws_server.resolve_static_path(self.server.config.static, self.path, "sse.html")
            body = path.read_bytes()
        except ws_server.HandshakeError as error:
            self._plain(error.status, error.reason, head_only=head_only)
            return
        except OSError:
            self._plain(404, "not found", head_only=head_only)
            return
        self.send_response(200)
        self.send_header("Content-Type", ws_server.content_type(path))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _plain(self, status: int, reason: str, headers: Iterable[tuple[str, str]] = (),
               head_only: bool = False) -> None:
        """An error or refusal: the status and a one-line plain-text reason."""
        body = f"{status} {reason}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in [*headers, *self._cors_headers()]:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, 414, 431, 501) as plain text too."""
        self.close_connection = True
        self._plain(code, message or self.responses.get(code, ("error",))[0],
                    head_only=getattr(self, "command", "") == "HEAD")

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def log_message(self, format: str, *args) -> None:
        if self.server.config.trace:
            log.info("%s %s", self.address_string(), format % args)


# ---------------------------------------------------------------------------------------------
# 7. The server: the clock, heartbeats, shutdown
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
    allowed_origins: tuple[str, ...] = ("*",)
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_body: int = DEFAULT_MAX_BODY
    max_queue: int = DEFAULT_MAX_QUEUE
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    clock: float = DEFAULT_CLOCK
    trace: bool = False
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT


def clock_message() -> str:
    """The tutorial's tick: JSON with a `message`, which its page shows."""
    return json.dumps({"message": time.strftime(CLOCK_FORMAT)})


class SSEServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` with the hub, the clock and the heartbeat.

    `start()` runs it in background threads (tests); `main()` serves in the main thread.
    """

    daemon_threads = True  # request threads never keep the process alive; close() ends streams
    request_queue_size = 1024  # listen backlog: a thousand subscribers may connect at once

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        history = (SQLiteHistory(self.config.store, self.config.history) if self.config.store
                   else History(self.config.history))
        self.hub = Hub(history, max_clients=self.config.max_clients, max_queue=self.config.max_queue,
                       trace=self.config.trace)
        self._stopping = threading.Event()
        self._background: list[threading.Thread] = []
        try:
            super().__init__((self.config.host, self.config.port), SSERequestHandler)
        except OSError:
            history.close()
            raise

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        """A client that resets or times out is routine: a log line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("%s: %s", client_address[0], error)
        else:
            log.exception("error while handling a request from %s", client_address[0])

    def start_timers(self) -> None:
        for interval, action, name in ((self.config.clock, self._tick, "clock"),
                                       (self.config.heartbeat, self._heartbeat, "heartbeat")):
            if interval > 0:
                thread = threading.Thread(target=self._every, args=(interval, action), name=name, daemon=True)
                thread.start()
                self._background.append(thread)

    def start(self) -> None:
        """Serve from a background thread (for tests and embedding)."""
        self.start_timers()
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="sse-server", daemon=True)
        thread.start()
        self._background.append(thread)

    def _every(self, interval: float, action) -> None:
        deadline = time.monotonic() + interval
        while not self._stopping.wait(max(0.0, deadline - time.monotonic())):
            action()
            deadline += interval
            deadline = max(deadline, time.monotonic())  # after a stall, do not burst

    def _tick(self) -> None:
        self.hub.publish(clock_message())

    def _heartbeat(self) -> None:
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
        self.hub.history.close()


# ---------------------------------------------------------------------------------------------
# 8. The client: python sse_server.py --connect URL
# ---------------------------------------------------------------------------------------------


class StreamFailed(Exception):
    """§9.2.3 "fail the connection": a browser does not reconnect after this."""


def open_stream(url: str, last_event_id: str = "", timeout: float | None = None
                ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET the stream the way EventSource does (§9.2.2, §9.2.4); StreamFailed unless 200 with
    the event-stream type.  The caller closes the connection."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise StreamFailed(f"not an http(s) URL: {url}")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    try:
        connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                           headers=headers)
        response = connection.getresponse()
    except BaseException:
        connection.close()
        raise
    essence = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if response.status != 200 or essence != "text/event-stream":
        connection.close()
        raise StreamFailed(f"{response.status} {response.reason}, Content-Type {essence or 'none'}")
    return connection, response


def read_events(response: http.client.HTTPResponse, parser: EventStreamParser) -> Iterator[ServerSentEvent]:
    """Every event of one connection, as it arrives; returns at the end of the stream."""
    while True:
        data = response.read1(64 * 1024)  # http.client removes the chunked framing
        if not data:
            return
        yield from parser.feed(data)


def follow(url: str, timeout: float | None = 60.0) -> Iterator[ServerSentEvent]:
    """Events from `url` forever, reconnecting like a browser (§9.2.3): after the stream ends
    or breaks, wait the reconnection time, then ask again with Last-Event-ID.  A refusal (not
    200 with the right type) raises StreamFailed: a browser gives up then too."""
    parser = EventStreamParser()
    while True:
        try:
            connection, response = open_stream(url, parser.last_event_id, timeout)
            try:
                log.info("connected to %s", url)
                yield from read_events(response, parser)
            finally:
                connection.close()
            log.info("stream ended")
        except (OSError, http.client.HTTPException) as error:
            log.info("connection lost: %s", error)
        delay = (parser.retry if parser.retry is not None else DEFAULT_RETRY) / 1000
        log.info("reconnecting in %g s with Last-Event-ID %r", delay, parser.last_event_id)
        time.sleep(delay)
        parser = EventStreamParser(parser.last_event_id, parser.retry)


def run_client(url: str) -> None:
    for event in follow(url):
        print(f"[{event.type}] id={event.last_event_id!r} {event.data}", flush=True)


# ---------------------------------------------------------------------------------------------
# 9. The command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Server-Sent Events server (the tutorial's clock, plus POST /publish), "
                    "or a terminal client with --connect.")
    parser.add_argument("--host", "--bind", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default: {DEFAULT_PORT})")
    parser.add_argument("--static", default=str(ws_server.STATIC_DIR), metavar="DIR",
                        help="folder of the pages (default: static/)")
    parser.add_argument("--retry", type=int, default=DEFAULT_RETRY, metavar="MS",
                        help=f"reconnection time sent to clients (default: {DEFAULT_RETRY})")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT, metavar="S",
                        help=f"seconds between heartbeat comments, 0 to disable (default: {DEFAULT_HEARTBEAT:g})")
    parser.add_argument("--clock", type=float, default=DEFAULT_CLOCK, metavar="S",
                        help=f"seconds between clock events, 0 to disable (default: {DEFAULT_CLOCK:g})")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                        help=f"events kept for Last-Event-ID replay (default: {DEFAULT_HISTORY})")
    parser.add_argument("--store", metavar="FILE", help="keep the history in this SQLite file (default: memory)")
    parser.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                        help="origin allowed by CORS (repeatable; default: *)")
    parser.add_argument("--max-clients", type=int, default=DEFAULT_MAX_CLIENTS, metavar="N",
                        help=f"open streams; more get 503 (default: {DEFAULT_MAX_CLIENTS})")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="N",
                        help=f"largest POST /publish body in bytes (default: {DEFAULT_MAX_BODY})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                        help=f"events waiting for a slow subscriber before it is dropped (default: {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--write-timeout", type=float, default=DEFAULT_WRITE_TIMEOUT, metavar="S",
                        help=f"seconds a write to a slow subscriber may take (default: {DEFAULT_WRITE_TIMEOUT:g})")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT, metavar="S",
                        help=f"seconds a client may stay silent in the middle of a request (default: {DEFAULT_REQUEST_TIMEOUT:g})")
    parser.add_argument("--trace", action="store_true", help="log every request and every event")
    parser.add_argument("--connect", metavar="URL", help="print the events of URL instead (reconnects)")
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("max_clients", "max_body", "max_queue"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.history < 0 or args.retry < 0 or args.write_timeout <= 0 or args.request_timeout <= 0:
        parser.error("--history and --retry must be at least 0, --write-timeout and --request-timeout above 0")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.connect:
            run_client(args.connect)
            return 0
        config = ServerConfig(args.host, args.port, args.static, args.retry, args.heartbeat, args.history,
                              args.store, tuple(args.allow_origin or ("*",)), args.max_clients,
                              args.max_body, args.max_queue, args.write_timeout, args.clock, args.trace,
                              args.request_timeout)
        server = SSEServer(config)
    except KeyboardInterrupt:
        return 0
    except (OSError, sqlite3.Error, StreamFailed) as error:
        log.error("%s", error)
        return 1
    host = "127.0.0.1" if config.host in ("", "0.0.0.0") else config.host
    log.info("Serving the clock on http://%s:%d/ (stream at /sse, POST /publish)", host, server.port)
    try:
        server.start_timers()
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
