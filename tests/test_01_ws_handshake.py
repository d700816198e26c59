"""Chapter 1: the WebSocket opening handshake (RFC 6455 §4), and the plain HTTP beside it."""

import os
import tempfile
import unittest
from pathlib import Path

import ws_server
from ws_server import HandshakeError, HTTPError, check_request, parse_request

# §1.2: the client's handshake, as the RFC shows it.
RFC_REQUEST = (b"GET /chat HTTP/1.1\r\n"
               b"Host: server.example.com\r\n"
               b"Upgrade: websocket\r\n"
               b"Connection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Origin: http://example.com\r\n"
               b"Sec-WebSocket-Protocol: chat, superchat\r\n"
               b"Sec-WebSocket-Version: 13")


def request_with(**changes: str | None) -> ws_server.Request:
    """The RFC's request with some headers replaced (None removes one)."""
    lines = RFC_REQUEST.split(b"\r\n")
    for name, value in changes.items():
        name = name.replace("_", "-").encode()
        lines = [line for line in lines if not line.lower().startswith(name.lower() + b":")]
        if value is not None:
            lines.append(name + b": " + value.encode())
    return parse_request(b"\r\n".join(lines))


class Test01OpeningHandshake(unittest.TestCase):

    def test_01_accept_key_of_the_rfc_example(self):
        # §1.3: "dGhlIHNhbXBsZSBub25jZQ==" + GUID, SHA-1, base64.
        self.assertEqual(ws_server.accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_02_rfc_request_is_answered_with_101_and_the_accept_key(self):
        handshake = check_request(parse_request(RFC_REQUEST), subprotocols=["chat"])
        self.assertEqual(ws_server.build_switching_protocols(handshake),
                         b"HTTP/1.1 101 Switching Protocols\r\n"
                         b"Upgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                         b"Sec-WebSocket-Protocol: chat\r\n\r\n")

    def test_03_upgrade_is_case_insensitive_and_connection_is_a_token_list(self):
        handshake = check_request(request_with(Upgrade="WebSocket", Connection="keep-alive, Upgrade"))
        self.assertEqual(handshake.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_04_subprotocol_header_is_omitted_when_nothing_matches(self):
        handshake = check_request(parse_request(RFC_REQUEST), subprotocols=["mqtt"])
        self.assertIsNone(handshake.subprotocol)
        self.assertNotIn(b"Sec-WebSocket-Protocol", ws_server.build_switching_protocols(handshake))

    def test_05_client_order_decides_among_supported_subprotocols(self):
        handshake = check_request(parse_request(RFC_REQUEST), subprotocols=["superchat", "chat"])
        self.assertEqual(handshake.subprotocol, "chat")

    def assertRefused(self, request, status, *, fragment="", **options):
        with self.assertRaises(HandshakeError) as caught:
            check_request(request, **options)
        self.assertEqual(caught.exception.status, status)
        self.assertIn(fragment, caught.exception.reason)
        return caught.exception

    def test_06_method_must_be_get(self):
        self.assertRefused(parse_request(RFC_REQUEST.replace(b"GET", b"POST", 1)), 400, fragment="GET")

    def test_07_http_version_must_be_1_1_or_later(self):
        self.assertRefused(parse_request(RFC_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0", 1)), 400)
        with self.assertRaises(HTTPError) as caught:
            parse_request(RFC_REQUEST.replace(b"HTTP/1.1", b"HTTP/2.0", 1))
        self.assertEqual(caught.exception.status, 505)

    def test_08_host_is_required_once(self):
        for head in (RFC_REQUEST.replace(b"Host: server.example.com\r\n", b""), RFC_REQUEST + b"\r\nHost: evil.example"):
            with self.assertRaises(HTTPError) as caught:
                parse_request(head)
            self.assertEqual(caught.exception.status, 400)

    def test_09_upgrade_websocket_is_required(self):
        self.assertRefused(request_with(Upgrade=None), 400, fragment="Upgrade")
        self.assertRefused(request_with(Upgrade="h2c"), 400, fragment="Upgrade")

    def test_10_connection_must_contain_upgrade(self):
        self.assertRefused(request_with(Connection="keep-alive"), 400, fragment="Connection")

    def test_11_key_must_be_16_bytes_of_base64(self):
        self.assertRefused(request_with(Sec_WebSocket_Key=None), 400, fragment="Key")
        self.assertRefused(request_with(Sec_WebSocket_Key="c2hvcnQ="), 400, fragment="16 bytes")
        self.assertRefused(request_with(Sec_WebSocket_Key="not base64!!!!!!!!!!!!=="), 400)

    def test_12_other_versions_get_426_with_the_version_we_speak(self):
        error = self.assertRefused(request_with(Sec_WebSocket_Version="8"), 426)
        self.assertIn(("Sec-WebSocket-Version", "13"), error.headers)
        self.assertIn(("Upgrade", "websocket"), error.headers)  # RFC 9110 §15.5.22
        self.assertRefused(request_with(Sec_WebSocket_Version=None), 400)

    def test_13_origin_outside_the_allow_list_gets_403(self):
        # §10.2, cross-site WebSocket hijacking: see ws_server.check_origin.
        self.assertRefused(parse_request(RFC_REQUEST), 403, allowed_origins=["http://chat.example"])
        check_request(parse_request(RFC_REQUEST), allowed_origins=["HTTP://EXAMPLE.COM"])

    def test_14_no_origin_is_a_program_not_a_page_and_is_accepted(self):
        check_request(request_with(Origin=None), allowed_origins=["http://chat.example"])


class Test02ParsingTheRequestHead(unittest.TestCase):

    def test_01_headers_sent_twice_are_joined_as_a_list(self):
        request = parse_request(RFC_REQUEST + b"\r\nSec-WebSocket-Protocol: v2")
        self.assertEqual(request.header("sec-websocket-protocol"), "chat, superchat, v2")

    def test_02_too_many_header_lines_get_431(self):
        head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101
        with self.assertRaises(HTTPError) as caught:
            parse_request(head, max_header_lines=100)
        self.assertEqual(caught.exception.status, 431)

    def test_03_obsolete_line_folding_is_refused(self):
        with self.assertRaises(HTTPError) as caught:
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n folded")
        self.assertEqual(caught.exception.status, 400)

    def test_04_malformed_lines_are_refused(self):
        for head in (b"GET /", b"GET / HTTP/1.1 extra", b"GET / HTTX/1.1", b"GET / HTTP/1.1\r\nno colon",
                     b"GET / HTTP/1.1\r\nbad name: x", b"\xff / HTTP/1.1"):
            with self.subTest(head=head), self.assertRaises(HTTPError) as caught:
                parse_request(head)
            self.assertEqual(caught.exception.status, 400)

    def test_05_parsing_is_linear_in_the_size_of_the_head(self):
        import time
        sizes, times = (2000, 16000), []
        for n in sizes:
            head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * n + b"\r\n" + b"Y: ,\r\n" * 50
            start = time.perf_counter()
            for _ in range(50):
                parse_request(head)
            times.append(time.perf_counter() - start)
        # 8 times the input; a quadratic parser would take about 64 times as long.
        self.assertLess(times[1], times[0] * 30)


class Test03StaticFiles(unittest.TestCase):
    """Plain GET and HEAD on the same port serve static/; nothing outside it, ever."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        base = Path(self.tmp.name)
        self.root = base / "static"
        self.root.mkdir()
        (self.root / "chat.html").write_text("<p>chat</p>")
        (self.root / "sub").mkdir()
        (self.root / "sub" / "a.css").write_text("p{}")
        (base / "secret.txt").write_text("secret")
        os.symlink(base / "secret.txt", self.root / "leak.txt")
        os.symlink(self.root / "chat.html", self.root / "alias.html")

    def tearDown(self):
        self.tmp.cleanup()

    def resolve(self, target):
        return ws_server.resolve_static_path(self.root, target.partition("?")[0], "chat.html")

    def status_of(self, target):
        try:
            self.resolve(target)
            return 200
        except PermissionError:
            return 403
        except FileNotFoundError:
            return 404

    def test_01_root_serves_the_index_and_files_map_to_paths(self):
        self.assertEqual(self.resolve("/").name, "chat.html")
        self.assertEqual(self.resolve("/sub/a.css?v=1").name, "a.css")
        self.assertEqual(self.resolve("/alias.html").name, "chat.html")  # a link inside is fine

    def test_02_traversal_attempts_get_404_or_403(self):
        attempts = {"/../secret.txt": 404, "/sub/../../secret.txt": 404, "/%2e%2e/secret.txt": 404,
                    "/%2E%2E%2fsecret.txt": 404, "/..%5csecret.txt": 404, "/sub\\..\\..\\secret.txt": 404,
                    "//etc/passwd": 404, "http://x/../secret.txt": 404, "*": 404, "/%00": 404,
                    "/leak.txt": 403, "/missing.html": 404, "/sub": 404}
        for target, status in attempts.items():
            with self.subTest(target=target):
                self.assertEqual(self.status_of(target), status)

    def test_03_content_type_and_length_head_and_405(self):
        get = parse_request(b"GET / HTTP/1.1\r\nHost: x")
        response = ws_server.static_response(self.root, get, "chat.html")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Content-Type: text/html; charset=utf-8\r\n", response)
        self.assertIn(b"Content-Length: 11\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\n<p>chat</p>"))
        head = ws_server.static_response(self.root, parse_request(b"HEAD / HTTP/1.1\r\nHost: x"), "chat.html")
        self.assertIn(b"Content-Length: 11\r\n", head)
        self.assertTrue(head.endswith(b"\r\n\r\n"))
        post = ws_server.static_response(self.root, parse_request(b"POST / HTTP/1.1\r\nHost: x"), "chat.html")
        self.assertTrue(post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"))
        self.assertIn(b"Allow: GET, HEAD\r\n", post)


if __name__ == "__main__":
    unittest.main()
