"""Chapter 2: the WebSocket opening handshake (RFC 6455 §4), from both sides, and the files
served beside it.  Pure functions and the RFC's own example bytes: no sockets."""

import base64
import hashlib
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import ws_server
from ws_server import (Handshake, HandshakeError, HandshakeFailed, HTTPError, check_request, check_response, parse_request,
                       parse_response)
from tests.support import fuzz, mutations

# §1.2: the client's handshake, as the RFC shows it.
RFC_REQUEST = (b"GET /chat HTTP/1.1\r\n"
               b"Host: server.example.com\r\n"
               b"Upgrade: websocket\r\n"
               b"Connection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Origin: http://example.com\r\n"
               b"Sec-WebSocket-Protocol: chat, superchat\r\n"
               b"Sec-WebSocket-Version: 13")
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="

# §1.3: the server's answer.
RFC_RESPONSE = (b"HTTP/1.1 101 Switching Protocols\r\n"
                b"Upgrade: websocket\r\n"
                b"Connection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                b"Sec-WebSocket-Protocol: chat")


def with_fields(head: bytes, changes: dict[str, str | None]) -> bytes:
    """`head` with some header fields replaced (a value of None removes one)."""
    lines = head.split(b"\r\n")
    for name, value in changes.items():
        name = name.replace("_", "-").encode()
        lines = [line for line in lines if not line.lower().startswith(name.lower() + b":")]
        if value is not None:
            lines.append(name + b": " + value.encode())
    return b"\r\n".join(lines)


def request_with(**changes: str | None) -> ws_server.Request:
    """The RFC's request with some headers replaced."""
    return parse_request(with_fields(RFC_REQUEST, changes))


def response_with(**changes: str | None) -> ws_server.Response:
    """The RFC's answer with some headers replaced."""
    return parse_response(with_fields(RFC_RESPONSE, changes))


class Test01TheClientsRequest(unittest.TestCase):
    """§4.1: what a client sends."""

    def test_01_the_client_sends_the_request_of_section_1_2(self):
        """§4.1: GET, Host, Upgrade, Connection, the key, Origin, the subprotocols, version 13."""
        request = ws_server.build_client_request("server.example.com", 80, "/chat", RFC_KEY,
                                                 origin="http://example.com", subprotocols=["chat", "superchat"])
        self.assertEqual(request, RFC_REQUEST + b"\r\n\r\n")

    def test_02_the_port_is_in_host_only_when_it_is_not_the_default(self):
        """§4.1 item 4: Host carries the port unless it is 80 for ws: (443 for wss:)."""
        self.assertIn(b"\r\nHost: example.com:8080\r\n", ws_server.build_client_request("example.com", 8080, "/", RFC_KEY))
        self.assertIn(b"\r\nHost: [::1]:8080\r\n", ws_server.build_client_request("::1", 8080, "/", RFC_KEY))
        self.assertIn(b"\r\nHost: example.com\r\n",
                      ws_server.build_client_request("example.com", 443, "/", RFC_KEY, secure=True))

    def test_03_a_websocket_url_gives_host_port_and_resource_name(self):
        """§3: ws-URI = "ws:" "//" host [ ":" port ] path [ "?" query ]; no fragment."""
        self.assertEqual(ws_server.parse_ws_url("ws://example.com/chat?room=1"), (False, "example.com", 80, "/chat?room=1"))
        self.assertEqual(ws_server.parse_ws_url("wss://[::1]:9000"), (True, "::1", 9000, "/"))
        for url in ("http://example.com/", "ws://example.com/#frag", "ws:///nohost", "ws://example.com:99999/"):
            with self.subTest(url=url), self.assertRaises(ValueError):
                ws_server.parse_ws_url(url)

    def test_04_the_key_is_16_random_bytes_from_secrets_in_base64_new_each_time(self):
        """§4.1 item 7: "a nonce consisting of a randomly selected 16-byte value that has been base64-encoded", selected "randomly for each connection": 16 bytes drawn from `secrets` (the OS's CSPRNG), a new draw for every key."""
        keys = {ws_server.new_key() for _ in range(10)}
        self.assertEqual(len(keys), 10)
        self.assertTrue(all(len(base64.b64decode(key)) == 16 for key in keys))
        with mock.patch.object(ws_server.secrets, "token_bytes", return_value=bytes(range(16))) as draw:
            self.assertEqual(ws_server.new_key(), base64.b64encode(bytes(range(16))).decode())
        draw.assert_called_once_with(16)


class Test02TheServersChecks(unittest.TestCase):
    """§4.2.1: the server reads the client's handshake; a refusal is a status and a reason."""

    def assertRefused(self, request, status, *, fragment="", **options):
        with self.assertRaises(HandshakeError) as caught:
            check_request(request, **options)
        self.assertEqual(caught.exception.status, status)
        self.assertIn(fragment, caught.exception.reason)
        return caught.exception

    def test_01_the_rfc_request_is_accepted(self):
        """§4.2.1: the request of §1.2 passes every check."""
        self.assertEqual(check_request(parse_request(RFC_REQUEST)).accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_02_the_method_must_be_get(self):
        """§4.2.1 item 1: "An HTTP/1.1 or higher GET request"."""
        self.assertRefused(parse_request(RFC_REQUEST.replace(b"GET", b"POST", 1)), 400, fragment="GET")

    def test_03_http_1_0_is_400_and_http_2_0_is_505(self):
        """§4.2.1 item 1: "HTTP/1.1 or higher": HTTP/1.0 is refused (400), HTTP/1.2 is read as 1.1 and accepted; an HTTP/2.0 request line is no HTTP/1.x at all and is refused before, by the request parser (RFC 9110 §15.6.6: 505)."""
        self.assertRefused(parse_request(RFC_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0", 1)), 400)
        self.assertIsInstance(check_request(parse_request(RFC_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.2", 1))), Handshake)
        with self.assertRaises(HTTPError) as caught:
            parse_request(RFC_REQUEST.replace(b"HTTP/1.1", b"HTTP/2.0", 1))
        self.assertEqual(caught.exception.status, 505)

    def test_04_upgrade_must_name_websocket_in_any_case(self):
        """§4.2.1 item 3: an Upgrade header field containing "websocket", case-insensitively."""
        self.assertRefused(request_with(Upgrade=None), 400, fragment="Upgrade")
        self.assertRefused(request_with(Upgrade="h2c"), 400, fragment="Upgrade")
        self.assertIsInstance(check_request(request_with(Upgrade="WebSocket")), Handshake)

    def test_05_connection_must_contain_the_upgrade_token(self):
        """§4.2.1 item 4: a Connection header field that includes the token "Upgrade"."""
        self.assertRefused(request_with(Connection="keep-alive"), 400, fragment="Connection")
        self.assertIsInstance(check_request(request_with(Connection="keep-alive, Upgrade")), Handshake)

    def test_06_the_key_must_be_16_bytes_of_base64(self):
        """§4.2.1 item 5: a Sec-WebSocket-Key that decodes to 16 bytes, sent once."""
        self.assertRefused(request_with(Sec_WebSocket_Key=None), 400, fragment="Key")
        self.assertRefused(request_with(Sec_WebSocket_Key="c2hvcnQ="), 400, fragment="16 bytes")
        self.assertRefused(request_with(Sec_WebSocket_Key="not base64!!!!!!!!!!!!=="), 400)
        self.assertRefused(parse_request(RFC_REQUEST + b"\r\nSec-WebSocket-Key: " + RFC_KEY.encode()), 400)

    def test_07_the_version_is_required(self):
        """§4.2.1 item 6: a Sec-WebSocket-Version header field."""
        self.assertRefused(request_with(Sec_WebSocket_Version=None), 400, fragment="Version")

    def test_08_a_handshake_that_announces_a_body_is_400(self):
        """RFC 9110 §9.3.1: content in a GET "has no generally defined semantics"; after a handshake's head come frames, so a body announced by Content-Length or Transfer-Encoding is refused (400), not guessed at; Content-Length: 0 announces none."""
        self.assertRefused(request_with(Content_Length="5"), 400, fragment="body")
        self.assertRefused(request_with(Transfer_Encoding="chunked"), 400, fragment="body")
        self.assertIsInstance(check_request(request_with(Content_Length="0")), Handshake)

    def test_09_a_websocket_request_is_told_from_a_plain_one_by_its_upgrade(self):
        """RFC 9110 §7.8: a server may ignore an Upgrade naming another protocol (h2c): that request is read as plain HTTP, not as a WebSocket handshake."""
        self.assertTrue(ws_server.is_websocket_request(parse_request(RFC_REQUEST)))
        self.assertFalse(ws_server.is_websocket_request(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c")))

    def test_10_either_upgrade_websocket_or_a_key_makes_a_handshake_and_each_alone_gets_400(self):
        """§4.2.1 A request that asks for a WebSocket, by `Upgrade: websocket` (in any case, in a list) or by a Sec-WebSocket-Key, is read as a handshake, so that one missing the other is refused with 400 rather than served a page; one with neither is plain HTTP."""
        upgrade_only = request_with(Sec_WebSocket_Key=None, Upgrade="h2c, WebSocket")
        key_only = request_with(Upgrade=None)
        neither = request_with(Upgrade=None, Sec_WebSocket_Key=None)
        self.assertTrue(ws_server.is_websocket_request(upgrade_only))
        self.assertTrue(ws_server.is_websocket_request(key_only))
        self.assertFalse(ws_server.is_websocket_request(neither))
        self.assertRefused(upgrade_only, 400, fragment="Sec-WebSocket-Key")
        self.assertRefused(key_only, 400, fragment="Upgrade")

    def test_11_a_key_with_a_character_outside_base64_is_400(self):
        """§4.2.1 item 5: the key is base64 (RFC 4648 §4); a decoder that skipped a character outside its alphabet would read "dGhlIHNh!bXBsZSBub25jZQ==" as the RFC's 16 bytes, but it is not base64 and is refused with 400."""
        self.assertRefused(request_with(Sec_WebSocket_Key="dGhlIHNh!bXBsZSBub25jZQ=="), 400, fragment="16 bytes")
        self.assertRefused(request_with(Sec_WebSocket_Key="dGhlIHNh bXBsZSBub25jZQ=="), 400, fragment="16 bytes")

    def test_12_compression_is_negotiated_only_when_the_server_enables_it(self):
        """RFC 7692 §5: the server answers an offer of permessage-deflate only if it speaks it; `check_request` declines every offer unless called with compression=True (the server's --compression), and then accepts this one."""
        offering = request_with(Sec_WebSocket_Extensions="permessage-deflate")
        self.assertIsNone(check_request(offering).deflate)
        self.assertIsNone(check_request(offering, compression=False).deflate)
        self.assertIsNotNone(check_request(offering, compression=True).deflate)


class Test03TheServersAnswer(unittest.TestCase):
    """§4.2.2: 101 Switching Protocols, and the proof that the server read the request."""

    def test_01_the_accept_key_of_the_rfc_example(self):
        """§1.3: base64(SHA-1("dGhlIHNhbXBsZSBub25jZQ==" + GUID)) is "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="."""
        self.assertEqual(ws_server.accept_key(RFC_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_02_the_rfc_request_is_answered_with_the_rfc_answer(self):
        """§4.2.2 item 5: the status line, Upgrade, Connection, Sec-WebSocket-Accept and the subprotocol."""
        handshake = check_request(parse_request(RFC_REQUEST), subprotocols=["chat"])
        self.assertEqual(ws_server.build_switching_protocols(handshake), RFC_RESPONSE + b"\r\n\r\n")

    def test_03_the_first_offered_subprotocol_the_server_speaks_is_chosen(self):
        """§4.2.2 /subprotocol/: one of the values the client offered that the server speaks; this server takes the client's first (§4.1 item 10: "ordered by preference") and compares names exactly."""
        self.assertEqual(check_request(parse_request(RFC_REQUEST), subprotocols=["superchat", "chat"]).subprotocol, "chat")
        self.assertIsNone(check_request(parse_request(RFC_REQUEST), subprotocols=["CHAT"]).subprotocol)

    def test_04_no_subprotocol_header_when_nothing_matches(self):
        """§4.2.2 /subprotocol/: "null" means the header is left out."""
        handshake = check_request(parse_request(RFC_REQUEST), subprotocols=["mqtt"])
        self.assertNotIn(b"Sec-WebSocket-Protocol", ws_server.build_switching_protocols(handshake))


class Test04Versions(unittest.TestCase):

    def test_01_another_version_gets_426_naming_version_13_and_websocket(self):
        """§4.4 and RFC 9110 §15.5.22: 426 with Sec-WebSocket-Version: 13 and Upgrade: websocket (and, RFC 9112 §9.6, still Connection: close)."""
        with self.assertRaises(HandshakeError) as caught:
            check_request(request_with(Sec_WebSocket_Version="8"))
        error = caught.exception
        self.assertEqual(error.status, 426)
        response = ws_server.build_error_response(error.status, error.reason, error.headers)
        self.assertTrue(response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"))
        for field in (b"Sec-WebSocket-Version: 13", b"Upgrade: websocket", b"Connection: Upgrade, close"):
            self.assertIn(b"\r\n" + field + b"\r\n", response)
        self.assertEqual(response.count(b"\r\nConnection:"), 1)


def allowing(*origins: str) -> ws_server.AccessRules:
    """The rules of a server on the RFC's host that allows these origins (--allow-origin)."""
    return ws_server.AccessRules(loopback=False, port=80, allowed_origins=origins)


class Test05TheOrigin(unittest.TestCase):
    """§10.2: cross-site WebSocket hijacking, and the Origin allow-list that stops it."""

    def test_01_an_origin_outside_the_allow_list_gets_403(self):
        """§10.2: a server that only accepts some origins refuses the others (403)."""
        with self.assertRaises(HTTPError) as caught:
            check_request(parse_request(RFC_REQUEST), access=allowing("http://chat.example"))
        self.assertEqual(caught.exception.status, 403)

    def test_02_origins_compare_case_insensitively(self):
        """RFC 6454 §4, §6.2: an origin's scheme and host are lower case in its serialization, so case does not tell two apart."""
        self.assertIsInstance(check_request(parse_request(RFC_REQUEST), access=allowing("HTTP://EXAMPLE.COM")), Handshake)
        self.assertIsInstance(check_request(request_with(Origin="http://Example.COM"), access=allowing("http://example.com")),
                              Handshake)

    def test_03_no_origin_is_a_program_not_a_page_and_is_accepted(self):
        """§10.2: browsers always send Origin; a request without one hijacks nobody and is accepted."""
        self.assertIsInstance(check_request(request_with(Origin=None), access=allowing("http://chat.example")), Handshake)


    def test_04_the_server_admits_its_own_pages_and_the_allowed_ones_by_default(self):
        """§10.2 With the server's AccessRules (II.9), the rule needs no list: a page of the server's own origin (scheme and the Host it answered) and an --allow-origin one are admitted; any other origin is 403; no Origin, a program, is admitted."""
        access = ws_server.AccessRules(loopback=True, port=8080, allowed_origins=("https://app.example",))
        for origin in ("http://localhost:8080", "https://app.example", None):
            with self.subTest(origin=origin):
                request = request_with(Host="localhost:8080", Origin=origin)
                self.assertIsInstance(check_request(request, access=access), Handshake)
        with self.assertRaises(HTTPError) as caught:
            check_request(request_with(Host="localhost:8080", Origin="https://evil.example"), access=access)
        self.assertEqual(caught.exception.status, 403)


class Test06TheClientChecksTheAnswer(unittest.TestCase):
    """§4.1: the client fails the connection unless the answer is a valid acceptance."""

    def assertFails(self, response, fragment, **offered):
        options = {"offered_subprotocols": ["chat", "superchat"], **offered}
        with self.assertRaises(HandshakeFailed) as caught:
            check_response(response, RFC_KEY, **options)
        self.assertIn(fragment, caught.exception.reason)
        return caught.exception

    def test_01_the_rfc_answer_is_accepted_with_its_subprotocol(self):
        """§4.1: the answer of §1.3, to the request of §1.2."""
        self.assertEqual(check_response(parse_response(RFC_RESPONSE), RFC_KEY, ["chat", "superchat"]).subprotocol, "chat")

    def test_02_any_status_but_101_fails(self):
        """§4.1 item 1: "If the status code received from the server is not 101 ..." (and says which)."""
        failure = self.assertFails(parse_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0"), "403")
        self.assertEqual(failure.status, 403)

    def test_03_upgrade_and_connection_must_be_in_the_answer(self):
        """§4.1 items 2 and 3: Upgrade: websocket and Connection: Upgrade, case-insensitively."""
        self.assertFails(response_with(Upgrade=None), "Upgrade")
        self.assertFails(response_with(Connection="close"), "Connection")
        self.assertIsInstance(check_response(response_with(Upgrade="WebSocket", Connection="upgrade"), RFC_KEY, ["chat"]),
                              Handshake)

    def test_04_the_accept_value_must_match_our_key(self):
        """§4.1 item 4: Sec-WebSocket-Accept is base64(SHA-1(key + GUID)) of the key we sent."""
        self.assertFails(response_with(Sec_WebSocket_Accept=ws_server.accept_key(ws_server.new_key())), "Accept")
        self.assertFails(response_with(Sec_WebSocket_Accept=None), "Accept")

    def test_05_an_extension_that_was_not_offered_fails(self):
        """§4.1 item 5: an extension "not present in the client's handshake" fails the connection."""
        self.assertFails(response_with(Sec_WebSocket_Extensions="permessage-deflate"), "permessage-deflate")

    def test_06_a_subprotocol_that_was_not_offered_fails(self):
        """§4.1 item 6: a subprotocol "that was not present in the client's handshake"."""
        self.assertFails(response_with(Sec_WebSocket_Protocol="mqtt"), "mqtt")
        self.assertFails(parse_response(RFC_RESPONSE), "chat", offered_subprotocols=[])

    def test_07_an_upgrade_value_other_than_websocket_alone_fails(self):
        """§4.1 item 2: an Upgrade "that is not an ASCII case-insensitive match for the value "websocket"" fails the connection, a list with another protocol in it too."""
        for value in ("websocket, h2c", "h2c", "websocket/13", ""):
            with self.subTest(value=value):
                self.assertFails(response_with(Upgrade=value), "Upgrade")


class Test07StaticFiles(unittest.TestCase):
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

    def status_of(self, target: str) -> int:
        head = f"GET {target} HTTP/1.1\r\nHost: x".encode("latin-1")
        response = ws_server.static_response(self.root, parse_request(head), "chat.html")
        return int(response[9:12])

    def test_01_the_root_serves_the_index_and_paths_map_to_files(self):
        """RFC 9110 §9.3.1: GET / is the page; a query does not change the file."""
        resolve = ws_server.resolve_static_path
        self.assertEqual(resolve(self.root, "/", "chat.html").name, "chat.html")
        self.assertEqual(resolve(self.root, "/sub/a.css", "chat.html").name, "a.css")
        self.assertEqual(resolve(self.root, "/alias.html", "chat.html").name, "chat.html")  # a link inside is fine
        self.assertEqual(self.status_of("/sub/a.css?v=1"), 200)

    def test_02_traversal_attempts_get_404_and_a_link_out_403(self):
        """RFC 3986 §3.3, §5.2.4: dot-segments, percent-encoded or not, and backslashes never lead out of the root (404); a symbolic link that leads out is 403; a missing file or a directory is 404."""
        attempts = {"/../secret.txt": 404, "/sub/../../secret.txt": 404, "/%2e%2e/secret.txt": 404,
                    "/%2E%2E%2fsecret.txt": 404, "/..%5csecret.txt": 404, "/sub\\..\\..\\secret.txt": 404,
                    "//etc/passwd": 404, "http://x/../secret.txt": 404, "/%00": 404,
                    "/leak.txt": 403, "/missing.html": 404, "/sub": 404}
        for target, status in attempts.items():
            with self.subTest(target=target):
                self.assertEqual(self.status_of(target), status)

    def test_03_a_path_that_is_not_utf8_once_decoded_names_no_file(self):
        """RFC 3986 §2.5: `%ff` and the overlong `%c0%ae` (a ".") are no UTF-8 names: 404; so are a lone `%` and `//[`."""
        for target in ("/%ff", "/%c0%ae%c0%ae/secret.txt", "//[", "/%"):
            with self.subTest(target=target):
                self.assertEqual(self.status_of(target), 404)

    def test_04_content_type_and_length_head_and_405(self):
        """RFC 9110 §8.3, §8.6, §9.3.2, §15.5.6: the type, the length, HEAD, and 405 with Allow."""
        get = ws_server.static_response(self.root, parse_request(b"GET / HTTP/1.1\r\nHost: x"), "chat.html")
        self.assertTrue(get.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Content-Type: text/html; charset=utf-8\r\n", get)
        self.assertIn(b"Content-Length: 11\r\n", get)
        self.assertTrue(get.endswith(b"\r\n\r\n<p>chat</p>"))
        head = ws_server.static_response(self.root, parse_request(b"HEAD / HTTP/1.1\r\nHost: x"), "chat.html")
        self.assertIn(b"Content-Length: 11\r\n", head)
        self.assertTrue(head.endswith(b"\r\n\r\n"))
        post = ws_server.static_response(self.root, parse_request(b"POST / HTTP/1.1\r\nHost: x"), "chat.html")
        self.assertTrue(post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"))
        self.assertIn(b"Allow: GET, HEAD\r\n", post)

    def test_05_hidden_files_and_folders_are_404(self):
        """Operational (RFC 3986 §3.3 segments): a segment that starts with a dot names a hidden file (`.env`, `.git/config`): 404, percent-encoded or not, and through a symbolic link too."""
        (self.root / ".env").write_text("SECRET=1")
        (self.root / ".git").mkdir()
        (self.root / ".git" / "config").write_text("[core]")
        (self.root / "sub" / ".hidden").write_text("x")
        os.symlink(self.root / ".env", self.root / "env.txt")  # a visible name for a hidden file
        for target in ("/.env", "/.git/config", "/sub/.hidden", "/%2eenv", "/%2Egit/config", "/env.txt", "/.git/"):
            with self.subTest(target=target):
                self.assertEqual(self.status_of(target), 404)
        self.assertEqual(self.status_of("/sub/a.css"), 200)  # a dot inside a name is fine

    @staticmethod
    def headers_of(response: bytes) -> dict[str, str]:
        return {name: values[-1] for name, values in parse_response(response.split(b"\r\n\r\n")[0]).headers.items()}

    def test_06_every_static_answer_carries_the_security_headers(self):
        """Fetch "X-Content-Type-Options" nosniff, Referrer Policy §3.1 no-referrer, CSP Level 3 frame-ancestors 'none' and RFC 7034 X-Frame-Options DENY: on every static answer (a page, a stylesheet, 404, 403, 405)."""
        for method, target, status in (("GET", "/", 200), ("HEAD", "/", 200), ("GET", "/sub/a.css", 200),
                                       ("GET", "/missing", 404), ("GET", "/leak.txt", 403), ("POST", "/", 405)):
            with self.subTest(method=method, target=target):
                head = f"{method} {target} HTTP/1.1\r\nHost: x".encode()
                response = ws_server.static_response(self.root, parse_request(head), "chat.html")
                self.assertEqual(int(response[9:12]), status)
                headers = self.headers_of(response)
                self.assertEqual(headers["x-content-type-options"], "nosniff")
                self.assertEqual(headers["referrer-policy"], "no-referrer")
                self.assertEqual(headers["x-frame-options"], "DENY")
                self.assertIn("frame-ancestors 'none'", headers["content-security-policy"])
                self.assertTrue(headers["content-security-policy"].startswith("default-src 'none'"))

    def test_07_the_pages_csp_allows_their_own_inline_code_by_hash_and_connections_to_their_origin(self):
        """CSP Level 3 §2.3.1 hash-source: each page's own inline <script> and <style>, by the SHA-256 of their text, and nothing else runs ('unsafe-inline' never); §6.7.2.8 connect-src 'self' covers the page's WebSocket, EventSource and fetch."""
        for page in ("chat.html", "sse.html"):
            with self.subTest(page=page):
                head = f"GET /{page} HTTP/1.1\r\nHost: x".encode()
                response = ws_server.static_response(ws_server.STATIC_DIR, parse_request(head), "chat.html")
                policy = dict(directive.split(" ", 1) for directive in self.headers_of(response)["content-security-policy"].split("; "))
                text = (ws_server.STATIC_DIR / page).read_text(encoding="utf-8")
                for kind in ("script", "style"):
                    inline = text.split(f"<{kind}>")[1].split(f"</{kind}>")[0]
                    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
                    self.assertEqual(policy[f"{kind}-src"], f"'sha256-{digest}'")
                self.assertEqual(policy["connect-src"], "'self'")
                self.assertEqual(policy["default-src"], "'none'")
                self.assertNotIn("unsafe", " ".join(policy.values()))

    def test_08_the_hash_is_of_the_text_the_browser_parses(self):
        """HTML §13.2.3.5 CR LF and CR become LF before the parser sees a script: a page saved with CRLF line ends gets the hash of its LF text; an edited page gets a new hash."""
        page = "<style>p{}\n</style><script>\nlet a = 1;\n</script>"
        crlf = page.replace("\n", "\r\n")
        self.assertEqual(ws_server.content_security_policy(crlf.encode()), ws_server.content_security_policy(page.encode()))
        edited = ws_server.content_security_policy(page.replace("1", "2").encode())
        self.assertNotEqual(edited, ws_server.content_security_policy(page.encode()))
        self.assertIn("script-src 'none'", ws_server.content_security_policy(b"<p>no script</p>"))


class Test08Fuzz(unittest.TestCase):
    """Seeded random and mutated input for the pure functions of this chapter."""

    def test_01_the_client_reads_any_answer_without_raising_anything_but_handshake_failed(self):
        """§4.1 Whatever a server answers, the client accepts it or fails the connection, nothing else."""
        fuzz(self, lambda head: check_response(parse_response(head), RFC_KEY, ["chat"]),
             mutations(4001, [RFC_RESPONSE, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3"]), (HandshakeFailed,))

    def test_02_any_path_maps_to_a_file_inside_the_root_or_to_no_file(self):
        """Operational (fuzzing): whatever the path (RFC 3986 §3.3), the answer is a file under the root, or FileNotFoundError/PermissionError."""
        root = ws_server.STATIC_DIR

        def resolve(path: bytes) -> None:
            found = ws_server.resolve_static_path(root, path.decode("latin-1"), "chat.html")
            self.assertIn(root, found.parents)
        fuzz(self, resolve, mutations(3986, [b"/chat.html", b"/%2e%2e/ws_server.py", b"/../sse.html", b"/sse.html?x"]),
             (FileNotFoundError, PermissionError))



def head(*lines: str) -> ws_server.Request:
    return parse_request(("\r\n".join(["GET / HTTP/1.1", *lines]) + "\r\n").encode())


class Test09WhoMayConnect(unittest.TestCase):
    """`AccessRules` (ws_server.py II.9), shared by both servers: Host, Origin, credentials."""

    def test_01_on_loopback_only_loopback_hosts_are_answered(self):
        """RFC 9110 §15.5.20 A server on loopback answers localhost, 127.0.0.0/8 and [::1] (on any port: a proxy on this machine passes on the browser's Host), and 421 to any other Host: a page whose name was rebound to 127.0.0.1 (DNS rebinding) is refused."""
        rules = ws_server.AccessRules(loopback=True, port=8080)
        for host in ("localhost:8080", "localhost", "127.0.0.1:8080", "[::1]:8080", "app.localhost:8080", "localhost:9999"):
            with self.subTest(host=host):
                rules.check_host(head(f"Host: {host}"))
        for host in ("evil.example:8080", "evil.example", "10.0.0.1:8080", "127.0.0.1.evil.example"):
            with self.subTest(host=host), self.assertRaises(HTTPError) as caught:
                rules.check_host(head(f"Host: {host}"))
            self.assertEqual(caught.exception.status, 421)

    def test_02_allowed_hosts_add_names_and_any_host_is_answered_on_a_public_address_without_them(self):
        """Operational: --allowed-host adds names (a port, if given, must match); a server bound to another address with no --allowed-host answers any Host."""
        rules = ws_server.AccessRules(loopback=False, port=8080, allowed_hosts=("chat.example", "other.example:8443"))
        for host in ("chat.example", "chat.example:443", "other.example:8443", "localhost:8080"):
            with self.subTest(host=host):
                rules.check_host(head(f"Host: {host}"))
        for host in ("other.example:443", "evil.example"):
            with self.subTest(host=host), self.assertRaises(HTTPError):
                rules.check_host(head(f"Host: {host}"))
        ws_server.AccessRules(loopback=False, port=8080).check_host(head("Host: anything.example"))

    def test_03_an_origin_must_be_the_servers_own_or_allowed_and_no_origin_is_not_a_browser(self):
        """§10.2 and Fetch "CORS protocol": a request with an Origin is a browser page's, admitted only from this server's own origin (scheme and checked Host) or --allow-origin (403 otherwise); a request without one is a program's, and admitted."""
        rules = ws_server.AccessRules(loopback=True, port=8080, allowed_origins=("https://app.example",))
        for origin in ("http://localhost:8080", "https://localhost:8080", "https://app.example", None):
            with self.subTest(origin=origin):
                rules.check_origin(head("Host: localhost:8080", *([f"Origin: {origin}"] if origin else [])))
        for origin in ("http://evil.example", "http://localhost:9999", "null", "http://["):
            with self.subTest(origin=origin), self.assertRaises(HTTPError) as caught:
                rules.check_origin(head("Host: localhost:8080", f"Origin: {origin}"))
            self.assertEqual(caught.exception.status, 403)

    def test_04_the_access_token_comes_in_its_cookie_or_as_a_bearer_token_and_a_link_sets_the_cookie(self):
        """RFC 6265 §4.1 and RFC 6750 §2.1: with an access token, a request needs it in the `access` cookie or as `Authorization: Bearer` (401 with WWW-Authenticate otherwise); `?access=TOKEN` answers 303 with an HttpOnly, SameSite=Strict cookie, and a wrong token there is 401."""
        rules = ws_server.AccessRules(loopback=True, port=8080, access_token="s3cret")
        for line in ("Cookie: theme=dark; access=s3cret", "Authorization: Bearer s3cret"):
            with self.subTest(line=line):
                rules.check_access(head("Host: localhost", line))
        for lines in ((), ("Cookie: access=guess",), ("Authorization: Bearer guess",), ("Cookie: ;;=;access",)):
            with self.subTest(lines=lines), self.assertRaises(HTTPError) as caught:
                rules.check_access(head("Host: localhost", *lines))
            self.assertEqual(caught.exception.status, 401)
            self.assertIn(("WWW-Authenticate", 'Bearer realm="access"'), caught.exception.headers)
        answer = rules.access_link_answer(parse_request(b"GET /chat?access=s3cret HTTP/1.1\r\nHost: localhost"), secure=True)
        self.assertTrue(answer.startswith(b"HTTP/1.1 303 "))
        self.assertIn(b"Location: /chat\r\n", answer)
        self.assertIn(b"Set-Cookie: access=s3cret; Path=/; HttpOnly; SameSite=Strict; Secure\r\n", answer)
        with self.assertRaises(HTTPError) as caught:
            rules.access_link_answer(parse_request(b"GET /?access=guess HTTP/1.1\r\nHost: localhost"), secure=False)
        self.assertEqual(caught.exception.status, 401)
        self.assertIsNone(rules.access_link_answer(parse_request(b"GET /?other=1 HTTP/1.1\r\nHost: localhost"), False))
        self.assertIsNone(ws_server.AccessRules(True, 8080).access_link_answer(
            parse_request(b"GET /?access=x HTTP/1.1\r\nHost: localhost"), False))



class Test10TheChatServersMachinery(unittest.TestCase):
    """Part II pieces of the chat server's rules, without a socket."""

    def test_01_the_client_sends_the_access_token_as_a_bearer_token(self):
        """RFC 6750 §2.1, §4.1 item 12: connect(access_token=...) adds `Authorization: Bearer TOKEN` to the handshake."""
        request = ws_server.build_client_request("localhost", 8080, "/", "dGhlIHNhbXBsZSBub25jZQ==", access_token="t0k")
        self.assertIn(b"\r\nAuthorization: Bearer t0k\r\n", request)
        self.assertNotIn(b"Authorization", ws_server.build_client_request("localhost", 8080, "/", "dGhlIHNhbXBsZSBub25jZQ=="))

    def test_02_a_traced_head_is_escaped_indented_and_keeps_no_credential(self):
        """Operational: --trace logs a head one indented line per field, control characters escaped, Cookie, Authorization and ?access= left out."""
        head = ("GET /?a=1&access=s3cret HTTP/1.1\r\nHost: localhost\r\nCookie: access=s3cret\r\n"
                "authorization: Bearer s3cret\r\nX-Evil: a\x1b[31m\x85b")
        traced = ws_server.trace_head(head)
        self.assertEqual(traced, "\n    GET /?a=1&access=[not shown] HTTP/1.1\n    Host: localhost\n    Cookie: [not shown]"
                                 "\n    authorization: [not shown]\n    X-Evil: a\\x1b[31m\\x85b")

    def test_03_a_chat_stream_entry_is_checked_before_it_is_a_message(self):
        """§8.1, §5.6 An entry of the chat's Redis stream is a message only with type text (valid UTF-8) or binary, its data, and at most --max-size bytes; ValueError says what is wrong otherwise."""
        self.assertEqual(ws_server.chat_message({b"type": b"text", b"data": "é".encode()}),
                         ws_server.Message(ws_server.Opcode.TEXT, "é".encode()))
        self.assertEqual(ws_server.chat_message({b"type": b"binary", b"data": b"\xff"}), ws_server.Message(ws_server.Opcode.BINARY, b"\xff"))
        for fields, why in (({b"type": b"text", b"data": b"\xff"}, "UTF-8"), ({b"type": b"text"}, "no data"),
                            ({b"data": b"x"}, "no type"), ({b"type": b"html", b"data": b"x"}, "neither"),
                            ({b"type": b"binary", b"data": bytes(11)}, "--max-size")):
            with self.subTest(fields=fields), self.assertRaises(ValueError) as caught:
                ws_server.chat_message(fields, max_size=10)
            self.assertIn(why, str(caught.exception))

    def test_04_admission_counts_by_address_and_spares_loopback(self):
        """Operational: --max-clients-per-address caps one address (not loopback), --max-clients everyone; each refusal is 503 with Retry-After."""
        admission = ws_server.Admission(max_clients=4, per_address=2)
        for address in ("203.0.113.7", "203.0.113.7", "127.0.0.1"):
            admission.check(address)
            admission.enter(address)
        with self.assertRaises(HTTPError) as caught:
            admission.check("203.0.113.7")
        self.assertEqual((caught.exception.status, caught.exception.headers), (503, [("Retry-After", "5")]))
        admission.check("127.0.0.1")
        admission.enter("127.0.0.1")
        with self.assertRaises(HTTPError):
            admission.check("198.51.100.2")  # four open: full for everyone
        admission.leave("203.0.113.7")
        admission.check("203.0.113.7")
        self.assertEqual(admission.by_address, {"203.0.113.7": 1, "127.0.0.1": 2})


if __name__ == "__main__":
    unittest.main()
