"""Chapter 7: the event stream from the server's side: the text/event-stream format (WHATWG
HTML §9.2.5), the chunked coding both ways (RFC 9112 §7.1), the decisions about a request, and
the history that makes Last-Event-ID work (§9.2.4), in memory and in SQLite.

Pure functions, literal bytes, and the hub without sockets.
"""

import os
import socket
import sqlite3
import tempfile
import threading
import unittest

import sse_server
from sse_server import (ChunkedDecoder, History, HTTPError, Hub, ServerSentEvent, SQLiteHistory, StoredEvent,
                        StoreError, encode_chunk, format_comment, format_event, format_retry)
from tests.support import TIMEOUT, fuzz, mutations


def parse(stream: bytes) -> list[ServerSentEvent]:
    return sse_server.EventStreamParser().feed(stream)


class Test01FormattingAnEvent(unittest.TestCase):
    """§9.2.5: fields are `name: value` lines; a blank line ends the event."""

    def test_01_data_becomes_a_data_line_and_a_blank_line_ends_the_event(self):
        """§9.2.5 An event is `data:` lines and a blank line that ends it."""
        self.assertEqual(format_event("hello"), "data: hello\n\n")

    def test_02_multi_line_data_becomes_one_data_line_per_line_split_on_cr_lf_and_crlf(self):
        """§9.2.5 Each line of the data is a `data:` line of its own; lines end with CR, LF or CRLF."""
        self.assertEqual(format_event("a\nb\rc\r\nd"), "data: a\ndata: b\ndata: c\ndata: d\n\n")

    def test_03_only_cr_lf_and_crlf_split_lines_not_what_str_splitlines_splits_on(self):
        """§9.2.5 end-of-line is CRLF, LF or CR only: U+2028, NEL and form feed stay inside a line."""
        # U+2028 LINE SEPARATOR, U+0085 NEL and form feed are ordinary characters in an event
        # stream; str.splitlines() would split on them and drop the trailing empty line.
        self.assertEqual(format_event("a\u2028b\x85c\x0cd"), "data: a\u2028b\x85c\x0cd\n\n")
        self.assertEqual(format_event("line\n"), "data: line\ndata: \n\n")

    def test_04_event_id_and_retry_fields(self):
        """§9.2.6 The event, id and retry fields, each on its line."""
        self.assertEqual(format_event("x", event="note", id="42", retry=5000),
                         "event: note\nid: 42\nretry: 5000\ndata: x\n\n")

    def test_05_an_event_name_with_cr_or_lf_is_refused_so_no_field_can_be_injected(self):
        """§9.2.5 A name with CR or LF would start a new field: refused, so nothing can be injected."""
        for name in ("a\nb", "a\rb", "a\r\ndata: injected"):
            with self.subTest(name=name), self.assertRaises(ValueError):
                format_event("x", event=name)

    def test_06_an_id_with_cr_lf_or_nul_is_refused(self):
        """§9.2.6 An id with CR or LF would inject fields; one with NUL would be ignored: refused."""
        for id in ("1\n", "1\rretry: 1", "1\x002"):
            with self.subTest(id=id), self.assertRaises(ValueError):
                format_event("x", id=id)

    def test_07_a_negative_retry_is_refused(self):
        """§9.2.6 retry is a number of milliseconds, ASCII digits: never negative."""
        with self.assertRaises(ValueError):
            format_event("x", retry=-1)
        with self.assertRaises(ValueError):
            format_retry(-1)

    def test_08_comments_start_with_a_colon_one_per_line(self):
        """§9.2.5 A comment is a line that starts with a colon."""
        self.assertEqual(format_comment("heartbeat"), ": heartbeat\n")
        self.assertEqual(format_comment("two\nlines"), ": two\n: lines\n")
        self.assertEqual(format_comment(), ":\n")

    def test_09_every_stream_starts_with_retry_alone(self):
        """§9.2.6 retry alone sets the reconnection time without dispatching an event."""
        self.assertEqual(format_retry(3000), "retry: 3000\n\n")

    def test_10_whatever_is_formatted_parses_back_to_the_same_data(self):
        """§9.2.6 Whatever is formatted, a browser parses back to the same data, name and id."""
        for data in ("", " leading space", "a\r\nb", "\n\n", "tab\there", "emoji \U0001F600", ":colon", "x\r"):
            with self.subTest(data=data):
                text = format_event(data, event="e", id="7")
                expected = data.replace("\r\n", "\n").replace("\r", "\n")
                self.assertEqual(parse(text.encode()), [ServerSentEvent(expected, "e", "7")])


class Test02ChunkedFraming(unittest.TestCase):
    """RFC 9112 §7.1: each event is one chunk; a publisher's body may come chunked too."""

    def test_01_an_event_is_one_chunk(self):
        """RFC 9112 §7.1 chunk = chunk-size CRLF chunk-data CRLF, the size in hex."""
        self.assertEqual(encode_chunk(b"data: hello\n\n"), b"d\r\ndata: hello\n\n\r\n")
        self.assertEqual(encode_chunk(b"x" * 255)[:5], b"ff\r\nx")

    def test_02_the_last_chunk_is_zero_and_ends_the_body(self):
        """RFC 9112 §7.1 last-chunk = 1*("0") CRLF, then the trailer section and CRLF."""
        self.assertEqual(sse_server.LAST_CHUNK, b"0\r\n\r\n")
        decoder = ChunkedDecoder(100)
        self.assertEqual(decoder.feed(b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1"), [b"hello"])
        self.assertTrue(decoder.done)
        self.assertEqual(decoder.unused, b"GET / HTTP/1.1")  # the next request, untouched

    def test_03_extensions_and_trailers_are_read_and_ignored(self):
        """RFC 9112 §7.1.1, §7.1.2 A recipient ignores unknown chunk extensions and may discard trailers."""
        decoder = ChunkedDecoder(100)
        self.assertEqual(decoder.feed(b"3;name=value\r\nabc\r\n0;x\r\nExpires: never\r\n\r\n"), [b"abc"])
        self.assertTrue(decoder.done)

    def test_04_split_anywhere_it_decodes_the_same(self):
        """RFC 9112 §7.1 The coding is read as it arrives: split at every byte, the same chunks."""
        body = b"4\r\nWiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n"  # the classic example
        for split in range(1, len(body)):
            decoder = ChunkedDecoder(100)
            chunks = decoder.feed(body[:split]) + decoder.feed(body[split:])
            self.assertEqual(b"".join(chunks), b"Wikipedia in\r\n\r\nchunks.")
            self.assertTrue(decoder.done)

    def test_05_a_malformed_coding_is_400(self):
        """RFC 9112 §7.1 chunk-size = 1*HEXDIG, and CRLF after the data; anything else is a bad request."""
        for body in (b"x\r\n", b"-1\r\n", b"\r\n", b"3\r\nabcXY", b"1" * 17 + b"\r\n", b"5" * 5000):
            with self.subTest(body=body[:20]), self.assertRaises(HTTPError) as caught:
                ChunkedDecoder(10 ** 30).feed(body)
            self.assertEqual(caught.exception.status, 400)

    def test_06_a_body_over_the_limit_is_413_before_its_data_is_read(self):
        """RFC 9110 §15.5.14 413: the size line alone says it is too large."""
        decoder = ChunkedDecoder(10)
        decoder.feed(b"6\r\nabcdef\r\n")
        with self.assertRaises(HTTPError) as caught:
            decoder.feed(b"5\r\n")
        self.assertEqual(caught.exception.status, 413)

    def test_07_the_media_type_has_its_charset_after_a_semicolon(self):
        """RFC 9110 §8.3.1 Parameters follow a semicolon: text/event-stream; charset=utf-8."""
        self.assertEqual(sse_server.EVENT_STREAM_TYPE, "text/event-stream; charset=utf-8")


class Test03DecisionsAboutARequest(unittest.TestCase):
    """The pure checks of a publish, of CORS, and of Last-Event-ID; each refusal an HTTPError."""

    def test_01_an_event_name_must_be_one_non_empty_line(self):
        """§9.2.6 `?event=NAME` names the event; a line break would inject a field (400)."""
        self.assertEqual(sse_server.publish_event_name("event=note"), "note")
        self.assertIsNone(sse_server.publish_event_name("other=1"))
        for query in ("event=a%0Adata:%20injected", "event=a%0Db", "event="):
            with self.subTest(query=query), self.assertRaises(HTTPError) as caught:
                sse_server.publish_event_name(query)
            self.assertEqual(caught.exception.status, 400)

    def test_02_a_published_body_must_be_utf8(self):
        """§9.2.5 The stream is UTF-8, so a body that is not is refused (400)."""
        self.assertEqual(sse_server.publish_text("é".encode()), "é")
        with self.assertRaises(HTTPError):
            sse_server.publish_text(b"\xff\xfe")

    def test_03_the_last_event_id_header_is_utf8(self):
        """§9.2.4 The header carries the last event ID string, UTF-8 encoded."""
        request = sse_server.ws_server.parse_request(
            "GET /sse HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 日本 ".encode("utf-8"))
        self.assertEqual(sse_server.last_event_id(request), "日本")

    def test_04_star_allows_any_page_but_never_with_credentials(self):
        """Fetch "CORS protocol": `*` is never sent with Access-Control-Allow-Credentials."""
        self.assertEqual(sse_server.cors_headers("http://a.example", ("*",)), [("Access-Control-Allow-Origin", "*")])

    def test_05_an_allow_list_echoes_the_origin_with_vary_and_credentials(self):
        """Fetch "CORS protocol": an allowed origin is echoed, with Vary: Origin for caches."""
        self.assertEqual(sse_server.cors_headers("http://a.example", ("http://a.example",)),
                         [("Vary", "Origin"), ("Access-Control-Allow-Origin", "http://a.example"),
                          ("Access-Control-Allow-Credentials", "true")])
        self.assertEqual(sse_server.cors_headers("http://b.example", ("http://a.example",)), [("Vary", "Origin")])

    def test_06_with_an_allow_list_other_pages_are_refused_and_broken_origins_too(self):
        """RFC 6454 §6.1 An origin is compared as a string, never parsed: `http://[` is refused, not a crash."""
        allowed = ("http://a.example",)
        sse_server.check_origin_allowed(None, "x", allowed)  # a program, not a page
        sse_server.check_origin_allowed("http://a.example", "x", allowed)
        sse_server.check_origin_allowed("http://127.0.0.1:8088", "127.0.0.1:8088", allowed)  # same origin
        for origin in ("http://evil.example", "http://[", "null", "http://127.0.0.1:8088.evil"):
            with self.subTest(origin=origin), self.assertRaises(HTTPError) as caught:
                sse_server.check_origin_allowed(origin, "127.0.0.1:8088", allowed)
            self.assertEqual(caught.exception.status, 403)

    def test_07_an_empty_body_an_event_named_twice_or_a_query_not_utf8_is_400(self):
        """WHATWG HTML §9.2.6 An event with no data is never dispatched: an empty body is a 400; so are `?event=` given twice and a query that is not UTF-8 (§9.2.5), rather than one name kept silently or U+FFFD."""
        for check in (lambda: sse_server.publish_text(b""), lambda: sse_server.publish_event_name("event=a&event=b"),
                      lambda: sse_server.publish_event_name("event=%FF")):
            with self.assertRaises(HTTPError) as caught:
                check()
            self.assertEqual(caught.exception.status, 400)


def stored(id: int) -> StoredEvent:
    return StoredEvent.from_payload(id, format_event(f"event {id}", id=str(id)).encode())


def keep(history: History, data: str) -> StoredEvent:
    """What the hub does with each event: store it (which numbers it), then append it."""
    event = history.store(data)
    history.append(event)
    return event


class Test04TheHistoryForLastEventID(unittest.TestCase):
    """§9.2.4: a reconnecting client sends the last id it saw; the server resumes after it."""

    def test_01_every_event_after_the_last_id_in_order(self):
        """§9.2.4 Every event after the client's last event ID, in order, none twice."""
        history = History(10, first_id=1)
        self.assertEqual([keep(history, f"event {id}").id for id in range(1, 6)], [1, 2, 3, 4, 5])
        self.assertEqual([e.id for e in history.after(2)], [3, 4, 5])
        self.assertEqual(history.after(5), [])
        self.assertEqual([e.id for e in history.after(0)], [1, 2, 3, 4, 5])

    def test_02_an_id_older_than_the_history_or_never_issued_cannot_be_resumed(self):
        """§9.2.4 A position that no longer exists is not guessed at: the client gets a reset."""
        history = History(3, first_id=1)
        for id in range(1, 8):
            keep(history, f"event {id}")  # keeps 5, 6, 7
        self.assertEqual([e.id for e in history.after(4)], [5, 6, 7])
        self.assertIsNone(history.after(3))  # event 4 is gone: a gap
        self.assertIsNone(history.after(8))  # not issued yet

    def test_03_ids_of_an_earlier_run_in_memory_are_too_old_for_this_one(self):
        """§9.2.4 Ids never repeat across runs: kept in memory, they start at the start time in µs."""
        earlier = History(10)
        keep(earlier, "from an earlier run")
        later = History(10, first_id=earlier.next_id + 1000)
        self.assertIsNone(later.after(earlier.next_id - 1))

    def test_04_a_last_event_id_is_ascii_digits_with_a_length_cap(self):
        """§9.2.4 An id is whatever the client sends: only a short ASCII number names a position here."""
        history = History(10, first_id=1)
        self.assertEqual(history.parse_id("42"), 42)
        for text in ("4" * 5000, "٣", "²", "-1", "1.5", ""):
            with self.subTest(text=text[:10]):
                self.assertIsNone(history.parse_id(text))


class Test05TheSQLiteStore(unittest.TestCase):
    """--store FILE: the history kept across restarts, owned by one server process."""

    def setUp(self):
        self.folder = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.folder.name, "events.sqlite3")

    def tearDown(self):
        self.folder.cleanup()

    def test_01_a_store_keeps_events_and_ids_across_a_restart(self):
        """§9.2.4 A restarted server replays what its clients missed, and continues the ids."""
        first = SQLiteHistory(self.path, maxlen=3)
        start = first.next_id
        for id in range(start, start + 5):
            keep(first, f"event {id}")
        first.close()
        second = SQLiteHistory(self.path, maxlen=3)
        try:
            self.assertEqual(second.next_id, start + 5)
            self.assertEqual([e.id for e in second.after(start + 1)], [start + 2, start + 3, start + 4])
            self.assertEqual(second.after(start + 2)[0].payload, stored(start + 3).payload)
            self.assertIsNone(second.after(start))
        finally:
            second.close()

    def test_02_a_second_process_cannot_open_a_store_in_use(self):
        """One store, one process: a second opener is refused, and told which file and why."""
        owner = SQLiteHistory(self.path, maxlen=10)
        try:
            with self.assertRaises(StoreError) as caught:
                SQLiteHistory(self.path, maxlen=10)
            self.assertIn(self.path, str(caught.exception))
            self.assertIn("in use", str(caught.exception))
        finally:
            owner.close()
        SQLiteHistory(self.path, maxlen=10).close()  # free again once the owner has closed it

    def test_03_a_file_that_is_not_an_event_store_is_refused_by_name(self):
        """Every store error names the file: another program's database, or no database at all."""
        with sqlite3.connect(self.path) as other:
            other.execute("CREATE TABLE events (name TEXT, at REAL)")
        other.close()
        with self.assertRaises(StoreError) as caught:
            SQLiteHistory(self.path, maxlen=10)
        self.assertIn(self.path, str(caught.exception))
        self.assertIn("not an event store", str(caught.exception))
        garbage = os.path.join(self.folder.name, "garbage.sqlite3")
        with open(garbage, "wb") as file:
            file.write(b"this is not a database" * 100)
        with self.assertRaises(StoreError) as caught:
            SQLiteHistory(garbage, maxlen=10)
        self.assertIn(garbage, str(caught.exception))

    def test_04_an_insert_that_fails_is_a_store_error_and_leaves_the_history_as_it_was(self):
        """A refused insert (here a duplicate id) raises StoreError; memory and store still agree."""
        history = SQLiteHistory(self.path, maxlen=10)
        try:
            start = history.next_id
            first = history.store("first")
            with self.assertRaises(StoreError) as caught:
                history.store("again, before the first was appended: the same id")
            self.assertIn(self.path, str(caught.exception))
            history.append(first)
            self.assertEqual(history.next_id, start + 1)
            keep(history, "second")  # and the store goes on
            self.assertEqual([e.id for e in history.after(start - 1)], [start, start + 1])
        finally:
            history.close()


class FailingStore(History):
    """A history whose store refuses every event, as a full disk would."""

    def store(self, data: str, event: str | None = None) -> StoredEvent:
        raise StoreError("test.sqlite3: the event could not be stored (disk I/O error)")


class SlowStore(History):
    """A history whose store waits until the test lets it go, as a busy disk would."""

    def __init__(self) -> None:
        super().__init__(100, first_id=1)
        self.entered, self.release = threading.Event(), threading.Event()

    def store(self, data: str, event: str | None = None) -> StoredEvent:
        self.entered.set()
        self.release.wait(TIMEOUT)
        return super().store(data, event)


class Test06TheHub(unittest.TestCase):
    """Numbering, storing, keeping and fan-out, in an order that makes acknowledgements true."""

    def test_01_an_event_the_store_refuses_is_not_sent_not_kept_and_its_id_is_reused(self):
        """A publish is acknowledged if and only if its event is stored."""
        hub = Hub(FailingStore(10, first_id=1))
        self.addCleanup(hub.close)
        with self.assertRaises(StoreError):
            hub.publish("lost")
        self.assertEqual(hub.history.next_id, 1)
        self.assertEqual(hub.history.after(0), [])

    def test_02_a_slow_store_does_not_hold_up_a_new_subscriber(self):
        """Nothing slow happens under the hub's lock: a subscriber joins while a publish waits on the disk."""
        history = SlowStore()
        hub = Hub(history)
        self.addCleanup(hub.close, 0.1)
        publisher = threading.Thread(target=hub.publish, args=("slow",))
        publisher.start()
        try:
            self.assertTrue(history.entered.wait(TIMEOUT))
            joined, (ours, theirs) = [], socket.socketpair()
            self.addCleanup(ours.close)
            self.addCleanup(theirs.close)
            joiner = threading.Thread(target=lambda: joined.append(hub.subscribe(ours, chunked=True, last_event_id="0")))
            joiner.start()
            joiner.join(TIMEOUT)
            self.assertFalse(joiner.is_alive())  # it did not wait for the store
            subscriber, first = joined[0]
            self.addCleanup(hub.unsubscribe, subscriber)  # (before the hub closes: it has no thread to end)
            self.assertEqual(first, [])  # nothing stored yet: nothing to replay
        finally:
            history.release.set()
            publisher.join(TIMEOUT)
        self.assertEqual(subscriber.backlog, [encode_chunk(b"id: 1\ndata: slow\n\n")])  # live, not lost


class Test07Fuzz(unittest.TestCase):
    """Seeded random and mutated input for the pure entry points of the server's side."""

    def test_01_any_chunked_body_is_decoded_or_refused_with_400_or_413(self):
        """RFC 9112 §7.1 Whatever a publisher sends as a chunked body: its data, or 400, or 413."""
        def decode(body: bytes) -> None:
            decoder = ChunkedDecoder(64)
            for i in range(0, len(body), 5):
                decoder.feed(body[i:i + 5])
        fuzz(self, decode, mutations(7100, [b"5\r\nhello\r\n0\r\n\r\n", b"3;a=b\r\nabc\r\n0\r\nX: y\r\n\r\n"]),
             (HTTPError,))

    def test_02_any_publish_query_body_and_origin_are_accepted_or_refused_with_a_status(self):
        """§9.2.5 Whatever the query, body, Origin or Last-Event-ID: a decision, or an HTTPError."""
        def decide(data: bytes) -> None:
            text = data.decode("latin-1")
            for check in (lambda: sse_server.publish_event_name(text), lambda: sse_server.publish_text(data),
                          lambda: sse_server.check_origin_allowed(text, "127.0.0.1:8088", ("http://a.example",)),
                          lambda: History(10, first_id=1).parse_id(text)):
                try:
                    check()
                except HTTPError:
                    pass
        fuzz(self, decide, mutations(9220, [b"event=note&x=1", b"http://a.example", b"http://[::1]:8088", b"1764576000000000"]))


if __name__ == "__main__":
    unittest.main()
