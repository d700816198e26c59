"""Chapter 5: the SSE server over loopback: real sockets, one thread per client, bounded waits."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import sse_server
from sse_server import ServerSentEvent
from tests.support import TIMEOUT, SSEServerTestCase, StreamClient, http_request, wait_for

ROOT = Path(__file__).resolve().parent.parent


class NonReadingSubscriber:
    """Mixin: a subscriber with a tiny receive buffer that never reads its stream."""

    def subscriber_that_never_reads(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", self.port))
        self.addCleanup(sock.close)
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")


def request_threads() -> int:
    """Threads that ThreadingHTTPServer started, one per connection, still running."""
    return sum(1 for t in threading.enumerate() if t.name.endswith("(process_request_thread)"))


class Test01TheStream(SSEServerTestCase):
    """§9.2.3: a 200 with text/event-stream, then events as they happen."""

    def test_01_headers_say_event_stream_no_cache_no_proxy_buffering_and_chunked(self):
        stream = self.subscribed(self.stream())
        self.assertEqual(stream.status, 200)
        self.assertEqual(stream.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual(stream.headers["cache-control"], "no-cache")
        self.assertEqual(stream.headers["x-accel-buffering"], "no")
        self.assertEqual(stream.headers["transfer-encoding"], "chunked")
        self.assertNotIn("content-encoding", stream.headers)  # never compressed

    def test_02_every_stream_starts_with_retry(self):
        stream = self.subscribed(self.stream())
        self.assertTrue(stream.body.startswith(b"retry: 3000\n\n"), stream.body)

    def test_03_the_tutorials_path_with_a_slash_works_too(self):
        self.assertEqual(self.subscribed(self.stream("/sse/")).status, 200)

    def test_04_each_event_is_one_chunk_with_an_increasing_id(self):
        stream = self.subscribed(self.stream())
        for text in ("one", "two"):
            self.assertEqual(self.publish(text), 204)
        events = stream.next_events(2)
        self.assertEqual([e.data for e in events], ["one", "two"])
        first, second = (int(e.last_event_id) for e in events)
        self.assertEqual(second, first + 1)
        self.assertEqual(stream.dechunker.chunks[1:], [f"id: {first}\ndata: one\n\n".encode(),
                                                       f"id: {second}\ndata: two\n\n".encode()])

    def test_05_an_http_1_0_client_gets_the_stream_without_chunks_ended_by_close(self):
        stream = StreamClient(self.port, version="HTTP/1.0")
        self.streams.append(stream)
        self.subscribed(stream)
        self.assertNotIn("transfer-encoding", stream.headers)
        self.publish("plain")
        self.assertEqual(stream.next_events(1)[0].data, "plain")

    def test_06_head_of_the_stream_is_405(self):
        status, headers, body = http_request(self.port, "HEAD", "/sse")
        self.assertEqual((status, headers["allow"], body), (405, "GET, OPTIONS", b""))


class Test02TheClock(SSEServerTestCase):
    """The tutorial's clock: every second, JSON with a message its page shows."""

    options = {"clock": 1.0}

    def test_01_the_first_tick_arrives_within_a_second_as_json_with_the_time(self):
        stream = self.subscribed(self.stream())
        started = time.monotonic()
        event = stream.next_events(1, timeout=1.5)[0]
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertRegex(json.loads(event.data)["message"], r"^Current time: \d\d:\d\d:\d\d$")
        self.assertEqual(event.type, "message")


class Test03Publishing(SSEServerTestCase):
    """POST /publish: the body becomes one event for every subscriber."""

    options = {"max_body": 1024}

    def test_01_a_publish_reaches_two_subscribers_and_gets_204(self):
        streams = [self.subscribed(self.stream()) for _ in range(2)]
        self.assertEqual(self.publish("hello\nworld"), 204)
        for stream in streams:
            self.assertEqual(stream.next_events(1)[0].data, "hello\nworld")

    def test_02_event_names_the_type(self):
        stream = self.subscribed(self.stream())
        self.assertEqual(self.publish("x", "?event=note"), 204)
        self.assertEqual(stream.next_events(1)[0].type, "note")

    def test_03_a_body_over_max_body_is_413(self):
        self.assertEqual(self.publish(b"x" * 1025), 413)
        self.assertEqual(self.publish(b"x" * 1024), 204)

    def test_04_a_body_that_is_not_utf8_is_400(self):
        self.assertEqual(self.publish(b"\xff\xfe"), 400)

    def test_05_an_event_name_with_a_line_break_or_empty_is_400(self):
        for query in ("?event=a%0Adata:%20injected", "?event=a%0Db", "?event="):
            with self.subTest(query=query):
                self.assertEqual(self.publish("x", query), 400)

    def test_06_a_chunked_body_is_decoded(self):
        stream = self.subscribed(self.stream())
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"8\r\nchunked \r\n4;ext=1\r\nbody\r\n0\r\n\r\n")
            self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 204 "))
        self.assertEqual(stream.next_events(1)[0].data, "chunked body")

    def test_07_post_elsewhere_is_404_or_405(self):
        self.assertEqual(http_request(self.port, "POST", "/nowhere", b"x")[0], 404)
        self.assertEqual(http_request(self.port, "POST", "/sse", b"x")[0], 405)

    def test_08_an_unknown_method_is_501_in_plain_text(self):
        status, headers, body = http_request(self.port, "DELETE", "/sse")
        self.assertEqual(status, 501)
        self.assertTrue(headers["content-type"].startswith("text/plain"))


class Test04Resumption(SSEServerTestCase):
    """§9.2.4: a client reconnects with Last-Event-ID and gets what it missed, then live events."""

    options = {"history": 5}

    def test_01_replay_has_no_gap_and_no_duplicate_then_live_events_follow(self):
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

    def test_03_an_unknown_id_gets_a_reset_event(self):
        for last_event_id in ("not-a-number", "99999999999999999999", "٣"):
            with self.subTest(last_event_id=last_event_id):
                stream = self.subscribed(self.stream(Last_Event_ID=last_event_id))
                self.assertEqual(stream.next_events(1)[0].type, "reset")

    def test_04_with_store_a_restarted_server_replays_what_the_client_missed(self):
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

    def test_05_the_terminal_client_reconnects_by_itself_with_last_event_id(self):
        with tempfile.TemporaryDirectory() as folder:
            store = os.path.join(folder, "events.sqlite3")
            first = self.start_server(store=store, retry=50)
            port = first.port
            events = sse_server.follow(f"http://127.0.0.1:{port}/sse", timeout=TIMEOUT)
            try:
                timer = threading.Timer(0.3, first.hub.publish, ["one"])
                timer.start()
                self.assertEqual(next(events).data, "one")
                timer.join(TIMEOUT)
                first.stop()
                second = self.start_server(store=store, port=port)
                second.hub.publish("two")  # published while the client is away, or just back
                self.assertEqual(next(events).data, "two")
            finally:
                events.close()


class Test05HeartbeatsAndVanishedClients(SSEServerTestCase):
    """§9.2.7: a comment now and then keeps proxies from closing an idle stream; a write that
    fails is how a threaded server learns that a client is gone."""

    options = {"heartbeat": 0.2}

    def test_01_a_heartbeat_comment_arrives_on_an_idle_stream(self):
        stream = self.subscribed(self.stream())
        stream.wait_until(lambda: b": heartbeat\n" in stream.body, timeout=2)
        self.assertEqual(stream.events, [])  # a comment is not an event

    def test_02_vanished_clients_are_unsubscribed_and_their_threads_end(self):
        wait_for(lambda: request_threads() == 0, message="earlier tests' threads to end")
        baseline = threading.active_count()
        streams = [self.subscribed(self.stream()) for _ in range(3)]
        wait_for(lambda: self.server.hub.subscriber_count == 3, message="3 subscribers")
        self.assertEqual(request_threads(), 3)  # one thread per client
        for stream in streams:
            stream.close()  # no goodbye: the server finds out when a heartbeat fails
        wait_for(lambda: self.server.hub.subscriber_count == 0, message="no subscribers")
        wait_for(lambda: request_threads() == 0, message="no request threads")
        self.assertEqual(threading.active_count(), baseline)


class Test06SlowClients(NonReadingSubscriber, SSEServerTestCase):
    """A subscriber that does not read is dropped once its queue is full; the others and the
    publisher never wait for it."""

    options = {"max_queue": 32, "write_timeout": 30.0}

    def test_01_a_slow_client_is_dropped_while_a_fast_one_gets_every_event(self):
        self.subscriber_that_never_reads()
        fast = self.subscribed(self.stream())
        wait_for(lambda: self.server.hub.subscriber_count == 2, message="2 subscribers")
        count, payload = 300, "x" * 32768
        received = []
        reader = threading.Thread(target=lambda: received.extend(fast.next_events(count, timeout=20)))
        reader.start()
        started = time.monotonic()
        for _ in range(count):  # 32 MB/s: easy for a reader, 10 MB in all: too much to buffer
            self.server.hub.publish(payload)
            time.sleep(0.001)
        publishing = time.monotonic() - started
        reader.join(25)
        self.assertEqual(len(received), count)
        self.assertLess(publishing, 5.0)  # far below the 30 s a blocking write could take
        wait_for(lambda: self.server.hub.subscriber_count == 1, message="the slow client dropped")


class Test07Limits(NonReadingSubscriber, SSEServerTestCase):

    options = {"max_clients": 2, "request_timeout": 0.3, "write_timeout": 0.5, "max_queue": 100_000}

    def test_01_beyond_max_clients_the_answer_is_503(self):
        for _ in range(2):
            self.subscribed(self.stream())
        refused = self.stream()
        self.assertEqual(refused.status, 503)
        self.assertEqual(refused.headers["retry-after"], "5")

    def test_03_a_client_silent_in_the_middle_of_its_request_is_dropped(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\n")  # and no blank line: slowloris
        started = time.monotonic()
        self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 408 "))  # answered, then closed
        self.assertLess(time.monotonic() - started, TIMEOUT - 1)

    def test_04_a_subscriber_whose_writes_stall_past_write_timeout_is_dropped(self):
        self.subscriber_that_never_reads()
        wait_for(lambda: self.server.hub.subscriber_count == 1, message="the subscriber")
        for _ in range(300):  # 10 MB: more than the socket buffers hold; the queue never fills
            self.server.hub.publish("x" * 32768)
        wait_for(lambda: self.server.hub.subscriber_count == 0, message="the stalled subscriber dropped")

    def test_02_a_request_head_with_too_many_headers_is_refused(self):
        headers = {f"X-{i}": "y" for i in range(120)}
        status, _, body = http_request(self.port, "GET", "/sse", headers=headers)
        self.assertEqual(status, 431)
        self.assertTrue(body.startswith(b"431 "))


class Test08CORS(SSEServerTestCase):
    """The tutorial's CORS, done right (Fetch standard, "CORS protocol")."""

    def test_01_by_default_any_origin_may_read_but_never_with_credentials(self):
        stream = self.subscribed(self.stream(Origin="http://elsewhere.example"))
        self.assertEqual(stream.headers["access-control-allow-origin"], "*")
        self.assertNotIn("access-control-allow-credentials", stream.headers)

    def test_02_a_preflight_gets_204_with_the_methods_and_headers_allowed(self):
        status, headers, body = http_request(self.port, "OPTIONS", "/sse", headers={
            "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id"})
        self.assertEqual((status, body), (204, b""))
        self.assertIn("POST", headers["access-control-allow-methods"])
        self.assertIn("Last-Event-ID", headers["access-control-allow-headers"])
        self.assertEqual(headers["access-control-allow-origin"], "*")


class Test09CORSWithAnAllowList(SSEServerTestCase):

    options = {"allowed_origins": ("http://good.example",)}

    def test_01_an_allowed_origin_is_echoed_with_vary_and_credentials(self):
        stream = self.subscribed(self.stream(Origin="http://good.example"))
        self.assertEqual(stream.headers["access-control-allow-origin"], "http://good.example")
        self.assertEqual(stream.headers["access-control-allow-credentials"], "true")
        self.assertEqual(stream.headers["vary"], "Origin")

    def test_02_another_origin_may_neither_subscribe_nor_publish(self):
        self.assertEqual(self.stream(Origin="http://evil.example").status, 403)
        self.assertEqual(self.publish("x", Origin="http://evil.example"), 403)

    def test_03_same_origin_pages_and_clients_without_origin_are_allowed(self):
        self.assertEqual(self.publish("x", Origin=f"http://127.0.0.1:{self.port}"), 204)
        self.assertEqual(self.publish("x"), 204)


class Test10StaticFiles(SSEServerTestCase):
    """GET / is the SSE page; ws_server's traversal checks, reused."""

    def test_01_slash_serves_the_sse_page(self):
        status, headers, body = http_request(self.port, "GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(body, (ROOT / "static" / "sse.html").read_bytes())

    def test_02_head_gives_the_length_without_the_body(self):
        status, headers, body = http_request(self.port, "HEAD", "/")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(int(headers["content-length"]), (ROOT / "static" / "sse.html").stat().st_size)

    def test_03_nothing_outside_static_can_be_read(self):
        for target in ("/../sse_server.py", "/%2e%2e/sse_server.py", "/..%5csse_server.py", "/missing.html"):
            with self.subTest(target=target):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
                with sock:
                    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    answer = b""
                    while data := sock.recv(65536):
                        answer += data
                self.assertTrue(answer.startswith(b"HTTP/1.1 404 "), answer[:40])


class Test11Shutdown(SSEServerTestCase):

    def test_01_stop_ends_every_stream_with_the_last_chunk_and_threads_end(self):
        streams = [self.subscribed(self.stream()) for _ in range(3)]
        self.assertGreaterEqual(request_threads(), 3)
        self.server.stop()
        for stream in streams:
            stream.read_to_eof()
            self.assertTrue(stream.dechunker.done)  # a complete stream, not a cut one
        wait_for(lambda: request_threads() == 0, message="no request threads")
        self.assertFalse([t for t in threading.enumerate() if t.name in ("sse-server", "clock", "heartbeat")])

    def test_02_ctrl_c_ends_the_streams_and_exits_0_without_a_traceback(self):
        process = subprocess.Popen([sys.executable, str(ROOT / "sse_server.py"), "--port", "0"],
                                   stderr=subprocess.PIPE, text=True)
        try:
            line = process.stderr.readline()  # "... Serving the clock on http://127.0.0.1:PORT/ ..."
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
            stream = StreamClient(port)
            self.streams.append(stream)
            self.subscribed(stream)
            process.send_signal(signal.SIGINT)
            stream.read_to_eof()
            self.assertTrue(stream.dechunker.done)
            self.assertEqual(process.wait(TIMEOUT), 0)
            self.assertNotIn("Traceback", process.stderr.read())
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)
            process.stderr.close()


if __name__ == "__main__":
    unittest.main()
