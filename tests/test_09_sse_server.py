"""Chapter 9: the SSE server over loopback: real sockets, one thread per client, bounded waits
(sse_server Part I as served by Part II: the handler II.7, the hub II.4, the server II.8).

The stream, the clock, publishing (chunked bodies, Expect: 100-continue), Last-Event-ID replay
(across a restart with --store), heartbeats, vanished and slow clients, the limits, CORS, the
pages, hostile requests, shutdown, and other platforms simulated.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import unittest.mock

import sse_server
from tests.support import (ROOT, TIMEOUT, WINDOWS_PRELUDE, SSEServerTestCase, StreamClient, exchange, http_request,
                           open_fds, request_threads, start_process, stop_process, wait_until)


class Test01TheStream(SSEServerTestCase):
    """WHATWG HTML §9.2.2: a 200 with text/event-stream (anything else fails the connection), then events as they happen."""

    def test_01_headers_say_event_stream_no_cache_no_proxy_buffering_and_chunked(self):
        """WHATWG HTML §9.2.2 200 and text/event-stream; RFC 9111 §5.2.2.4 no-cache; X-Accel-Buffering: no (nginx); RFC 9112 §7.1 chunked."""
        stream = self.subscribed(self.stream())
        self.assertEqual(stream.status, 200)
        self.assertEqual(stream.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual(stream.headers["cache-control"], "no-cache")
        self.assertEqual(stream.headers["x-accel-buffering"], "no")
        self.assertEqual(stream.headers["transfer-encoding"], "chunked")
        self.assertNotIn("content-encoding", stream.headers)  # never compressed

    def test_02_every_stream_starts_with_retry(self):
        """WHATWG HTML §9.2.6 retry sets the reconnection time the browser will use: this server sends it first (--retry, 3000)."""
        stream = self.subscribed(self.stream())
        self.assertTrue(stream.body.startswith(b"retry: 3000\n\n"), stream.body)

    def test_03_the_tutorials_path_with_a_slash_works_too(self):
        """The tutorial: its page asks for /sse/, its server serves /sse: /sse/ is the stream too."""
        self.assertEqual(self.subscribed(self.stream("/sse/")).status, 200)

    def test_04_each_event_is_one_chunk_with_an_increasing_id(self):
        """RFC 9112 §7.1 One chunk per event; WHATWG HTML §9.2.6 each with an id, here increasing by one (History, I.5)."""
        stream = self.subscribed(self.stream())
        for text in ("one", "two"):
            self.assertEqual(self.publish(text), 204)
        events = stream.next_events(2)
        self.assertEqual([e.data for e in events], ["one", "two"])
        first, second = (int(e.last_event_id) for e in events)
        self.assertEqual(second, first + 1)
        # (the first chunks: `retry:`, then the server's comment on what it received, Test20)
        self.assertEqual(stream.chunks[-2:], [f"id: {first}\ndata: one\n\n".encode(),
                                             f"id: {second}\ndata: two\n\n".encode()])

    def test_05_an_http_1_0_client_gets_the_stream_without_chunks_ended_by_close(self):
        """RFC 9112 §6.3 item 8 HTTP/1.0 has no chunked coding: the events come plain, and the stream ends when the connection does."""
        stream = StreamClient(self.port, version="HTTP/1.0")
        self.streams.append(stream)
        self.subscribed(stream)
        self.assertNotIn("transfer-encoding", stream.headers)
        self.publish("plain")
        self.assertEqual(stream.next_events(1)[0].data, "plain")
        self.server.stop()
        stream.read_to_eof()
        self.assertTrue(stream.body.endswith(b"data: plain\n\n"), stream.body)  # no last chunk: the close ends it

    def test_06_head_of_the_stream_is_405(self):
        """RFC 9110 §15.5.6 The stream is GET only: HEAD gets 405 with Allow."""
        status, headers, body = http_request(self.port, "HEAD", "/sse")
        self.assertEqual((status, headers["allow"], body), (405, "GET, OPTIONS", b""))

    def test_07_the_server_listens_on_the_tutorials_port_by_default(self):
        """Operational: --port is 8088 by default, the tutorial's `const port = 8088`, where its page's `new EventSource('http://localhost:8088/sse/')` looks: the command line's default and the configuration's (these tests ask for any free port instead)."""
        self.assertEqual(sse_server.ServerConfig().port, 8088)
        self.assertEqual(sse_server.build_parser().parse_args([]).port, 8088)


class Test02TheClock(SSEServerTestCase):
    """The tutorial's clock: every second, JSON with a message its page shows."""

    options = {"clock": 0.2}

    def test_01_ticks_arrive_as_json_with_the_time(self):
        """WHATWG HTML §9.2.6 Each tick has no event field, so it is a `message` event; its data is the tutorial's JSON."""
        stream = self.subscribed(self.stream())
        event = stream.next_events(1)[0]
        self.assertRegex(json.loads(event.data)["message"], r"^Current time: \d\d:\d\d:\d\d$")
        self.assertEqual(event.type, "message")

    def ticks(self, interval: float, durations: list[float]) -> list[float]:
        """When `run_every(interval, ...)` calls its action, in seconds after the start, on a clock that moves only
        when run_every waits (by the time it waits) and when the action runs (by `durations`, one per tick): no real time
        passes.  It stops once every duration is used."""
        clock = FakeClock()
        start, times = clock.now, []

        def action() -> None:
            times.append(round(clock.now - start, 6))
            clock.now += durations[len(times) - 1]

        clock.stop_when = lambda: len(times) == len(durations)
        with unittest.mock.patch.object(sse_server, "time", clock):
            sse_server.run_every(interval, action, clock)
        return times

    def test_02_the_clock_ticks_every_interval_on_schedule_however_long_each_tick_takes(self):
        """Operational (the tutorial's setInterval): the first tick comes one interval after the start, not at once, and the next ones every interval after it, the time a tick takes included (a tick that takes a quarter of the interval does not push the next one back)."""
        self.assertEqual(self.ticks(1.0, [0.0, 0.0, 0.0]), [1.0, 2.0, 3.0])
        self.assertEqual(self.ticks(1.0, [0.25, 0.25, 0.25]), [1.0, 2.0, 3.0])

    def test_03_after_a_stall_one_tick_comes_at_once_not_a_burst_of_the_missed_ones(self):
        """Operational (`run_every`): a tick that takes 2.5 intervals makes the next one come at once, alone, and the schedule start again from there: not the 2 missed ticks in a burst."""
        self.assertEqual(self.ticks(1.0, [0.0, 2.5, 0.0, 0.0]), [1.0, 2.0, 4.5, 5.5])


class FakeClock:
    """What `run_every` reads the time from and waits on, with no real waiting: `monotonic()` is `now` (the real
    time when it was made), which `wait(timeout)` moves on by `timeout`; `wait` says "stop" once `stop_when()` is
    true, or after 100 waits whatever happens.  Anything else asked of the time module is the real one's (this
    server's other threads may ask while it stands in for it)."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.waits = 0
        self.stop_when = lambda: False

    def monotonic(self) -> float:
        return self.now

    def wait(self, timeout: float) -> bool:
        self.now += timeout
        self.waits += 1
        return self.stop_when() or self.waits > 100

    def __getattr__(self, name: str):
        return getattr(time, name)


class Test03Publishing(SSEServerTestCase):
    """Operational: POST /publish (II.3): the body becomes one event for every subscriber."""

    options = {"max_body": 1024}

    def test_01_a_publish_reaches_two_subscribers_and_gets_204(self):
        """Operational: one publish is 204 and one event on every open stream; its two lines are two data lines (WHATWG HTML §9.2.5) joined back with LF (§9.2.6)."""
        streams = [self.subscribed(self.stream()) for _ in range(2)]
        self.assertEqual(self.publish("hello\nworld"), 204)
        for stream in streams:
            self.assertEqual(stream.next_events(1)[0].data, "hello\nworld")

    def test_02_event_names_the_type(self):
        """WHATWG HTML §9.2.6 `event` sets the type: `?event=note` becomes the `event:` field."""
        stream = self.subscribed(self.stream())
        self.assertEqual(self.publish("x", "?event=note"), 204)
        self.assertEqual(stream.next_events(1)[0].type, "note")

    def test_03_a_body_over_max_body_is_413(self):
        """RFC 9110 §15.5.14 413 (Operational: --max-body): a body over it is 413; one at the limit is fine."""
        self.assertEqual(self.publish(b"x" * 1025), 413)
        self.assertEqual(self.publish(b"x" * 1024), 204)

    def test_04_a_body_that_is_not_utf8_is_400(self):
        """WHATWG HTML §9.2.5 An event stream "must always be encoded as UTF-8": a body that is not is 400."""
        self.assertEqual(self.publish(b"\xff\xfe"), 400)

    def test_05_an_event_name_with_a_line_break_or_empty_is_400(self):
        """WHATWG HTML §9.2.5 A field's value holds no CR or LF: a name with a line break would inject fields, and an empty one names nothing: 400."""
        for query in ("?event=a%0Adata:%20injected", "?event=a%0Db", "?event="):
            with self.subTest(query=query):
                self.assertEqual(self.publish("x", query), 400)

    def test_14_the_servers_own_event_names_are_400_with_the_reason_and_reach_nobody(self):
        """WHATWG HTML §9.2.3 (EventSource fires `open` and `error` itself) and the server's `reset` (I.5): `?event=reset`, `open` or `error` is a 400 that says the name is reserved, and no subscriber sees it, so a page can trust a reset."""
        stream = self.subscribed(self.stream())
        for name in ("reset", "open", "error"):
            with self.subTest(name=name):
                status, _, body = http_request(self.port, "POST", f"/publish?event={name}", b"fake")
                self.assertEqual(status, 400)
                self.assertIn(b"reserved", body)
        self.assertEqual(self.publish("marker"), 204)
        self.assertEqual([(event.type, event.data) for event in stream.next_events(1)], [("message", "marker")])

    def test_06_a_chunked_body_is_decoded(self):
        """RFC 9112 §7.1 "A recipient MUST be able to parse and decode the chunked transfer coding"."""
        stream = self.subscribed(self.stream())
        status, _, _ = exchange(self.port, b"POST /publish HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                                           b"Connection: close\r\n\r\n8\r\nchunked \r\n4;ext=1\r\nbody\r\n0\r\n\r\n")
        self.assertEqual(status, 204)
        self.assertEqual(stream.next_events(1)[0].data, "chunked body")

    def test_07_a_chunked_body_over_max_body_is_413(self):
        """RFC 9110 §15.5.14 413 (Operational: --max-body) for a chunked body too, counted as it arrives."""
        body = b"".join(sse_server.encode_chunk(b"x" * 500) for _ in range(3)) + sse_server.LAST_CHUNK
        status, _, _ = exchange(self.port, b"POST /publish HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        self.assertEqual(status, 413)

    def test_08_expect_100_continue_gets_413_before_continue_when_too_large(self):
        """RFC 9110 §10.1.1 A server may answer with the final status instead of 100 Continue."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
            self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 413 "))

    def test_09_expect_100_continue_gets_100_then_the_body_is_read(self):
        """RFC 9110 §10.1.1 "100-continue": the client waits for 100 Continue before sending its body."""
        stream = self.subscribed(self.stream())
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            self.assertEqual(sock.recv(1024), b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(b"hello")
            self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 204 "))
        self.assertEqual(stream.next_events(1)[0].data, "hello")

    def test_10_post_elsewhere_is_404_or_405_and_other_methods_501(self):
        """RFC 9110 §15.5.5, §15.5.6, §15.6.2 404, 405 with Allow, and 501 for methods no one implements."""
        self.assertEqual(http_request(self.port, "POST", "/nowhere", b"x")[0], 404)
        self.assertEqual(http_request(self.port, "POST", "/sse", b"x")[0], 405)
        status, headers, _ = http_request(self.port, "DELETE", "/sse")
        self.assertEqual(status, 501)
        self.assertTrue(headers["content-type"].startswith("text/plain"))

    def test_11_a_keep_alive_publisher_sends_many_events_on_one_connection(self):
        """RFC 9112 §9.3 HTTP/1.1 connections persist: one connection, many publishes."""
        stream = self.subscribed(self.stream())
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            for text in (b"one", b"two", b"three"):
                sock.sendall(b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
                self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 204 "))
        self.assertEqual([e.data for e in stream.next_events(3)], ["one", "two", "three"])

    def test_12_an_empty_body_an_event_named_twice_or_a_query_not_utf8_is_400(self):
        """WHATWG HTML §9.2.6 An event with no data is never dispatched, so an empty body is refused (400), as the page refuses it; a query that names the event twice, or that is not UTF-8 (§9.2.5), is refused too."""
        stream = self.subscribed(self.stream())
        for body, query in ((b"", ""), (b"x", "?event=a&event=b"), (b"x", "?event=%FF")):
            with self.subTest(body=body, query=query):
                self.assertEqual(self.publish(body, query), 400)
        self.assertEqual(self.publish(b"after", ""), 204)
        self.assertEqual([event.data for event in stream.next_events(1)], ["after"])

    def test_13_cr_and_crlf_line_breaks_arrive_as_lf_and_the_answer_says_so(self):
        """WHATWG HTML §9.2.6 A body with CR or CRLF line breaks is published, each line a data line, and arrives joined with LF; the answer is 200 with a line that says so (204 when there is no CR)."""
        stream = self.subscribed(self.stream())
        status, _, body = http_request(self.port, "POST", "/publish", b"one\r\ntwo\rthree")
        self.assertEqual(status, 200)
        self.assertIn(b"arrive as LF", body)
        self.assertEqual(stream.next_events(1)[0].data, "one\ntwo\nthree")
        self.assertEqual(self.publish(b"one\ntwo", ""), 204)


class Test04Resumption(SSEServerTestCase):
    """WHATWG HTML §9.2.4: a client reconnects with Last-Event-ID; this server answers with what it missed, then live events."""

    options = {"history": 5}

    def test_01_replay_has_no_gap_and_no_duplicate_then_live_events_follow(self):
        """WHATWG HTML §9.2.4 Last-Event-ID: every event after it, in order, then the live ones: no gap, no duplicate."""
        stream = self.subscribed(self.stream())
        for i in range(3):
            self.publish(f"seen {i}")
        seen = stream.next_events(3)
        stream.close()
        for i in range(4):
            self.publish(f"missed {i}")
        again = self.subscribed(self.stream(Last_Event_ID=seen[-1].last_event_id))
        self.publish("live")
        events = again.next_events(5)
        self.assertEqual([e.data for e in events], ["missed 0", "missed 1", "missed 2", "missed 3", "live"])
        ids = [int(e.last_event_id) for e in seen + events]
        self.assertEqual(ids, list(range(ids[0], ids[0] + 8)))

    def test_02_an_id_too_old_for_the_history_gets_a_reset_event(self):
        """WHATWG HTML §9.2.4 A Last-Event-ID older than --history is not guessed at: this server's `event: reset`, with a current id."""
        stream = self.subscribed(self.stream())
        self.publish("first")
        first = stream.next_events(1)[0]
        for i in range(6):  # the history keeps 5: "first" and the one after it are gone
            self.publish(f"later {i}")
        again = self.subscribed(self.stream(Last_Event_ID=first.last_event_id))
        reset = again.next_events(1)[0]
        self.assertEqual(reset.type, "reset")
        self.assertEqual(json.loads(reset.data)["last_event_id"], first.last_event_id)
        self.assertEqual(int(reset.last_event_id), int(first.last_event_id) + 6)  # current again
        self.publish("live")
        self.assertEqual(again.next_events(1)[0].data, "live")

    def test_03_an_unknown_or_absurd_id_gets_a_reset_event(self):
        """WHATWG HTML §9.2.4 Whatever Last-Event-ID a client sends (not a number, too long, other scripts' digits): a reset, never a crash."""
        for last_event_id in ("not-a-number", "99999999999999999999", "٣", "²", "1" * 5000):
            with self.subTest(last_event_id=last_event_id[:20]):
                stream = self.subscribed(self.stream(Last_Event_ID=last_event_id))
                self.assertEqual(stream.next_events(1)[0].type, "reset")

    def test_04_with_store_a_restarted_server_replays_what_the_client_missed(self):
        """Operational: --store: across a restart, a WHATWG HTML §9.2.4 Last-Event-ID gets the missed events, with the ids continued."""
        with tempfile.TemporaryDirectory() as folder:
            store = os.path.join(folder, "events.sqlite3")
            first = self.start_server(store=store)
            stream = self.subscribed(StreamClient(first.port))
            self.streams.append(stream)
            first.hub.publish("before the restart")
            seen = stream.next_events(1)[0]
            first.hub.publish("missed, before the restart")
            first.stop()
            second = self.start_server(store=store)
            second.hub.publish("missed, after the restart")
            again = self.subscribed(StreamClient(second.port, headers={"Last-Event-ID": seen.last_event_id}))
            self.streams.append(again)
            events = again.next_events(2)
            self.assertEqual([e.data for e in events], ["missed, before the restart", "missed, after the restart"])
            self.assertEqual([int(e.last_event_id) for e in events],
                             [int(seen.last_event_id) + 1, int(seen.last_event_id) + 2])
            second.stop()


class Test05AStoreThatFails(SSEServerTestCase):
    """Operational: a publish is acknowledged (204) if and only if its event is stored."""

    def setUp(self):
        from tests.test_07_sse_format import FailingStore  # a history whose store refuses everything
        self.server = sse_server.SSEServer(sse_server.ServerConfig(port=0, clock=0, heartbeat=0),
                                           history=FailingStore(10, first_id=1))
        self.server.start()
        self.addCleanup(self.server.stop)
        self.port = self.server.port
        self.streams = []

    def test_01_a_refused_event_is_a_503_with_a_reason_and_is_never_replayed(self):
        """RFC 9110 §15.6.4 503 with a one-line generic reason (no file, no address: the log has them); nothing was sent, nothing will be replayed."""
        stream = self.subscribed(self.stream())
        with self.assertLogs("sse_server", "WARNING") as logged:
            status, _, body = http_request(self.port, "POST", "/publish", b"lost")
        self.assertIn("publish refused: test.sqlite3", logged.output[0])  # and the operator reads why
        self.assertEqual((status, body), (503, b"503 the event store is unavailable: the event was not published\n"))
        again = self.subscribed(self.stream(Last_Event_ID="0"))
        self.assertEqual(again.events, [])
        self.assertNotIn(b"lost", stream.body + again.body)


class Test06HeartbeatsAndVanishedClients(SSEServerTestCase):
    """WHATWG HTML §9.2.7: a comment line every 15 seconds or so keeps legacy proxies from
    dropping an idle stream.  And, operationally, the heartbeat's write is how the server finds
    a client that left where the departure watcher (Test07) cannot see it."""

    options = {"heartbeat": 0.2}

    def test_01_a_heartbeat_comment_arrives_on_an_idle_stream(self):
        """WHATWG HTML §9.2.7 "a comment line ... every 15 seconds or so" on an idle stream (here every 0.2 s): no event."""
        stream = self.subscribed(self.stream())
        stream.wait_until(lambda: b": heartbeat\n" in stream.body, timeout=2)
        self.assertEqual(stream.events, [])  # a comment is not an event

    def test_02_clients_gone_unseen_are_found_by_the_heartbeat_and_their_threads_end(self):
        """Operational: a client gone (here with a reset) while no departure watcher watches its socket, as when its network vanished and nothing ever arrives, is found by the heartbeat's failing write; its thread ends."""
        wait_until(lambda: request_threads() == 0, message="earlier tests' threads to end")
        baseline = threading.active_count()
        streams = [self.subscribed(self.stream()) for _ in range(3)]
        wait_until(lambda: self.server.hub.subscriber_count == 3, message="3 subscribers")
        self.assertEqual(request_threads(), 3)  # one thread per client
        for subscriber in self.server.hub._subscribers:  # (private: only a test takes a socket from the watcher)
            self.server.hub.departures.forget(subscriber)
        for stream in streams:  # SO_LINGER 0: close() sends a reset (RST), not a FIN
            stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.close()
        wait_until(lambda: self.server.hub.subscriber_count == 0, message="no subscribers")
        wait_until(lambda: request_threads() == 0, message="no request threads")
        self.assertEqual(threading.active_count(), baseline)


class Test07Departures(SSEServerTestCase):
    """A subscriber that leaves is noticed at once, on a stream with no events and no heartbeat."""

    options = {"heartbeat": 0}

    def assertAllGone(self, leave, count: int = 20) -> None:
        wait_until(lambda: request_threads() == 0, message="earlier tests' threads to end")
        threads, fds = threading.active_count(), open_fds()
        streams = [self.subscribed(self.stream()) for _ in range(count)]
        wait_until(lambda: self.server.hub.subscriber_count == count, message=f"{count} subscribers")
        for stream in streams:
            leave(stream)
        # Within the default wait (5 s): a third of the default heartbeat, and none runs here.
        wait_until(lambda: self.server.hub.subscriber_count == 0, message="every subscriber gone")
        wait_until(lambda: request_threads() == 0, message="their threads ended")
        self.assertEqual(threading.active_count(), threads)
        if fds is not None:
            wait_until(lambda: open_fds() == fds, message="file descriptors back to the baseline")

    def test_01_subscribers_that_close_cleanly_are_gone_at_once(self):
        """Operational (DepartureWatcher, II.4): a FIN from a subscriber ends its stream now, with no heartbeat to find it."""
        self.assertAllGone(lambda stream: stream.close())

    def test_02_subscribers_that_reset_are_gone_at_once(self):
        """Operational (DepartureWatcher, II.4): a reset (RST) from a subscriber ends its stream now, with no heartbeat to find it."""
        def reset(stream):
            stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.close()
        self.assertAllGone(reset)

    def test_03_a_subscriber_that_sends_bytes_after_its_request_is_dropped(self):
        """Operational (DepartureWatcher, II.4): this server reads nothing from a stream's client after its request (its answer says Connection: close), so bytes from it end that stream; the others notice nothing."""
        talker, listener = self.subscribed(self.stream()), self.subscribed(self.stream())
        wait_until(lambda: self.server.hub.subscriber_count == 2, message="2 subscribers")
        talker.sock.sendall(b"GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_until(lambda: self.server.hub.subscriber_count == 1, message="the talker dropped")
        talker.read_to_eof()
        self.publish("still here")
        self.assertEqual(listener.next_events(1)[0].data, "still here")  # the one that stays notices nothing

    def test_04_quiet_subscribers_are_not_disturbed_when_another_leaves(self):
        """Operational (DepartureWatcher, II.4): when one subscriber leaves, the quiet ones (no event, no heartbeat, nothing sent) stay subscribed and get the next event."""
        streams = [self.subscribed(self.stream()) for _ in range(5)]
        wait_until(lambda: self.server.hub.subscriber_count == 5, message="5 subscribers")
        streams[0].close()
        wait_until(lambda: self.server.hub.subscriber_count == 4, message="one subscriber gone")
        self.assertEqual(self.publish("to those who stayed"), 204)
        for stream in streams[1:]:
            self.assertEqual(stream.next_events(1)[0].data, "to those who stayed")
        self.assertEqual(self.server.hub.subscriber_count, 4)


class Test08SlowClients(SSEServerTestCase):
    """Operational: a subscriber that does not read is dropped once its queue is full; the others and the
    publisher never wait for it."""

    options = {"max_queue": 32, "write_timeout": 30.0}

    def test_01_a_slow_client_is_dropped_while_a_fast_one_gets_every_event(self):
        """Operational: --max-queue: the slow client is dropped, the fast one gets all 300 events, the publisher never blocks."""
        self.subscriber_that_never_reads()
        fast = self.subscribed(self.stream())
        wait_until(lambda: self.server.hub.subscriber_count == 2, message="2 subscribers")
        count, payload = 300, "x" * 32768
        received, published = [], []

        def read() -> None:
            try:
                received.extend(fast.next_events(count, timeout=20))
            except (AssertionError, OSError):  # (counted short below)
                pass

        def publish_all() -> None:
            for i in range(count):  # 10 MB in all: too much to buffer for the slow one
                # Paced by the fast reader, never more than 16 events ahead of it (its queue holds
                # 32); the slow one sets no pace.
                try:
                    wait_until(lambda: len(fast.events) >= i - 16, timeout=20, message="the fast reader")
                except AssertionError:
                    return
                self.server.hub.publish(payload)
                published.append(i)
        reader = threading.Thread(target=read)
        publisher = threading.Thread(target=publish_all, daemon=True)  # (a publish that blocked would stay)
        reader.start()
        publisher.start()
        publisher.join(25)
        self.assertFalse(publisher.is_alive(), "a publish blocked")
        reader.join(25)
        self.assertEqual((len(published), len(received)), (count, count))
        wait_until(lambda: self.server.hub.subscriber_count == 1, message="the slow client dropped")


class Test09Limits(SSEServerTestCase):

    options = {"max_clients": 3, "max_clients_per_address": 2, "request_timeout": 0.5, "write_timeout": 0.5,
               "max_queue": 100_000}

    def assert_told_to_come_back(self, refused: StreamClient, reason: str) -> None:
        """A refused stream is a 200 event stream (WHATWG HTML §9.2.2: anything else and an
        EventSource never retries) with a long retry, a comment saying why, and the end."""
        refused.read_to_eof()
        self.assertEqual(refused.status, 200)
        self.assertEqual(refused.headers["content-type"], sse_server.EVENT_STREAM_TYPE)
        self.assertTrue(refused.complete)  # the last chunk: the stream ends, the browser reconnects later
        self.assertEqual(refused.events, [])
        self.assertEqual(refused.parser.retry, sse_server.capacity_retry(sse_server.DEFAULT_RETRY))
        self.assertIn(f": refused: {reason}".encode(), refused.body)

    def test_01_beyond_max_clients_a_stream_is_told_to_come_back_later_not_503(self):
        """Operational: --max-clients: one more stream gets a 200 that sets `retry:` (WHATWG HTML §9.2.6) to 5 times --retry and ends; a browser reconnects after it (§9.2.3), where a 503 would make it give up for good (§9.2.2)."""
        self.subscribed(self.stream())
        self.subscribed(self.stream())
        self.server.hub.max_clients_per_address = 3
        self.subscribed(self.stream())
        with self.assertLogs("sse_server", "INFO") as logged:
            self.assert_told_to_come_back(self.stream(), "the server is full (3 streams open)")
        self.assertIn("refused a stream to 127.0.0.1: the server is full", "\n".join(logged.output))
        self.streams.pop(0).close()
        wait_until(lambda: self.server.hub.subscriber_count == 2, message="the departure")
        self.subscribed(self.stream())  # a slot freed is a slot taken

    def test_06_one_address_cannot_take_more_than_max_clients_per_address_but_loopback_can(self):
        """Operational: --max-clients-per-address: a third stream from one address (192.0.2.1, named by a trusted proxy) is told to come back later while the server has room, and the count follows departures; loopback itself is not capped per address (tests, benchmarks, a proxy not declared)."""
        self.server.config.trusted_proxies = ("127.0.0.1",)
        first = self.subscribed(self.stream(X_Forwarded_For="192.0.2.1"))
        self.subscribed(self.stream(X_Forwarded_For="192.0.2.1"))
        self.assert_told_to_come_back(self.stream(X_Forwarded_For="192.0.2.1"),
                                      "2 streams are already open from this address")
        self.assertEqual(self.server.hub.subscriber_count, 2)
        first.close()
        wait_until(lambda: self.server.hub.subscriber_count == 1, message="the departure")
        self.subscribed(self.stream(X_Forwarded_For="192.0.2.1"))
        self.server.config.trusted_proxies = ()
        self.server.hub.max_clients = 10
        for _ in range(3):  # three from 127.0.0.1, over the cap of 2
            self.subscribed(self.stream())
        self.assertEqual(self.server.hub.subscriber_count, 5)

    def test_07_behind_a_trusted_proxy_the_address_counted_is_the_forwarded_one(self):
        """Operational: --trusted-proxy with --max-clients-per-address: X-Forwarded-For from the proxy names the client counted, so clients behind one proxy are not one address."""
        self.server.config.trusted_proxies = ("127.0.0.1",)
        self.server.hub.max_clients = 10
        for client in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
            self.subscribed(self.stream(X_Forwarded_For=client))
        self.assert_told_to_come_back(self.stream(X_Forwarded_For="192.0.2.1"), "2 streams are already open from this address")

    def test_02_a_request_head_with_too_many_headers_is_431(self):
        """RFC 6585 §5 431 (Operational: --max-header-lines): too many header lines, and a one-line reason."""
        headers = {f"X-{i}": "y" for i in range(120)}
        status, _, body = http_request(self.port, "GET", "/sse", headers=headers)
        self.assertEqual(status, 431)
        self.assertTrue(body.startswith(b"431 "))

    def test_03_a_head_that_never_ends_gets_408(self):
        """RFC 9110 §15.5.9 408 (Operational: --request-timeout): a head not complete in time."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /sse HTTP/1.1\r\nHost: localhost\r\n")  # and no empty line
            self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 408 "))

    def test_04_a_byte_now_and_then_does_not_extend_the_timeout(self):
        """RFC 9110 §15.5.9 408 (Operational: --request-timeout bounds the whole head): a client trickling bytes gets it too."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.settimeout(0.05)
            answer = b""
            for byte in b"GET /sse HTTP/1.1\r\nHost: localhost\r\nX: " + b"y" * 200:
                sock.sendall(bytes([byte]))
                try:
                    answer = sock.recv(1024)  # waits at most 50 ms: one byte every 50 ms
                except TimeoutError:
                    continue
                break
            self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)

    def test_05_a_subscriber_whose_writes_stall_past_write_timeout_is_dropped(self):
        """Operational: --write-timeout: a write that makes no progress for that long drops the subscriber."""
        self.subscriber_that_never_reads()
        wait_until(lambda: self.server.hub.subscriber_count == 1, message="the subscriber")
        for _ in range(300):  # 10 MB: more than the socket buffers hold; the queue never fills
            self.server.hub.publish("x" * 32768)
        wait_until(lambda: self.server.hub.subscriber_count == 0, message="the stalled subscriber dropped")


class Test10CORS(SSEServerTestCase):
    """The tutorial's CORS, done right (Fetch standard, "CORS protocol")."""

    def test_01_by_default_any_origin_may_read_but_never_with_credentials(self):
        """Fetch "CORS protocol": `*`, and no Access-Control-Allow-Credentials with it."""
        stream = self.subscribed(self.stream(Origin="http://elsewhere.example"))
        self.assertEqual(stream.headers["access-control-allow-origin"], "*")
        self.assertNotIn("access-control-allow-credentials", stream.headers)

    def test_02_a_preflight_gets_204_with_the_methods_and_headers_allowed(self):
        """Fetch "CORS-preflight fetch": 204 with Allow-Methods, Allow-Headers and Max-Age."""
        status, headers, body = http_request(self.port, "OPTIONS", "/sse", headers={
            "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id"})
        self.assertEqual((status, body), (204, b""))
        self.assertIn("POST", headers["access-control-allow-methods"])
        self.assertIn("Last-Event-ID", headers["access-control-allow-headers"])
        self.assertEqual(headers["access-control-allow-origin"], "*")


class Test11CORSWithAnAllowList(SSEServerTestCase):

    options = {"allowed_origins": ("http://good.example",)}

    def test_01_an_allowed_origin_is_echoed_with_vary_and_credentials(self):
        """Fetch "CORS protocol": the origin echoed, credentials allowed, Vary: Origin."""
        stream = self.subscribed(self.stream(Origin="http://good.example"))
        self.assertEqual(stream.headers["access-control-allow-origin"], "http://good.example")
        self.assertEqual(stream.headers["access-control-allow-credentials"], "true")
        self.assertEqual(stream.headers["vary"], "Origin")

    def test_02_another_origin_may_neither_subscribe_nor_publish_and_a_broken_one_neither(self):
        """Operational: --allow-origin: another page (or a malformed Origin, RFC 6454 §7.1, such as `http://[`) may neither subscribe nor publish: 403, never a crash."""
        self.assertEqual(self.stream(Origin="http://evil.example").status, 403)
        self.assertEqual(self.publish("x", Origin="http://evil.example"), 403)
        self.assertEqual(self.publish("x", Origin="http://["), 403)

    def test_03_same_origin_pages_and_clients_without_origin_are_allowed(self):
        """Operational: --allow-origin: our own pages are same-origin (RFC 6454 §5) and a program sends no Origin: both may publish."""
        self.assertEqual(self.publish("x", Origin=f"http://127.0.0.1:{self.port}"), 204)
        self.assertEqual(self.publish("x"), 204)


    def test_04_an_allowed_pages_publish_and_its_preflight_carry_its_origin(self):
        """Fetch "CORS protocol": a publish from an allowed page (with a token, so after a preflight) is answered with its origin in Access-Control-Allow-Origin, credentials allowed, Vary: Origin; the preflight too."""
        status, headers, _ = http_request(self.port, "OPTIONS", "/publish", headers={
            "Origin": "http://good.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual((status, headers["access-control-allow-origin"], headers["vary"]), (204, "http://good.example", "Origin"))
        self.assertIn("Authorization", headers["access-control-allow-headers"])
        status, headers, _ = http_request(self.port, "POST", "/publish", b"x", {"Origin": "http://good.example"})
        self.assertEqual((status, headers["access-control-allow-origin"]), (204, "http://good.example"))
        self.assertEqual(headers["access-control-allow-credentials"], "true")


class Test12ThePages(SSEServerTestCase):
    """GET / is the SSE page; ws_server's traversal checks, reused."""

    def test_01_slash_serves_the_sse_page(self):
        """RFC 9110 §9.3.1 GET / is the page, with its type."""
        status, headers, body = http_request(self.port, "GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(body, (ROOT / "static" / "sse.html").read_bytes())

    def test_02_head_gives_the_length_without_the_body(self):
        """RFC 9110 §9.3.2 HEAD: the length, no content."""
        status, headers, body = http_request(self.port, "HEAD", "/")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(int(headers["content-length"]), (ROOT / "static" / "sse.html").stat().st_size)

    def test_03_nothing_outside_static_can_be_read(self):
        """RFC 3986 §3.3 No dot-segment, encoded or not, leaves the folder of the pages."""
        for target in ("/../sse_server.py", "/%2e%2e/sse_server.py", "/..%5csse_server.py", "/missing.html", "/%ff"):
            with self.subTest(target=target):
                status, _, _ = exchange(self.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                self.assertEqual(status, 404)


class Test13HostileRequests(SSEServerTestCase):
    """Every request gets one well-formed HTTP/1.1 answer, then the server goes on."""

    options = {"request_timeout": 0.5}

    def test_01_each_hostile_head_gets_one_status_line(self):
        """RFC 9112 §3, §5, §6.3 Every answer is a status line, even to what http.server would answer with none."""
        heads = {b"GET /%ff HTTP/1.1\r\nHost: localhost\r\n\r\n": 404,
                 b"GET http://[::1/ HTTP/1.1\r\nHost: localhost\r\n\r\n": 400,
                 b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: y\r\n\r\n": 400,
                 b"GET / HTTP/1.1\r\n\r\n": 400,
                 b"GET / HTTP/1.1\r\nHost : x\r\n\r\n": 400,
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": 505,
                 b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n": 505,
                 b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: \xb2\r\n\r\n": 400,
                 b"GET / HTTP/1.1\nHost: localhost\n\n": 200}
        for head, expected in heads.items():
            with self.subTest(head=head):
                status, _, rest = exchange(self.port, head)
                self.assertEqual(status, expected)

    def test_02_two_different_content_lengths_get_one_answer_and_the_end(self):
        """RFC 9112 §6.3 item 5 Conflicting lengths are 400, answered once; the rest is never read as a request."""
        status, headers, rest = exchange(self.port, b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
                                                    b"Content-Length: 2\r\n\r\nab")
        self.assertEqual(status, 400)
        self.assertEqual(headers["connection"], "close")
        self.assertNotIn(b"HTTP/1.1", rest)

    def test_03_a_get_with_a_body_is_answered_and_its_body_never_read_as_a_request(self):
        """RFC 9112 §6.3 A body nobody reads ends the connection: it cannot smuggle a second request."""
        smuggled = b"0\r\n\r\nPOST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: 8\r\n\r\nsmuggled"
        stream = self.subscribed(self.stream())
        status, headers, rest = exchange(self.port, b"GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + smuggled)
        self.assertEqual(status, 200)
        self.assertNotIn(b"HTTP/1.1 204", rest)
        self.publish("after")
        self.assertEqual(stream.next_events(1)[0].data, "after")  # and nothing smuggled before it

    def test_04_after_a_batch_of_hostile_requests_the_server_serves_and_nothing_is_left(self):
        """Operational: after hostile requests (and heads left unfinished, then 408), a client is served, and threads and fds are back to the baseline."""
        wait_until(lambda: request_threads() == 0, message="earlier tests' threads to end")
        fds = open_fds()
        for head in (b"GET /%ff HTTP/1.1\r\nHost: localhost\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\n", b"\x16\x03\x01\x02\x00\r\n\r\n",
                     b"GET /sse HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: " + b"9" * 5000 + b"\r\nConnection: close\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
                sock.sendall(head)
                self.assertTrue(sock.recv(100).startswith(b"HTTP/1.1 "))
        silent = [socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) for _ in range(3)]
        for sock in silent:
            self.addCleanup(sock.close)
            sock.sendall(b"GET / HTTP/1.1\r\n")
        stream = self.subscribed(self.stream())
        self.assertEqual(self.publish("served"), 204)
        self.assertEqual(stream.next_events(1)[0].data, "served")
        stream.close()
        for sock in silent:
            self.assertTrue(sock.recv(100).startswith(b"HTTP/1.1 408 "))
            sock.close()
        wait_until(lambda: request_threads() == 0, message="request threads back to none")
        if fds is not None:
            wait_until(lambda: open_fds() == fds, message="file descriptors back to the baseline")


class Test14Shutdown(SSEServerTestCase):

    def test_01_stop_ends_every_stream_with_the_last_chunk_and_threads_end(self):
        """RFC 9112 §7.1 Every stream ends with the last chunk: complete, not cut."""
        streams = [self.subscribed(self.stream()) for _ in range(3)]
        self.assertGreaterEqual(request_threads(), 3)
        self.server.stop()
        for stream in streams:
            stream.read_to_eof()
            self.assertTrue(stream.complete)
        wait_until(lambda: request_threads() == 0, message="no request threads")
        self.assertFalse([t for t in threading.enumerate() if t.name in ("sse-server", "clock", "heartbeat", "sse-departures")])


class Test15TheCommandLine(unittest.TestCase):

    def run_until_ctrl_c(self, *args: str, prelude: str = "") -> None:
        process, port = start_process("sse_server.py", *args, prelude=prelude)
        try:
            stream = StreamClient(port)
            self.addCleanup(stream.close)
            stream.wait_until(lambda: stream.parser.retry is not None)
            self.assertEqual(http_request(port, "POST", "/publish", b"hello")[0], 204)
            stream.wait_until(lambda: any(e.data == "hello" for e in stream.events))
            process.send_signal(signal.SIGINT)
            stream.read_to_eof()
            self.assertTrue(stream.complete)
            self.assertEqual(process.wait(TIMEOUT), 0)
            self.assertNotIn("Traceback", process.stderr.read())
        finally:
            stop_process(process)

    def test_01_ctrl_c_ends_the_streams_and_exits_0_without_a_traceback(self):
        """Operational: Ctrl-C (SIGINT): every stream gets its last chunk (RFC 9112 §7.1), the process exits 0."""
        self.run_until_ctrl_c("--clock", "0")

    def test_02_the_server_runs_without_what_windows_lacks(self):
        """Operational, every platform: with no poll, epoll, MSG_DONTWAIT, fcntl or fork (Windows, simulated), it streams, publishes and stops."""
        self.run_until_ctrl_c("--clock", "0", prelude=WINDOWS_PRELUDE)

    def test_03_a_store_in_use_by_another_server_is_refused_at_start(self):
        """Operational: --store: one store, one process: the second server exits 2 with one line naming the file."""
        with tempfile.TemporaryDirectory() as folder:
            store = os.path.join(folder, "events.sqlite3")
            owner, _ = start_process("sse_server.py", "--store", store)
            try:
                second = subprocess.run([sys.executable, str(ROOT / "sse_server.py"), "--port", "0", "--store", store],
                                        capture_output=True, text=True, timeout=TIMEOUT * 2)
                self.assertEqual(second.returncode, 2)
                self.assertIn(store, second.stderr)
                self.assertIn("in use", second.stderr)
                self.assertNotIn("Traceback", second.stderr)
                self.assertEqual(len(second.stderr.strip().splitlines()), 1)
            finally:
                stop_process(owner)


def raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte, as a browser or an attacker would send it."""
    return exchange(port, head.replace("\n", "\r\n").encode() + b"\r\n" + body)


class Test16OtherSitesMayNotPublish(SSEServerTestCase):
    """Fetch "CORS protocol": a "simple" POST (a form, a no-cors fetch, a text/plain fetch) is sent with no preflight, so CORS cannot stop it: with the default flags only this server's own pages (and programs, which send no Origin) may publish."""

    def forged(self, origin: str, content_type: str = "text/plain") -> int:
        """A POST as a page of `origin` makes the visitor's browser send it."""
        status, _, body = raw(self.port, f"POST /publish HTTP/1.1\nHost: 127.0.0.1:{self.port}\nOrigin: {origin}\n"
                                         f"Content-Type: {content_type}\nContent-Length: 6\nConnection: close\n", b"forged")
        return status

    def test_01_a_simple_post_from_another_page_is_403_and_nothing_is_published(self):
        """Fetch "CORS protocol" and RFC 6454 §7: the POST of a form (text/plain, urlencoded, multipart) or a fetch from another origin (another port is another origin, `null` a sandboxed or file page) is 403, and no subscriber gets anything."""
        stream = self.subscribed(self.stream())
        for origin in ("http://127.0.0.1:9", "http://localhost:9", "http://evil.example", "null", "http://127.0.0.1"):
            for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                with self.subTest(origin=origin, content_type=content_type):
                    self.assertEqual(self.forged(origin, content_type), 403)
        self.assertEqual(self.publish("marker"), 204)
        self.assertEqual([event.data for event in stream.next_events(1)], ["marker"])  # nothing came before it

    def test_02_this_servers_own_pages_and_programs_without_origin_publish(self):
        """RFC 6454 §5 same origin (http://127.0.0.1:PORT, http://localhost:PORT) and the README's curl commands (no Origin): 204, and the answer to the own page carries no CORS grant it does not need."""
        self.assertEqual(self.forged(f"http://127.0.0.1:{self.port}"), 204)
        status, _, _ = raw(self.port, f"POST /publish HTTP/1.1\nHost: localhost:{self.port}\nOrigin: http://localhost:{self.port}\n"
                                      "Content-Length: 2\nConnection: close\n", b"hi")
        self.assertEqual(status, 204)
        self.assertEqual(self.publish("hello"), 204)  # curl -d hello http://127.0.0.1:8088/publish
        self.assertEqual(self.publish("hi", "?event=note"), 204)  # curl -d hi 'http://127.0.0.1:8088/publish?event=note'

    def test_03_the_preflight_of_a_publish_from_another_page_is_403_and_from_our_own_204(self):
        """Fetch "CORS-preflight fetch": a JSON or Authorization publish from another page asks first, and is told no (403); the stream's preflight stays open to any page."""
        ask = ("OPTIONS /publish HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: {origin}\nAccess-Control-Request-Method: POST\n"
               "Access-Control-Request-Headers: content-type, authorization\nConnection: close\n")
        status, _, _ = raw(self.port, ask.format(port=self.port, origin="http://evil.example"))
        self.assertEqual(status, 403)
        status, headers, _ = raw(self.port, ask.format(port=self.port, origin=f"http://127.0.0.1:{self.port}"))
        self.assertEqual(status, 204)
        self.assertIn("Authorization", headers["access-control-allow-headers"])
        status, headers, _ = raw(self.port, f"OPTIONS /sse HTTP/1.1\nHost: 127.0.0.1:{self.port}\nOrigin: http://evil.example\n"
                                            "Access-Control-Request-Method: GET\nConnection: close\n")
        self.assertEqual((status, headers["access-control-allow-origin"]), (204, "*"))

    def test_04_any_page_may_still_read_the_stream(self):
        """Fetch "CORS protocol": the stream is public by default: another page's EventSource gets it, with `*` and no credentials."""
        stream = self.subscribed(self.stream(Origin="http://evil.example"))
        self.assertEqual((stream.status, stream.headers["access-control-allow-origin"]), (200, "*"))
        self.assertNotIn("access-control-allow-credentials", stream.headers)


class Test17DNSRebinding(SSEServerTestCase):
    """Operational (DNS rebinding): a page whose name was re-resolved to 127.0.0.1 sends its own name as the Host, and its own origin, which would pass any same-origin check: on loopback such a Host is 421 (RFC 9110 §15.5.20) for every request, before anything else."""

    def test_01_every_kind_of_request_with_a_foreign_host_is_421(self):
        """RFC 9110 §15.5.20 421: the stream, a publish from the rebound page's own origin, a page, a preflight and an unknown method, all 421; nothing is published."""
        stream = self.subscribed(self.stream())
        host = f"evil.example:{self.port}"
        for head in (f"GET /sse HTTP/1.1\nHost: {host}\n", f"GET / HTTP/1.1\nHost: {host}\n",
                     f"POST /publish HTTP/1.1\nHost: {host}\nOrigin: http://{host}\nContent-Length: 6\n",
                     f"OPTIONS /publish HTTP/1.1\nHost: {host}\nOrigin: http://{host}\n",
                     f"DELETE / HTTP/1.1\nHost: {host}\n", f"GET /sse HTTP/1.1\nHost: 127.0.0.1.evil.example:{self.port}\n"):
            with self.subTest(head=head.splitlines()[0]):
                status, _, body = raw(self.port, head + "Connection: close\n", b"forged" if "POST" in head else b"")
                self.assertEqual(status, 421)
                self.assertIn(b"does not answer for the host", body)
        self.assertEqual(self.publish("marker"), 204)
        self.assertEqual([event.data for event in stream.next_events(1)], ["marker"])

    def test_02_allowed_host_adds_a_name(self):
        """Operational: --allowed-host events.example: that name is answered (the stream, and a publish from its pages); others still 421."""
        server = self.start_server(allowed_hosts=("events.example",))
        status, _, _ = raw(server.port, f"POST /publish HTTP/1.1\nHost: events.example\nOrigin: http://events.example\n"
                                        "Content-Length: 2\nConnection: close\n", b"ok")
        self.assertEqual(status, 204)
        self.assertEqual(raw(server.port, "GET / HTTP/1.1\nHost: other.example\nConnection: close\n")[0], 421)


class Test18Tokens(SSEServerTestCase):
    """Operational (RFC 6750 Bearer tokens, RFC 6265 cookies): --publish-token for publishing, --access-token for the stream; compared in constant time and never logged."""

    options = {"publish_token": "publish-secret", "access_token": "access-secret", "trace": True}

    def test_01_a_publish_needs_the_publish_token(self):
        """RFC 6750 §3 401 with `WWW-Authenticate: Bearer realm="publish"` without the token or with a wrong one (the access token is not it); 204 with it."""
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer access-secret"},
                        {"Authorization": "Basic cHVibGlzaC1zZWNyZXQ="}, {"Cookie": "access=access-secret"}):
            with self.subTest(headers=headers):
                status, answer, _ = http_request(self.port, "POST", "/publish", b"x", headers)
                self.assertEqual(status, 401)
                self.assertEqual(answer["www-authenticate"], 'Bearer realm="publish"')
        self.assertEqual(self.publish("x", Authorization="Bearer publish-secret"), 204)

    def test_02_the_stream_needs_the_access_token_the_page_does_not(self):
        """RFC 6750 §2.1 Bearer or RFC 6265 the `access` cookie: without either the stream is 401 (an EventSource then stops, as it should: retrying cannot help); the page is served, it holds no secret."""
        self.assertEqual(self.stream().status, 401)
        self.assertEqual(self.stream(Cookie="access=wrong").status, 401)
        self.assertEqual(self.subscribed(self.stream(Authorization="Bearer access-secret")).status, 200)
        self.assertEqual(self.subscribed(self.stream(Cookie="theme=dark; access=access-secret")).status, 200)
        self.assertEqual(http_request(self.port, "GET", "/")[0], 200)

    def test_03_an_access_link_sets_the_cookie_and_redirects_to_the_path_without_it(self):
        """RFC 9110 §15.4.4 303 to the same path without the token, with `Set-Cookie` (RFC 6265 §4.1: HttpOnly, SameSite=Strict); a wrong token is 401 and sets nothing."""
        status, headers, _ = http_request(self.port, "GET", "/?access=access-secret")
        self.assertEqual((status, headers["location"]), (303, "/"))
        self.assertEqual(headers["set-cookie"], "access=access-secret; Path=/; HttpOnly; SameSite=Strict")
        status, headers, _ = http_request(self.port, "GET", "/sse?access=wrong")
        self.assertEqual(status, 401)
        self.assertNotIn("set-cookie", headers)

    def test_04_no_token_appears_in_any_log_line(self):
        """Operational: with --trace (every request line logged), the access link's token is replaced by [redacted], and neither token appears anywhere."""
        with self.assertLogs("sse_server", "INFO") as logged:
            http_request(self.port, "GET", "/?access=access-secret")
            http_request(self.port, "GET", "/sse?x=1&access=wrong")
            self.publish("x", Authorization="Bearer publish-secret")
            self.publish("x", Authorization="Bearer publish-wrong")
            stream = self.subscribed(self.stream(Authorization="Bearer access-secret"))
            stream.close()
            wait_until(lambda: self.server.hub.subscriber_count == 0, message="the departure")
        output = "\n".join(logged.output)
        self.assertIn("access granted to 127.0.0.1 by its link", output)  # (its request line is not logged)
        self.assertIn("GET /sse?x=1&access=[redacted] HTTP/1.1", output)
        for secret in ("access-secret", "publish-secret", "publish-wrong", "=wrong"):
            self.assertNotIn(secret, output)

    def test_05_with_an_access_token_alone_publishing_needs_it_too(self):
        """Operational: --access-token without --publish-token: whoever may read may publish, nobody else (the cookie the page has, or Bearer)."""
        server = self.start_server(access_token="access-secret")
        status, _, _ = http_request(server.port, "POST", "/publish", b"x")
        self.assertEqual(status, 401)
        for headers in ({"Authorization": "Bearer access-secret"}, {"Cookie": "access=access-secret"}):
            self.assertEqual(http_request(server.port, "POST", "/publish", b"x", headers)[0], 204)


class Test19WhatTheLogsAndAnswersSay(SSEServerTestCase):
    """Operational: what a client sends is escaped in the logs; what the server tells a client names nothing internal."""

    def test_01_client_text_in_a_log_line_has_its_control_characters_escaped(self):
        """Operational: a field value may carry obs-text (RFC 9110 §5.5), read as latin-1: an Origin with 0x9B (CSI, the 8-bit ESC [ of terminals) is refused with a log line that shows it as an escape."""
        with self.assertLogs("sse_server", "INFO") as logged:
            status, _, _ = exchange(self.port, f"POST /publish HTTP/1.1\r\nHost: localhost:{self.port}\r\n".encode()
                                    + b"Origin: http://e\x9b2Jvil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.assertEqual(status, 403)
        output = "\n".join(logged.output)
        self.assertIn("http://e\\\\x9b2Jvil.example", output)  # (escaped, then quoted by AccessRules' repr: two backslashes)
        self.assertNotIn("\x9b", output)

    def test_02_an_exposed_server_is_told_who_can_publish_and_to_name_its_host(self):
        """Operational: bound to other than loopback without a token: one line saying anyone can publish, one recommending --allowed-host; on loopback, or with both, nothing."""
        warnings = sse_server.exposure_warnings(sse_server.ServerConfig(host="0.0.0.0"))
        self.assertEqual(len(warnings), 2)
        self.assertIn("anyone who can reach 0.0.0.0 can publish", warnings[0])
        self.assertIn("--allowed-host", warnings[1])
        self.assertEqual(sse_server.exposure_warnings(sse_server.ServerConfig(host="localhost")), [])
        self.assertEqual(sse_server.exposure_warnings(sse_server.ServerConfig(
            host="::", publish_token="t", allowed_hosts=("events.example",))), [])


class Test20TheStreamSaysWhatItReceived(SSEServerTestCase):
    """WHATWG HTML §9.2.5 comments, which EventSource ignores: right after `retry:`, on every (re)connection, the server says in a comment which Last-Event-ID it received and what it answers (`resumption_comment`), for a reader of the raw stream."""

    options = {"history": 5}

    def opening(self, stream: StreamClient) -> bytes:
        """The stream's first bytes up to the end of the server's comment line."""
        stream.wait_until(lambda: b"retry: 3000\n\n: " in stream.body and b"\n" in stream.body.split(b"\n\n: ", 1)[1])
        return stream.body[:stream.body.index(b"\n", stream.body.index(b"\n\n: ") + 2) + 1]

    def test_01_a_fresh_connection_is_told_it_gets_live_events_from_now(self):
        """WHATWG HTML §9.2.4 No Last-Event-ID (a first connection): the comment says so; it dispatches no event."""
        stream = self.subscribed(self.stream())
        self.assertEqual(self.opening(stream), b"retry: 3000\n\n: no Last-Event-ID: live events from now\n")
        self.publish("live")
        self.assertEqual([e.data for e in stream.next_events(1)], ["live"])  # the comment was no event
        self.assertEqual(stream.events, [])

    def test_02_a_replay_names_the_id_received_and_how_many_events_follow(self):
        """WHATWG HTML §9.2.4 Last-Event-ID: the comment repeats the id the client sent and counts the events replayed, before them; each as it is, one event or none."""
        stream = self.subscribed(self.stream())
        for i in range(3):
            self.publish(f"seen {i}")
        seen = stream.next_events(3)
        for last, count in ((seen[0], "2 events"), (seen[1], "1 event"), (seen[2], "0 events")):
            with self.subTest(count=count):
                again = self.subscribed(self.stream(Last_Event_ID=last.last_event_id))
                self.assertEqual(self.opening(again),
                                 f"retry: 3000\n\n: Last-Event-ID {last.last_event_id} received: replaying {count},"
                                 f" then live events\n".encode())
        again = self.subscribed(self.stream(Last_Event_ID=seen[0].last_event_id))
        self.assertEqual([e.data for e in again.next_events(2)], ["seen 1", "seen 2"])

    def test_03_a_reset_says_the_id_is_unknown_before_the_reset_event(self):
        """WHATWG HTML §9.2.4 An id this server cannot resume from: the comment names it and says reset; the `reset` event follows."""
        stream = self.subscribed(self.stream(Last_Event_ID="not-a-number"))
        self.assertEqual(self.opening(stream), b"retry: 3000\n\n: Last-Event-ID not-a-number is unknown here or older "
                                               b"than the history kept: reset, then live events\n")
        self.assertEqual([e.type for e in stream.next_events(1)], ["reset"])

    def test_04_the_id_is_cut_to_100_characters(self):
        """Operational: the client's own text, bounded like the reset's: a 5000-character id is said in its first 100."""
        stream = self.subscribed(self.stream(Last_Event_ID="1" * 5000))
        self.assertIn(b": Last-Event-ID " + b"1" * 100 + b" is unknown", self.opening(stream))
        self.assertNotIn(b"1" * 101, self.opening(stream))

    def test_05_the_comment_escapes_control_characters(self):
        """Operational: a control character in the id is written as an escape, so the comment stays one line of text."""
        comment = sse_server.resumption_comment("7\x1b[2J\r\nevent: x", [])
        self.assertEqual(comment.payload, b": Last-Event-ID 7\\x1b[2J\\r\\nevent: x received: replaying 0 events, then live events\n")


if __name__ == "__main__":
    unittest.main()
