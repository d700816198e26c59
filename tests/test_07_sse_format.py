"""Chapter 7: the event stream from the server's side: the text/event-stream format (WHATWG
HTML §9.2.5; sse_server I.1), the chunked coding both ways (RFC 9112 §7.1; II.2), the decisions
about a request (II.3, I.6), and the history that makes Last-Event-ID work (WHATWG HTML §9.2.4;
I.5), in memory and in SQLite (II.5), and the hub (II.4).

Pure functions, literal bytes, and the hub without sockets.
"""

import json
import os
import socket
import sqlite3
import tempfile
import threading
import unittest
from unittest import mock

import sse_server
from sse_server import (ChunkedDecoder, History, HTTPError, Hub, ServerSentEvent, SQLiteHistory, StoredEvent,
                        StoreError, encode_chunk, format_comment, format_event, format_retry)
from tests.support import TIMEOUT, fuzz, mutations


def request_from(origin: str | None, host: str = "127.0.0.1:8088", method: str = "POST") -> sse_server.ws_server.Request:
    """A request head as the handler sees it, with this Origin (None: none) and Host."""
    headers = {"host": [host], **({"origin": [origin]} if origin is not None else {})}
    return sse_server.ws_server.Request(method, "/publish", (1, 1), headers, "/publish")


def parse(stream: bytes) -> list[ServerSentEvent]:
    return sse_server.EventStreamParser().feed(stream)


class Test01FormattingAnEvent(unittest.TestCase):
    """WHATWG HTML §9.2.5: fields are `name: value` lines; a blank line ends the event."""

    def test_01_data_becomes_a_data_line_and_a_blank_line_ends_the_event(self):
        """WHATWG HTML §9.2.5 event = *( comment / field ) end-of-line: a `data:` line, then the blank line that ends it."""
        self.assertEqual(format_event("hello"), "data: hello\n\n")

    def test_02_multi_line_data_becomes_one_data_line_per_line_split_on_cr_lf_and_crlf(self):
        """WHATWG HTML §9.2.5 A field's value holds no CR or LF, so each line of the data is a `data:` line of its own (split on CR, LF and CRLF)."""
        self.assertEqual(format_event("a\nb\rc\r\nd"), "data: a\ndata: b\ndata: c\ndata: d\n\n")

    def test_03_only_cr_lf_and_crlf_split_lines_not_what_str_splitlines_splits_on(self):
        """WHATWG HTML §9.2.5 end-of-line = ( cr lf / cr / lf ), no others: U+2028, NEL and form feed stay inside a line."""
        # U+2028 LINE SEPARATOR, U+0085 NEL and form feed are ordinary characters in an event
        # stream; str.splitlines() would split on them and drop the trailing empty line.
        self.assertEqual(format_event("a\u2028b\x85c\x0cd"), "data: a\u2028b\x85c\x0cd\n\n")
        self.assertEqual(format_event("line\n"), "data: line\ndata: \n\n")

    def test_04_event_id_and_retry_fields(self):
        """WHATWG HTML §9.2.6 The event, id and retry fields, each on its line, before the data."""
        self.assertEqual(format_event("x", event="note", id="42", retry=5000),
                         "event: note\nid: 42\nretry: 5000\ndata: x\n\n")

    def test_05_an_event_name_with_cr_or_lf_is_refused_so_no_field_can_be_injected(self):
        """WHATWG HTML §9.2.5 any-char excludes CR and LF: a name with one would start a new field, so it is refused (ValueError)."""
        for name in ("a\nb", "a\rb", "a\r\ndata: injected"):
            with self.subTest(name=name), self.assertRaises(ValueError):
                format_event("x", event=name)

    def test_06_an_id_with_cr_lf_or_nul_is_refused(self):
        """WHATWG HTML §9.2.6 An id with CR or LF would inject fields; one with NUL is ignored by the browser: both refused."""
        for id in ("1\n", "1\rretry: 1", "1\x002"):
            with self.subTest(id=id), self.assertRaises(ValueError):
                format_event("x", id=id)

    def test_07_a_negative_retry_is_refused_and_zero_is_sent(self):
        """WHATWG HTML §9.2.6 retry is "only ASCII digits", a number of milliseconds: a negative one is refused (ValueError); 0 is one (reconnect at once) and is sent."""
        with self.assertRaises(ValueError):
            format_event("x", retry=-1)
        with self.assertRaises(ValueError):
            format_retry(-1)
        self.assertEqual(format_event("x", retry=0), "retry: 0\ndata: x\n\n")
        self.assertEqual(format_retry(0), "retry: 0\n\n")

    def test_08_comments_start_with_a_colon_one_per_line(self):
        """WHATWG HTML §9.2.5 comment = colon *any-char end-of-line: one comment line per line of text."""
        self.assertEqual(format_comment("heartbeat"), ": heartbeat\n")
        self.assertEqual(format_comment("two\nlines"), ": two\n: lines\n")
        self.assertEqual(format_comment(), ":\n")

    def test_09_every_stream_opens_with_retry_alone_which_dispatches_nothing(self):
        """WHATWG HTML §9.2.6 retry sets the reconnection time; a blank line with no data dispatches nothing."""
        self.assertEqual(format_retry(3000), "retry: 3000\n\n")
        parser = sse_server.EventStreamParser()
        self.assertEqual(parser.feed(format_retry(3000).encode()), [])  # no event
        self.assertEqual(parser.retry, 3000)
        # What stream_opening (I.3) writes first, before a replay or none:
        self.assertEqual(sse_server.stream_opening(3000, [], chunked=False), b"retry: 3000\n\n")
        self.assertEqual(sse_server.stream_opening(3000, [stored(7)], chunked=False),
                         b"retry: 3000\n\nid: 7\ndata: event 7\n\n")

    def test_10_whatever_data_is_formatted_parses_back_to_the_same_data(self):
        """WHATWG HTML §9.2.6 Formatted data parses back the same (line breaks as LF), with its name and id: tricky values, then 2000 seeded random ones."""
        tricky = ["", " leading space", "a\r\nb", "\n\n", "tab\there", "emoji \U0001F600", ":colon", "x\r",
                  "\ufeffbom", "nul\x00inside"]
        random = [data.decode("utf-8", "replace") for data in mutations(7010, [b"a\r\nb\rc\nd", b": x\n\ndata: y"])]
        for data in tricky + random:
            text = format_event(data, event="e", id="7")
            expected = data.replace("\r\n", "\n").replace("\r", "\n")
            self.assertEqual(parse(text.encode()), [ServerSentEvent(expected, "e", "7")], repr(data))


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
        """RFC 9110 §15.5.14 413 (Operational: the decoder's limit is --max-body): the size line alone says it is too large."""
        decoder = ChunkedDecoder(10)
        decoder.feed(b"6\r\nabcdef\r\n")
        with self.assertRaises(HTTPError) as caught:
            decoder.feed(b"5\r\n")
        self.assertEqual(caught.exception.status, 413)

    def test_07_the_media_type_has_its_charset_after_a_semicolon(self):
        """RFC 9110 §8.3.1 Parameters follow a semicolon: text/event-stream; charset=utf-8."""
        self.assertEqual(sse_server.EVENT_STREAM_TYPE, "text/event-stream; charset=utf-8")

    def test_08_a_size_is_hexadecimal_in_either_case_with_at_most_16_digits(self):
        """RFC 9112 §7.1 chunk-size = 1*HEXDIG (RFC 5234: "A" to "F" in either case): "10" is 16 bytes, "F" and "f" are 15, and leading zeros count as digits: 16 of them are read; Operational: 17 are 400 (no size needs more than 16 hex digits)."""
        for size, length in ((b"10", 16), (b"F", 15), (b"f", 15), (b"Ab", 0xAB), (b"0000000000000005", 5)):
            with self.subTest(size=size):
                decoder = ChunkedDecoder(1000)
                self.assertEqual(decoder.feed(size + b"\r\n" + b"x" * length + b"\r\n0\r\n\r\n"), [b"x" * length])
                self.assertTrue(decoder.done)
        with self.assertRaises(HTTPError) as caught:
            ChunkedDecoder(1000).feed(b"00000000000000005\r\n")
        self.assertEqual(caught.exception.status, 400)

    def test_09_spaces_and_tabs_before_an_extension_are_skipped(self):
        """RFC 9112 §7.1.1 chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ): whitespace (SP or HTAB) may follow the size, before the ";"."""
        for line in (b"5 ;a=1", b"5\t;a", b"5 \t ;a"):
            with self.subTest(line=line):
                self.assertEqual(ChunkedDecoder(100).feed(line + b"\r\nhello\r\n"), [b"hello"])

    def test_10_a_body_of_exactly_the_limit_is_read(self):
        """Operational: --max-body is the most a body may hold: a chunked body of exactly that many bytes, in one chunk or several, is read (one more is 413: test_06)."""
        for body in (b"5\r\nhello\r\n0\r\n\r\n", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"):
            with self.subTest(body=body):
                decoder = ChunkedDecoder(5)
                self.assertEqual(b"".join(decoder.feed(body)), b"hello")
                self.assertEqual((decoder.done, decoder.size), (True, 5))

    def test_11_a_size_line_may_be_as_long_as_max_line_and_no_longer(self):
        """Operational: a size line (with its extensions) still unfinished is kept up to `max_line` bytes, 4096 by default, while the rest of it comes; one byte more is 400."""
        decoder = ChunkedDecoder(100)
        self.assertEqual(decoder.feed(b"1;" + b"x" * 4094), [])  # 4096 bytes, no CRLF yet
        self.assertFalse(decoder.done)
        with self.assertRaises(HTTPError) as caught:
            decoder.feed(b"x")
        self.assertEqual(caught.exception.status, 400)

    def test_13_a_whole_size_or_trailer_line_longer_than_max_line_is_400_too(self):
        """Operational: the `max_line` bound holds for a line that arrives whole with its CRLF: a size line with long extensions, or a long trailer field, is 400; one of exactly `max_line` bytes is read."""
        for body in (b"1;" + b"x" * 4095 + b"\r\na\r\n0\r\n\r\n", b"1\r\na\r\n0\r\nX: " + b"y" * 4094 + b"\r\n\r\n"):
            with self.subTest(body=body[:12]), self.assertRaises(HTTPError) as caught:
                ChunkedDecoder(100).feed(body)
            self.assertEqual(caught.exception.status, 400)
        decoder = ChunkedDecoder(100)
        self.assertEqual(decoder.feed(b"1;" + b"x" * 4094 + b"\r\na\r\n0\r\nX: " + b"y" * 4093 + b"\r\n\r\n"), [b"a"])
        self.assertTrue(decoder.done)

    def test_14_the_next_request_after_the_body_may_be_longer_than_max_line(self):
        """RFC 9112 §9.3 The bytes after the body's last CRLF are the next request, not a line of this coding: however long, they go to `unused` (the `max_line` bound is for this coding's own lines)."""
        decoder = ChunkedDecoder(100)
        following = b"POST /publish HTTP/1.1\r\n" + b"X: " + b"y" * 5000
        self.assertEqual(decoder.feed(b"1\r\na\r\n0\r\n\r\n" + following), [b"a"])
        self.assertEqual((decoder.done, decoder.unused), (True, following))

    def test_12_what_follows_the_body_is_kept_for_the_next_request_even_when_it_comes_later(self):
        """RFC 9112 §9.3: the bytes after a body are the next request on the connection: `unused` is empty until the body ends, then holds what followed it, with whatever is fed afterwards (no more chunks come out)."""
        decoder = ChunkedDecoder(100)
        self.assertEqual(decoder.unused, b"")
        self.assertEqual(decoder.feed(b"5\r\nhello\r\n"), [b"hello"])
        self.assertEqual(decoder.unused, b"")
        self.assertEqual(decoder.feed(b"0\r\n\r\nGET / HT"), [])
        self.assertEqual(decoder.feed(b"TP/1.1\r\n"), [])
        self.assertEqual(decoder.unused, b"GET / HTTP/1.1\r\n")


class Test03DecisionsAboutARequest(unittest.TestCase):
    """The pure checks of a publish (II.3), of CORS (I.6), and of Last-Event-ID (I.5); each refusal an HTTPError."""

    def test_01_an_event_name_must_be_one_non_empty_line(self):
        """WHATWG HTML §9.2.6 `event` sets the type: `?event=NAME` names it; one with a line break would inject a field (WHATWG HTML §9.2.5), or empty: 400."""
        self.assertEqual(sse_server.publish_event_name("event=note"), "note")
        self.assertIsNone(sse_server.publish_event_name("other=1"))
        for query in ("event=a%0Adata:%20injected", "event=a%0Db", "event="):
            with self.subTest(query=query), self.assertRaises(HTTPError) as caught:
                sse_server.publish_event_name(query)
            self.assertEqual(caught.exception.status, 400)

    def test_02_a_published_body_must_be_utf8(self):
        """WHATWG HTML §9.2.5 "Event streams in this format must always be encoded as UTF-8": a body that is not is refused (400)."""
        self.assertEqual(sse_server.publish_text("é".encode()), "é")
        with self.assertRaises(HTTPError):
            sse_server.publish_text(b"\xff\xfe")

    def test_03_the_last_event_id_header_is_utf8(self):
        """WHATWG HTML §9.2.3 Last-Event-ID is "the last event ID string, encoded as UTF-8" (the header: WHATWG HTML §9.2.4): read back as UTF-8."""
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
        """Operational: --allow-origin (the rules the server builds, `access_rules`): another page's Origin is 403; origins (RFC 6454 §7.1) are compared as strings, never parsed, so `http://[` is a 403, not a crash; same origin and no Origin pass."""
        rules = sse_server.access_rules(sse_server.ServerConfig(allowed_origins=("http://a.example",)), 8088)
        rules.check_origin(request_from(None))  # a program, not a page
        rules.check_origin(request_from("http://a.example"))
        rules.check_origin(request_from("http://127.0.0.1:8088"))  # same origin
        for origin in ("http://evil.example", "http://[", "null", "http://127.0.0.1:8088.evil"):
            with self.subTest(origin=origin), self.assertRaises(HTTPError) as caught:
                rules.check_origin(request_from(origin))
            self.assertEqual(caught.exception.status, 403)

    def test_08_by_default_only_this_servers_own_pages_may_publish(self):
        """Fetch "CORS protocol" (a simple request has no preflight) and RFC 6454 §5: with no --allow-origin the rules allow this server's own origin and no Origin (curl), and refuse every other page, 403."""
        rules = sse_server.access_rules(sse_server.ServerConfig(), 8088)
        for origin in (None, "http://127.0.0.1:8088", "http://localhost:8088"):
            rules.check_origin(request_from(origin, host=(origin or "http://127.0.0.1:8088")[7:]))
        for origin in ("http://127.0.0.1:9999", "http://evil.example", "null", "https://127.0.0.1:8088.evil"):
            with self.subTest(origin=origin), self.assertRaises(HTTPError) as caught:
                rules.check_origin(request_from(origin))
            self.assertEqual(caught.exception.status, 403)

    def test_09_on_loopback_a_host_that_is_not_loopbacks_is_421_unless_allowed(self):
        """RFC 9110 §15.5.20 421 (Operational: DNS rebinding): bound to loopback, a Host that names anything but loopback (on any port) is refused; --allowed-host adds a name; bound elsewhere, any Host passes."""
        rules = sse_server.access_rules(sse_server.ServerConfig(allowed_hosts=("events.example",)), 8088)
        for host in ("127.0.0.1:8088", "localhost:8088", "[::1]:8088", "localhost", "127.0.0.1:9999",
                     "events.example", "events.example:8088"):
            rules.check_host(request_from(None, host=host))
        for host in ("evil.example:8088", "127.0.0.1.evil.example:8088"):
            with self.subTest(host=host), self.assertRaises(HTTPError) as caught:
                rules.check_host(request_from(None, host=host))
            self.assertEqual(caught.exception.status, 421)
        sse_server.access_rules(sse_server.ServerConfig(host="0.0.0.0"), 8088).check_host(request_from(None, host="evil.example"))

    def test_10_the_servers_own_event_names_and_the_browsers_cannot_be_published(self):
        """WHATWG HTML §9.2.3 (EventSource fires `open` and `error` itself) and the server's own `reset` (I.5): `?event=` with one of them is a 400 that says why."""
        for name in ("reset", "open", "error"):
            with self.subTest(name=name), self.assertRaises(HTTPError) as caught:
                sse_server.publish_event_name(f"event={name}")
            self.assertEqual(caught.exception.status, 400)
            self.assertIn("reserved", caught.exception.reason)
        self.assertEqual(sse_server.publish_event_name("event=message"), "message")
        self.assertEqual(sse_server.publish_event_name("event=Reset"), "Reset")  # names are case-sensitive

    def test_07_an_empty_body_an_event_named_twice_or_a_query_not_utf8_is_400(self):
        """WHATWG HTML §9.2.6 An event with no data is never dispatched: an empty body is a 400; so are `?event=` given twice and a query that is not UTF-8 (§9.2.5), rather than one name kept silently or U+FFFD."""
        for check in (lambda: sse_server.publish_text(b""), lambda: sse_server.publish_event_name("event=a&event=b"),
                      lambda: sse_server.publish_event_name("event=%FF")):
            with self.assertRaises(HTTPError) as caught:
                check()
            self.assertEqual(caught.exception.status, 400)

    def test_11_a_preflight_is_answered_with_the_methods_and_headers_we_serve_cached_a_day(self):
        """Fetch "CORS-preflight fetch": Access-Control-Allow-Methods lists what this server serves (GET, HEAD, POST, OPTIONS: not the tutorial's PUT and DELETE), Access-Control-Allow-Headers what a page may send (Last-Event-ID, Content-Type, Cache-Control, Authorization), Access-Control-Max-Age how long a browser may cache the answer: 86400 s."""
        self.assertEqual(sse_server.preflight_headers(), [
            ("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", "Last-Event-ID, Content-Type, Cache-Control, Authorization"),
            ("Access-Control-Max-Age", "86400")])


def stored(id: int) -> StoredEvent:
    return StoredEvent.from_payload(id, format_event(f"event {id}", id=str(id)).encode())


def keep(history: History, data: str) -> StoredEvent:
    """What the hub does with each event: store it (which numbers it), then append it."""
    event = history.store(data)
    history.append(event)
    return event


class Test04TheHistoryForLastEventID(unittest.TestCase):
    """WHATWG HTML §9.2.4: a reconnecting client sends the last id it saw; the History (I.5) resumes after it."""

    def test_01_every_event_after_the_last_id_in_order(self):
        """WHATWG HTML §9.2.4 Last-Event-ID names the last event seen; History.after gives every event after it, in order, none twice."""
        history = History(10, first_id=1)
        self.assertEqual([keep(history, f"event {id}").id for id in range(1, 6)], [1, 2, 3, 4, 5])
        self.assertEqual([e.id for e in history.after(2)], [3, 4, 5])
        self.assertEqual(history.after(5), [])
        self.assertEqual([e.id for e in history.after(0)], [1, 2, 3, 4, 5])

    def test_02_an_id_older_than_the_history_or_never_issued_cannot_be_resumed_and_gets_a_reset(self):
        """WHATWG HTML §9.2.4 Last-Event-ID, and this server's answer: a position that no longer exists is not guessed at; first_events gives a `reset` event with the newest id."""
        history = History(3, first_id=1)
        for id in range(1, 8):
            keep(history, f"event {id}")  # keeps 5, 6, 7
        self.assertEqual([e.id for e in history.after(4)], [5, 6, 7])
        self.assertIsNone(history.after(3))  # event 4 is gone: a gap
        self.assertIsNone(history.after(8))  # not issued yet
        for last_event_id in ("3", "8"):
            with self.subTest(last_event_id=last_event_id):
                reset = parse(b"".join(e.payload for e in sse_server.first_events(history, last_event_id)))
                self.assertEqual([(e.type, e.last_event_id) for e in reset], [("reset", "7")])
                self.assertEqual(json.loads(reset[0].data)["last_event_id"], last_event_id)
        self.assertEqual([e.id for e in sse_server.first_events(history, "4")], [5, 6, 7])  # resumable: no reset
        self.assertEqual(sse_server.first_events(history, None), [])  # no Last-Event-ID: nothing before live events

    def test_03_in_memory_ids_start_at_the_start_time_in_microseconds_so_an_earlier_runs_are_too_old(self):
        """Operational (History, I.5): kept in memory, the first id is the start time in µs, so the ids of an earlier run (fewer events than µs since) are too old for a later one."""
        started = 1_764_576_000_123_456_789  # ns since the epoch: the earlier run's start (time.time_ns, mocked)
        with mock.patch.object(sse_server.time, "time_ns", return_value=started):
            earlier = History(10)  # the default: no first_id given
        self.assertEqual(earlier.next_id, started // 1000)
        ids = [keep(earlier, f"from an earlier run {n}").id for n in range(3)]
        with mock.patch.object(sse_server.time, "time_ns", return_value=started + 1_000_000_000):  # a second later
            later = History(10)
        self.assertEqual(later.next_id, started // 1000 + 1_000_000)
        self.assertGreater(later.next_id, ids[-1])
        keep(later, "the later run's first event")
        for id in ids:
            self.assertIsNone(later.after(id))  # too old: a reset, never another run's position

    def test_04_a_last_event_id_is_ascii_digits_with_a_length_cap(self):
        """WHATWG HTML §9.2.4 The header's value is essentially any UTF-8 string: only a short ASCII number names a position here."""
        history = History(10, first_id=1)
        self.assertEqual(history.parse_id("42"), 42)
        for text in ("4" * 5000, "٣", "²", "-1", "1.5", ""):
            with self.subTest(text=text[:10]):
                self.assertIsNone(history.parse_id(text))

    def test_05_once_the_history_is_forgotten_only_the_newest_id_is_current(self):
        """WHATWG HTML §9.2.4 Last-Event-ID, and this server's answer: after `forget` (the store lost what it kept) no earlier id can be resumed from (None: a reset); the newest id still can, with nothing missed."""
        history = History(10, first_id=1)
        for id in range(1, 6):
            keep(history, f"event {id}")
        history.forget()
        for last_id in (1, 4):
            with self.subTest(last_id=last_id):
                self.assertIsNone(history.after(last_id))
        self.assertEqual(history.after(5), [])

    def test_06_a_reset_says_why_in_its_message_and_echoes_at_most_100_characters_of_the_id(self):
        """Operational: a reset event's data is JSON with a `message` (UNKNOWN_POSITION), as the clock's ticks are, and the Last-Event-ID it could not resume from, cut to 100 characters (a client may send a long one)."""
        history = History(10, first_id=1)
        keep(history, "event 1")
        for sent, echoed in (("x" * 100, "x" * 100), ("y" * 150, "y" * 100)):
            with self.subTest(length=len(sent)):
                [reset] = parse(sse_server.first_events(history, sent)[0].payload)
                self.assertEqual(json.loads(reset.data), {"message": sse_server.UNKNOWN_POSITION, "last_event_id": echoed})

    def test_07_a_thousand_events_are_kept_by_default(self):
        """Operational: --history is 1000 events by default: after 1001 events, a client that missed the last 1000 gets them all, one that missed the first too gets a reset (None)."""
        self.assertEqual(sse_server.ServerConfig().history, 1000)
        history = History(sse_server.ServerConfig().history, first_id=1)
        for id in range(1, 1002):
            keep(history, f"event {id}")
        self.assertEqual([e.id for e in history.after(1)], list(range(2, 1002)))
        self.assertIsNone(history.after(0))


class Test05TheSQLiteStore(unittest.TestCase):
    """Operational: --store FILE: the history kept across restarts, owned by one server process (II.5)."""

    def setUp(self):
        self.folder = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.folder.name, "events.sqlite3")

    def tearDown(self):
        self.folder.cleanup()

    def test_01_a_store_keeps_events_and_ids_across_a_restart(self):
        """Operational: --store: a restarted server replays what its clients missed (WHATWG HTML §9.2.4 Last-Event-ID), and continues the ids."""
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
        """Operational: --store: one store, one process: a second opener is refused, and told which file and why."""
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
        """Operational: --store: every store error names the file: another program's database, or no database at all."""
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
        """Operational: --store: a refused insert (here a duplicate id) raises StoreError; memory and the file still agree."""
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
            in_memory = [e.payload for e in history.after(start - 1)]
        finally:
            history.close()
        reopened = SQLiteHistory(self.path, maxlen=10)  # what the file kept
        try:
            self.assertEqual([e.payload for e in reopened.after(start - 1)], in_memory)
        finally:
            reopened.close()


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
    """Operational (the hub, II.4): numbering, storing, keeping and fan-out, in an order that makes acknowledgements true."""

    def test_01_an_event_the_store_refuses_is_not_sent_not_kept_and_its_id_is_reused(self):
        """Operational (Hub.publish): an event the store refuses raises StoreError, reaches no subscriber, is not kept, and leaves its id to the next."""
        hub = Hub(FailingStore(10, first_id=1))
        self.addCleanup(hub.close, 0.1)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        subscriber, _ = hub.subscribe(ours, chunked=True, last_event_id=None)
        self.addCleanup(hub.unsubscribe, subscriber)  # (before the hub closes: it has no thread to end)
        with self.assertRaises(StoreError):
            hub.publish("lost")
        self.assertEqual(subscriber.backlog, [])  # not sent (until its thread starts, all it gets waits here)
        self.assertEqual(hub.history.next_id, 1)  # the next event gets id 1
        self.assertEqual(hub.history.after(0), [])  # not kept

    def test_02_a_slow_store_does_not_hold_up_a_new_subscriber(self):
        """Operational (Hub): nothing slow happens under the hub's lock: a subscriber joins while a publish waits on the disk, and then gets that event live."""
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
        """Operational (II.3, I.6, I.5), fuzzed: whatever the query, body, Origin or Last-Event-ID: a decision, or an HTTPError."""
        rules = sse_server.access_rules(sse_server.ServerConfig(allowed_origins=("http://a.example",)), 8088)

        def decide(data: bytes) -> None:
            text = data.decode("latin-1")
            for check in (lambda: sse_server.publish_event_name(text), lambda: sse_server.publish_text(data),
                          lambda: rules.check_origin(request_from(text)), lambda: sse_server.ws_server.is_valid_authority(text) and rules.check_host(request_from(None, text)),
                          lambda: History(10, first_id=1).parse_id(text)):
                try:
                    check()
                except HTTPError:
                    pass
        fuzz(self, decide, mutations(9220, [b"event=note&x=1", b"http://a.example", b"http://[::1]:8088", b"1764576000000000"]))


if __name__ == "__main__":
    unittest.main()
