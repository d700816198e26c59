"""Chapter 13. Several processes, one chat and one event stream: Redis.

One Python process is one core.  With `--redis URL`, every `ws_server.py` and every
`sse_server.py` on the same Redis share one chat and one event stream, through Redis streams
(ws_server.py II.8, sse_server.py II.6).  First RESP2, the protocol, fed literal
bytes from the Redis documentation; then the positions a shared history can resume from; then
real processes on a real `redis-server` (Debian's, started here on a free port with nothing
saved to disk, and skipped with an install hint when it is missing): the same order
everywhere, resuming on another process, and what happens when Redis stops, stalls, or comes
back empty.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
import unittest

import sse_server
import ws_server
from ws_server import RedisError, RedisReplyError, RedisUnreachable, RESPParser
from tests.support import (CA_FILE, CERT_FILE, KEY_FILE, REDIS_HINT, TIMEOUT, WINDOWS_PRELUDE, LogReader, RedisServer, StreamClient, find_redis_server,
                           free_port, fuzz, http_request, mutations, python_command, start_process, stop_process,
                           wait_for_service, wait_until)

# The examples of the Redis protocol specification ("RESP protocol spec", RESP2 types), each
# with what the parser makes of it.
DOCUMENTED_REPLIES = [
    (b"+OK\r\n", "OK"),
    (b"-Error message\r\n", RedisReplyError("Error message")),
    (b"-ERR unknown command 'asdf'\r\n", RedisReplyError("ERR unknown command 'asdf'")),
    (b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
     RedisReplyError("WRONGTYPE Operation against a key holding the wrong kind of value")),
    (b":0\r\n", 0),
    (b":1000\r\n", 1000),
    (b":-42\r\n", -42),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*0\r\n", []),
    (b"*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n", [b"hello", b"world"]),
    (b"*3\r\n:1\r\n:2\r\n:3\r\n", [1, 2, 3]),
    (b"*5\r\n:1\r\n:2\r\n:3\r\n:4\r\n$5\r\nhello\r\n", [1, 2, 3, 4, b"hello"]),
    (b"*-1\r\n", None),
    (b"*2\r\n*3\r\n:1\r\n:2\r\n:3\r\n*2\r\n+Hello\r\n-World\r\n", [[1, 2, 3], ["Hello", RedisReplyError("World")]]),
    (b"*3\r\n$5\r\nhello\r\n$-1\r\n$5\r\nworld\r\n", [b"hello", None, b"world"]),
    (b"$12\r\nbinary\r\n\x00\xff\r\n\r\n", b"binary\r\n\x00\xff\r\n"),  # binary-safe: CRLF inside is data
]


def comparable(reply):
    """Error replies are exceptions, which do not compare equal: compare their type and text."""
    if isinstance(reply, RedisReplyError):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [comparable(item) for item in reply]
    return reply


class Test01RESP(unittest.TestCase):
    """RESP2: commands are arrays of bulk strings; replies are five types told apart by their first byte."""

    def test_01_a_command_is_an_array_of_bulk_strings(self):
        """RESP "Sending commands": LLEN mylist is *2 $4 LLEN $6 mylist, with CRLF after each part."""
        self.assertEqual(ws_server.encode_command("LLEN", "mylist"), b"*2\r\n$4\r\nLLEN\r\n$6\r\nmylist\r\n")
        self.assertEqual(ws_server.encode_command("SET", "k", b"\r\n\x00", 7),
                         b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\r\n\x00\r\n$1\r\n7\r\n")
        self.assertEqual(ws_server.encode_command("ECHO", "é"), b"*2\r\n$4\r\nECHO\r\n$2\r\n\xc3\xa9\r\n")  # bytes, not characters

    def test_02_every_documented_reply_is_parsed(self):
        """RESP types: simple string, error, integer, bulk string, array, and the two nulls."""
        for data, expected in DOCUMENTED_REPLIES:
            with self.subTest(data=data):
                self.assertEqual([comparable(r) for r in RESPParser().feed(data)], [comparable(expected)])

    def test_03_replies_split_at_every_byte_come_out_the_same(self):
        """RESP is a stream: a reply may arrive cut anywhere, or several in one read (pipelining)."""
        stream = b"".join(data for data, _ in DOCUMENTED_REPLIES)
        expected = [comparable(reply) for _, reply in DOCUMENTED_REPLIES]
        for cut in range(len(stream) + 1):
            parser = RESPParser()
            replies = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
            self.assertEqual([comparable(r) for r in replies], expected, f"cut at {cut}")
        parser = RESPParser()
        one_by_one = [reply for i in range(len(stream)) for reply in parser.feed(stream[i:i + 1])]
        self.assertEqual([comparable(r) for r in one_by_one], expected)

    def test_04_a_reply_cannot_make_the_client_allocate_without_limit(self):
        """Operational (bounded reads): a length, a count, a depth or a line over its limit is refused before anything that size is kept."""
        small = dict(max_bulk=1000, max_elements=10, max_depth=3, max_line=100)
        for data in (b"$1001\r\n",  # announced, not sent: refused at once
                     b"$9999999999999999999\r\n", b"*11\r\n", b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
                     b"+" + b"x" * 200, b"$-2\r\n", b"*-2\r\n"):
            with self.subTest(data=data[:30]), self.assertRaises(RedisError):
                RESPParser(**small).feed(data)

    def test_05_what_is_not_resp_is_an_error_not_a_guess(self):
        """RESP types: an unknown first byte, a length that is not a number, a bulk string not ended by CRLF are not RESP: RedisError."""
        for data in (b"!oops\r\n", b"\r\n", b":12a\r\n", b":\r\n", b"$x\r\n", b"$3\r\nabcd\r\n", b":1" + b"0" * 20 + b"\r\n"):
            with self.subTest(data=data), self.assertRaises(RedisError):
                RESPParser().feed(data)

    def test_06_any_bytes_are_parsed_or_refused_with_a_redis_error(self):
        """RESP, fuzzed: mutations of the documented replies give replies or RedisError, nothing else."""
        seeds = [data for data, _ in DOCUMENTED_REPLIES]
        fuzz(self, lambda data: RESPParser(max_bulk=1 << 16).feed(data), mutations(13, seeds), (RedisError,))

    def test_07_a_redis_url_names_the_host_port_password_and_database(self):
        """Operational: --redis redis://[:password@]host[:port][/db]: AUTH and SELECT are sent first when given; anything else is a ValueError."""
        address = ws_server.RedisAddress.parse("redis://:s%40cret@10.0.0.7:6380/2")
        self.assertEqual((address.host, address.port, address.password, address.db), ("10.0.0.7", 6380, "s@cret", 2))
        self.assertEqual(address.setup_commands(), [("AUTH", "s@cret"), ("SELECT", 2)])
        plain = ws_server.RedisAddress.parse("redis://localhost")
        self.assertEqual((plain.host, plain.port, plain.setup_commands()), ("localhost", 6379, []))
        for url in ("http://localhost", "redis://", "redis://host/x", "redis://host:99999", "localhost:6379"):
            with self.subTest(url=url), self.assertRaises(ValueError):
                ws_server.RedisAddress.parse(url)

    def test_09_rediss_an_acl_user_and_a_password_from_the_environment(self):
        """Operational: --redis rediss://user:password@host (Redis over TLS; Redis 6 ACL `AUTH user password`), the password from REDIS_PASSWORD when the URL has none, --redis-cafile only with rediss://."""
        address = ws_server.RedisAddress.parse("rediss://alice:wonder%2Fland@redis.example:6380", CA_FILE, environ={})
        self.assertEqual((address.tls, address.username, address.password, address.cafile),
                         (True, "alice", "wonder/land", CA_FILE))
        self.assertEqual(address.setup_commands(), [("AUTH", "alice", "wonder/land")])
        self.assertEqual(address.tls_context().verify_mode, ssl.CERT_REQUIRED)
        self.assertIsNone(ws_server.RedisAddress.parse("redis://h", environ={}).tls_context())
        from_environment = ws_server.RedisAddress.parse("redis://h", environ={"REDIS_PASSWORD": "from-env"})
        self.assertEqual(from_environment.setup_commands(), [("AUTH", "from-env")])
        in_url = ws_server.RedisAddress.parse("redis://:in-url@h", environ={"REDIS_PASSWORD": "from-env"})
        self.assertEqual(in_url.password, "in-url")  # the URL's, when it has one
        with self.assertRaises(ValueError):
            ws_server.RedisAddress.parse("redis://h", CA_FILE)  # a CA file, but no TLS
        with self.assertRaises(ValueError) as caught:
            ws_server.RedisAddress.parse("rediss://h", "/nonexistent/ca.pem")  # said at start, not at each connection
        self.assertIn("/nonexistent/ca.pem", str(caught.exception))

    def test_10_the_password_is_never_shown(self):
        """Operational: a password in --redis stays out of every message: repr, the address in the logs, a refused URL (redacted as ***), and a refused command line."""
        address = ws_server.RedisAddress.parse("redis://bob:hunter2@10.0.0.7", environ={})
        self.assertNotIn("hunter2", repr(address) + str(address))
        for url in ("redis://:hunter2@h:99999", "http://bob:hunter2@h", "redis://:hunter2@h/x", "redis://:hun@ter2@h/x"):
            with self.subTest(url=url), self.assertRaises(ValueError) as caught:
                ws_server.RedisAddress.parse(url)
            self.assertNotIn("hunter2", str(caught.exception))
            self.assertNotIn("ter2", str(caught.exception))
            self.assertIn("***", str(caught.exception))
        for script in ("ws_server.py", "sse_server.py"):
            with self.subTest(script=script):
                result = subprocess.run(python_command(script, "--port", "0", "--redis", "redis://:hunter2@h:99999"),
                                        capture_output=True, text=True, timeout=TIMEOUT * 2)
                self.assertEqual(result.returncode, 2)
                self.assertNotIn("hunter2", result.stderr)

    def test_08_stream_ids_and_stream_replies(self):
        """Redis streams: entry ids are "milliseconds-sequence", compared as numbers; XREAD replies have one shape."""
        self.assertEqual(ws_server.stream_id("1733040000000-12"), (1733040000000, 12))
        self.assertLess(ws_server.stream_id("99-1"), ws_server.stream_id("100-0"))  # not as text
        for text in ("", "5", "5-", "-5", "a-1", "1-1-1", "١-١", "9" * 30 + "-0"):
            with self.subTest(text=text):
                self.assertIsNone(ws_server.stream_id(text))
        reply = RESPParser().feed(b"*1\r\n*2\r\n$4\r\nchat\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\ndata\r\n$2\r\nhi\r\n")[0]
        self.assertEqual(ws_server.read_entries(reply), [("1-0", {b"data": b"hi"})])
        self.assertEqual(ws_server.read_entries(None), [])  # BLOCK timed out: nothing new
        with self.assertRaises(RedisError):
            ws_server.read_entries([b"chat"])


def entry(id: str, data: str) -> sse_server.StoredEvent:
    return sse_server.StoredEvent.numbered(id, data)


class Test02ASharedHistory(unittest.TestCase):
    """Operational (sse_server II.6): which Last-Event-IDs a shared history can resume from (no Redis needed)."""

    def history(self, maxlen: int) -> sse_server.RedisHistory:
        history = sse_server.RedisHistory(ws_server.RedisAddress("127.0.0.1", free_port()), maxlen, timeout=0.05)
        self.addCleanup(history.close)
        return history

    def test_01_an_id_read_from_the_stream_is_resumed_after(self):
        """WHATWG HTML §9.2.4 Last-Event-ID: every entry after the client's id, in the stream's order; ids compared as numbers."""
        history = self.history(10)
        for id in ("99-0", "99-1", "100-0"):
            history.append(entry(id, f"event {id}"))
        self.assertEqual([e.id for e in history.after((99, 0))], ["99-1", "100-0"])
        self.assertEqual(history.after((100, 0)), [])
        self.assertEqual(history.newest_id(), "100-0")

    def test_02_a_well_formed_id_that_was_never_read_here_is_not_guessed_at(self):
        """WHATWG HTML §9.2.4 Last-Event-ID: an id between two entries, or older than the window, names no position, and first_events answers with a reset."""
        history = self.history(2)
        for id in ("1-0", "2-0", "3-0"):
            history.append(entry(id, "x"))  # keeps 2-0 and 3-0; 1-0 fell out
        self.assertEqual([e.id for e in history.after((1, 0))], ["2-0", "3-0"])  # 1-0 is where the window starts
        self.assertIsNone(history.after((0, 5)))  # older than the window
        self.assertIsNone(history.after((2, 5)))  # between two entries: no such entry
        self.assertEqual(history.parse_id("2-0"), (2, 0))
        self.assertIsNone(history.parse_id("2"))
        for last_event_id in ("0-5", "2-5", "2"):
            with self.subTest(last_event_id=last_event_id):
                first = sse_server.first_events(history, last_event_id)
                self.assertEqual(len(first), 1)
                self.assertTrue(first[0].payload.startswith(b"event: reset\nid: 3-0\n"), first[0].payload)

    def test_03_after_the_store_lost_entries_no_id_from_before_resumes(self):
        """Operational: a Redis restarted empty reuses the same kind of ids: no id from before is trusted, only the reset's."""
        history = self.history(10)
        for id in ("1-0", "2-0"):
            history.append(entry(id, "x"))
        history.forget()
        self.assertIsNone(history.after((1, 0)))
        self.assertIsNone(history.after((2, 0)))  # not even the last one read: others may have read further
        marker = history.newest_id()  # what the reset events carry
        self.assertEqual(marker.split("-")[0], "0")  # "0-<ms>": no XADD * makes such an id
        history.append(entry("5-0", "after the restart"))
        self.assertEqual([e.id for e in history.after(history.parse_id(marker))], ["5-0"])

    def test_04_a_client_ahead_of_this_process_waits_for_the_reader_a_bounded_time(self):
        """Operational: an id seen on another process a moment ago: catch_up waits until this one's reader gets there, and returns after --redis-timeout if it never does."""
        def in_a_thread(last_id):
            thread = threading.Thread(target=history.catch_up, args=(last_id,), daemon=True)
            thread.start()
            return thread
        history = self.history(10)
        history.append(entry("1-0", "x"))
        reached = in_a_thread((1, 0))  # already there
        reached.join(TIMEOUT)
        self.assertFalse(reached.is_alive())
        history.timeout = TIMEOUT * 4  # long enough that only the reader can end the wait below
        waiting = in_a_thread((2, 0))
        history.append(entry("2-0", "y"))  # the reader gets there
        waiting.join(TIMEOUT)
        self.assertFalse(waiting.is_alive())
        self.assertEqual(history.after((1, 0))[0].id, "2-0")
        history.timeout = 0.05
        never = in_a_thread((9, 0))  # never reached: returns after the (tiny) timeout
        never.join(TIMEOUT)
        self.assertFalse(never.is_alive())
        self.assertIsNone(history.after((9, 0)))

    def test_05_publishing_without_redis_is_a_store_error_saying_so(self):
        """Operational: with Redis unreachable, a publish is a StoreError saying it was not stored (the handler's 503: Test05 test_03)."""
        history = self.history(10)
        with self.assertLogs("sse_server", "WARNING") as logged:
            history.start_reading()  # nothing listens on that port
        self.assertIn("unreachable", logged.output[0])
        with self.assertRaises(sse_server.StoreError) as caught:
            history.store("hello")
        self.assertIn("not stored", str(caught.exception))


class Test07EntriesAreInput(unittest.TestCase):
    """Operational (sse_server II.6): an entry read back from Redis is checked like a publish (no Redis needed)."""

    def test_01_an_entry_this_server_would_not_have_written_is_a_bad_entry_saying_why(self):
        """WHATWG HTML §9.2.5 (an event name is one line), §9.2.6 (UTF-8), and the server's own rules (II.3): each foreign entry is refused with its reason."""
        foreign = {
            "no data": {b"event": b"note"},
            "empty data": {b"data": b""},
            "not UTF-8": {b"data": b"\xff\xfe"},
            "one non-empty line": {b"data": b"x", b"event": b"a\nb"},
            "reserved": {b"data": b"x", b"event": b"reset"},
            "over --max-body": {b"data": b"x" * 1001},
            "does not write (extra)": {b"data": b"x", b"extra": b"y"},
        }
        for reason, fields in foreign.items():
            with self.subTest(reason=reason), self.assertRaises(sse_server.BadEntry) as caught:
                sse_server.entry_event("1-0", fields, max_body=1000)
            self.assertIn(reason.split(" (")[0], str(caught.exception))
        with self.assertRaises(sse_server.BadEntry):
            sse_server.entry_event("not-an-id", {b"data": b"x"})
        event = sse_server.entry_event("1-0", {b"data": "日本\nx".encode(), b"event": b"note"}, max_body=1000)
        self.assertEqual(event.payload, "event: note\nid: 1-0\ndata: 日本\ndata: x\n\n".encode())


class RedisTestCase(unittest.TestCase):
    """A real redis-server for the class; each test starts from an empty one."""

    redis: RedisServer

    @classmethod
    def setUpClass(cls) -> None:
        binary = find_redis_server()
        if binary is None:
            raise unittest.SkipTest(REDIS_HINT)
        cls.redis = RedisServer(binary)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.redis.close()

    def setUp(self) -> None:
        if self.redis.process is None:  # a test stopped it
            self.redis.start()
        self.redis.resume()
        self.redis.command("FLUSHALL")

    def server(self, script: str, *args: str, prelude: str = "") -> int:
        """A server process on this Redis; when the test ends, stopped, and its log checked.
        Its log so far is in `self.logs` (one LogReader per process, in order)."""
        process, port = start_process(script, "--redis", self.redis.url, *args, prelude=prelude)
        logs = LogReader(process)
        self.logs = getattr(self, "logs", []) + [logs]
        self.addCleanup(self.stop_and_check, process, logs)
        return port

    def stop_and_check(self, process: subprocess.Popen, logs: LogReader) -> None:
        process.terminate()
        process.wait(TIMEOUT)
        logs.thread.join(TIMEOUT)  # the whole log, up to the end
        stop_process(process)
        self.assertNotIn("Traceback", logs.text)
        self.assertEqual(process.returncode, 0, logs.text[-2000:])


class Test03TheClients(RedisTestCase):
    """The two clients over RESP, against a real Redis: pipelining, AUTH and SELECT, timeouts, reconnection."""

    def test_01_the_asyncio_client_pipelines_and_each_reply_finds_its_command(self):
        """RESP pipelining: many commands in flight on one connection; replies come back in order."""
        async def run():
            client = ws_server.AsyncRedis(self.redis.address, timeout=TIMEOUT)
            try:
                replies = await asyncio.gather(*(client.command("ECHO", f"n{i}") for i in range(200)))
                self.assertEqual(replies, [f"n{i}".encode() for i in range(200)])
                with self.assertRaises(RedisReplyError):
                    await client.command("NOSUCHCOMMAND")
                self.assertEqual(await client.command("PING"), "PONG")  # an error reply leaves it usable
            finally:
                await client.close()
        asyncio.run(run())

    def test_02_auth_and_select_come_first_and_a_wrong_password_is_said(self):
        """Operational: --redis URL: AUTH with its password and SELECT its database come first; a wrong password is said (refused AUTH)."""
        self.redis.command("CONFIG", "SET", "requirepass", "s3cret")
        try:
            right = ws_server.RedisAddress.parse(f"{self.redis.url.replace('//', '//:s3cret@')}/3")
            blocking = sse_server.BlockingRedis(right, TIMEOUT)
            self.addCleanup(blocking.close)
            blocking.command("SET", "where", "db3")
            self.assertEqual(blocking.command("GET", "where"), b"db3")

            async def run():
                client = ws_server.AsyncRedis(right, TIMEOUT)
                try:
                    self.assertEqual(await client.command("GET", "where"), b"db3")  # the same database
                    wrong = ws_server.AsyncRedis(ws_server.RedisAddress("127.0.0.1", self.redis.port, "nope"), TIMEOUT)
                    with self.assertRaises(RedisUnreachable) as caught:
                        await wrong.command("PING")
                    self.assertIn("refused AUTH", str(caught.exception))
                    await wrong.close()
                finally:
                    await client.close()
            asyncio.run(run())
            wrong = sse_server.BlockingRedis(ws_server.RedisAddress("127.0.0.1", self.redis.port, "nope"), TIMEOUT)
            self.addCleanup(wrong.close)
            with self.assertRaises(RedisUnreachable):
                wrong.command("PING")
        finally:
            admin = sse_server.BlockingRedis(ws_server.RedisAddress("127.0.0.1", self.redis.port, "s3cret"), TIMEOUT)
            admin.command("CONFIG", "SET", "requirepass", "")
            admin.close()

    def test_04_an_acl_user_authenticates_with_its_name_and_a_refusal_does_not_show_the_password(self):
        """Operational (Redis 6 ACL: `AUTH username password`): redis://user:password@ works for both clients; a wrong password is said (refused AUTH), without the password."""
        self.redis.command("ACL", "SETUSER", "alice", "on", ">wonderland", "~*", "&*", "+@all")
        self.addCleanup(self.redis.command, "ACL", "DELUSER", "alice")
        right = ws_server.RedisAddress.parse(self.redis.url.replace("//", "//alice:wonderland@"), environ={})
        wrong = ws_server.RedisAddress.parse(self.redis.url.replace("//", "//alice:looking-glass@"), environ={})
        blocking = sse_server.BlockingRedis(right, TIMEOUT)
        self.addCleanup(blocking.close)
        self.assertEqual(blocking.command("ACL", "WHOAMI"), b"alice")
        refused = sse_server.BlockingRedis(wrong, TIMEOUT)
        self.addCleanup(refused.close)
        with self.assertRaises(RedisUnreachable) as caught:
            refused.command("PING")
        self.assertIn("refused AUTH", str(caught.exception))
        self.assertNotIn("looking-glass", str(caught.exception))

        async def run():
            client, bad = ws_server.AsyncRedis(right, TIMEOUT), ws_server.AsyncRedis(wrong, TIMEOUT)
            try:
                self.assertEqual(await client.command("ACL", "WHOAMI"), b"alice")
                with self.assertRaises(RedisUnreachable) as caught:
                    await bad.command("PING")
                self.assertNotIn("looking-glass", str(caught.exception))
            finally:
                await client.close()
                await bad.close()
        asyncio.run(run())

    def test_05_rediss_speaks_tls_to_a_redis_with_tls_and_verifies_its_certificate(self):
        """Operational (rediss://, RFC 8446 with RFC 6125's name check): both clients reach a redis-server that serves TLS only, with its certificate verified against --redis-cafile; with the system's CAs alone they refuse it, naming the certificate."""
        port = free_port()
        process = subprocess.Popen(
            [self.redis.binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.redis.folder.name, "--tls-cert-file", CERT_FILE,
             "--tls-key-file", KEY_FILE, "--tls-ca-cert-file", CA_FILE, "--tls-auth-clients", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(stop_process, process)
        verified = ws_server.RedisAddress.parse(f"rediss://127.0.0.1:{port}", CA_FILE, environ={})

        def ping() -> bool:
            client = sse_server.BlockingRedis(verified, 1.0)
            try:
                return client.command("PING") == "PONG"
            finally:
                client.close()
        if not wait_for_service(process, ping):
            self.skipTest("this redis-server does not serve TLS (built without it?)")
        unverified = ws_server.RedisAddress.parse(f"rediss://127.0.0.1:{port}", environ={})
        refused = sse_server.BlockingRedis(unverified, TIMEOUT)
        self.addCleanup(refused.close)
        with self.assertRaises(RedisUnreachable) as caught:
            refused.command("PING")
        self.assertIn("certificate", str(caught.exception))

        async def run():
            client, bad = ws_server.AsyncRedis(verified, TIMEOUT), ws_server.AsyncRedis(unverified, TIMEOUT)
            try:
                self.assertEqual(await client.command("SET", "over", "tls"), "OK")
                self.assertEqual(await client.command("GET", "over"), b"tls")
                with self.assertRaises(RedisUnreachable) as caught:
                    await bad.command("PING")
                self.assertIn("certificate", str(caught.exception))
            finally:
                await client.close()
                await bad.close()
        asyncio.run(run())

    def test_03_a_redis_that_does_not_answer_is_a_timeout_and_one_that_is_gone_is_unreachable(self):
        """Operational: --redis-timeout on every command: a stalled Redis is a RedisError (not "unreachable": sent, outcome unknown); then a reconnection; a Redis gone is unreachable."""
        blocking = sse_server.BlockingRedis(self.redis.address, timeout=0.3)
        self.addCleanup(blocking.close)
        self.assertEqual(blocking.command("PING"), "PONG")
        self.redis.pause()
        try:
            with self.assertRaises(RedisError) as caught:
                blocking.command("PING")
            self.assertNotIsInstance(caught.exception, RedisUnreachable)  # sent: its outcome is unknown
        finally:
            self.redis.resume()
        self.assertEqual(blocking.command("PING"), "PONG")  # connected again by itself
        self.redis.stop()
        with self.assertRaises(RedisError):
            blocking.command("PING")  # the connection it had is gone
        with self.assertRaises(RedisUnreachable):
            blocking.command("PING")  # and no new one can be made: certainly not sent


def chat_message(client_index: int, number: int) -> str | bytes:
    """Even numbers as text, odd as binary (with bytes that are not UTF-8)."""
    return f"client {client_index} says {number}" if number % 2 == 0 else bytes([client_index, number, 0xFF, 0xFE])


NOTICES = (ws_server.NOT_DELIVERED, ws_server.NOT_CONFIRMED)


async def send_until_shared(test: unittest.TestCase, client: ws_server.Connection, text: str) -> list:
    """Send `text` until it comes back through Redis (which may be coming back itself); return
    what else the client received meanwhile.  Each try before is answered with a notice: a
    message is never silently dropped."""
    deadline = time.monotonic() + TIMEOUT
    others = []
    while True:
        await client.send(text)
        while (reply := await asyncio.wait_for(client.recv(), TIMEOUT)) not in (text, *NOTICES):
            others.append(reply)
        if reply == text:
            return others
        test.assertLess(time.monotonic(), deadline, "the chat did not reach Redis")
        await asyncio.sleep(0.05)  # (paces the tries; what ends the loop is the message coming back)


class Test04TheChatAcrossProcesses(RedisTestCase):
    """python ws_server.py --redis URL, twice: one chat."""

    def chat_servers(self, *args: str) -> list[int]:
        # The second one without what Windows lacks (see WINDOWS_PRELUDE): the Redis client needs none of it.
        return [self.server("ws_server.py", "--redis-timeout", "0.5", *args, prelude=prelude)
                for prelude in ("", WINDOWS_PRELUDE)]

    async def clients(self, ports: list[int], per_server: int) -> list[ws_server.Connection]:
        return [await ws_server.connect(f"ws://127.0.0.1:{port}/") for port in ports for _ in range(per_server)]

    @staticmethod
    async def receive(client: ws_server.Connection, count: int) -> list:
        return [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in range(count)]

    def test_01_every_client_of_every_process_sees_every_message_once_in_the_same_order(self):
        """Operational (--redis, ws_server II.8): Redis's order everywhere; text stays text, binary stays binary; nothing shown twice."""
        ports = self.chat_servers()

        async def run():
            clients = await self.clients(ports, 2)
            try:
                senders = [asyncio.gather(*(c.send(chat_message(i, n)) for n in range(20))) for i, c in enumerate(clients)]
                await asyncio.gather(*senders)
                received = await asyncio.gather(*(self.receive(c, 20 * len(clients)) for c in clients))
            finally:
                for client in clients:
                    await client.close()
            sent = sorted(map(repr, (chat_message(i, n) for i in range(len(clients)) for n in range(20))))
            for seen in received:
                self.assertEqual(seen, received[0])  # the same order for everyone
                self.assertEqual(sorted(map(repr, seen)), sent)  # every message once, with its type
            for i in range(len(clients)):  # and each sender's messages in the order it sent them
                self.assertEqual([m for m in received[0] if m in [chat_message(i, n) for n in range(20)]],
                                 [chat_message(i, n) for n in range(20)])
        asyncio.run(run())

    def test_02_while_redis_is_gone_the_sender_is_told_and_nobody_gets_the_message(self):
        """Operational: no silent loss: a message Redis did not take reaches no one, and its sender reads [not delivered]."""
        ports = self.chat_servers()

        async def run():
            sender, other = await self.clients(ports, 1)
            try:
                self.assertEqual(await send_until_shared(self, sender, "before"), [])
                self.assertEqual(await self.receive(other, 1), ["before"])
                await asyncio.to_thread(self.redis.stop)  # (blocking: not in the event loop)
                # The first try may be written into the connection Redis just closed, before the
                # server has read that it is closed: that one is "not confirmed".  The next are
                # certainly refused.  Either way, nobody gets them.
                deadline = time.monotonic() + TIMEOUT
                while True:
                    await sender.send("while Redis is gone")
                    reply = await asyncio.wait_for(sender.recv(), TIMEOUT)
                    self.assertIn(reply, NOTICES)
                    if reply == ws_server.NOT_DELIVERED:
                        break
                    self.assertLess(time.monotonic(), deadline)
                await asyncio.to_thread(self.redis.start)  # empty, on the same port: the servers reconnect by themselves
                self.assertEqual(await send_until_shared(self, sender, "after"), [])
                self.assertEqual(await self.receive(other, 1), ["after"])  # kept connected; never the lost one
            finally:
                await sender.close()
                await other.close()
        asyncio.run(run())

    def test_03_a_redis_that_stalls_is_not_confirmed_and_then_everyone_or_no_one_sees_the_message(self):
        """Operational: a Redis that took the message but did not answer in time: [not confirmed]; never some clients and not others."""
        if not hasattr(signal, "SIGSTOP"):
            self.skipTest("pausing redis-server needs SIGSTOP")
        ports = self.chat_servers()

        async def run():
            sender, other = await self.clients(ports, 1)
            try:
                self.redis.pause()
                try:
                    await sender.send("while Redis stalls")
                    self.assertEqual(await self.receive(sender, 1), [ws_server.NOT_CONFIRMED])
                finally:
                    self.redis.resume()
                seen_by_other = await send_until_shared(self, other, "after")
                seen_by_sender = []
                while (message := await asyncio.wait_for(sender.recv(), TIMEOUT)) != "after":
                    seen_by_sender.append(message)
                self.assertEqual(seen_by_sender, seen_by_other)
                self.assertIn(seen_by_other, ([], ["while Redis stalls"]))
            finally:
                await sender.close()
                await other.close()
        asyncio.run(run())

    def test_04_a_server_started_while_redis_is_down_serves_and_uses_redis_once_it_is_there(self):
        """Operational: started without Redis, both servers serve; a message or event is refused until Redis comes, then shared."""
        self.redis.stop()
        chat = self.server("ws_server.py", "--redis-timeout", "0.5")
        events = self.server("sse_server.py", "--clock", "0", "--heartbeat", "0", "--redis-timeout", "0.5")
        stream = StreamClient(events)
        self.addCleanup(stream.close)
        self.assertEqual(http_request(events, "POST", "/publish", b"too early")[0], 503)

        async def run():
            client = await ws_server.connect(f"ws://127.0.0.1:{chat}/")
            try:
                await client.send("too early")
                self.assertEqual(await asyncio.wait_for(client.recv(), TIMEOUT), ws_server.NOT_DELIVERED)
                await asyncio.to_thread(self.redis.start)
                self.assertEqual(await send_until_shared(self, client, "now"), [])
            finally:
                await client.close()
        asyncio.run(run())
        wait_until(lambda: http_request(events, "POST", "/publish", b"now")[0] == 204, message="a publish acknowledged")
        self.assertEqual([e.data for e in stream.next_events(1)], ["now"])

    def test_06_entries_another_writer_put_in_the_stream_are_checked_skipped_and_said_once(self):
        """Operational: the stream is input (anything with access to Redis may XADD): an entry with text that is not UTF-8, one of 3 MiB (over the default --max-size, 1 MiB), one without data or type, one of an unknown type, are each skipped and logged once with their id, escaped; no client of either process is disconnected, and the next message reaches all of them."""
        ports = self.chat_servers()
        foreign = [("type", "text", "data", b"\xff\xfe not UTF-8"), ("type", "binary", "data", bytes(3 << 20)),
                   ("type", "text"), ("data", "no type"), ("type", "\x1b[31mhtml", "data", "<b>")]

        async def run():
            clients = await self.clients(ports, 2)
            try:
                self.assertEqual(await send_until_shared(self, clients[0], "before"), [])
                for client in clients[1:]:
                    self.assertEqual(await self.receive(client, 1), ["before"])
                ids = []
                for fields in foreign:
                    ids.append(await asyncio.to_thread(self.redis.command, "XADD", ws_server.CHAT_STREAM, "*", *fields))
                self.assertEqual(await send_until_shared(self, clients[0], "after"), [])
                for client in clients[1:]:
                    self.assertEqual(await self.receive(client, 1), ["after"])  # and nothing foreign before it
                for client in clients:
                    self.assertEqual(client.state, ws_server.State.OPEN)
                return [entry_id.decode() for entry_id in ids]
            finally:
                for client in clients:
                    await client.close()
        ids = asyncio.run(run())
        for logs in self.logs:
            for entry_id, why in zip(ids, ("not UTF-8", "over --max-size", "no data", "no type", "neither text nor binary")):
                with self.subTest(entry_id=entry_id):
                    def said() -> list[str]:
                        return [line for line in logs.lines if f"skipped the entry {entry_id} " in line]
                    wait_until(lambda: said(), message=f"the log line of {entry_id}")  # (read from the process)
                    lines = said()
                    self.assertEqual(len(lines), 1, logs.text[-2000:])
                    self.assertIn(why, lines[0])
            self.assertNotIn("\x1b", logs.text)
            self.assertNotRegex(logs.text, "disconnected: close code (?!1000 )")  # only the clients' own goodbyes
            self.assertNotIn("failing", logs.text)

    def test_05_a_configuration_that_cannot_work_is_one_line_and_exit_status_2(self):
        """Operational, the command line: a redis:// URL, a timeout above 0, SO_REUSEPORT for --reuse-port, one place for a history: else exit 2."""
        cases = [("ws_server.py", ("--redis", "http://x"), "", "redis://"),
                 ("sse_server.py", ("--redis", "http://x"), "", "redis://"),
                 # (the next two are checked by one function both servers call)
                 ("ws_server.py", ("--reuse-port",), WINDOWS_PRELUDE, "SO_REUSEPORT"),
                 ("sse_server.py", ("--redis", self.redis.url, "--redis-timeout", "0"), "", "above 0"),
                 ("sse_server.py", ("--redis", self.redis.url, "--store", "events.sqlite3"), "", "choose one")]
        for script, args, prelude, said in cases:
            with self.subTest(script=script, args=args):
                result = subprocess.run(python_command(script, "--port", "0", *args, prelude=prelude),
                                        capture_output=True, text=True, timeout=TIMEOUT * 2)
                self.assertEqual(result.returncode, 2)
                self.assertIn(said, result.stderr)
                self.assertNotIn("Traceback", result.stderr)


class Test05TheEventStreamAcrossProcesses(RedisTestCase):
    """python sse_server.py --redis URL, twice: one event stream, resumable on either."""

    def event_servers(self, *args: str) -> list[int]:
        return [self.server("sse_server.py", "--clock", "0", "--heartbeat", "0", "--redis-timeout", "0.5", *args,
                            prelude=prelude) for prelude in ("", WINDOWS_PRELUDE)]

    def stream(self, port: int, last_event_id: str | None = None) -> StreamClient:
        stream = StreamClient(port, headers={"Last-Event-ID": last_event_id} if last_event_id is not None else {})
        self.addCleanup(stream.close)
        stream.wait_until(lambda: stream.parser.retry is not None)  # subscribed
        return stream

    @staticmethod
    def publish(port: int, text: str) -> tuple[int, bytes]:
        status, _, body = http_request(port, "POST", "/publish", text.encode())
        return status, body

    def test_01_published_on_one_process_received_on_the_other_and_resumed_on_either(self):
        """WHATWG HTML §9.2.4 Last-Event-ID with --redis: ids are the stream's, so a client resumes on any process after the last id it saw, no gap, no duplicate."""
        first, second = self.event_servers()
        watcher = self.stream(second)
        published = [f"event {n}" for n in range(3)]
        for text in published:
            self.assertEqual(self.publish(first, text)[0], 204)
        seen = watcher.next_events(3)
        self.assertEqual([e.data for e in seen], published)
        self.assertTrue(all(ws_server.stream_id(e.last_event_id) for e in seen))  # stream ids
        watcher.close()
        for n in range(3, 6):  # published while it is away
            published.append(f"event {n}")
            self.assertEqual(self.publish(second, published[-1])[0], 204)
        for port in (first, second):  # it may come back to either
            with self.subTest(port=port):
                back = self.stream(port, seen[1].last_event_id)
                missed = published[2:]
                self.assertEqual([e.data for e in back.next_events(len(missed))], missed)
                published.append(f"live on {port}")
                self.publish(first, published[-1])
                self.assertEqual([e.data for e in back.next_events(1)], [published[-1]])  # nothing between
                back.close()

    def test_02_an_id_redis_trimmed_or_never_had_gets_a_reset(self):
        """WHATWG HTML §9.2.4 Last-Event-ID with --redis: trimmed away (--history) or unknown, the client gets this server's `reset`, not a gap."""
        first, second = self.event_servers("--history", "5")
        watchers = [self.stream(first), self.stream(second)]
        self.publish(first, "oldest")
        oldest = watchers[0].next_events(1)[0].last_event_id
        for n in range(30):
            self.publish(second, f"event {n}")
        newest, also = watchers[0].next_events(30)[-1].last_event_id, watchers[1].next_events(31)[-1].last_event_id
        self.assertEqual(newest, also)  # both processes have read everything
        for port, last_event_id in ((first, oldest), (second, oldest), (first, "1-0"),
                                    (second, "99999999999999-0")):  # (ahead of the reader: waited for, in vain)
            with self.subTest(port=port, last_event_id=last_event_id):
                back = self.stream(port, last_event_id)
                reset = back.next_events(1)[0]
                self.assertEqual(reset.type, "reset")
                self.assertEqual(reset.last_event_id, newest)  # current again after it
                back.close()

    def test_03_redis_stopped_is_503_with_a_reason_and_started_again_empty_is_a_reset(self):
        """Operational: no acknowledged event is missing: 503 while Redis is gone, subscribers kept, then `reset` and events again."""
        first, second = self.event_servers()
        watcher = self.stream(second)
        self.assertEqual(self.publish(first, "before")[0], 204)
        before = watcher.next_events(1)[0]
        self.redis.stop()
        status, body = self.publish(first, "while Redis is gone")
        self.assertEqual(status, 503)
        self.assertEqual(body, b"503 the event store is unavailable: the event was not published\n")  # no address
        self.assertNotIn(str(self.redis.port).encode(), body)
        wait_until(lambda: any("publish refused" in line and f":{self.redis.port}" in line for line in self.logs[0].lines),
                   message="the log line naming Redis's address")
        self.redis.start()  # empty
        acknowledged = []

        def publish_until_three_are_acknowledged() -> bool:  # each is refused (503) or acknowledged
            text = f"after {len(acknowledged)}"
            status, _ = self.publish(first if len(acknowledged) % 2 else second, text)
            self.assertIn(status, (204, 503))
            if status == 204:
                acknowledged.append(text)
            return len(acknowledged) == 3
        wait_until(publish_until_three_are_acknowledged, message="publishing to come back")
        watcher.wait_until(lambda: [e.data for e in watcher.events if e.type == "message"] == acknowledged)
        self.assertEqual(watcher.events[0].type, "reset")  # the kept subscriber is told first
        self.assertIn("lost its history", json.loads(watcher.events[0].data)["message"])
        for port in (first, second):  # and the old id, which a new stream could reuse, is not guessed at
            with self.subTest(port=port):
                self.assertEqual(self.stream(port, before.last_event_id).next_events(1)[0].type, "reset")

    def test_04_each_process_ticks_for_its_own_subscribers_only_with_no_id_and_not_through_redis(self):
        """Operational (--redis with the clock): each process ticks for its own subscribers, with no id, not through Redis: no process sends another's ticks."""
        quiet = self.server("sse_server.py", "--clock", "0", "--heartbeat", "0")
        ticking = self.server("sse_server.py", "--clock", "0.05", "--heartbeat", "0")
        near, far = self.stream(ticking), self.stream(quiet)
        ticks = near.next_events(3)
        self.assertTrue(all(e.data.startswith('{"message": "Current time:') and e.last_event_id == "" for e in ticks))
        self.publish(ticking, "marker")
        near.wait_until(lambda: any(e.data == "marker" for e in near.events))
        self.assertEqual([e.data for e in far.next_events(1)], ["marker"])  # the first thing it saw: no ticks
        self.assertEqual(self.redis.command("XLEN", sse_server.EVENT_STREAM), 1)  # ticks are not in the stream


    def add_foreign_entries(self) -> list[str]:
        """What anyone who can write to the Redis may add, with redis-cli or a client of their
        own: the ids of an entry with a line break in its event name, one that is not UTF-8, one
        of 100 KB (over --max-body), one with no data, one named `reset`, one with a stray field."""
        foreign = [("data", "x", "event", "a\nb"), ("data", b"\xff\xfe\x1b[2J"), ("data", "x" * 100_000),
                   ("event", "no data"), ("data", "fake", "event", "reset"), ("data", "x", "extra", "y")]
        return [self.redis.command("XADD", sse_server.EVENT_STREAM, "*", *fields).decode() for fields in foreign]

    def test_05_foreign_entries_in_the_stream_are_skipped_and_logged_and_reading_goes_on(self):
        """Operational: entries read back from Redis are input: each foreign one is skipped, logged once with its id by each process, reaches no subscriber, and the next publish still reaches subscribers on both processes."""
        first, second = self.event_servers()
        watchers = [self.stream(first), self.stream(second)]
        ids = self.add_foreign_entries()
        self.assertEqual(self.publish(first, "after the foreign entries")[0], 204)
        for watcher in watchers:
            self.assertEqual([(e.type, e.data) for e in watcher.next_events(1)], [("message", "after the foreign entries")])
        for logs in self.logs:
            for entry_id in ids:
                wait_until(lambda: f"skipped the event stream's entry {entry_id}:" in logs.text, message=f"{entry_id} logged")
                self.assertEqual(logs.text.count(f"entry {entry_id}:"), 1)
            self.assertNotIn("\x1b", logs.text)

    def test_06_a_restart_with_foreign_entries_in_the_stream_starts_and_serves(self):
        """Operational: the start-up replay checks entries too: a process started on a stream whose newest entries are foreign starts, skips them, replays the good one to a client that missed it, and publishes."""
        first = self.server("sse_server.py", "--clock", "0", "--heartbeat", "0")
        watcher = self.stream(first)
        self.assertEqual(self.publish(first, "good")[0], 204)
        good = watcher.next_events(1)[0]
        self.add_foreign_entries()
        restarted = self.server("sse_server.py", "--clock", "0", "--heartbeat", "0")  # exits 1 if the start fails
        wait_until(lambda: self.logs[-1].text.count("skipped the event stream's entry") == 6, message="six skipped")
        back = self.stream(restarted, good.last_event_id)
        self.assertEqual(self.publish(restarted, "after the restart")[0], 204)
        self.assertEqual([e.data for e in back.next_events(1)], ["after the restart"])  # nothing foreign between


class Test08TheReaderGoesOn(RedisTestCase):
    """Operational (sse_server II.6): nothing an entry causes ends the reader thread."""

    def test_01_an_error_while_handling_an_entry_is_logged_the_entry_read_past_and_reading_goes_on(self):
        """Operational: an unforeseen exception while an entry is handled (here the hub's, standing in for a bug) is logged with the entry's id; the reader reads past that entry and delivers the next one."""
        history = sse_server.RedisHistory(self.redis.address, 10, timeout=TIMEOUT)
        delivered: list[bytes] = []

        class FailsOnce:
            def deliver(self, event: sse_server.StoredEvent) -> None:
                if not delivered:
                    delivered.append(b"")
                    raise RuntimeError("a bug")
                history.append(event)
                delivered.append(event.payload)

            def history_lost(self) -> None:
                pass
        stopping = threading.Event()
        history.start_reading()
        reader = threading.Thread(target=history.follow, args=(FailsOnce(), stopping), daemon=True)
        with self.assertLogs("sse_server", "ERROR") as logged:
            reader.start()
            failed, _ = history.store("first"), history.store("second")
            wait_until(lambda: len(delivered) == 2, message="the second entry delivered")
        stopping.set()
        history.close()
        reader.join(TIMEOUT)
        self.assertFalse(reader.is_alive())
        self.assertIn(f"the Redis reader failed at entry {failed.id}, skipped: RuntimeError: a bug", logged.output[0])
        self.assertTrue(delivered[1].endswith(b"data: second\n\n"))


@unittest.skipUnless(hasattr(socket, "SO_REUSEPORT"), "this platform has no SO_REUSEPORT")
class Test06TwoProcessesOnOnePort(RedisTestCase):
    """--reuse-port: two processes listen on one port, the kernel spreads the clients, Redis makes them one service."""

    CLIENTS = 20  # all on one process by chance: 2 ** -19

    def two_on_one_port(self, script: str, *args: str) -> int:
        port = free_port()
        for _ in range(2):
            self.assertEqual(self.server(script, "--port", str(port), "--reuse-port", *args), port)
        return port

    def test_01_two_chat_processes_on_one_port_are_one_chat(self):
        """Operational: --reuse-port: every client, whichever process the kernel gave it to, gets every message."""
        port = self.two_on_one_port("ws_server.py")

        async def run():
            clients = [await ws_server.connect(f"ws://127.0.0.1:{port}/") for _ in range(self.CLIENTS)]
            try:
                await clients[0].send("to everyone")
                for client in clients:
                    self.assertEqual(await asyncio.wait_for(client.recv(), TIMEOUT), "to everyone")
            finally:
                for client in clients:
                    await client.close()
        asyncio.run(run())
        wait_until(lambda: all(" connected (" in logs.text for logs in self.logs), message="clients on both processes")

    def test_02_two_event_processes_on_one_port_are_one_stream(self):
        """Operational: --reuse-port: every subscriber, whichever process holds its stream, gets every event."""
        port = self.two_on_one_port("sse_server.py", "--clock", "0", "--heartbeat", "0")
        streams = [StreamClient(port) for _ in range(self.CLIENTS)]
        for stream in streams:
            self.addCleanup(stream.close)
            stream.wait_until(lambda: stream.parser.retry is not None)
        self.assertEqual(http_request(port, "POST", "/publish", b"to everyone")[0], 204)
        for stream in streams:
            self.assertEqual([e.data for e in stream.next_events(1)], ["to everyone"])
        wait_until(lambda: all(" joined" in logs.text for logs in self.logs), message="subscribers on both processes")


if __name__ == "__main__":
    unittest.main()
