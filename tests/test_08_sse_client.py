"""Chapter 8: the event stream from the browser's side: the processing model of an EventSource
(WHATWG HTML §9.2.2-§9.2.6), first as a parser fed literal bytes (sse_server I.2), then as a
client (II.9) that reconnects, follows redirects and sends Last-Event-ID the way a browser does.

Every wait is bounded: the client reconnects forever by design, so each of its events is
awaited for at most TIMEOUT seconds (`next_event`), and a broken parser fails a test, never
hangs it.
"""

import http.server
import json
import os
import queue
import subprocess
import tempfile
import socket
import ssl
import threading
import unittest
import unittest.mock

import sse_server
from sse_server import EventStreamParser, ServerSentEvent
from tests.support import ROOT, TIMEOUT, SSEServerTestCase, fuzz, mutations, python_command, stop_process, wait_until


def parse(stream: bytes) -> list[ServerSentEvent]:
    return EventStreamParser().feed(stream)


class Test01ParsingTheSpecExamples(unittest.TestCase):
    """The examples of WHATWG HTML §9.2.6, through the parser, with the results the spec gives."""

    def test_01_three_data_lines_make_one_event_joined_with_lf(self):
        """WHATWG HTML §9.2.6 Three data lines make one event, joined with LF (the spec's stock example)."""
        stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
        self.assertEqual(parse(stream), [ServerSentEvent("YHOO\n+2\n10")])

    def test_02_comment_id_and_an_id_field_with_no_value(self):
        """WHATWG HTML §9.2.6 A comment, an id, and an `id` with no value that resets the last event ID (the spec's example)."""
        stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
        self.assertEqual(parse(stream), [
            ServerSentEvent("first event", last_event_id="1"),
            ServerSentEvent("second event", last_event_id=""),  # `id` alone resets it
            ServerSentEvent(" third event", last_event_id=""),  # only one space is removed
        ])

    def test_03_empty_data_fires_an_event_and_a_last_block_with_no_blank_line_fires_nothing(self):
        """WHATWG HTML §9.2.6 Empty data fires an event, two empty data lines fire "\\n", and a last block with no blank line after it fires nothing (the spec's example; its end of stream: Test05 test_05)."""
        for stream in (b"data\n\ndata\ndata\n\ndata:\n", b"data\n\ndata\ndata\n\ndata:"):  # its line ended, or not
            with self.subTest(stream=stream):
                self.assertEqual(parse(stream), [ServerSentEvent(""), ServerSentEvent("\n")])

    def test_04_the_space_after_the_colon_is_optional(self):
        """WHATWG HTML §9.2.6 `data:test` and `data: test` are the same field (the spec's example)."""
        self.assertEqual(parse(b"data:test\n\ndata: test\n\n"), [ServerSentEvent("test")] * 2)


class Test02ParsingRules(unittest.TestCase):
    """WHATWG HTML §9.2.5 and §9.2.6, rule by rule."""

    def test_01_one_leading_bom_is_ignored_a_second_one_is_not(self):
        """WHATWG HTML §9.2.6 UTF-8 decode strips one leading BOM (§9.2.5: stream = [ bom ] *event); a second one is part of a field name, and one at the start of a later read (not the stream's start) is data."""
        self.assertEqual(parse(b"\xef\xbb\xbfdata: a\n\n"), [ServerSentEvent("a")])
        # "\ufeffdata" is then a field name nobody knows: ignored.
        self.assertEqual(parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"), [])
        parser = EventStreamParser()
        self.assertEqual(parser.feed(b"data:") + parser.feed(b"\xef\xbb\xbfa\n\n"), [ServerSentEvent("\ufeffa")])

    def test_02_lines_end_with_cr_lf_or_crlf(self):
        """WHATWG HTML §9.2.6 A line ends with CRLF, a lone LF or a lone CR (§9.2.5: end-of-line = ( cr lf / cr / lf ))."""
        for eol in (b"\n", b"\r", b"\r\n"):
            with self.subTest(eol=eol):
                self.assertEqual(parse(b"data: a" + eol + b"data: b" + eol + eol), [ServerSentEvent("a\nb")])

    def test_03_a_crlf_split_across_two_reads_is_one_line_break(self):
        """WHATWG HTML §9.2.6 Only a CR "not followed by" LF ends a line alone: a CRLF split across two reads is one line break, not two."""
        parser = EventStreamParser()
        self.assertEqual(parser.feed(b"data: a\r"), [])
        self.assertEqual(parser.feed(b"\ndata: b\r\n\r"), [ServerSentEvent("a\nb")])
        self.assertEqual(parser.feed(b"\ndata: c\n\n"), [ServerSentEvent("c")])

    def test_04_feeding_one_byte_at_a_time_gives_the_same_events(self):
        """WHATWG HTML §9.2.6 "Lines must be processed, in the order they are received": one byte at a time gives the same events."""
        stream = "\ufeffid: 1\r\nevent: é\rdata: ü\r\n\r\n: c\ndata: x\n\nretry: 10\n".encode()
        parser = EventStreamParser()
        events = [e for i in range(len(stream)) for e in parser.feed(stream[i:i + 1])]
        self.assertEqual(events, parse(stream))
        self.assertEqual(events, [ServerSentEvent("ü", "é", "1"), ServerSentEvent("x", "message", "1")])

    def test_05_event_names_the_type_which_defaults_to_message_for_the_next_event(self):
        """WHATWG HTML §9.2.6 event sets the type of this event only (dispatch empties the buffer, even when it dispatches nothing for want of data); the next one is `message` again."""
        self.assertEqual(parse(b"event: add\ndata: 1\n\ndata: 2\n\n"),
                         [ServerSentEvent("1", "add"), ServerSentEvent("2", "message")])
        self.assertEqual(parse(b"event: add\n\ndata: 2\n\n"), [ServerSentEvent("2", "message")])

    def test_06_the_last_event_id_persists_until_the_stream_sets_another(self):
        """WHATWG HTML §9.2.6 The last event ID buffer "does not get reset": it persists from event to event, and is set at dispatch even with no data."""
        parser = EventStreamParser()
        events = parser.feed(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\n\n")
        self.assertEqual([e.last_event_id for e in events], ["7", "7"])
        self.assertEqual(parser.last_event_id, "8")  # set at dispatch even with no data

    def test_07_an_id_containing_nul_is_ignored(self):
        """WHATWG HTML §9.2.6 "If the field value does not contain U+0000 NULL, then set the last event ID buffer"."""
        self.assertEqual(parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")[1].last_event_id, "1")

    def test_08_retry_takes_ascii_digits_only(self):
        """WHATWG HTML §9.2.6 "If the field value consists of only ASCII digits", retry sets the reconnection time; else it is ignored. Until the stream sends one, the reconnection time is the client's own (None here); a reconnection starts a new parse with the time set before."""
        self.assertIsNone(EventStreamParser().retry)
        self.assertEqual(EventStreamParser(retry=1500).retry, 1500)
        parser = EventStreamParser()
        parser.feed(b"retry: 1500\n")
        self.assertEqual(parser.retry, 1500)
        for bad in (b"retry: 15s\n", b"retry: -1\n", b"retry: \xd9\xa1\n", b"retry:\n", b"retry: 1 \n"):
            parser.feed(bad)
        self.assertEqual(parser.retry, 1500)

    def test_09_unknown_fields_and_comments_are_ignored(self):
        """WHATWG HTML §9.2.6 Other field names, and comments, are ignored; names are compared "with no case folding"."""
        self.assertEqual(parse(b": hi\nfoo: bar\nDATA: no\ndata: yes\n\n"), [ServerSentEvent("yes")])

    def test_10_a_field_with_no_colon_has_an_empty_value(self):
        """WHATWG HTML §9.2.6 A line with no colon is a field name with an empty value."""
        self.assertEqual(parse(b"data\ndata\n\n"), [ServerSentEvent("\n")])

    def test_11_only_the_first_colon_separates_name_and_value(self):
        """WHATWG HTML §9.2.6 Only the first colon separates the name from the value."""
        self.assertEqual(parse(b"data: a: b\n\n"), [ServerSentEvent("a: b")])

    def test_12_invalid_utf8_becomes_the_replacement_character(self):
        """WHATWG HTML §9.2.6 "Streams must be decoded using the UTF-8 decode algorithm": invalid bytes become U+FFFD."""
        self.assertEqual(parse(b"data: \xff\xfe ok\n\n"), [ServerSentEvent("\ufffd\ufffd ok")])

    def test_13_a_utf8_character_split_across_two_reads_is_kept_whole(self):
        """WHATWG HTML §9.2.6 UTF-8 decode reads the stream as one: a character split across two reads is decoded whole."""
        parser = EventStreamParser()
        data = "data: €\n\n".encode()
        self.assertEqual(parser.feed(data[:7]) + parser.feed(data[7:]), [ServerSentEvent("€")])


class Test03ParsingAnything(unittest.TestCase):

    def test_01_any_bytes_parse_to_events_and_never_raise(self):
        """WHATWG HTML §9.2.6 Interpreting a stream has no error case: whatever the bytes (seeded mutations), in pieces of 3, events come out and nothing raises."""
        def feed(stream: bytes) -> None:
            parser = EventStreamParser()
            for i in range(0, len(stream), 3):
                for event in parser.feed(stream[i:i + 3]):
                    self.assertIsInstance(event.data, str)
        fuzz(self, feed, mutations(9226, [b"\xef\xbb\xbfid: 1\r\nevent: x\rdata: a\n\n", b": c\nretry: 10\ndata\n\n"]))


class Test04ParsingWhatRealServersSend(unittest.TestCase):
    """WHATWG HTML §9.2.6 on streams as servers write them: ours, and the tutorial's."""

    def test_01_our_stream_parses_to_retry_then_events_with_ids(self):
        """WHATWG HTML §9.2.6 retry first, then each event's id and data, and a comment that dispatches nothing."""
        parser = EventStreamParser()
        stream = (sse_server.format_retry(3000) + sse_server.format_comment("heartbeat")
                  + sse_server.format_event('{"message": "Current time: 12:00:00"}', id="1764576000000000")).encode()
        self.assertEqual(parser.feed(stream), [ServerSentEvent('{"message": "Current time: 12:00:00"}',
                                                               last_event_id="1764576000000000")])
        self.assertEqual(parser.retry, 3000)

    def test_02_the_tutorials_stream_parses_too(self):
        """WHATWG HTML §9.2.6 The tutorial sends `data: {json}` with no id: the last event ID stays empty."""
        events = parse(b'data: {"message":"Current time: 12:00:00"}\n\n')
        self.assertEqual(json.loads(events[0].data)["message"], "Current time: 12:00:00")
        self.assertEqual(events[0].last_event_id, "")


class Following:
    """The client (`sse_server.follow`), each of its events awaited for at most `timeout` seconds.

    follow() reconnects forever, by design: a bare next() on it waits as long as no event comes,
    which for a broken parser is forever.  Here each next() runs in a thread of its own and the
    test waits for it with a bound, then fails.  (A next() that timed out is left running in its
    daemon thread, reconnecting, until the test process ends: the test has failed by then.)"""

    def __init__(self, url: str, **options) -> None:
        self.events = sse_server.follow(url, timeout=TIMEOUT, **options)
        self.running: threading.Thread | None = None

    def next(self, meanwhile=None, timeout: float = TIMEOUT) -> ServerSentEvent:
        """The next event (or what follow raised), once `meanwhile()` has run in this thread."""
        results: queue.Queue = queue.Queue()

        def take() -> None:
            try:
                results.put((True, next(self.events)))
            except BaseException as error:  # StreamFailed, StopIteration: the test's to see
                results.put((False, error))
        self.running = threading.Thread(target=take, name="follow", daemon=True)
        self.running.start()
        if meanwhile is not None:
            meanwhile()
        try:
            taken, value = results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event from the client within {timeout:g} s") from None
        self.running.join(timeout)
        self.running = None
        if not taken:
            raise value
        return value

    def close(self) -> None:
        if self.running is None:  # (a generator still running cannot be closed; see above)
            self.events.close()  # its connection, if any, closes with it


def publish_once_subscribed(server: sse_server.SSEServer, text: str, count: int = 1) -> None:
    """Publish `text` once the server has `count` subscribers: the client is there to get it live."""
    wait_until(lambda: server.hub.subscriber_count == count, message=f"{count} subscribers")
    server.hub.publish(text)


class Redirector(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a redirect (`status`) to `target` (both set on the server)."""

    def do_GET(self):
        self.send_response(self.server.status)
        self.send_header("Location", self.server.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class OneEventStream(http.server.BaseHTTPRequestHandler):
    """A stream of one event whose id is not ASCII, then its end; it notes each Last-Event-ID."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        value = self.headers.get("Last-Event-ID")  # http.server reads header bytes as latin-1
        self.server.last_event_ids.append(None if value is None else value.encode("latin-1"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        data = "first" if value is None else "again"
        self.wfile.write(f"retry: 10\nid: 日本\ndata: {data}\n\n".encode("utf-8"))

    def log_message(self, *args):
        pass


class EndsInTheMiddleOfAnEvent(http.server.BaseHTTPRequestHandler):
    """The first stream: an event, then an event with no blank line after it, ending on an
    unfinished line, then the end of the stream (HTTP/1.0: the connection closes).  Every later
    stream: one event, then its end."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.server.connections += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if self.server.connections == 1:
            self.wfile.write(b"retry: 10\ndata: complete\n\ndata: pending\ndata: unfinish")
        else:
            self.wfile.write(b"data: after the reconnection\n\n")

    def log_message(self, *args):
        pass


class Test05TheClient(SSEServerTestCase):
    """`--connect URL`: an EventSource in a terminal (WHATWG HTML §9.2.2-§9.2.4, §9.2.6)."""

    def follow(self, url: str, **options) -> Following:
        client = Following(url, **options)
        self.addCleanup(client.close)
        return client

    def serve(self, handler, **attributes) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        for name, value in attributes.items():
            setattr(server, name, value)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return server

    def test_01_it_reconnects_by_itself_with_last_event_id(self):
        """WHATWG HTML §9.2.2 (the end of the body reestablishes the connection) and §9.2.3: wait the reconnection time, ask again with Last-Event-ID, and get what was missed."""
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)  # (registered first: it runs after both servers stopped)
        store = os.path.join(folder.name, "events.sqlite3")
        first = self.start_server(store=store, retry=50)
        client = self.follow(f"http://127.0.0.1:{first.port}/sse")
        one = client.next(meanwhile=lambda: publish_once_subscribed(first, "one"))
        self.assertEqual(one.data, "one")
        port = first.port
        first.stop()  # the stream ends (its last chunk): the client waits 50 ms, and asks again
        # The next server has "two" before it serves anyone (a connection waits in its listen
        # queue): only a client that comes back with Last-Event-ID (one's id) is replayed "two".
        second = sse_server.SSEServer(sse_server.ServerConfig(port=port, clock=0, heartbeat=0, store=store))
        self.addCleanup(second.stop)
        second.hub.publish("two")
        second.start()
        two = client.next()
        self.assertEqual((two.data, two.last_event_id), ("two", str(int(one.last_event_id) + 1)))

    def test_02_it_sends_last_event_id_utf8_encoded(self):
        """WHATWG HTML §9.2.3 Last-Event-ID is "the last event ID string, encoded as UTF-8": an id of 日本 comes back intact."""
        streamer = self.serve(OneEventStream, last_event_ids=[])
        client = self.follow(f"http://127.0.0.1:{streamer.server_address[1]}/sse")
        self.assertEqual(client.next().last_event_id, "日本")
        self.assertEqual(client.next().data, "again")  # the second connection
        self.assertEqual(streamer.last_event_ids, [None, "日本".encode("utf-8")])

    def test_03_it_follows_redirects(self):
        """WHATWG HTML §9.2.1 "Event stream requests can be redirected using HTTP 301 and 307 redirects": each leads to the stream."""
        redirector = http.server.HTTPServer(("127.0.0.1", 0), Redirector)
        redirector.target = f"http://127.0.0.1:{self.port}/sse"
        threading.Thread(target=redirector.serve_forever, daemon=True).start()
        self.addCleanup(redirector.server_close)
        self.addCleanup(redirector.shutdown)
        for status in (301, 307):
            with self.subTest(status=status):
                redirector.status = status
                client = self.follow(f"http://127.0.0.1:{redirector.server_address[1]}/old")
                text = f"through the {status}"
                self.assertEqual(client.next(meanwhile=lambda: publish_once_subscribed(self.server, text)).data, text)
                client.close()
                wait_until(lambda: self.server.hub.subscriber_count == 0, message="the client gone")

    def test_04_a_refusal_fails_the_connection_for_good(self):
        """WHATWG HTML §9.2.2 A status other than 200, or a Content-Type other than text/event-stream, fails the connection; once failed (§9.2.3) it does not reconnect."""
        for path, said in (("/not-a-stream", "404"), ("/", "text/html")):
            with self.subTest(path=path):
                client = self.follow(f"http://127.0.0.1:{self.port}{path}")
                with self.assertRaises(sse_server.StreamFailed) as caught:
                    client.next()
                self.assertIn(said, str(caught.exception))
                with self.assertRaises(StopIteration):
                    client.next()  # the client is over: no reconnection

    def test_05_at_the_end_of_a_stream_an_unfinished_event_is_discarded(self):
        """WHATWG HTML §9.2.6 "Once the end of the file is reached, any pending data must be discarded": the next connection starts clean."""
        streamer = self.serve(EndsInTheMiddleOfAnEvent, connections=0)
        client = self.follow(f"http://127.0.0.1:{streamer.server_address[1]}/sse")
        self.assertEqual(client.next(), ServerSentEvent("complete"))
        # Not "pending\nunfinishdata: after the reconnection": the pending event and the
        # unfinished line ended with the first stream.
        self.assertEqual(client.next(), ServerSentEvent("after the reconnection"))
        self.assertEqual(streamer.connections, 2)



class RecordsAuthorization(http.server.BaseHTTPRequestHandler):
    """`/old` redirects (307) to `/sse` here; `/sse` is one event and its end.  Each request's
    Authorization header is noted."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.server.authorizations.append(self.headers.get("Authorization"))
        if self.path == "/old":
            self.send_response(307)
            self.send_header("Location", "/sse")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"retry: 10\ndata: here\n\n")

    def log_message(self, *args):
        pass


class Test07TheClientsTokenAndTerminal(SSEServerTestCase):
    """`--connect` with `--access-token` (RFC 6750 §2.1 Bearer), and what it prints (Operational: a terminal is not a page)."""

    options = {"access_token": "access-secret"}
    follow, serve = Test05TheClient.follow, Test05TheClient.serve

    def test_01_with_the_access_token_it_reads_without_it_it_is_refused_for_good(self):
        """RFC 6750 §2.1 `Authorization: Bearer`: the stream that needs the token is read with it; without it the 401 fails the connection (WHATWG HTML §9.2.2) and the client ends."""
        client = self.follow(f"http://127.0.0.1:{self.port}/sse", access_token="access-secret")
        self.assertEqual(client.next(meanwhile=lambda: publish_once_subscribed(self.server, "for token holders")).data,
                         "for token holders")
        with self.assertRaises(sse_server.StreamFailed) as caught:
            self.follow(f"http://127.0.0.1:{self.port}/sse").next()
        self.assertIn("401", str(caught.exception))

    def test_02_the_token_goes_to_the_first_urls_origin_only_not_where_a_redirect_leads(self):
        """RFC 6454 §4 origin, Fetch "HTTP-redirect fetch" (which drops Authorization across origins): a redirect within the origin keeps the token; one to another origin (another port) does not get it."""
        recorder = self.serve(RecordsAuthorization, authorizations=[])
        here = f"http://127.0.0.1:{recorder.server_address[1]}"
        self.assertEqual(self.follow(f"{here}/old", access_token="t").next().data, "here")
        self.assertEqual(recorder.authorizations[:2], ["Bearer t", "Bearer t"])
        recorder.authorizations.clear()
        redirector = self.serve(Redirector, status=307, target=f"{here}/sse")
        self.assertEqual(self.follow(f"http://127.0.0.1:{redirector.server_address[1]}/old", access_token="t").next().data, "here")
        self.assertEqual(recorder.authorizations[:1], [None])

    def test_03_what_it_prints_has_control_characters_escaped_and_multi_line_data_as_indented_lines(self):
        """Operational: escape sequences in an event's data, type or id are printed as escapes (`\\x1b`), never sent to the terminal; the LF between data lines (WHATWG HTML §9.2.6) is a line break, each further line indented four spaces."""
        event = ServerSentEvent("\x1b[2Jred\nsecond\x07\n\x9b31m", "no\x1bte", "7\x1b")
        self.assertEqual(sse_server.event_lines(event),
                         "[no\\x1bte] id='7\\x1b' \\x1b[2Jred\n    second\\x07\n    \\x9b31m")

    def test_04_the_terminal_client_takes_the_token_from_the_environment_and_prints_escaped(self):
        """Operational: `python sse_server.py --connect URL` with ACCESS_TOKEN in its environment (not on its command line, which `ps` shows) reads the stream and prints what it gets escaped."""
        process = subprocess.Popen(python_command("sse_server.py", "--connect", f"http://127.0.0.1:{self.port}/sse"),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                                   env={**os.environ, "ACCESS_TOKEN": "access-secret", "PYTHONIOENCODING": "utf-8"})
        self.addCleanup(stop_process, process)
        publish_once_subscribed(self.server, "\x1b]0;owned\x07title\nline two")
        lines = [process.stdout.readline() for _ in range(2)]
        self.assertRegex(lines[0], r"^\[message\] id='\d+' \\x1b\]0;owned\\x07title\n$")
        self.assertEqual(lines[1], "    line two\n")


class CountingLineBreaks:
    """Stands in for `sse_server.LINE_BREAK` and counts the characters searched for line breaks:
    the parser's work, measured without a clock."""

    def __init__(self) -> None:
        self.searched = 0
        self.pattern = sse_server.LINE_BREAK

    def split(self, text: str) -> list[str]:
        self.searched += len(text)
        return self.pattern.split(text)


class Test06TheClientsBounds(unittest.TestCase):
    """What the client keeps in bounds: the work per byte, a line's length, the wait."""

    def searched(self, data: bytes, piece: int) -> int:
        counter, parser = CountingLineBreaks(), EventStreamParser()
        with unittest.mock.patch.object(sse_server, "LINE_BREAK", counter):
            for i in range(0, len(data), piece):
                parser.feed(data[i:i + piece])
        return counter.searched

    def test_01_a_long_line_in_small_pieces_is_searched_once_per_character(self):
        """WHATWG HTML §9.2.5 The parser is linear however its input is cut: a 1 MiB line in 1 KiB pieces is searched for line breaks once per character, as in 64 KiB pieces (searching the line so far again at each piece would be 512 times as much)."""
        line = b"data: " + b"x" * (1 << 20) + b"\n\n"
        self.assertEqual(self.searched(line, 1024), len(line))
        self.assertEqual(self.searched(line, 64 * 1024), len(line))

    def test_02_a_line_longer_than_max_line_fails_the_stream_with_its_own_error(self):
        """Operational: --max-line bounds one line of the stream, whether it arrives in one piece or many; the line at the limit is kept, ended or still coming, first or after another line."""
        parser = EventStreamParser(max_line=1000)
        self.assertEqual(parser.feed(b"data: " + b"x" * 994 + b"\n\n")[0].data, "x" * 994)
        parser = EventStreamParser(max_line=1000)
        self.assertEqual(parser.feed(b"data: " + b"x" * 994), [])  # the first line, 1000 characters so far
        self.assertEqual(parser.feed(b"\ndata: a\n" + b": " + b"y" * 998), [])  # a later one, 1000 so far
        self.assertEqual(parser.feed(b"\n\n"), [ServerSentEvent("x" * 994 + "\na")])
        for pieces in ([b"data: " + b"x" * 995 + b"\n"], [b"x" * 600, b"x" * 600]):
            with self.subTest(pieces=len(pieces)):
                parser = EventStreamParser(max_line=1000)
                with self.assertRaises(sse_server.LineTooLong):
                    for piece in pieces:
                        parser.feed(piece)

    def test_03_any_retry_the_server_sends_waits_at_most_the_clamp(self):
        """WHATWG HTML §9.2.6 "retry" is any number of digits; the client waits that long, but at most MAX_RECONNECTION_TIME, and a 20-digit retry neither overflows nor crashes."""
        parser = EventStreamParser()
        parser.feed(b"retry: 99999999999999999999\n\n")
        self.assertEqual(parser.retry, 99999999999999999999)
        self.assertEqual(sse_server.reconnection_delay(parser.retry), sse_server.MAX_RECONNECTION_TIME)
        self.assertEqual(sse_server.reconnection_delay(1500), 1.5)
        self.assertEqual(sse_server.reconnection_delay(None), sse_server.DEFAULT_RETRY / 1000)

    def test_04_what_retrying_cannot_mend_ends_the_client_with_a_hint(self):
        """Operational: a certificate that fails verification (with the --cafile hint), a TLS failure and a name that does not resolve are fatal; a refused or dropped connection is retried."""
        certificate = ssl.SSLCertVerificationError(1, "certificate verify failed")
        certificate.verify_message = "unable to get local issuer certificate"
        self.assertIn("--cafile", sse_server.fatal_failure(certificate, "https://x/sse"))
        self.assertIn("TLS failed", sse_server.fatal_failure(ssl.SSLError(1, "WRONG_VERSION_NUMBER"), "https://x/sse"))
        self.assertIn("does not resolve", sse_server.fatal_failure(socket.gaierror(-2, "Name or service not known"), "x"))
        for retried in (ConnectionRefusedError(111, "refused"), ConnectionResetError(104, "reset"), TimeoutError()):
            with self.subTest(error=type(retried).__name__):
                self.assertIsNone(sse_server.fatal_failure(retried, "http://x/sse"))


if __name__ == "__main__":
    unittest.main()
