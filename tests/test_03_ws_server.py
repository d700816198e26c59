"""Chapter 3: the WebSocket chat server over loopback: real sockets, bounded waits."""

import asyncio
import os
import signal
import subprocess
import sys
import unittest
from pathlib import Path

import ws_server
from ws_server import Close, CloseCode, Limits, Message, Opcode, Pong
from tests.support import TIMEOUT, RawClient, ServerTestCase, handshake_request, http_exchange, read_response

ROOT = Path(__file__).resolve().parent.parent


class Test01HandshakeOverTheWire(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    server_options = {"allowed_origins": ["http://good.example"], "subprotocols": ["chat"],
                      "handshake_timeout": 0.5, "max_header_bytes": 1024}

    async def test_01_a_valid_handshake_gets_101_and_the_accept_key(self):
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
        status, headers, body = await http_exchange(self.port, handshake_request(Sec_WebSocket_Key="c2hvcnQ="))
        self.assertEqual(status, 400)
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(body, b"400 Sec-WebSocket-Key must be 16 bytes in base64\n")  # then EOF

    async def test_03_a_wrong_version_gets_426_naming_version_13(self):
        status, headers, _ = await http_exchange(self.port, handshake_request(Sec_WebSocket_Version="8"))
        self.assertEqual((status, headers["sec-websocket-version"]), (426, "13"))

    async def test_04_a_foreign_origin_gets_403(self):
        status, _, body = await http_exchange(self.port, handshake_request(Origin="http://evil.example"))
        self.assertEqual(status, 403)
        self.assertIn(b"evil.example", body)

    async def test_05_an_oversized_head_gets_431(self):
        status, _, _ = await http_exchange(self.port, handshake_request(X_Filler="x" * 2000))
        self.assertEqual(status, 431)

    async def test_06_a_slowloris_client_is_dropped_after_the_handshake_timeout(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        status, _, body = await read_response(reader)
        writer.close()
        self.assertEqual(status, 408)

    async def test_07_the_seed_page_url_with_no_path_is_upgraded(self):
        client = await ws_server.connect(f"ws://127.0.0.1:{self.port}")  # as the seed's page
        self.clients.append(client)
        await client.send("hi")
        self.assertEqual(await asyncio.wait_for(client.recv(), TIMEOUT), "hi")


class Test02StaticFilesOverTheWire(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    async def test_01_get_slash_serves_the_chat_page(self):
        status, headers, body = await http_exchange(self.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(int(headers["content-length"]), len(body))
        self.assertEqual(body, (ROOT / "static" / "chat.html").read_bytes())

    async def test_02_head_has_the_length_and_no_body(self):
        status, headers, body = await http_exchange(self.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(int(headers["content-length"]), (ROOT / "static" / "chat.html").stat().st_size)

    async def test_03_missing_files_traversal_and_other_methods(self):
        for request, status in ((b"GET /nope.html HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                                (b"GET /../ws_server.py HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                                (b"GET /%2e%2e/ws_server.py HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                                (b"GET /..%5cws_server.py HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                                (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405)):
            with self.subTest(request=request):
                self.assertEqual((await http_exchange(self.port, request))[0], status)


class Test03Chat(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    async def test_01_two_clients_chat_and_the_sender_gets_its_own_message(self):
        alice, bob = await self.client(), await self.client()
        await self.wait_for_clients(2)
        await alice.send("hello from alice")
        self.assertEqual(await asyncio.wait_for(bob.recv(), TIMEOUT), "hello from alice")
        self.assertEqual(await asyncio.wait_for(alice.recv(), TIMEOUT), "hello from alice")
        await bob.send(b"\x00\xffbinary")
        self.assertEqual(await asyncio.wait_for(alice.recv(), TIMEOUT), b"\x00\xffbinary")  # still bytes
        self.assertEqual(await asyncio.wait_for(bob.recv(), TIMEOUT), b"\x00\xffbinary")

    async def test_02_a_fragmented_message_with_a_ping_inside_is_pong_then_message(self):
        raw = await self.raw_client()
        raw.send(Opcode.TEXT, b"Hel", fin=False)
        raw.send(Opcode.PING, b"inside")
        raw.send(Opcode.CONTINUATION, b"lo")
        self.assertEqual(await raw.next_event(), Pong(b"inside"))
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, b"Hello"))

    async def test_03_an_unsolicited_pong_is_ignored(self):
        raw = await self.raw_client()
        raw.send(Opcode.PONG, b"nobody asked")
        raw.send(Opcode.TEXT, b"after")
        self.assertEqual(await raw.next_event(), Message(Opcode.TEXT, b"after"))

    async def test_04_a_client_closing_gets_its_code_echoed_and_the_server_ends_tcp_first(self):
        raw = await self.raw_client()
        raw.send(Opcode.CLOSE, b"\x0f\xa0bye")  # 4000
        self.assertEqual(await raw.next_event(), Close(4000, ""))
        self.assertTrue(await raw.at_eof())  # §7.1.1: the server closed TCP

    async def test_05_the_client_close_method_completes_the_handshake(self):
        client = await self.client()
        await client.close(CloseCode.GOING_AWAY, "done")
        self.assertEqual(client.state, ws_server.State.CLOSED)
        self.assertEqual(client.close_code, 1001)
        await self.wait_for_clients(0)


class Test04BadInputAndOthersKeepGoing(ServerTestCase, unittest.IsolatedAsyncioTestCase):
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
        await self.check(lambda raw: raw.send(Opcode.TEXT, b"x", mask=False), 1002)

    async def test_02_rsv_bits_1002(self):
        await self.check(lambda raw: raw.send(Opcode.TEXT, b"x", rsv=4), 1002)

    async def test_03_reserved_opcode_1002(self):
        await self.check(lambda raw: raw.send(0xB, b""), 1002)

    async def test_04_long_ping_1002(self):
        await self.check(lambda raw: raw.send(Opcode.PING, bytes(126)), 1002)

    async def test_05_continuation_first_1002(self):
        await self.check(lambda raw: raw.send(Opcode.CONTINUATION, b"x"), 1002)

    async def test_06_invalid_utf8_1007(self):
        await self.check(lambda raw: raw.send(Opcode.TEXT, b"\xff"), 1007)

    async def test_07_message_over_max_size_1009(self):
        await self.check(lambda raw: raw.send(Opcode.BINARY, bytes(1001)), 1009)

    async def test_08_one_byte_close_payload_1002(self):
        await self.check(lambda raw: raw.send(Opcode.CLOSE, b"\x03"), 1002)

    async def test_09_forbidden_close_code_1002(self):
        await self.check(lambda raw: raw.send(Opcode.CLOSE, (1005).to_bytes(2, "big")), 1002)

    async def test_10_close_reason_not_utf8_1007(self):
        await self.check(lambda raw: raw.send(Opcode.CLOSE, b"\x03\xe8\xff"), 1007)

    async def test_11_garbage_instead_of_frames_1002(self):
        await self.check(lambda raw: raw.send_raw(b"GET / HTTP/1.1\r\n\r\n"), 1002)


class Test05Backpressure(ServerTestCase, unittest.IsolatedAsyncioTestCase):
    """A client that stops reading is dropped with 1008; a reading client never notices."""

    limits = Limits(max_buffer=256 * 1024, ping_interval=0, close_timeout=1)

    async def test_01_a_client_that_stops_reading_is_dropped_while_the_reader_keeps_up(self):
        reader = await self.client()
        sleeper = await self.raw_client()  # connects, then never reads again
        sleeper.writer.transport.pause_reading()
        await self.wait_for_clients(2)
        sender = await self.raw_client()
        await self.wait_for_clients(3)
        sleeper_connection = next(c for c in self.server.room.clients
                                  if c.name.endswith(str(sleeper.writer.get_extra_info("sockname")[1])))
        payload = os.urandom(60_000)
        received = 0
        for _ in range(400):  # 24 MB: far more than socket buffers hold
            sender.send(Opcode.BINARY, payload)
            self.assertEqual(await asyncio.wait_for(reader.recv(), TIMEOUT), payload)
            received += 1
            if sleeper_connection.state is not ws_server.State.OPEN:
                break
        self.assertEqual(sleeper_connection.protocol.failure.code, CloseCode.POLICY_VIOLATION)
        self.assertLess(received, 400)
        await self.wait_for_clients(2)  # dropped within close_timeout
        sender.send(Opcode.TEXT, b"after the drop")
        while (message := await asyncio.wait_for(reader.recv(), TIMEOUT)) != "after the drop":
            self.assertEqual(message, payload)


class Test06Keepalive(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    limits = Limits(ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5)

    async def test_01_the_server_pings_and_a_client_that_answers_stays(self):
        client = await self.client()  # our client answers pings while it waits in recv()
        waiting = asyncio.create_task(client.recv())
        await asyncio.sleep(0.8)  # three pings and their timeouts go by
        raw = await self.raw_client()
        raw.send(Opcode.TEXT, b"still open")
        self.assertEqual(await asyncio.wait_for(waiting, TIMEOUT), "still open")
        self.assertEqual(client.state, ws_server.State.OPEN)

    async def test_02_a_client_that_sends_no_pong_is_dropped(self):
        raw = await self.raw_client()
        event = await raw.next_event()
        self.assertIsInstance(event, ws_server.Ping)
        self.assertEqual(await raw.expect_close(), CloseCode.INTERNAL_ERROR)
        self.assertTrue(await raw.at_eof(TIMEOUT))
        await self.wait_for_clients(0)


class Test07ShutdownAndTrace(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    async def test_01_shutdown_closes_every_client_with_1001(self):
        a, b = await self.client(), await self.client()
        await self.wait_for_clients(2)
        shutdown = asyncio.create_task(self.server.shutdown())
        for client in (a, b):
            with self.assertRaises(ws_server.ConnectionClosed) as caught:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            self.assertEqual(caught.exception.code, 1001)
        await asyncio.wait_for(shutdown, TIMEOUT)
        self.assertEqual(self.server.room.clients, set())

    async def test_02_trace_logs_every_frame_dissected(self):
        self.server.config.trace = True
        with self.assertLogs("ws_server", "INFO") as logs:
            client = await self.client()
            await client.send("traced")
            await asyncio.wait_for(client.recv(), TIMEOUT)
        lines = "\n".join(logs.output)
        self.assertIn("handshake request", lines)
        self.assertIn("<<< FIN=1 RSV=000 opcode=0x1 TEXT MASK=1 len=6 key=", lines)
        self.assertIn(">>> FIN=1 RSV=000 opcode=0x1 TEXT MASK=0 len=6 key=- payload=b'traced'", lines)


class Test08CommandLine(unittest.TestCase):

    def test_01_ctrl_c_closes_clients_with_1001_and_exits_0_without_traceback(self):
        process = subprocess.Popen([sys.executable, str(ROOT / "ws_server.py"), "--port", "0"],
                                   stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            line = process.stderr.readline()  # "... Serving the chat on http://127.0.0.1:PORT/ ..."
            port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

            async def client_sees_going_away():
                client = await ws_server.connect(f"ws://127.0.0.1:{port}/")
                process.send_signal(signal.SIGINT)
                with self.assertRaises(ws_server.ConnectionClosed) as caught:
                    await asyncio.wait_for(client.recv(), TIMEOUT)
                await client.close()
                return caught.exception.code

            self.assertEqual(asyncio.run(client_sees_going_away()), 1001)
            self.assertEqual(process.wait(TIMEOUT), 0)
            self.assertNotIn("Traceback", process.stderr.read())
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stderr.close()


if __name__ == "__main__":
    unittest.main()
