"""Chapter 6: the WebSocket chat server over loopback: real sockets, bounded waits.

The server's rules as a client sees them: the handshake on the wire, the pages, the chat, each
bad frame and its close code, the byte budget of a client that does not read, keepalive,
shutdown, the command line, and other platforms simulated.
"""

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import unittest

import ws_server
from ws_server import Close, CloseCode, Limits, Message, Opcode, Ping, Pong
from tests.support import (ROOT, TIMEOUT, WINDOWS_PRELUDE, LogReader, RawClient, ServerTestCase, async_wait_until,
                           handshake_request, http_exchange, open_fds, read_response, start_process, stop_process,
                           wait_until)


class Test01TheHandshakeOnTheWire(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    server_options = {"allowed_origins": ["http://good.example"], "subprotocols": ["chat"],
                      "handshake_timeout": 0.5, "max_header_bytes": 1024}

    async def test_01_a_valid_handshake_gets_101_and_the_accept_key(self):
        """§4.2.2 A valid request is answered 101 with Sec-WebSocket-Accept and the subprotocol."""
        request = handshake_request(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ==",
                                    Sec_WebSocket_Protocol="superchat, chat")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(request)
        status, headers, _ = await read_response(reader)
        writer.close()
        self.assertEqual(status, 101)
        self.assertEqual(headers["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        self.assertEqual(headers["sec-websocket-protocol"], "chat")

    async def test_02_a_bad_handshake_gets_400_with_a_one_line_reason_and_is_closed(self):
        """§4.2.1 A handshake that breaks a rule gets "an appropriate error code (such as 400 Bad Request)": here with a one-line reason, Connection: close, and the end of the connection."""
        status, headers, body = await http_exchange(self.port, handshake_request(Sec_WebSocket_Key="c2hvcnQ="))
        self.assertEqual(status, 400)
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(body, b"400 Sec-WebSocket-Key must be 16 bytes in base64\n")  # then EOF

    async def test_03_a_wrong_version_gets_426_naming_version_13_and_websocket(self):
        """§4.4, RFC 9110 §15.5.22 Another version gets 426 with Sec-WebSocket-Version and Upgrade, and (RFC 9112 §9.6) a Connection header that still says close, as the connection ends."""
        status, headers, _ = await http_exchange(self.port, handshake_request(Sec_WebSocket_Version="8"))  # read to EOF
        self.assertEqual((status, headers["sec-websocket-version"], headers["upgrade"]), (426, "13", "websocket"))
        self.assertIn("close", [token.strip().lower() for token in headers["connection"].split(",")])

    async def test_04_a_foreign_origin_gets_403(self):
        """§10.2 A page from an origin outside the allow-list is refused with 403."""
        status, _, body = await http_exchange(self.port, handshake_request(Origin="http://evil.example"))
        self.assertEqual(status, 403)
        self.assertIn(b"evil.example", body)

    async def test_05_an_oversized_head_gets_431(self):
        """Operational: a head over --max-header-bytes (1024 here) gets RFC 6585 §5's 431."""
        status, _, _ = await http_exchange(self.port, handshake_request(X_Filler="x" * 2000))
        self.assertEqual(status, 431)

    async def test_06_a_head_that_never_ends_gets_408_after_the_handshake_timeout(self):
        """Operational: a head not complete within --handshake-timeout gets RFC 9110 §15.5.9's 408 (slowloris)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # and never the empty line
        status, _, _ = await read_response(reader)
        writer.close()
        self.assertEqual(status, 408)

    async def test_07_a_byte_now_and_then_does_not_extend_the_timeout(self):
        """Operational: --handshake-timeout bounds the whole head, not each read: a byte every 50 ms gets 408 too."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        answered = asyncio.ensure_future(read_response(reader))
        for byte in b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"y" * 100:
            if answered.done():
                break
            writer.write(bytes([byte]))
            await asyncio.wait([answered], timeout=0.05)  # one byte every 50 ms, until answered
        status, _, _ = await answered
        writer.close()
        self.assertEqual(status, 408)

    async def test_08_a_connection_that_asks_nothing_is_closed_without_an_answer(self):
        """RFC 9112 §9.5 A server may close an inactive connection: one that sends nothing (a browser's preconnect) is closed without an answer once --handshake-timeout (0.5 s) has passed."""
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            opened = loop.time()
            self.assertEqual(await asyncio.wait_for(reader.read(), TIMEOUT), b"")
            self.assertGreaterEqual(loop.time() - opened, 0.4)  # the timeout, less the time to connect
        finally:
            writer.close()
            await writer.wait_closed()

    async def test_09_a_head_with_bare_lf_line_ends_is_answered(self):
        """RFC 9112 §2.2 A recipient MAY recognize a single LF as a line terminator: the handshake succeeds."""
        request = handshake_request().replace(b"\r\n", b"\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(request)
        status, _, _ = await read_response(reader)
        writer.close()
        self.assertEqual(status, 101)

    async def test_10_hostile_heads_each_get_a_status_line(self):
        """RFC 9112 §3 Every request that cannot be served gets a status line, never silence or a crash."""
        heads = {b"GET /%ff HTTP/1.1\r\nHost: localhost\r\n\r\n": 404,
                 b"GET /%c0%ae%c0%ae/ HTTP/1.1\r\nHost: localhost\r\n\r\n": 404,
                 b"GET //[ HTTP/1.1\r\nHost: localhost\r\n\r\n": 404,
                 b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: y\r\n\r\n": 400,
                 b"GET / HTTP/1.1\r\n\r\n": 400,
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": 505,
                 b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n": 505,
                 b"GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n": 400}
        for head, expected in heads.items():
            with self.subTest(head=head):
                self.assertEqual((await http_exchange(self.port, head))[0], expected)

    async def test_11_the_seed_pages_url_with_no_path_is_upgraded(self):
        """§3 The resource name of ws://host:port (no path) is "/"."""
        client = await ws_server.connect(f"ws://127.0.0.1:{self.port}")  # as the seed's page
        self.clients.append(client)
        await client.send("hi")
        self.assertEqual(await asyncio.wait_for(client.recv(), TIMEOUT), "hi")

    async def test_12_the_servers_side_of_the_connection_knows_its_subprotocol_and_its_peer(self):
        """§4.2.2 /subprotocol/ The subprotocol agreed in the 101 ("chat") is the one the server's side of the connection speaks; operational: that side is named for its peer, address and port, as the logs name it."""
        client = await self.client(subprotocols=["chat"])
        await self.wait_for_clients(1)
        [connection] = self.server.room.clients
        port = client.writer.get_extra_info("sockname")[1]
        self.assertEqual(connection.protocol.subprotocol, "chat")
        self.assertEqual((connection.address, connection.name), ("127.0.0.1", f"127.0.0.1:{port}"))

    async def test_13_a_handshake_for_a_host_the_server_does_not_answer_for_gets_421(self):
        """RFC 9110 §15.5.20 A handshake whose Host names another server (DNS rebinding) is refused with 421 before its WebSocket checks, even with a valid key and version."""
        status, _, _ = await http_exchange(self.port, handshake_request(Host=f"rebind.evil.example:{self.port}"))
        self.assertEqual(status, 421)

    async def test_14_the_server_lets_go_of_every_connection_that_ended(self):
        """Operational: the server holds each connection's task (to end it at shutdown) and, while its head is being read, marks it as handshaking (cancelled at once at shutdown); after the 101 it is handshaking no more, and a connection that ended, a page or a chat, is held no more."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET / HTTP/1.1\r\n")  # half a head
        await async_wait_until(lambda: len(self.server._handshaking) == 1, message="one head being read")
        self.assertEqual(self.server._handlers, self.server._handshaking)
        writer.close()
        await writer.wait_closed()
        await async_wait_until(lambda: not self.server._handlers, message="no task held")
        await http_exchange(self.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await async_wait_until(lambda: not self.server._handlers, message="no task held")
        client = await self.client()
        await self.wait_for_clients(1)
        self.assertEqual((len(self.server._handlers), self.server._handshaking), (1, set()))
        await client.close()
        await async_wait_until(lambda: not self.server._handlers, message="no task held")
        self.assertEqual(self.server._handshaking, set())


class Test02ThePagesOnTheWire(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    async def test_01_get_slash_serves_the_chat_page(self):
        """RFC 9110 §9.3.1 A plain GET / is the chat page, with its type and length."""
        status, headers, body = await http_exchange(self.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(int(headers["content-length"]), len(body))
        self.assertEqual(body, (ROOT / "static" / "chat.html").read_bytes())

    async def test_02_head_has_the_length_and_no_body(self):
        """RFC 9110 §9.3.2 HEAD gets the headers of GET and no content."""
        status, headers, body = await http_exchange(self.port, b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(int(headers["content-length"]), (ROOT / "static" / "chat.html").stat().st_size)

    async def test_03_missing_files_traversal_and_other_methods(self):
        """RFC 9110 §15.5.5, §15.5.6 404 for what is not a page (traversal included), 405 for other methods."""
        for request, status in ((b"GET /nope.html HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
                                (b"GET /../ws_server.py HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
                                (b"GET /%2e%2e/ws_server.py HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
                                (b"GET /..%5cws_server.py HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
                                (b"DELETE / HTTP/1.1\r\nHost: localhost\r\n\r\n", 405)):
            with self.subTest(request=request):
                self.assertEqual((await http_exchange(self.port, request))[0], status)

    async def test_04_a_page_and_a_refusal_end_without_an_error_logged(self):
        """Operational (never a traceback): serving a page (200) and refusing a request (404, 400) end their connections' handling cleanly: once the server has shut down, which waits for every handler, nothing was logged as an error."""
        with self.assertNoLogs("ws_server", "ERROR"):
            for request, status in ((b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", 200),
                                    (b"GET /nope.html HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
                                    (handshake_request(Sec_WebSocket_Version="12"), 426)):
                self.assertEqual((await http_exchange(self.port, request))[0], status)
            await asyncio.wait_for(self.server.shutdown(), TIMEOUT + 2)


class Test03TheChat(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    async def test_01_two_clients_chat_and_the_sender_gets_its_own_message(self):
        """The tutorial's chat: every message goes to every client, the sender too; §5.6: text stays text, binary stays binary."""
        alice, bob = await self.client(), await self.client()
        await self.wait_for_clients(2)
        await alice.send("hello from alice")
        self.assertEqual(await asyncio.wait_for(bob.recv(), TIMEOUT), "hello from alice")
        self.assertEqual(await asyncio.wait_for(alice.recv(), TIMEOUT), "hello from alice")
        await bob.send(b"\x00\xffbinary")
        self.assertEqual(await asyncio.wait_for(alice.recv(), TIMEOUT), b"\x00\xffbinary")  # still bytes
        self.assertEqual(await asyncio.wait_for(bob.recv(), TIMEOUT), b"\x00\xffbinary")

    async def test_02_a_fragmented_message_with_a_ping_inside_is_pong_then_message(self):
        """§5.4 A Ping in the middle of a fragmented message is answered first."""
        raw = await self.raw_client()
        raw.send(Opcode.TEXT, b"Hel", fin=False)
        raw.send(Opcode.PING, b"inside")
        raw.send(Opcode.CONTINUATION, b"lo")
        self.assertEqual(await raw.next_event(), Pong(b"inside"))
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, b"Hello"))

    async def test_03_an_unsolicited_pong_is_ignored(self):
        """§5.5.3 An unsolicited Pong expects no answer."""
        raw = await self.raw_client()
        raw.send(Opcode.PONG, b"nobody asked")
        raw.send(Opcode.TEXT, b"after")
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, b"after"))

    async def test_04_a_client_closing_gets_its_code_echoed_and_the_server_ends_tcp_first(self):
        """§5.5.1, §7.1.1 The server echoes the Close code, then closes TCP first."""
        raw = await self.raw_client()
        raw.send(Opcode.CLOSE, b"\x0f\xa0bye")  # 4000
        self.assertEqual(await raw.next_event(), Close(4000, ""))
        self.assertTrue(await raw.at_eof())

    async def test_05_the_clients_close_completes_the_handshake(self):
        """§7.1.2 close() sends a Close and reads the server's, which echoes the code (1001): the client ends CLOSED and the server lets it go."""
        client = await self.client()
        await client.close(CloseCode.GOING_AWAY, "done")
        self.assertEqual(client.state, ws_server.State.CLOSED)
        self.assertEqual(client.close_code, 1001)
        await self.wait_for_clients(0)

    async def test_06_close_refuses_a_code_that_may_not_be_sent(self):
        """§7.4.1 A Close may not carry 1005, 1006 or 1015, nor a code out of range."""
        client = await self.client()
        for code in (1005, 1006, 1015, 5000):
            with self.subTest(code=code), self.assertRaises(ValueError):
                await client.close(code)
        self.assertEqual(client.state, ws_server.State.OPEN)

    async def test_07_a_client_fails_when_the_server_picks_a_subprotocol_it_did_not_offer(self):
        """§4.1 item 6: a subprotocol the client did not offer fails the connection."""
        async def liar(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b": ")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key"))
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + ws_server.accept_key(key.decode()).encode() +
                         b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(liar, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            with self.assertRaises(ws_server.HandshakeFailed) as caught:
                await ws_server.connect(f"ws://127.0.0.1:{port}/", subprotocols=["chat"])
            self.assertIn("mqtt", caught.exception.reason)

    async def test_08_frames_sent_with_the_request_head_are_read_after_the_handshake(self):
        """§4.1 A client MUST wait for the answer before sending frames; from one that does not, frames in the same packet as the head are still read, in order."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        frames = b"".join(ws_server.encode_frame(Opcode.TEXT, text, masking_key=os.urandom(4)) for text in (b"one", b"two"))
        writer.write(handshake_request() + frames)  # one write: the head and two messages
        status, _, after_head = await read_response(reader)
        self.assertEqual(status, 101)
        raw = RawClient(reader, writer)
        self.clients.append(raw)
        raw.events.extend(raw.receiver.feed(after_head))  # the answers may come in the same packet
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, b"one"))
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, b"two"))

    async def test_09_a_broadcast_leaves_at_the_end_of_the_turn_and_one_failing_write_holds_no_one_back(self):
        """Operational: a broadcast's frames leave in one callback at the end of the loop's turn, client by client in order; a client whose write fails is dropped, and the clients after it still get theirs."""
        flushed = []

        class StandIn:  # what EndOfTurnWrites asks of a connection
            def __init__(self, name, fails=False):
                self.name, self.fails, self.aborted = name, fails, False

            def flush(self):
                flushed.append(self.name)
                if self.fails:
                    raise RuntimeError("the socket refused the write")

            def abort(self):
                self.aborted = True

        loop = asyncio.get_running_loop()
        writes = ws_server.EndOfTurnWrites(loop)
        first, failing, last = StandIn("first"), StandIn("failing", fails=True), StandIn("last")
        for connection in (first, failing, last):
            writes.add(connection)
        self.assertEqual(flushed, [])  # nothing written before the turn ends
        after_the_writes = loop.create_future()
        loop.call_soon(after_the_writes.set_result, None)  # runs once the writes' callback has
        with self.assertLogs(ws_server.log, "ERROR") as logged:
            await asyncio.wait_for(after_the_writes, TIMEOUT)
        self.assertEqual(flushed, ["first", "failing", "last"])
        self.assertEqual((first.aborted, failing.aborted, last.aborted), (False, True, False))
        self.assertIn("failing: writing failed", logged.output[0])


class Test04Compression(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """RFC 7692 on the wire: negotiated, compressed once per message, bombs refused."""

    limits = Limits(ping_interval=0, close_timeout=1)

    async def negotiated(self, offer: str = "permessage-deflate; client_max_window_bits") -> tuple[RawClient, dict]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(handshake_request(Sec_WebSocket_Extensions=offer))
        status, headers, _ = await read_response(reader)
        self.assertEqual(status, 101)
        raw = RawClient(reader, writer)
        raw.receiver.compression = ws_server.Compression(ws_server.DeflateParameters(True, True), ws_server.MessageDeflater())
        self.clients.append(raw)
        return raw, headers

    async def test_01_chromiums_offer_is_answered_and_long_messages_come_back_compressed(self):
        """RFC 7692 §6, operational --compression-threshold (128): a message of 128 bytes or more comes back compressed (RSV1), one of 127 plain."""
        raw, headers = await self.negotiated()
        self.assertEqual(headers["sec-websocket-extensions"],
                         "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        frames = []
        raw.receiver.on_frame = lambda header, payload, inflated: frames.append(header)
        at_threshold, below = b"x" * ws_server.DEFAULT_COMPRESSION_THRESHOLD, b"y" * (ws_server.DEFAULT_COMPRESSION_THRESHOLD - 1)
        raw.send(Opcode.TEXT, ws_server.MessageDeflater().compress(at_threshold), rsv=4)
        raw.send(Opcode.TEXT, below)
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, at_threshold))
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, below))
        compressed, plain = frames
        self.assertTrue(compressed.rsv1)
        self.assertLess(compressed.length, len(at_threshold))
        self.assertEqual((plain.rsv1, plain.length), (False, len(below)))

    async def test_02_our_client_chats_with_compression_text_and_binary(self):
        """RFC 7692 §5 Our client offers the extension and every message arrives as sent."""
        client = await self.client()
        self.assertIsNotNone(client.protocol.compression)
        for message in ("é" * 500, bytes(range(256)) * 8, "short"):
            await client.send(message)
            self.assertEqual(await asyncio.wait_for(client.recv(), TIMEOUT), message)

    async def test_03_a_bomb_is_refused_with_1009_and_others_go_on(self):
        """RFC 6455 §10.4, §7.4.1 16 MiB of zeros compressed to a few KiB: its sender gets 1009 (--max-size), and the other clients go on."""
        bystander = await self.client()
        raw, _ = await self.negotiated()
        await self.wait_for_clients(2)
        raw.send(Opcode.BINARY, ws_server.MessageDeflater(level=9).compress(bytes(16 << 20)), rsv=4)
        self.assertEqual(await raw.expect_close(), 1009)
        await bystander.send("still here")
        self.assertEqual(await asyncio.wait_for(bystander.recv(), TIMEOUT), "still here")

    async def test_04_an_offer_the_server_cannot_honour_leaves_the_connection_uncompressed(self):
        """RFC 7692 §7.1.2.1 An 8-bit server window cannot be made: declined, and the chat goes on plain."""
        raw, headers = await self.negotiated("permessage-deflate; server_max_window_bits=8")
        self.assertNotIn("sec-websocket-extensions", headers)
        raw.send(Opcode.TEXT, b"x" * 300)
        message = await raw.next_event()
        self.assertEqual(message, Message(Opcode.TEXT, b"x" * 300))

    async def test_05_connections_that_agreed_the_same_parameters_share_one_compression_with_their_window(self):
        """RFC 7692 §7.1.2.1 A server_max_window_bits the server answered is the window it compresses with (10 here, not zlib's 15), and connections that agreed the same parameters share one Compression, so a broadcast is compressed once."""
        ten = ws_server.DeflateParameters(True, True, server_max_window_bits=10)
        first = self.server.shared_compression(ten)
        self.assertIs(self.server.shared_compression(ten), first)
        self.assertEqual(first.deflater.window, 10)
        default = self.server.shared_compression(ws_server.DeflateParameters(True, True))
        self.assertEqual(default.deflater.window, 15)
        self.assertIsNot(default, first)


class Test05BadInputAndOthersKeepGoing(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """Each bad frame gets its close code; meanwhile the other clients keep chatting."""

    limits = Limits(max_size=1000, ping_interval=0, close_timeout=1)

    async def check(self, send, code):
        bystander = await self.client()
        raw = await self.raw_client()
        await self.wait_for_clients(2)
        send(raw)
        self.assertEqual(await raw.expect_close(), code)
        self.assertTrue(await raw.at_eof())
        await bystander.send("still here")
        self.assertEqual(await asyncio.wait_for(bystander.recv(), TIMEOUT), "still here")

    async def test_01_unmasked_frame_1002(self):
        """§5.1 An unmasked client frame: 1002."""
        await self.check(lambda raw: raw.send(Opcode.TEXT, b"x", mask=False), 1002)

    async def test_02_rsv_bits_1002(self):
        """§5.2 RSV bits with no extension negotiated: 1002."""
        await self.check(lambda raw: raw.send(Opcode.TEXT, b"x", rsv=4), 1002)

    async def test_03_reserved_opcode_1002(self):
        """§5.2 A reserved opcode: 1002."""
        await self.check(lambda raw: raw.send(0xB, b""), 1002)

    async def test_04_long_ping_1002(self):
        """§5.5 A Ping of 126 bytes: 1002."""
        await self.check(lambda raw: raw.send(Opcode.PING, bytes(126)), 1002)

    async def test_05_continuation_first_1002(self):
        """§5.4 A continuation frame with no message started: 1002."""
        await self.check(lambda raw: raw.send(Opcode.CONTINUATION, b"x"), 1002)

    async def test_06_invalid_utf8_1007(self):
        """§8.1 Text that is not UTF-8: 1007."""
        await self.check(lambda raw: raw.send(Opcode.TEXT, b"\xff"), 1007)

    async def test_07_message_over_max_size_1009(self):
        """Operational: a message over --max-size (1000 here): §7.4.1's 1009."""
        await self.check(lambda raw: raw.send(Opcode.BINARY, bytes(1001)), 1009)

    async def test_08_one_byte_close_payload_1002(self):
        """§5.5.1 A Close body of one byte: 1002."""
        await self.check(lambda raw: raw.send(Opcode.CLOSE, b"\x03"), 1002)

    async def test_09_forbidden_close_code_1002(self):
        """§7.4.1 A Close carrying 1005: 1002."""
        await self.check(lambda raw: raw.send(Opcode.CLOSE, (1005).to_bytes(2, "big")), 1002)

    async def test_10_close_reason_not_utf8_1007(self):
        """§5.5.1 A Close reason that is not UTF-8: 1007."""
        await self.check(lambda raw: raw.send(Opcode.CLOSE, b"\x03\xe8\xff"), 1007)

    async def test_11_garbage_instead_of_frames_1002(self):
        """§5.2 An HTTP request where frames belong is a broken frame: 1002."""
        await self.check(lambda raw: raw.send_raw(b"GET / HTTP/1.1\r\n\r\n"), 1002)


class Test06WhatAClientMayHold(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """--max-buffer: what waits for one client, queued frames and socket buffer, is bounded in
    bytes; past it the client is dropped with 1008, and a reading client never notices."""

    limits = Limits(max_buffer=256 * 1024, ping_interval=0, close_timeout=1)

    async def test_01_a_client_that_stops_reading_is_dropped_while_the_reader_keeps_up(self):
        """Operational: --max-buffer; a client that stops reading is failed with §7.4.1's 1008 (policy violation) while what it held stayed within the budget, and a reading client gets everything."""
        reader = await self.client()
        sleeper = await self.raw_client()
        sleeper.writer.transport.pause_reading()  # connects, then never reads again
        sender = await self.raw_client()
        await self.wait_for_clients(3)
        held = self.connection_of(sleeper)
        payload = os.urandom(60_000)
        most = 0
        for sent in range(400):  # 24 MB: far more than socket buffers hold
            sender.send(Opcode.BINARY, payload)
            self.assertEqual(await asyncio.wait_for(reader.recv(), TIMEOUT), payload)
            most = max(most, held.buffered_bytes)
            if held.state != ws_server.State.OPEN:
                break
        self.assertEqual(held.protocol.failure.code, CloseCode.POLICY_VIOLATION)
        self.assertLess(sent, 399)
        frame_cost = len(payload) + 4 + ws_server.QUEUED_FRAME_CHARGE
        self.assertLessEqual(most, self.limits.max_buffer + frame_cost)  # the budget, plus the frame that crossed it
        await self.wait_for_clients(2)  # dropped within close_timeout
        sender.send(Opcode.TEXT, b"after the drop")
        while (message := await asyncio.wait_for(reader.recv(), TIMEOUT)) != "after the drop":
            self.assertEqual(message, payload)

    async def test_02_pings_whose_pongs_are_never_read_count_against_the_budget(self):
        """Operational: --max-buffer counts Pongs too (§5.5.2: every Ping gets one): a client that pings and never reads is failed with 1008 within the budget."""
        flooder = await self.raw_client()
        flooder.writer.transport.pause_reading()
        await self.wait_for_clients(1)
        held = self.connection_of(flooder)
        pings = ws_server.encode_frame(Opcode.PING, b"x" * 100, masking_key=b"abcd") * 1000
        most = 0
        for _ in range(500):  # at most 53 MB of pings; the socket buffers hold a few MB of pongs
            if held.state != ws_server.State.OPEN:
                break
            flooder.send_raw(pings)
            await flooder.writer.drain()  # as fast as the server reads them
            most = max(most, held.buffered_bytes)
        self.assertEqual(held.protocol.failure.code, CloseCode.POLICY_VIOLATION)
        self.assertLessEqual(most, self.limits.max_buffer + 102 + ws_server.QUEUED_FRAME_CHARGE)


class Test07Keepalive(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    limits = Limits(ping_interval=0.1, ping_timeout=0.3, close_timeout=0.5)

    async def test_01_the_server_pings_and_a_client_that_answers_stays(self):
        """Operational: --ping-interval, a Ping (§5.5.2: "a keepalive") every 0.1 s here; a client that answers stays connected."""
        raw = await self.raw_client()
        pings = 0
        while pings < 3:
            event = await raw.next_event()
            self.assertIsInstance(event, Ping)
            raw.send(Opcode.PONG, event.payload)
            pings += 1
        raw.send(Opcode.TEXT, b"still open")
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, b"still open"))

    async def test_02_a_client_that_sends_no_pong_is_dropped_with_1011(self):
        """Operational: no Pong within --ping-timeout: the server fails the connection with 1011 (§7.4.1, it cannot go on) and ends TCP."""
        raw = await self.raw_client()
        self.assertIsInstance(await raw.next_event(), Ping)
        self.assertEqual(await raw.expect_close(), CloseCode.INTERNAL_ERROR)
        self.assertTrue(await raw.at_eof(TIMEOUT))
        await self.wait_for_clients(0)

    async def test_03_our_client_answers_pings_while_it_waits_in_recv(self):
        """§5.5.2 Our client answers the server's Pings from recv(): idle in recv() for longer than --ping-interval plus --ping-timeout (0.4 s), it stays."""
        client = await self.client()
        waiting = asyncio.ensure_future(client.recv())
        raw = await self.raw_client()
        for _ in range(8):  # eight of the server's pings to the raw client: 0.8 s, twice what an unanswered ping allows
            event = await raw.next_event()
            raw.send(Opcode.PONG, event.payload)
        raw.send(Opcode.TEXT, b"still open")
        self.assertEqual(await asyncio.wait_for(waiting, TIMEOUT), "still open")
        self.assertEqual(client.state, ws_server.State.OPEN)


class Test08ShutdownAndTrace(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    async def test_01_shutdown_closes_every_client_with_1001(self):
        """§7.4.1 1001 "going away, such as a server going down": shutdown() says so to every client."""
        a, b = await self.client(), await self.client()
        await self.wait_for_clients(2)
        shutdown = asyncio.create_task(self.server.shutdown())
        for client in (a, b):
            with self.assertRaises(ws_server.ConnectionClosed) as caught:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            self.assertEqual(caught.exception.code, 1001)
        await asyncio.wait_for(shutdown, TIMEOUT)
        self.assertEqual(self.server.room.clients, set())

    async def test_04_shutdown_gives_its_reason_and_ends_a_half_sent_request_at_once(self):
        """§7.4.1 1001 with the reason "server shutting down" reaches the client (§7.1.6); operational: a connection still sending its head gets no answer, only the end of TCP, without waiting for --handshake-timeout (10 s) or --close-timeout."""
        client = await self.client()
        await self.wait_for_clients(1)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET / HTTP/1.1\r\n")  # half a head, then silence
        await async_wait_until(lambda: len(self.server._handshaking) == 1, message="the head being read")
        shutdown = asyncio.create_task(self.server.shutdown())
        try:
            self.assertEqual(await asyncio.wait_for(reader.read(), TIMEOUT), b"")
        finally:
            writer.close()
        with self.assertRaises(ws_server.ConnectionClosed) as caught:
            await asyncio.wait_for(client.recv(), TIMEOUT)
        self.assertEqual((caught.exception.code, caught.exception.reason), (1001, "server shutting down"))
        await asyncio.wait_for(shutdown, TIMEOUT)

    async def test_05_the_disconnect_line_of_a_failed_connection_says_why_it_was_failed(self):
        """Operational: when the server failed the connection (§7.1.7), the departure line adds its own code and reason: an unmasked frame (§5.1) is "after failing it with 1002 (unmasked frame from a client)"."""
        with self.assertLogs("ws_server", "INFO") as logs:
            raw = await self.raw_client()
            await self.wait_for_clients(1)
            raw.send(Opcode.TEXT, b"x", mask=False)
            self.assertEqual(await raw.expect_close(), 1002)
            raw.close()
            await self.wait_for_clients(0)
        [departure] = [line for line in logs.output if "disconnected" in line]
        self.assertIn(", after failing it with 1002 (unmasked frame from a client) (0 open)", departure)

    def test_06_a_server_made_with_no_configuration_has_the_defaults(self):
        """Operational: WebSocketServer() takes the defaults of ServerConfig(), and serves http:// (https:// only with a TLS context, --certfile)."""
        server = ws_server.WebSocketServer()
        self.assertEqual(server.config, ws_server.ServerConfig())
        self.assertEqual(server.scheme, "http")
        self.assertEqual(ws_server.WebSocketServer(ws_server.ServerConfig(tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))).scheme, "https")

    async def test_02_trace_logs_every_frame_dissected(self):
        """Operational: --trace logs the handshake and each frame's §5.2 fields (FIN, RSV, opcode, MASK, length, key) and payload, both ways."""
        self.server.config.trace = True
        with self.assertLogs("ws_server", "INFO") as logs:
            client = await self.client()
            await client.send("traced")
            await asyncio.wait_for(client.recv(), TIMEOUT)
        lines = "\n".join(logs.output)
        self.assertIn("handshake request", lines)
        self.assertIn("<<< FIN=1 RSV=000 opcode=0x1 TEXT MASK=1 len=6 key=", lines)
        self.assertIn(">>> FIN=1 RSV=000 opcode=0x1 TEXT MASK=0 len=6 key=- payload=b'traced'", lines)

    async def test_03_the_disconnect_line_reads_as_a_sentence_and_escapes_what_the_peer_sent(self):
        """Operational: the log line of a departure gives the close code, its reason in parentheses only when there is one, and the reason's control characters escaped, so a peer's close reason cannot forge a log line."""
        with self.assertLogs("ws_server", "INFO") as logs:
            client = await self.client()
            await self.wait_for_clients(1)
            await client.close(1000, "bye\n2026-12-06 00:00:00 forged line \x1b[31m")
            await self.wait_for_clients(0)
            quiet = await self.client()
            await self.wait_for_clients(1)
            await quiet.close(1000)
            await self.wait_for_clients(0)
        departures = [line for line in logs.output if "disconnected" in line]
        self.assertEqual(len(departures), 2)
        self.assertIn("disconnected: close code 1000 (bye\\n2026-12-06 00:00:00 forged line \\x1b[31m) (0 open)",
                      departures[0])
        self.assertTrue(departures[1].endswith("disconnected: close code 1000 (0 open)"), departures[1])
        self.assertFalse([line for line in logs.output if "\n" in line or "\x1b" in line])


class Test09HostileBatch(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    server_options = {"handshake_timeout": 0.3}

    async def test_01_after_hostile_requests_a_client_chats_and_nothing_is_left_behind(self):
        """Operational: after bad heads, broken frames and abandoned sockets, service goes on, and file descriptors and tasks are back to where they were."""
        fds, tasks = open_fds(), len(asyncio.all_tasks())
        for head in (b"GET /%ff HTTP/1.1\r\nHost: localhost\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\n", b"\x16\x03\x01\x02\x00",
                     b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", handshake_request(Sec_WebSocket_Version="7")):
            await http_exchange(self.port, head)
        silent = []
        for _ in range(3):  # half a head, then silence
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(b"GET / HTTP/1.1\r\n")
            silent.append((reader, writer))
        raw = await self.raw_client()
        raw.send(Opcode.TEXT, b"\xff")
        self.assertEqual(await raw.expect_close(), 1007)
        client = await self.client()
        await client.send("still serving")
        self.assertEqual(await asyncio.wait_for(client.recv(), TIMEOUT), "still serving")
        await client.close()
        raw.close()
        self.clients.clear()
        for reader, writer in silent:
            self.assertEqual((await read_response(reader))[0], 408)
            writer.close()
        await async_wait_until(lambda: len(asyncio.all_tasks()) == tasks, message="tasks back to the baseline")
        if fds is not None:
            await async_wait_until(lambda: open_fds() == fds, message="file descriptors back to the baseline")


class Test10TheCommandLine(unittest.TestCase):

    def ctrl_c_closes_with_1001(self, prelude: str = "") -> None:
        process, port = start_process("ws_server.py", prelude=prelude)
        try:
            self.assertEqual(asyncio.run(self.going_away(process, port)), 1001)
            self.assertEqual(process.wait(TIMEOUT), 0)
            self.assertNotIn("Traceback", process.stderr.read())
        finally:
            stop_process(process)

    @staticmethod
    async def going_away(process: subprocess.Popen, port: int) -> int:
        client = await ws_server.connect(f"ws://127.0.0.1:{port}/")
        await client.send("before")
        await asyncio.wait_for(client.recv(), TIMEOUT)
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(client.recv(), TIMEOUT)
        except ws_server.ConnectionClosed as closed:
            return closed.code
        finally:
            await client.close()

    def test_01_ctrl_c_closes_clients_with_1001_and_exits_0_without_a_traceback(self):
        """Operational: Ctrl-C (SIGINT): every client gets §7.4.1's 1001, the process exits 0, and no traceback is printed."""
        self.ctrl_c_closes_with_1001()

    def test_02_the_server_runs_without_what_windows_lacks(self):
        """Operational (platforms): with no poll, epoll, MSG_DONTWAIT, SO_REUSEPORT, add_signal_handler, fcntl, resource or fork, as on Windows, it serves and Ctrl-C stops it with 1001."""
        self.ctrl_c_closes_with_1001(prelude=WINDOWS_PRELUDE)

    def test_03_the_terminal_client_prints_messages_as_text_and_ends_when_the_server_closes(self):
        """Operational: the terminal client (--connect) prints text as it is and binary readably (§5.6 keeps them apart), and ends when the server closes, stdin still open."""
        server, port = start_process("ws_server.py")
        client = subprocess.Popen([os.sys.executable, str(ROOT / "ws_server.py"), "--connect", f"ws://127.0.0.1:{port}/"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertTrue(client.stdout.readline().startswith("connected to"))
            client.stdin.write("hello there\n")
            client.stdin.flush()
            self.assertEqual(client.stdout.readline(), "< hello there\n")
            asyncio.run(self.send_binary(port))
            self.assertEqual(client.stdout.readline(), "< [binary, 4 bytes: 00 01 fe ff]\n")
            # ECMA-48 escapes a peer may send: colours, a cleared screen, and OSC 52, which asks the
            # terminal to put text on the clipboard.  They are printed as escapes, not obeyed.
            hostile = "\x1b[31mred\x1b[2J\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGU=\x07\x9b31m\rdone"
            asyncio.run(self.send_text(port, hostile))
            line = client.stdout.readline()
            self.assertEqual(line, "< \\x1b[31mred\\x1b[2J\\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGU=\\x07\\x9b31m\\rdone\n")
            server.send_signal(signal.SIGINT)
            self.assertTrue(client.stdout.readline().startswith("connection closed: 1001"))
            self.assertEqual(client.wait(TIMEOUT), 0)  # without a line typed, stdin still open
            self.assertNotIn("Traceback", client.stderr.read())
        finally:
            stop_process(client)
            stop_process(server)

    @staticmethod
    async def send_text(port: int, text: str) -> None:
        other = await ws_server.connect(f"ws://127.0.0.1:{port}/")
        await other.send(text)
        await asyncio.wait_for(other.recv(), TIMEOUT)
        await other.close()

    @staticmethod
    async def send_binary(port: int) -> None:
        other = await ws_server.connect(f"ws://127.0.0.1:{port}/")
        await other.send(b"\x00\x01\xfe\xff")
        await asyncio.wait_for(other.recv(), TIMEOUT)
        await other.close()



class Test11WhoMayConnect(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """The server's defaults against the pages a browser really opens: cross-site WebSocket
    hijacking (§10.2) and DNS rebinding, with AccessRules (II.9) built from the configuration."""

    async def test_01_a_page_of_another_site_is_refused_and_the_servers_own_page_and_programs_are_not(self):
        """§10.2 With the default flags, a handshake from another site's page (its Origin) is refused with 403; the server's own page (Origin http://127.0.0.1:PORT, as Chromium sends it) and a program (no Origin) get 101."""
        status, _, body = await http_exchange(self.port, handshake_request(Origin="https://evil.example"))
        self.assertEqual(status, 403)
        self.assertIn(b"evil.example", body)
        for origin, host in ((f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.port}"),
                             (f"http://localhost:{self.port}", f"localhost:{self.port}"), (None, "127.0.0.1")):
            with self.subTest(origin=origin):
                raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
                self.clients.append(raw)
                raw.writer.write(handshake_request(Origin=origin, Host=host))
                self.assertEqual((await read_response(raw.reader))[0], 101)

    async def test_02_a_rebound_name_gets_421_for_the_page_and_for_the_handshake(self):
        """RFC 9110 §15.5.20 DNS rebinding: a page whose name now resolves to 127.0.0.1 asks with its own Host (and Origin): the page and the handshake both get 421, Misdirected Request."""
        host = f"rebind.evil.example:{self.port}"
        status, _, _ = await http_exchange(self.port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        self.assertEqual(status, 421)
        status, _, _ = await http_exchange(self.port, handshake_request(Host=host, Origin=f"http://{host}"))
        self.assertEqual(status, 421)

    async def test_03_allowed_hosts_and_origins_are_answered(self):
        """Operational: --allowed-host adds a name the server answers (page and chat, its own origin then); --allow-origin adds another site's pages."""
        self.server.access = ws_server.access_rules(
            ws_server.ServerConfig(allowed_hosts=["chat.example"], allowed_origins=["https://app.example"]), self.port)
        status, _, _ = await http_exchange(self.port, b"GET / HTTP/1.1\r\nHost: chat.example\r\n\r\n")
        self.assertEqual(status, 200)
        for origin in ("http://chat.example", "https://app.example"):
            with self.subTest(origin=origin):
                raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
                self.clients.append(raw)
                raw.writer.write(handshake_request(Host="chat.example", Origin=origin))
                self.assertEqual((await read_response(raw.reader))[0], 101)
        status, _, _ = await http_exchange(self.port, handshake_request(Host="chat.example", Origin="https://evil.example"))
        self.assertEqual(status, 403)


class Test12TheAccessToken(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """--access-token: the chat needs it, in its cookie (set by a link) or as a Bearer token."""

    server_options = {"access_token": "s3cret-Token_1", "trace": True}

    async def test_01_without_the_token_the_handshake_gets_401_and_with_it_101(self):
        """RFC 6750 §3: a handshake without the token (or with a wrong one) gets 401 with WWW-Authenticate; the cookie or `Authorization: Bearer` opens the chat; our client sends the latter (access_token=)."""
        for headers in ({}, {"Cookie": "access=guess"}, {"Authorization": "Bearer guess"}):
            with self.subTest(headers=headers):
                status, response, body = await http_exchange(self.port, handshake_request(**headers))
                self.assertEqual(status, 401)
                self.assertEqual(response["www-authenticate"], 'Bearer realm="access"')
                self.assertNotIn(b"s3cret", body)
        raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(raw)
        raw.writer.write(handshake_request(Cookie="theme=dark; access=s3cret-Token_1"))
        self.assertEqual((await read_response(raw.reader))[0], 101)
        client = await self.client(access_token="s3cret-Token_1")
        await client.send("with a Bearer token")
        self.assertEqual(await asyncio.wait_for(client.recv(), TIMEOUT), "with a Bearer token")
        with self.assertRaises(ws_server.HandshakeFailed) as caught:
            await ws_server.connect(self.url)
        self.assertEqual(caught.exception.status, 401)

    async def test_02_the_link_sets_the_cookie_the_page_is_served_without_it_and_asks_with_access_check(self):
        """RFC 6265 §4.1: GET /?access=TOKEN answers 303 to / with the HttpOnly, SameSite=Strict cookie; the page itself needs no token (it holds no secret); GET /?access-check says 401 without the cookie and 204 with it, which the page uses to explain a refused handshake."""
        status, headers, _ = await http_exchange(self.port, b"GET /?access=s3cret-Token_1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual((status, headers["location"]), (303, "/"))
        self.assertEqual(headers["set-cookie"], "access=s3cret-Token_1; Path=/; HttpOnly; SameSite=Strict")
        status, _, _ = await http_exchange(self.port, b"GET /?access=guess HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(status, 401)
        status, _, body = await http_exchange(self.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertIn(b"access-check", body)
        check = b"GET /?access-check HTTP/1.1\r\nHost: localhost\r\n%s\r\n"
        self.assertEqual((await http_exchange(self.port, check % b""))[0], 401)
        self.assertEqual((await http_exchange(self.port, check % b"Cookie: access=s3cret-Token_1\r\n"))[0], 204)

    async def test_03_the_token_is_in_no_log_line_even_with_trace(self):
        """Operational: with --trace the request heads are logged, their Cookie and Authorization fields and the ?access= value left out: the token appears in no log line."""
        with self.assertLogs("ws_server", "INFO") as logs:
            await http_exchange(self.port, b"GET /?access=s3cret-Token_1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await http_exchange(self.port, b"GET /?x=1&access=s3cret-Token_1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await http_exchange(self.port, handshake_request(Cookie="access=s3cret-Token_1; theme=dark"))
            client = await self.client(access_token="s3cret-Token_1")
            await client.send("traced")
            await asyncio.wait_for(client.recv(), TIMEOUT)
        text = "\n".join(logs.output)
        self.assertIn("handshake request", text)
        self.assertIn("Authorization: [not shown]", text)
        self.assertIn("Cookie: [not shown]", text)
        self.assertNotIn("s3cret", text)

    def test_04_a_server_open_to_the_network_without_a_token_says_so_at_start(self):
        """Operational: bound to an address other than loopback and without --access-token, the server logs one line saying that anyone who can reach it may chat; with a token, or on loopback, it does not."""
        self.assertIn("without --access-token", ws_server.exposure_warning(ws_server.ServerConfig(host="0.0.0.0")))
        self.assertIn("https://app.example", ws_server.exposure_warning(
            ws_server.ServerConfig(host="::", allowed_origins=["https://app.example"])))
        self.assertIsNone(ws_server.exposure_warning(ws_server.ServerConfig(host="0.0.0.0", access_token="t")))
        self.assertIsNone(ws_server.exposure_warning(ws_server.ServerConfig(host="127.0.0.1")))
        self.assertIsNone(ws_server.exposure_warning(ws_server.ServerConfig(host="localhost")))


class Test13Caps(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """--max-clients and --max-clients-per-address: refused at the handshake with 503."""

    server_options = {"max_clients": 3, "max_clients_per_address": 2, "trusted_proxies": ["127.0.0.1"]}

    async def handshake(self, **headers) -> tuple[int, dict[str, str], bytes]:
        raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(raw)
        raw.writer.write(handshake_request(**headers))
        return await read_response(raw.reader)

    async def test_01_one_address_past_its_cap_and_everyone_past_the_total_get_503_with_retry_after(self):
        """RFC 9110 §15.6.4, §10.2.3 An address past --max-clients-per-address (2 here; the address that --trusted-proxy vouches for), then anyone past --max-clients (3), gets 503 with Retry-After and a one-line reason; a place freed is taken again."""
        for _ in range(2):
            self.assertEqual((await self.handshake(X_Forwarded_For="203.0.113.7"))[0], 101)
        status, headers, body = await self.handshake(X_Forwarded_For="203.0.113.7")
        self.assertEqual(status, 503)
        self.assertEqual(headers["retry-after"], str(ws_server.FULL_RETRY_AFTER))
        self.assertEqual(body.count(b"\n"), 1)
        self.assertEqual((await self.handshake(X_Forwarded_For="198.51.100.2"))[0], 101)
        await self.wait_for_clients(3)
        status, headers, body = await self.handshake()
        self.assertEqual(status, 503)
        self.assertIn(b"full", body)
        self.clients.pop(0).close()  # one of 203.0.113.7's leaves
        await self.wait_for_clients(2)
        self.assertEqual((await self.handshake(X_Forwarded_For="203.0.113.7"))[0], 101)

    async def test_02_loopback_is_not_capped_per_address(self):
        """Operational: clients on this machine (127.0.0.1: tests, benchmarks, a proxy without --trusted-proxy) are counted only against --max-clients."""
        for _ in range(3):
            self.assertEqual((await self.handshake())[0], 101)
        self.assertEqual(self.server.admission.by_address, {"127.0.0.1": 3})


class Test14PeerTextInTheLogs(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    server_options = {"trace": True, "trusted_proxies": ["127.0.0.1"]}

    async def test_01_no_log_line_carries_a_peers_control_characters(self):
        """Operational: refusal reasons with header values, --trace heads and frames, close reasons and X-Forwarded-For: control characters a peer sent are escaped, so none can forge a log line or command the terminal that shows the log."""
        forged = "x\x1b[31m\x85\r2026-12-06 00:00:00 forged"
        heads = [handshake_request(Origin="http://" + forged).replace(b"\r2026", b"2026"),
                 handshake_request(Sec_WebSocket_Version=forged.replace("\r", "")),
                 handshake_request(X_Forwarded_For="\x1b[2J, 1.2.3.4"),
                 ("GET /" + forged.replace("\r", "") + " HTTP/1.1\r\nHost: localhost\r\n\r\n").encode("latin-1"),
                 handshake_request(X_Note="a\x1b]52;c;Zm9v\x07b")]
        with self.assertLogs("ws_server", "INFO") as logs:
            for head in heads:
                await http_exchange(self.port, head.replace(b"\xc2\x85", b"\x85"))
            client = await self.client()
            await client.send("\x1b[31mred\x1b]0;title\x07")
            await asyncio.wait_for(client.recv(), TIMEOUT)
            await client.close(1000, "bye\n2026-12-06 00:00:00 forged \x1b[31m")
            await self.wait_for_clients(0)
        for line in logs.output:
            with self.subTest(line=line[:80]):
                self.assertNotRegex(line, "[\x00-\x08\x0b-\x1f\x7f-\x9f]")
                for continued in line.split("\n")[1:]:  # a traced head: every line of it indented
                    self.assertTrue(continued.startswith("    "), continued)


def flood(port: int, seconds: float, sent: list) -> None:
    """A raw client that sends 120-byte text messages as fast as the server takes them for
    `seconds`, and reads what it is sent as fast as it comes (so that it is never too slow
    itself): blocking sockets in threads, as an attacker's script would be."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(handshake_request())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head

    def read() -> None:
        try:
            while sock.recv(1 << 20):
                pass
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    frames = b"".join(ws_server.encode_frame(Opcode.TEXT, b"f" * 120, masking_key=os.urandom(4)) for _ in range(500))
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            sock.sendall(frames)
            sent[0] += 500
    except OSError:  # closed by the server (1008): an acceptable end too
        pass
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        reader.join(TIMEOUT)


class Test15AFlooder(unittest.IsolatedAsyncioTestCase):
    """--pace-bytes, --pace-timeout: a client that floods the chat is slowed to the pace of the
    clients that read it (`Pace`, II.5); none of those is dropped."""

    async def test_01_clients_that_keep_up_stay_connected_and_get_everything_while_a_raw_client_floods(self):
        """Operational: a raw client sends 120-byte messages as fast as it can for 2.5 s while three of our clients read as fast as they can: none of the three is dropped, each gets every message the server took, in the same number, and the flooder was held back by TCP (it could not send all it wanted)."""
        server, port = await asyncio.to_thread(start_process, "ws_server.py", "--ping-interval", "0")
        logs = LogReader(server)
        readers, tasks = [], []
        try:
            readers = [await ws_server.connect(f"ws://127.0.0.1:{port}/") for _ in range(3)]
            counts, closed = [0, 0, 0], [None, None, None]

            async def read(index: int, client: ws_server.Connection) -> None:
                try:
                    while await client.recv() != "end":
                        counts[index] += 1
                except ws_server.ConnectionClosed as error:
                    closed[index] = error.code

            tasks = [asyncio.create_task(read(i, client)) for i, client in enumerate(readers)]
            sent = [0]
            await asyncio.to_thread(flood, port, 2.5, sent)
            self.assertEqual(closed, [None, None, None])  # nobody dropped during the flood
            await readers[0].send("end")
            await asyncio.wait_for(asyncio.gather(*tasks), 4 * TIMEOUT)
            self.assertEqual(closed, [None, None, None])
            self.assertEqual(counts[0], counts[1])
            self.assertEqual(counts[1], counts[2])
            self.assertGreater(counts[0], 1000)
            self.assertNotIn("client too slow", logs.text)
        finally:
            for task in tasks:
                task.cancel()
            for client in readers:
                client.abort()
            await asyncio.to_thread(stop_process, server)

class Test16TheWirePanel(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """Operational (the chat page's "On the wire" panel, II.10): a second connection with the subprotocol `wire` gets a ticket; the chat connection that presents it has its frames reported there."""

    server_options = {"trusted_proxies": ["127.0.0.1"], "max_clients": 4}

    async def watcher(self, **headers) -> tuple[RawClient, str]:
        """A `wire` connection, as the page opens it (§4.2.2: the server chose `wire`); its ticket."""
        raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(raw)
        raw.writer.write(handshake_request(Sec_WebSocket_Protocol="wire", **headers))
        status, answer, rest = await read_response(raw.reader)
        self.assertEqual((status, answer.get("sec-websocket-protocol")), (101, "wire"))
        raw.events.extend(raw.receiver.feed(rest))  # (the ticket may come with the 101)
        first = await raw.next_event()
        return raw, json.loads(first.data)["ticket"]

    async def reports(self, raw: RawClient, until) -> list[dict]:
        """The reports a `wire` connection receives, up to the first for which `until` is true."""
        reports = []
        while not reports or not until(reports[-1]):
            event = await raw.next_event()
            self.assertIsInstance(event, Message)  # reports only: never a chat message, a ping or a close
            reports.append(json.loads(event.data))
        return reports

    async def test_01_the_chat_connection_with_the_ticket_has_its_handshake_frames_and_end_reported(self):
        """§4.2.2, §5.2, §5.3: with the ticket, a chat connection's handshake (its key and accept), its masked message and the server's echo of it, its close frames and its end are reported to the `wire` connection; the chat itself goes on as ever."""
        watcher, ticket = await self.watcher()
        chat = await ws_server.connect(f"{self.url}?wire={ticket}", compression=False)
        self.clients.append(chat)
        await chat.send("seen on the wire")
        self.assertEqual(await asyncio.wait_for(chat.recv(), TIMEOUT), "seen on the wire")
        await chat.close()
        reports = await self.reports(watcher, lambda report: report["type"] == "end")
        handshake, *frames, end = reports
        self.assertEqual(handshake["type"], "handshake")
        self.assertEqual(handshake["accept"], base64.b64encode(hashlib.sha1(
            (handshake["key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode())
        sent = next(f for f in frames if f["from"] == "client" and f["name"] == "TEXT")
        key, masked = bytes.fromhex(sent["maskingKey"]), bytes.fromhex(sent["payload"])
        self.assertEqual(bytes(b ^ key[i % 4] for i, b in enumerate(masked)), b"seen on the wire")
        echo = next(f for f in frames if f["from"] == "server" and f["name"] == "TEXT")
        self.assertEqual((echo["mask"], echo["text"]), (False, "seen on the wire"))
        self.assertEqual([(f["from"], f["close"]["code"]) for f in frames if f["name"] == "CLOSE"],
                         [("client", 1000), ("server", 1000)])
        self.assertEqual(end["code"], 1000)

    async def test_02_nobody_sees_the_frames_of_a_connection_without_its_ticket(self):
        """Operational: a chat connection with no ticket, or an unknown one, chats as usual and nothing of it is reported; only the connection that presents the ticket is."""
        watcher, ticket = await self.watcher()
        for url in (self.url, f"{self.url}?wire=not-a-ticket"):
            other = await self.client()
            await other.send(f"unseen via {url}")
            self.assertEqual(await asyncio.wait_for(other.recv(), TIMEOUT), f"unseen via {url}")
        unwatched = await self.client()
        await unwatched.close()  # (opened without the ticket: not watched either)
        watched = await ws_server.connect(f"{self.url}?wire={ticket}")
        self.clients.append(watched)
        await watched.send("watched")
        reports = await self.reports(watcher, lambda report: report.get("text") == "watched" and report["from"] == "server")
        self.assertEqual(reports[0]["type"], "handshake")
        self.assertEqual([r.get("text") for r in reports[1:]], ["watched", "watched"])

    async def test_03_a_ticket_from_another_address_is_not_honoured(self):
        """Operational: the ticket ties a chat connection to a `wire` connection from the same client address only (here the address --trusted-proxy vouches for): from another one, nothing is reported."""
        watcher, ticket = await self.watcher(X_Forwarded_For="198.51.100.1")
        stranger = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(stranger)
        stranger.writer.write(handshake_request(f"/?wire={ticket}", X_Forwarded_For="198.51.100.2"))
        self.assertEqual((await read_response(stranger.reader))[0], 101)
        stranger.send(Opcode.TEXT, b"not for the watcher")
        self.assertEqual((await stranger.next_event()).data, "not for the watcher")
        own = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(own)
        own.writer.write(handshake_request(f"/?wire={ticket}", X_Forwarded_For="198.51.100.1"))
        self.assertEqual((await read_response(own.reader))[0], 101)
        reports = await self.reports(watcher, lambda report: report["type"] == "handshake")
        self.assertEqual(len(reports), 1)  # the first report is its own connection's handshake
        self.assertIn("X-Forwarded-For: 198.51.100.1", reports[0]["request"])

    async def test_04_the_wire_connection_counts_against_max_clients(self):
        """Operational (--max-clients, 4 here): a `wire` connection takes a place like a chat connection; the next handshake past the cap is 503."""
        for _ in range(2):
            await self.watcher()
        for _ in range(2):
            await self.client()
        raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(raw)
        raw.writer.write(handshake_request())
        self.assertEqual((await read_response(raw.reader))[0], 503)

    async def test_05_at_shutdown_the_wire_connection_shows_the_chats_closing_handshake_then_closes_with_1001(self):
        """§7.1.2, §7.4.1 1001 (going away): at shutdown, a page's `wire` connection stays open until the chat connection it shows has ended, so that it reports the server's Close (1001), the client's answer and the end; then it is closed with 1001 itself, with the close handshake; a `wire` connection that shows nothing is closed at once."""
        watcher, ticket = await self.watcher()
        idle, _ = await self.watcher()
        chat = await ws_server.connect(f"{self.url}?wire={ticket}")
        self.clients.append(chat)
        await self.reports(watcher, lambda report: report["type"] == "handshake")
        stopping = asyncio.create_task(self.server.shutdown())
        while not isinstance(close := await idle.next_event(), Close):
            pass
        self.assertEqual(close, Close(CloseCode.GOING_AWAY, "server shutting down"))
        reader = asyncio.create_task(chat.recv())  # the client reads the server's Close and answers it
        reports = await self.reports(watcher, lambda report: report["type"] == "end")
        self.assertEqual([(r["from"], r["close"]["code"]) for r in reports if r.get("name") == "CLOSE"],
                         [("server", 1001), ("client", 1001)])
        self.assertEqual(reports[-1]["code"], 1001)
        self.assertEqual(await watcher.expect_close(), CloseCode.GOING_AWAY)
        for raw in (watcher, idle):
            raw.send(Opcode.CLOSE, ws_server.build_close_payload(CloseCode.GOING_AWAY))
            self.assertTrue(await raw.at_eof())
        await asyncio.wait_for(stopping, TIMEOUT + 2)
        with self.assertRaises(ws_server.ConnectionClosed):
            await reader

    async def test_06_a_wire_connection_is_never_watched_itself(self):
        """Operational: a second `wire` connection that presents the first one's ticket is not tapped: no report is ever reported (the first gets nothing about it)."""
        watcher, ticket = await self.watcher()
        raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(raw)
        raw.writer.write(handshake_request(f"/?wire={ticket}", Sec_WebSocket_Protocol="wire"))
        status, answer, rest = await read_response(raw.reader)
        self.assertEqual((status, answer.get("sec-websocket-protocol")), (101, "wire"))
        raw.events.extend(raw.receiver.feed(rest))
        self.assertEqual(json.loads((await raw.next_event()).data)["type"], "ticket")
        watched = await ws_server.connect(f"{self.url}?wire={ticket}")  # the control: this one is watched
        self.clients.append(watched)
        reports = await self.reports(watcher, lambda report: report["type"] == "handshake")
        self.assertEqual(len(reports), 1)
        self.assertNotIn("Sec-WebSocket-Protocol", reports[0]["request"])

    async def test_07_a_query_of_many_fields_is_read_without_error(self):
        """Operational: a chat request whose query has twenty fields besides the ticket (the server reads it for one) gets its 101 and chats, and nothing unexpected is logged."""
        watcher, ticket = await self.watcher()
        query = "&".join(f"p{i}={i}" for i in range(20))
        with self.assertLogs("ws_server", "INFO") as logs:
            chat = await ws_server.connect(f"{self.url}?{query}&wire={ticket}")
            self.clients.append(chat)
            await chat.send("many fields")
            self.assertEqual(await asyncio.wait_for(chat.recv(), TIMEOUT), "many fields")
        self.assertEqual([line for line in logs.output if "unexpected" in line or "Traceback" in line], [])
        reports = await self.reports(watcher, lambda report: report["type"] == "handshake")
        self.assertIn(f"GET /?{query}&wire={ticket} HTTP/1.1", reports[0]["request"])


class Test17TheWirePanelTurnedOff(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """Operational (--wire-rate 0): the server shows no wire."""

    server_options = {"wire_rate": 0}

    async def test_01_a_wire_connection_is_closed_at_once_saying_why_and_the_chat_goes_on(self):
        """§4.2.2, §7.1.2 With the panel off, the server still chooses `wire` (a browser fails a handshake whose answer names no subprotocol it asked for, §4.1, and could not say why), then closes the connection at once with 1000 and the reason WIRE_OFF, which the page shows; no ticket comes.  A chat connection with a ticket in its query chats as ever."""
        raw = RawClient(*await asyncio.open_connection("127.0.0.1", self.port))
        self.clients.append(raw)
        raw.writer.write(handshake_request(Sec_WebSocket_Protocol="wire"))
        status, answer, rest = await read_response(raw.reader)
        self.assertEqual((status, answer.get("sec-websocket-protocol")), (101, "wire"))
        raw.events.extend(raw.receiver.feed(rest))
        self.assertEqual(await raw.next_event(), Close(CloseCode.NORMAL_CLOSURE, ws_server.WIRE_OFF))
        chat = await self.client()
        other = await ws_server.connect(f"{self.url}?wire=anything")
        self.clients.append(other)
        await other.send("a chat message")
        self.assertEqual(await asyncio.wait_for(chat.recv(), TIMEOUT), "a chat message")

    def test_02_the_flag_sets_the_rate_and_refuses_a_negative_one(self):
        """Operational: --wire-rate N is parsed (50 by default, 0 for off), and a negative one exits 2 with a one-line reason."""
        parser = ws_server.build_parser()
        self.assertEqual(parser.parse_args([]).wire_rate, ws_server.DEFAULT_WIRE_RATE)
        self.assertEqual(parser.parse_args(["--wire-rate", "0"]).wire_rate, 0)
        process = subprocess.run([os.sys.executable, str(ROOT / "ws_server.py"), "--wire-rate", "-1"],
                                 capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(process.returncode, 2)
        self.assertIn("--wire-rate must be 0 (off) or more", process.stderr)


if __name__ == "__main__":
    unittest.main()
