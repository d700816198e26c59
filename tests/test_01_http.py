"""Chapter 1: HTTP/1.1 as both servers read it (RFC 9112 syntax, RFC 9110 semantics).

A WebSocket begins as an HTTP request, and the event stream is one: both servers read every
request head with the functions of `ws_server.py` II.2.  Pure functions, literal bytes.
"""

import unittest

import ws_server
from ws_server import HTTPError, body_length, find_end_of_head, parse_decimal, parse_request
from tests.support import fuzz, mutations


def refusal(head: bytes) -> int:
    """The status with which `parse_request` and `body_length` refuse `head`, or 0."""
    try:
        body_length(parse_request(head))
    except HTTPError as error:
        return error.status
    return 0


class Test01TheRequestLine(unittest.TestCase):

    def test_01_a_request_line_is_method_target_and_version(self):
        """RFC 9112 §3: request-line = method SP request-target SP HTTP-version."""
        request = parse_request(b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com")
        self.assertEqual((request.method, request.target, request.version), ("GET", "/chat?room=1", (1, 1)))
        self.assertEqual((request.path, request.query), ("/chat", "room=1"))

    def test_02_a_line_that_is_not_three_parts_joined_by_single_spaces_is_400(self):
        """RFC 9112 §3: one SP between the parts, nothing more; §3.1: a method is a token."""
        for head in (b"GET /", b"GET / HTTP/1.1 extra", b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ",
                     b"\xff / HTTP/1.1", b"G(T / HTTP/1.1", b" / HTTP/1.1", b""):
            with self.subTest(head=head):
                self.assertEqual(refusal(head + b"\r\nHost: x"), 400)

    def test_03_a_malformed_version_is_400(self):
        """RFC 9112 §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive."""
        for version in (b"HTTX/1.1", b"http/1.1", b"HTTP/1", b"HTTP/1.10", b"HTTP/a.b", b"HTTP/1.1\x00",
                        b"HTTP-1.1", b"HTTP/x.1", b"HTTP/1x1", b"HTTP/1.x"):
            with self.subTest(version=version):
                self.assertEqual(refusal(b"GET / " + version + b"\r\nHost: x"), 400)

    def test_04_another_major_version_is_505_with_a_status_line(self):
        """RFC 9110 §15.6.6: a major version the server does not speak is 505 (even HTTP/2's preface)."""
        for head in (b"GET / HTTP/2.0\r\nHost: x", b"GET / HTTP/9.9\r\nHost: x", b"GET / HTTP/0.9",
                     b"PRI * HTTP/2.0"):
            with self.subTest(head=head):
                self.assertEqual(refusal(head), 505)
        response = ws_server.build_error_response(505, "HTTP/2.0 is not supported")
        self.assertTrue(response.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"))

    def test_05_a_higher_minor_version_is_read_as_1_1(self):
        """RFC 9110 §2.5: a higher minor version is processed as the highest one implemented."""
        self.assertEqual(parse_request(b"GET / HTTP/1.9\r\nHost: x").version, (1, 1))
        self.assertEqual(parse_request(b"GET / HTTP/1.0").version, (1, 0))

    def test_06_origin_absolute_and_asterisk_forms_give_the_path_and_query(self):
        """RFC 9112 §3.2: origin-form (§3.2.1), absolute-form (§3.2.2) and asterisk-form for OPTIONS (§3.2.4) give a path and a query; an absolute-form target may be http, https, ws or wss (RFC 6455 §3), in any case (the authority of the absolute-form is checked, test_09, and not kept)."""
        forms = {b"GET /a/b?c=d": ("/a/b", "c=d"), b"GET http://example.com/x?y": ("/x", "y"),
                 b"GET http://[::1]:8080/ok": ("/ok", ""), b"GET https://h?q": ("/", "q"),
                 b"OPTIONS *": ("*", ""), b"GET //[": ("//[", ""),
                 b"GET ws://example.com/chat?x": ("/chat", "x"), b"GET WSS://example.com/chat?x": ("/chat", "x")}
        for line, expected in forms.items():
            with self.subTest(line=line):
                request = parse_request(line + b" HTTP/1.1\r\nHost: x")
                self.assertEqual((request.path, request.query), expected)

    def test_07_other_targets_are_400(self):
        """RFC 9112 §3.2: authority-form is CONNECT's (§3.2.3), `*` is OPTIONS's (§3.2.4), a target is visible ASCII; and this server reads absolute-form only for http, https, ws and wss (ftp: and mailto: are 400)."""
        for target in (b"*", b"example.com:443", b"ftp://x/", b"/caf\xc3\xa9", b"/a\x01b", b"/a\x7fb", b"mailto:x"):
            with self.subTest(target=target):
                self.assertEqual(refusal(b"GET " + target + b" HTTP/1.1\r\nHost: x"), 400)
        for target in (b"example", b"example.com:443"):  # OPTIONS takes `*`, not any other target
            with self.subTest(target=target, method="OPTIONS"):
                self.assertEqual(refusal(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: x"), 400)

    def test_09_an_absolute_form_target_with_an_invalid_authority_is_400(self):
        """RFC 9112 §3.2.2 and RFC 9110 §4.2.1: the authority of an absolute-form target is host [":" port]: an unclosed or invalid IP literal, an empty host, userinfo, or a port that is not digits is a 400."""
        for target in (b"http://[::1/", b"http://[", b"http://[::1x]/", b"http:///a", b"http://u@x/", b"http://x:ab/",
                       b"http://x:1234567/", b"http://a b/"):
            with self.subTest(target=target):
                self.assertEqual(refusal(b"GET " + target + b" HTTP/1.1\r\nHost: x"), 400)
        for target in (b"http://[::1]/", b"http://127.0.0.1:8080/", b"http://example.com:/"):
            with self.subTest(target=target):
                self.assertEqual(parse_request(b"GET " + target + b" HTTP/1.1\r\nHost: x").path, "/")

    def test_08_empty_lines_before_the_request_line_are_ignored(self):
        """RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line."""
        self.assertEqual(parse_request(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x").method, "GET")

    def test_10_every_token_character_may_be_in_a_method_and_a_field_name(self):
        """RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA; a method (§9.1) and a field name (§5.1) made of all of them are read; one with a delimiter in it is 400."""
        tchars = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        request = parse_request(tchars + b" / HTTP/1.1\r\nHost: x\r\n" + tchars + b": y")
        self.assertEqual((request.method, request.header(tchars.decode())), (tchars.decode(), "y"))
        for char in b'"(),/;<=>?@[\\]{}':  # (a ":" would end the field name: test_05)
            with self.subTest(char=chr(char)):
                self.assertEqual(refusal(b"G" + bytes([char]) + b"T / HTTP/1.1\r\nHost: x"), 400)
                self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: x\r\nX" + bytes([char]) + b"Y: z"), 400)

    def test_11_a_head_cut_short_is_408_if_it_took_too_long_and_400_if_the_connection_closed(self):
        """RFC 9110 §15.5.9: a head not finished in time is 408 Request Timeout; a connection closed in the middle of a head is 400; nothing sent (or only empty lines, RFC 9112 §2.2) is no request at all, and gets no answer."""
        for buffer in (b"", b"\r\n", b"\n\r\n"):
            for timed_out in (True, False):
                with self.subTest(buffer=buffer, timed_out=timed_out):
                    self.assertIsNone(ws_server.no_head_received(buffer, timed_out))
        for buffer, timed_out, status in ((b"GET", True, 408), (b"GET", False, 400),
                                          (b"\r\nGET / HTTP/1.1\r\n", True, 408), (b"\rGET", False, 400)):
            with self.subTest(buffer=buffer, timed_out=timed_out):
                with self.assertRaises(HTTPError) as caught:
                    ws_server.no_head_received(buffer, timed_out)
                self.assertEqual(caught.exception.status, status)

    def test_12_a_request_made_without_a_path_has_the_root_path(self):
        """Operational: a `Request` built by hand (a test, a handler's stand-in) without a path has the path "/", the root, and an empty query."""
        request = ws_server.Request("GET", "/", (1, 1), {"host": ["x"]})
        self.assertEqual((request.path, request.query), ("/", ""))


class Test02HeaderFields(unittest.TestCase):

    def test_01_names_are_case_insensitive_values_trimmed_and_repeats_kept(self):
        """RFC 9110 §5.1, §5.3: field names are case-insensitive; a repeated field is a list, in order."""
        request = parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nX-A:  one \t\r\nx-a: two")
        self.assertEqual(request.headers["x-a"], ["one", "two"])
        self.assertEqual(request.header("X-A"), "one, two")
        self.assertEqual(request.tokens("x-a"), ["one", "two"])

    def test_02_whitespace_between_the_name_and_the_colon_is_400(self):
        """RFC 9112 §5.1: "No whitespace is allowed between the field name and colon" (400)."""
        self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost : x"), 400)
        self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: x\r\nX-A\t: y"), 400)

    def test_03_obsolete_line_folding_is_400(self):
        """RFC 9112 §5.2: a server MUST reject obs-fold with 400 (or replace it; refusing is safer)."""
        self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: a\r\n folded"), 400)

    def test_04_a_control_character_in_a_value_is_400(self):
        """RFC 9110 §5.5: a value is visible characters, obs-text, SP and HTAB, no other control; RFC 9112 §2.2: no bare CR."""
        for value in (b"a\x00b", b"a\rb", b"a\x1bb", b"a\x7fb"):
            with self.subTest(value=value):
                self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + value), 400)
        self.assertEqual(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb \xe9").header("x-a"), "a\tb \xe9")

    def test_05_a_line_without_a_colon_or_a_name_is_400(self):
        """RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; a name is a token."""
        for line in (b"no colon", b"NoColon", b": no name", b"bad name: x", b"na(me: x"):
            with self.subTest(line=line):
                self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: x\r\n" + line), 400)

    def test_06_more_header_lines_than_the_limit_is_431(self):
        """Operational: --max-header-lines; one line past it is RFC 6585 §5's 431 Request Header Fields Too Large, at it the head is read."""
        head = b"GET / HTTP/1.1\r\nHost: x" + b"\r\nX: y" * 100
        with self.assertRaises(HTTPError) as caught:
            parse_request(head, max_header_lines=100)
        self.assertEqual(caught.exception.status, 431)
        parse_request(head, max_header_lines=101)

    def test_07_a_head_ends_at_an_empty_line_even_with_bare_lf(self):
        """RFC 9112 §2.2: a recipient MAY recognize a single LF as a line terminator; the end is searched for from the buffer's start (a buffer that is only the empty line ends at 0), and is None until it arrives."""
        for line_end, empty_line in ((b"\r\n", b"\r\n"), (b"\n", b"\n"), (b"\n", b"\r\n"), (b"\r\n", b"\n")):
            head = b"GET / HTTP/1.1" + line_end + b"Host: x" + line_end + empty_line
            with self.subTest(head=head):
                end, body = find_end_of_head(head + b"rest")
                self.assertEqual(head[end:body], line_end + empty_line)  # the last line's end and the empty line
                self.assertEqual((head + b"rest")[body:], b"rest")
                self.assertEqual(parse_request(head[:end]).header("host"), "x")
        self.assertIsNone(find_end_of_head(b"GET / HTTP/1.1\r\nHost: x\r\n"))
        self.assertEqual(find_end_of_head(b"\r\n\r\n"), (0, 4))


class Test03Host(unittest.TestCase):

    def test_01_an_http_1_1_request_without_host_is_400(self):
        """RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request that lacks Host."""
        self.assertEqual(refusal(b"GET / HTTP/1.1\r\nX: y"), 400)

    def test_02_two_hosts_are_400(self):
        """RFC 9112 §3.2: ... and to any request with more than one Host field line."""
        self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b"), 400)
        self.assertEqual(refusal(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a"), 400)

    def test_03_a_host_that_is_no_authority_is_400(self):
        """RFC 9112 §3.2: ... or with a Host header field with an invalid field value."""
        for host in (b"a b", b"x/y", b"x?y", b"x@y", b'"x"'):
            with self.subTest(host=host):
                self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: " + host), 400)
        for host in (b"example.com", b"127.0.0.1:8088", b"[::1]:80", b""):
            with self.subTest(host=host):
                self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: " + host), 0)

    def test_04_http_1_0_may_omit_host(self):
        """RFC 9112 §3.2: the Host requirement is HTTP/1.1's."""
        self.assertEqual(refusal(b"GET / HTTP/1.0"), 0)

    def test_05_a_host_is_a_reg_name_or_an_ip_literal_and_a_port_of_at_most_5_ascii_digits(self):
        """RFC 3986 §3.2.2: a reg-name is unreserved characters, sub-delims and percent-encodings (all of them together are read), an IP literal is an IPv6 address in brackets; §3.2.3: port = *DIGIT after a ":", and at most 5 digits here (a port is 16 bits); a port without a host, a port not right after "]" and a port that is not ASCII digits are 400."""
        all_reg_name = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%41"
        for host in (all_reg_name, b"x:65535", b"x:", b"[::1]", b"[::1]:65535", b"[::1]:"):
            with self.subTest(host=host):
                self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: " + host), 0)
        for host in (b":80", b"x:123456", b"[::1]:123456", b"[::1]80", b"[::1]x80", b"x:a", b"x:a1", b"x:1a",
                     b"x:\xb2", b"[::1", b"[]"):
            with self.subTest(host=host):
                self.assertEqual(refusal(b"GET / HTTP/1.1\r\nHost: " + host), 400)
        self.assertEqual(refusal(b"GET http://:80/ HTTP/1.1\r\nHost: x"), 400)


class Test04TheLengthOfABody(unittest.TestCase):
    """RFC 9112 §6: how a request says where its body ends, and what a server must refuse."""

    def length(self, *fields: bytes):
        return body_length(parse_request(b"POST / HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(fields)))

    def test_01_no_content_length_and_no_transfer_encoding_means_no_body(self):
        """RFC 9112 §6.3 item 7: a request with neither has a body of length zero (item 6: with a valid Content-Length, that length)."""
        self.assertEqual(self.length(b"X: y"), 0)
        self.assertEqual(self.length(b"Content-Length: 42"), 42)

    def test_02_content_length_is_ascii_digits_only(self):
        """RFC 9110 §8.6: Content-Length = 1*DIGIT, or 400 (RFC 9112 §6.3 item 5); "²" and "٣" are digits to str.isdigit(), not to HTTP."""
        for value in ("\xb2", "\u0663", "-1", "+5", "1e3", " ", "0x10"):
            with self.subTest(value=value):
                self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value.encode("latin-1", "replace")), 400)

    def test_03_identical_values_are_one_different_ones_are_400(self):
        """RFC 9110 §8.6 allows a list of identical values; RFC 9112 §6.3 item 5: others are 400."""
        self.assertEqual(self.length(b"Content-Length: 5, 5"), 5)
        self.assertEqual(self.length(b"Content-Length: 5", b"Content-Length: 5"), 5)
        self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2"), 400)

    def test_04_transfer_encoding_and_content_length_together_are_400(self):
        """RFC 9112 §6.3 item 3: the request smuggling shape; this server refuses it outright."""
        self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"), 400)

    def test_05_chunked_is_recognised_in_any_case_and_must_be_the_last_coding(self):
        """RFC 9112 §6.3 item 4: chunked last, or 400 (an empty list has no last coding: 400); §6.1: a coding the server lacks is 501; §7: coding names are case-insensitive."""
        self.assertIsNone(self.length(b"Transfer-Encoding: chunked"))
        self.assertIsNone(self.length(b"Transfer-Encoding: Chunked"))
        self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip"), 400)
        self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,"), 400)
        self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip"), 400)
        self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"), 501)

    def test_06_transfer_encoding_in_http_1_0_is_400(self):
        """RFC 9112 §6.1: an HTTP/1.0 request with Transfer-Encoding has faulty framing."""
        self.assertEqual(refusal(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked"), 400)

    def test_07_a_number_is_parsed_from_ascii_digits_only(self):
        """RFC 9110 §1.2: DIGIT is the core rule of RFC 5234 Appendix B.1, %x30-39: ASCII only."""
        self.assertEqual(parse_decimal("0042"), 42)
        for text in ("", "٣", "²", "1 ", "-1"):
            with self.subTest(text=text):
                self.assertIsNone(parse_decimal(text))

    def test_08_a_number_has_at_most_18_digits_and_so_has_content_length(self):
        """Operational: at most 18 digits, so that int() is never slow: 18 digits are read, 19 are refused; a Content-Length of 19 digits (or 5,000) is 400."""
        self.assertEqual(parse_decimal("9" * 18), 10 ** 18 - 1)
        self.assertIsNone(parse_decimal("1" * 19))
        self.assertEqual(self.length(b"Content-Length: " + b"9" * 18), 10 ** 18 - 1)
        for digits in (19, 5000):
            with self.subTest(digits=digits):
                self.assertEqual(refusal(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"1" * digits), 400)


class Test05Responses(unittest.TestCase):

    def test_01_a_refusal_is_a_status_line_a_one_line_reason_and_the_end_of_the_connection(self):
        """RFC 9112 §4, §9.6: a status line, a plain-text reason, Connection: close."""
        self.assertEqual(ws_server.build_error_response(400, "malformed request line"),
                         b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         b"Content-Length: 27\r\nConnection: close\r\n\r\n400 malformed request line\n")

    def test_02_the_answer_to_head_has_the_length_and_no_body(self):
        """RFC 9110 §9.3.2: HEAD is GET without the content."""
        response = ws_server.build_error_response(404, "not found", head_only=True)
        self.assertTrue(response.endswith(b"Content-Length: 14\r\nConnection: close\r\n\r\n"))  # len("404 not found\n")

    def test_03_a_refusal_with_headers_of_its_own_still_says_connection_close(self):
        """RFC 9112 §9.6: "close" signals "that the sender will close this connection after completion of the response", as every refusal does; headers a refusal adds (the 426's Upgrade, say) do not take it away."""
        response = ws_server.parse_response(ws_server.build_error_response(
            426, "unsupported version", [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]).split(b"\r\n\r\n")[0])
        self.assertEqual((response.status, response.header("upgrade")), (426, "websocket"))
        self.assertEqual(response.tokens("connection"), ["close"])

    def test_04_a_client_reads_a_status_line_and_its_header_fields(self):
        """RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ], status-code = 3DIGIT; a line that is not that, or whose version is not HTTP/1.x, fails the handshake."""
        response = ws_server.parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket")
        self.assertEqual((response.status, response.reason, response.header("upgrade")),
                         (101, "Switching Protocols", "websocket"))
        for head in (b"HTTP/1.1 1O1 x", b"SSH-2.0-OpenSSH", b"HTTP/1.1 101 x\r\nbad line", b"HTTPS/1.1 101 x",
                     b"HTTP/10 101 x", b"HTTP/2 101 x", b"HTTP/1.1 1010 x", b"HTTP/1.1 10 x"):
            with self.subTest(head=head), self.assertRaises(ws_server.HandshakeFailed):
                ws_server.parse_response(head)


    def test_05_a_response_carries_its_body_and_the_answer_to_head_does_not(self):
        """RFC 9112 §4, §6: a response is its status line, its header fields, the empty line, then its content; RFC 9110 §9.3.2: the same without the content for HEAD."""
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        self.assertEqual(ws_server.build_response(200, [("Content-Length", "2")], b"ok"), head + b"ok")
        self.assertEqual(ws_server.build_response(200, [("Content-Length", "2")], b"ok", head_only=True), head)


class Test06Fuzz(unittest.TestCase):
    """Seeded random and mutated heads: only HTTPError may come out, and never slowly."""

    SEEDS = [b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://[",
             b"POST /publish?event=a%0a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nTransfer-Encoding: chunked",
             b"OPTIONS * HTTP/1.0\r\nLast-Event-ID: 12345\r\nExpect: 100-continue"]

    def test_01_random_heads_raise_only_http_errors_quickly(self):
        """RFC 9112 §2.2 Whatever arrives, the answer is a parsed request or a status (HTTPError); operationally, each within a second."""
        def read(head: bytes) -> None:
            request = parse_request(head)
            body_length(request)
            if ws_server.is_websocket_request(request):
                ws_server.check_request(request, access=ws_server.AccessRules(True, 80, allowed_origins=("http://a",)),
                                        subprotocols=["chat"])
        fuzz(self, read, mutations(9112, self.SEEDS, 3000), (HTTPError,))


if __name__ == "__main__":
    unittest.main()
