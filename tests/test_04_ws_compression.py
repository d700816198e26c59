"""Chapter 4: permessage-deflate (RFC 7692): the negotiation, compressed messages with the RFC's
own bytes, control frames left alone, decompression bombs refused, a broadcast compressed once.

Pure functions and `Receiver`/`Protocol` fed literal bytes: no sockets.  Every section cited
here names its document: RFC 7692 (compression) or RFC 6455 (WebSocket).
"""

import random
import tracemalloc
import unittest
import zlib

import ws_server
from ws_server import (Close, Compression, DeflateParameters, HandshakeFailed, Message, MessageDeflater, Opcode,
                       Ping, Protocol, ProtocolError, Receiver, check_deflate_answer, encode_frame, negotiate_deflate,
                       parse_extensions)
from tests.support import fuzz, mutations

OUR_ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])

# RFC 7692 §7.2.3.1: "Hello" compressed, flushed, the tail 00 00 ff ff removed.
HELLO = bytes.fromhex("f2 48 cd c9 c9 07 00")
# RFC 7692 §7.2.3.2: the second "Hello" of a sender that keeps its LZ77 window.
HELLO_AGAIN_WITH_CONTEXT = bytes.fromhex("f2 00 11 00 00")
# RFC 7692 §7.2.3.3: "Hello" in a DEFLATE block with no compression.
HELLO_STORED = bytes.fromhex("00 05 00 fa ff 48 65 6c 6c 6f 00")
# RFC 7692 §7.2.3.4: "Hello" in a block with BFINAL set.
HELLO_BFINAL = bytes.fromhex("f3 48 cd c9 c9 07 00 00")
# RFC 7692 §7.2.3.5: "He" and "llo" in two DEFLATE blocks.
HELLO_TWO_BLOCKS = bytes.fromhex("f2 48 05 00 00 00 ff ff ca c9 c9 07 00")


def compression(*, threshold: int = 0, keep_context: bool = False) -> Compression:
    return Compression(DeflateParameters(True, True), MessageDeflater(), threshold, keep_context)


def server_frame(payload: bytes, opcode: int = Opcode.TEXT, fin: bool = True, rsv1: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1)


def client_frame(payload: bytes, opcode: int = Opcode.TEXT, fin: bool = True, rsv1: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, masking_key=KEY, rsv1=rsv1)


def client_receiver(**options) -> Receiver:
    return Receiver(mask_expected=False, compression=compression(**options))


def server_receiver(max_size: int = ws_server.DEFAULT_MAX_SIZE) -> Receiver:
    return Receiver(mask_expected=True, max_size=max_size, compression=compression())


class Test01TheServersNegotiation(unittest.TestCase):
    """RFC 7692 §5, §7.1: the server takes the first offer it can honour, and answers only what it may."""

    def test_01_the_extensions_header_is_a_list_of_offers_with_parameters(self):
        """RFC 6455 §9.1 extension-list: offers in order, parameters with or without values, quoted values."""
        self.assertEqual(parse_extensions('permessage-deflate; client_max_window_bits; server_max_window_bits="10", ,x'),
                         [("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")]),
                          ("x", [])])
        for bad in ("permessage-deflate;", "a b", 'x; y="1', 'x; y="a b"', "x;=1", "x; y=", "(x)"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                parse_extensions(bad)

    def test_02_chromiums_and_firefoxs_offers_get_our_answer(self):
        """RFC 7692 §7.1.1.1, §7.1.1.2 The server may answer both no_context_takeover parameters unasked."""
        for offer in ("permessage-deflate; client_max_window_bits", "permessage-deflate"):
            with self.subTest(offer=offer):
                self.assertEqual(negotiate_deflate(offer).header(), OUR_ANSWER)

    def test_03_a_server_window_asked_for_is_answered_with_it(self):
        """RFC 7692 §7.1.2.1 A server accepts server_max_window_bits by answering the same value (or less)."""
        self.assertEqual(negotiate_deflate("permessage-deflate; server_max_window_bits=10").header(),
                         OUR_ANSWER + "; server_max_window_bits=10")

    def test_04_an_8_bit_window_cannot_be_honoured_and_the_next_offer_is_taken(self):
        """RFC 7692 §7.1.2.1 A server may decline an offer; zlib has no raw deflate with an 8-bit window, so that offer is declined and the next one taken."""
        self.assertIsNone(negotiate_deflate("permessage-deflate; server_max_window_bits=8"))
        answer = negotiate_deflate("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, "
                                   "permessage-deflate; server_max_window_bits=12")
        self.assertEqual(answer.server_max_window_bits, 12)
        with self.assertRaises((zlib.error, ValueError)):  # why: zlib itself refuses it
            zlib.compressobj(6, zlib.DEFLATED, -8)

    def test_05_an_offer_with_a_bad_parameter_is_declined_never_refused(self):
        """RFC 7692 §7 A server MUST decline an offer with an unknown, repeated or invalid parameter (so does a malformed header, all its offers); the handshake still succeeds, uncompressed: no 400."""
        for offer in ("permessage-deflate; foo", "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                      "permessage-deflate; server_no_context_takeover=1", "permessage-deflate; server_max_window_bits",
                      "permessage-deflate; server_max_window_bits=16", "permessage-deflate; client_max_window_bits=07",
                      "permessage-deflate; client_max_window_bits=abc", 'permessage-deflate; x="', "bogus ("):
            with self.subTest(offer=offer):
                self.assertIsNone(negotiate_deflate(offer))
                request = ws_server.parse_request(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Extensions: " + offer.encode())
                self.assertIsNone(ws_server.check_request(request, compression=True).deflate)  # not a 400

    def test_06_client_max_window_bits_is_never_answered_unasked(self):
        """RFC 7692 §7.1.2.2 Without client_max_window_bits in the offer the answer MUST NOT carry it; with it, this server still leaves the client's window alone."""
        for offer in ("permessage-deflate", "permessage-deflate; client_max_window_bits"):
            with self.subTest(offer=offer):
                self.assertNotIn("client_max_window_bits", negotiate_deflate(offer).header())

    def test_07_with_compression_off_nothing_is_negotiated(self):
        """Operational: with --compression off the offer is declined and the answer carries no Sec-WebSocket-Extensions; with it on, our answer."""
        request = ws_server.parse_request(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate")
        handshake = ws_server.check_request(request, compression=False)
        self.assertNotIn(b"Sec-WebSocket-Extensions", ws_server.build_switching_protocols(handshake))
        handshake = ws_server.check_request(request, compression=True)
        self.assertIn(b"Sec-WebSocket-Extensions: " + OUR_ANSWER.encode(), ws_server.build_switching_protocols(handshake))

    def test_08_no_offer_means_no_compression_and_no_error(self):
        """RFC 6455 §9.1, RFC 7692 §5 Only an offer can be accepted: with no Sec-WebSocket-Extensions (or an empty one), compression on or not, the handshake succeeds without compression and the answer names no extension."""
        self.assertIsNone(negotiate_deflate(None))
        self.assertIsNone(negotiate_deflate(""))
        request = ws_server.parse_request(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13")
        handshake = ws_server.check_request(request, compression=True)
        self.assertIsNone(handshake.deflate)
        self.assertNotIn(b"Sec-WebSocket-Extensions", ws_server.build_switching_protocols(handshake))

    def test_09_spaces_and_tabs_may_surround_every_separator(self):
        """RFC 6455 §9.1, RFC 9110 §5.6.1, §5.6.6: optional whitespace (spaces and tabs) may come before and after each ",", ";" and "=" of the extension list; it is not part of any name or value."""
        self.assertEqual(parse_extensions(' permessage-deflate ; a = 1 ;\tb=\t"2" ;c\t, x ,y '),
                         [("permessage-deflate", [("a", "1"), ("b", "2"), ("c", None)]), ("x", []), ("y", [])])

    def test_10_a_quoted_value_is_unescaped_and_must_then_be_a_non_empty_token(self):
        """RFC 6455 §9.1: a quoted-string value must be a token once unquoted (RFC 9110 §5.6.4: a backslash escapes the next character, and is dropped), so any token character may be quoted; an empty one, one with a space, or one never closed is malformed (ValueError). Parameters after a quoted value are read on."""
        tchars = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        self.assertEqual(parse_extensions(f'x; a="{tchars}"'), [("x", [("a", tchars)])])
        self.assertEqual(parse_extensions('x; a="1\\2"; b="abc"; c, y'),
                         [("x", [("a", "12"), ("b", "abc"), ("c", None)]), ("y", [])])
        for bad in ('x; a=""', 'x; a="a b"', 'x; a="abc', 'x; a="1\\ 2"'):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                parse_extensions(bad)

    def test_11_a_window_size_is_a_decimal_from_8_to_15_without_leading_zeros(self):
        """RFC 7692 §7.1.2: the value of a max_window_bits parameter is a decimal integer from 8 to 15, without leading zeros; anything else (7, 16, 010, an Arabic-Indic nine, a sign) is no window size."""
        for text, bits in (("8", 8), ("9", 9), ("15", 15)):
            with self.subTest(text=text):
                self.assertEqual(ws_server.window_bits(text), bits)
        for text in ("7", "16", "010", "08", "\u0669", "+9", "", None):
            with self.subTest(text=text):
                self.assertIsNone(ws_server.window_bits(text))

    def test_12_the_parameters_are_written_back_as_an_extension_header(self):
        """RFC 7692 §7.1: an answer names permessage-deflate and then only the parameters agreed, each once, a window size with its value: no parameter at all by default."""
        self.assertEqual(DeflateParameters().header(), "permessage-deflate")
        self.assertEqual(DeflateParameters(client_max_window_bits=10).header(), "permessage-deflate; client_max_window_bits=10")
        self.assertEqual(DeflateParameters(True, True, 12, 10).header(),
                         OUR_ANSWER + "; server_max_window_bits=12; client_max_window_bits=10")


class Test02TheClientsSide(unittest.TestCase):
    """RFC 7692 §7.1.1.2, §7.1.2.2: the client offers as Chromium does and checks the answer."""

    def test_01_the_client_offers_as_chromium_does(self):
        """RFC 7692 §7.1.2.2 permessage-deflate with client_max_window_bits: any window the server wants."""
        self.assertEqual(ws_server.client_deflate_offer(), "permessage-deflate; client_max_window_bits")

    def test_02_a_valid_answer_gives_the_parameters_to_follow(self):
        """RFC 7692 §7.1.2.2 client_max_window_bits in the answer limits the client's window; §7.1.2.1 server_max_window_bits in it is the server's, kept as answered; §7.1.1.1 with server_no_context_takeover the client keeps no inflating context between messages, without it it does."""
        answer = check_deflate_answer(parse_extensions(OUR_ANSWER + "; client_max_window_bits=10")[0][1])
        self.assertEqual(answer, DeflateParameters(True, True, None, 10))
        client = ws_server.client_compression(answer)
        self.assertEqual(client.deflater.window, 10)
        self.assertFalse(client.peer_keeps_context)
        self.assertTrue(ws_server.client_compression(DeflateParameters()).peer_keeps_context)
        answer = check_deflate_answer(parse_extensions("permessage-deflate; server_max_window_bits=10")[0][1])
        self.assertEqual(answer, DeflateParameters(server_max_window_bits=10))

    def test_03_an_answer_the_client_did_not_allow_fails_the_connection(self):
        """RFC 7692 §7 An answer with an unknown, invalid or repeated parameter, or one the client cannot keep to, fails the connection (HandshakeFailed, with the status the server did answer: 101)."""
        for answer in ("permessage-deflate; foo", "permessage-deflate; client_max_window_bits",
                       "permessage-deflate; client_max_window_bits=8", "permessage-deflate; server_max_window_bits=99",
                       "permessage-deflate; server_no_context_takeover; server_no_context_takeover"):
            with self.subTest(answer=answer), self.assertRaises(HandshakeFailed) as caught:
                check_deflate_answer(parse_extensions(answer)[0][1])
            self.assertEqual(caught.exception.status, 101)  # what the server answered, with that header

    def test_04_the_opening_handshake_carries_the_offer_and_reads_the_answer(self):
        """RFC 6455 §4.1 item 11, §9.1 The offer goes in Sec-WebSocket-Extensions; the answer sets the connection up."""
        request = ws_server.build_client_request("x", 80, "/", "dGhlIHNhbXBsZSBub25jZQ==",
                                                 extensions=ws_server.client_deflate_offer())
        self.assertIn(b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n", request)
        client = Protocol(client=True, opening=ws_server.OpeningHandshake("dGhlIHNhbXBsZSBub25jZQ==", (), ("permessage-deflate",)))
        client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            b"Sec-WebSocket-Extensions: " + OUR_ANSWER.encode() + b"\r\n\r\n" + server_frame(HELLO))
        self.assertEqual(client.next_event(), Message(Opcode.TEXT, b"Hello"))
        self.assertEqual(client.compression.parameters, DeflateParameters(True, True))

    def test_05_an_answer_with_permessage_deflate_twice_fails(self):
        """RFC 7692 §5 A client MUST fail the connection if the answer accepts a compression extension together with another that uses RSV1 too: permessage-deflate twice is that."""
        response = ws_server.parse_response(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate")
        with self.assertRaises(HandshakeFailed) as caught:
            ws_server.check_response(response, "dGhlIHNhbXBsZSBub25jZQ==", (), ("permessage-deflate",))
        self.assertIn("twice", caught.exception.reason)
        response.headers["sec-websocket-extensions"] = ["permessage-deflate"]  # once: accepted
        self.assertIsNotNone(ws_server.check_response(response, "dGhlIHNhbXBsZSBub25jZQ==", (), ("permessage-deflate",)).deflate)


class Test03CompressedMessages(unittest.TestCase):
    """RFC 7692 §6, §7.2: RSV1 on the first frame; DEFLATE data without its tail; the RFC's examples."""

    def test_01_hello_is_compressed_as_the_rfc_shows_and_sent_with_rsv1(self):
        """RFC 7692 §7.2.3.1 "Hello" is f2 48 cd c9 c9 07 00, in a frame whose first byte is 0xc1 (FIN, RSV1, text)."""
        self.assertEqual(MessageDeflater().compress(b"Hello"), HELLO)
        server = Protocol(compression=compression())
        server.send_text("Hello")
        self.assertEqual(server.data_to_send(), [bytes([0xC1, 0x07]) + HELLO])

    def test_02_hello_compressed_is_read_whole_and_in_fragments(self):
        """RFC 7692 §7.2.3.1 The same message in one frame, or in fragments of 3 and 4 bytes (RSV1 on the first only)."""
        self.assertEqual(client_receiver().feed(server_frame(HELLO)), [Message(Opcode.TEXT, b"Hello")])
        fragments = bytes.fromhex("41 03 f2 48 cd 80 04 c9 c9 07 00")
        self.assertEqual(client_receiver().feed(fragments), [Message(Opcode.TEXT, b"Hello")])

    def test_03_without_context_takeover_each_message_stands_alone(self):
        """RFC 7692 §7.1.1.1, §7.2.3.2 Without context takeover the second "Hello" is the same 7 bytes as the first."""
        deflater = MessageDeflater()
        self.assertEqual((deflater.compress(b"Hello"), deflater.compress(b"Hello")), (HELLO, HELLO))

    def test_04_with_context_takeover_the_second_hello_refers_back(self):
        """RFC 7692 §7.2.3.2 A peer that keeps its window sends f2 00 11 00 00; an inflater that keeps it too reads it."""
        receiver = client_receiver(keep_context=True)
        self.assertEqual(receiver.feed(server_frame(HELLO) + server_frame(HELLO_AGAIN_WITH_CONTEXT)),
                         [Message(Opcode.TEXT, b"Hello")] * 2)
        events = client_receiver(keep_context=False).feed(server_frame(HELLO) + server_frame(HELLO_AGAIN_WITH_CONTEXT))
        self.assertEqual(events[-1].code, 1007)  # it refers to a window that was not kept

    def test_05_stored_bfinal_and_two_block_forms_read_the_same(self):
        """RFC 7692 §7.2.3.3-§7.2.3.5 A stored block, a block with BFINAL set, and two blocks: all "Hello"."""
        for payload in (HELLO_STORED, HELLO_BFINAL, HELLO_TWO_BLOCKS):
            with self.subTest(payload=payload.hex(" ")):
                self.assertEqual(client_receiver().feed(server_frame(payload)), [Message(Opcode.TEXT, b"Hello")])

    def test_06_an_empty_message_compresses_to_one_zero_byte(self):
        """RFC 7692 §7.2.1, §7.2.3.6 An empty message is the single byte 0x00 (an empty stored block, its tail removed), and reads back empty."""
        self.assertEqual(MessageDeflater().compress(b""), b"\x00")
        self.assertEqual(client_receiver().feed(server_frame(b"\x00")), [Message(Opcode.TEXT, b"")])

    def test_07_short_messages_go_uncompressed(self):
        """RFC 7692 §6 A message may go uncompressed (RSV1 clear); operational: --compression-threshold (here 128): a shorter message goes plain, one of 128 bytes compressed."""
        server = Protocol(compression=compression(threshold=128))
        server.send_text("short")
        server.send_text("x" * 128)
        short, long = server.data_to_send()
        self.assertEqual(short, b"\x81\x05short")
        self.assertEqual(long[0], 0xC1)
        self.assertLess(len(long), 128)

    def test_08_text_is_checked_as_utf8_once_inflated(self):
        """RFC 6455 §8.1 Text must be UTF-8 once inflated: 1007 otherwise."""
        payload = MessageDeflater().compress(b"valid \xff then")
        self.assertEqual(server_receiver().feed(client_frame(payload))[-1].code, 1007)

    def test_09_data_that_does_not_inflate_is_1007(self):
        """RFC 7692 §6.2, RFC 6455 §7.4.1 Data that does not inflate is not consistent with the message: 1007."""
        events = server_receiver().feed(client_frame(b"\xff\xff\xff not deflate"))
        self.assertIsInstance(events[-1], ProtocolError)
        self.assertEqual(events[-1].code, 1007)

    def test_10_a_binary_message_round_trips(self):
        """RFC 7692 §6 Binary messages are compressed the same way, RSV1 on their frame (0xc2), both ways."""
        data = bytes(range(256)) * 20
        server = Protocol(compression=compression())
        server.send_binary(data)
        [frame] = server.data_to_send()
        self.assertEqual(frame[0], 0xC2)
        self.assertLess(len(frame), len(data))
        self.assertEqual(client_receiver().feed(frame), [Message(Opcode.BINARY, data)])
        frame = client_frame(MessageDeflater().compress(data), Opcode.BINARY)
        self.assertEqual(server_receiver().feed(frame), [Message(Opcode.BINARY, data)])

    def test_11_the_trace_shows_each_frame_of_a_compressed_message_with_its_own_inflated_bytes(self):
        """Operational: --trace of a compressed message in two frames (RFC 7692 §6: RSV1 on the first only) is given each frame's header and that frame's own inflated bytes (RSV1 on the first only), which together are the message."""
        text = b"hello world, " * 10
        compressed = MessageDeflater().compress(text)
        half = len(compressed) // 2
        frames = (client_frame(compressed[:half], fin=False)
                  + client_frame(compressed[half:], Opcode.CONTINUATION, rsv1=False))
        traced = []
        receiver = server_receiver()
        receiver.on_frame = lambda header, payload, inflated: traced.append((header, payload, inflated))
        self.assertEqual(receiver.feed(frames), [Message(Opcode.TEXT, text)])
        (first, first_bytes, first_inflated), (second, second_bytes, second_inflated) = traced
        self.assertEqual((first.rsv1, first.length, first_inflated), (True, half, True))
        self.assertEqual((second.rsv1, second.length, second_inflated), (False, len(compressed) - half, True))
        self.assertEqual(first_bytes + second_bytes, text)
        self.assertEqual(first_bytes, zlib.decompressobj(-15).decompress(compressed[:half]))
        self.assertIn(f"len={half} inflated={len(first_bytes)}", first.describe(first_bytes, first_inflated))

    def test_12_back_references_farther_than_16_kib_inflate(self):
        """RFC 7692 §7.1.2.2 Unless the answer limits it, a client compresses with up to a 32 KiB window: a message that refers 20 KiB back inflates whole, even fed in 1,000-byte pieces (an inflater with a 16 KiB window fails there)."""
        rng = random.Random(7692)
        repeated = rng.randbytes(8 * 1024)
        data = repeated + rng.randbytes(12 * 1024) + repeated  # random bytes: only the repeat compresses
        compressed = MessageDeflater(window=15).compress(data)
        self.assertLess(len(compressed), len(data) - 7 * 1024)  # the repeat was found, 20 KiB back
        self.assertGreater(len(MessageDeflater(window=14).compress(data)), len(data))  # not within 16 KiB
        frame = client_frame(compressed, Opcode.BINARY)
        receiver, events = server_receiver(), []
        for i in range(0, len(frame), 1000):
            events += receiver.feed(frame[i:i + 1000])
        self.assertEqual(events, [Message(Opcode.BINARY, data)])
        small_window = zlib.decompressobj(-14)
        with self.assertRaises(zlib.error):
            for i in range(0, len(compressed), 1000):
                small_window.decompress(compressed[i:i + 1000])


class Test04ControlFramesAndRSV1(unittest.TestCase):
    """RFC 7692 §6: RSV1 marks a compressed message on its first frame only; control frames never."""

    def test_01_a_control_frame_with_rsv1_is_1002(self):
        """RFC 7692 §6 An endpoint MUST NOT set RSV1 on a control frame; receiving one fails the connection (1002)."""
        ping = bytearray(encode_frame(Opcode.PING, b"x", masking_key=KEY))
        ping[0] |= ws_server.RSV1
        self.assertEqual(server_receiver().feed(bytes(ping))[-1].code, 1002)

    def test_02_a_continuation_frame_with_rsv1_is_1002(self):
        """RFC 7692 §6 ... nor on a non-first fragment of a data message (1002)."""
        frames = client_frame(HELLO[:3], fin=False) + client_frame(HELLO[3:], Opcode.CONTINUATION)
        self.assertEqual(server_receiver().feed(frames)[-1].code, 1002)

    def test_03_rsv1_without_the_extension_is_1002(self):
        """RFC 6455 §5.2 RSV1 MUST be 0 unless an extension defines it."""
        events = Receiver(mask_expected=True).feed(client_frame(HELLO))
        self.assertEqual(events[-1].code, 1002)

    def test_04_rsv2_or_rsv3_are_1002_even_with_the_extension(self):
        """RFC 6455 §5.2 RSV2 and RSV3 MUST be 0: permessage-deflate defines RSV1 only (RFC 7692 §6)."""
        for bit in (0x20, 0x10):
            frame = bytearray(client_frame(HELLO))
            frame[0] |= bit
            with self.subTest(bit=bit):
                self.assertEqual(server_receiver().feed(bytes(frame))[-1].code, 1002)

    def test_05_a_ping_between_compressed_fragments_is_answered_and_the_message_intact(self):
        """RFC 6455 §5.4, RFC 7692 §6 Control frames may come between the fragments of a compressed message; the Pong goes out uncompressed."""
        server = Protocol(compression=compression())
        server.receive_data(client_frame(HELLO[:3], fin=False) + encode_frame(Opcode.PING, b"?", masking_key=KEY)
                            + client_frame(HELLO[3:], Opcode.CONTINUATION, rsv1=False))
        self.assertEqual(server.next_event(), Ping(b"?"))
        self.assertEqual(server.next_event(), Message(Opcode.TEXT, b"Hello"))
        self.assertEqual(server.data_to_send(), [b"\x8a\x01?"])  # the Pong: uncompressed, RSV1 clear

    def test_06_a_close_is_never_compressed(self):
        """RFC 7692 §6 A compression extension operates only on data messages: a Close's bytes are the same with compression on as off."""
        server, plain = Protocol(compression=compression()), Protocol()
        server.send_close(1000, "x" * 100)
        plain.send_close(1000, "x" * 100)
        frame = server.data_to_send()[0]
        self.assertEqual(frame, plain.data_to_send()[0])
        self.assertEqual(frame[0], 0x88)
        self.assertEqual(Receiver(mask_expected=False).feed(frame), [Close(1000, "x" * 100)])


class Test05DecompressionBombs(unittest.TestCase):
    """RFC 6455 §10.4 and RFC 7692 §7.2.2: --max-size (operational) bounds the inflated message; memory stays bounded."""

    BOMB = MessageDeflater(level=9).compress(bytes(16 << 20))  # 16 MiB of zeros

    def test_01_a_bomb_is_refused_with_1009_having_made_at_most_the_limit(self):
        """RFC 6455 §10.4, §7.4.1 A few kilobytes that inflate to 16 MiB: 1009 at --max-size, and far less than 16 MiB was ever allocated."""
        self.assertLess(len(self.BOMB), 64 * 1024)
        tracemalloc.start()
        try:
            events = server_receiver().feed(client_frame(self.BOMB, Opcode.BINARY))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(events[-1].code, 1009)
        self.assertLess(peak, 2 * ws_server.DEFAULT_MAX_SIZE + 2 * len(self.BOMB) + (512 << 10))

    def test_02_a_bomb_in_fragments_is_refused_too(self):
        """RFC 6455 §10.4 The budget holds across fragments, as each piece is inflated: 1009."""
        pieces = [self.BOMB[i:i + 1000] for i in range(0, len(self.BOMB), 1000)]
        frames = [client_frame(piece, Opcode.BINARY if i == 0 else Opcode.CONTINUATION, fin=i == len(pieces) - 1,
                               rsv1=i == 0) for i, piece in enumerate(pieces)]
        self.assertEqual(server_receiver().feed(b"".join(frames))[-1].code, 1009)

    def test_03_a_message_at_the_limit_once_inflated_passes(self):
        """RFC 6455 §10.4 (operational --max-size) A message of exactly --max-size bytes once inflated is delivered; one byte more is 1009."""
        limit = 100_000
        for size, expected in ((limit, Message), (limit + 1, ProtocolError)):
            frame = client_frame(MessageDeflater().compress(bytes(size)), Opcode.BINARY)
            with self.subTest(size=size):
                self.assertIsInstance(server_receiver(max_size=limit).feed(frame)[-1], expected)

    def test_04_max_size_bounds_the_inflated_message_whatever_it_took_on_the_wire(self):
        """RFC 7692 §8 --max-size is what the application gets: random bytes, which compress to a little more than themselves, pass at the limit and one byte under, and one byte over is 1009; so do zeros; and so do plain frames without compression."""
        limit = 100_000
        random_bytes = random.Random(7692).randbytes(limit + 1)
        for content, data in (("random", random_bytes), ("zeros", bytes(limit + 1))):
            for size, expected in ((limit - 1, Message), (limit, Message), (limit + 1, ProtocolError)):
                compressed = MessageDeflater().compress(data[:size])
                with self.subTest(content=content, size=size, compressed=len(compressed)):
                    events = server_receiver(max_size=limit).feed(client_frame(compressed, Opcode.BINARY))
                    self.assertIsInstance(events[-1], expected)
                    if expected is Message:
                        self.assertEqual(events[-1].payload, data[:size])
                    else:
                        self.assertEqual(events[-1].code, 1009)
            for size, expected in ((limit, Message), (limit + 1, ProtocolError)):
                with self.subTest(content=content, size=size, compression="off"):
                    receiver = Receiver(mask_expected=True, max_size=limit)
                    frame = client_frame(data[:size], Opcode.BINARY, rsv1=False)
                    self.assertIsInstance(receiver.feed(frame)[-1], expected)

    def test_05_a_compressed_frame_longer_than_deflate_could_need_is_refused_from_its_header(self):
        """RFC 7692 §8 A compressed frame longer than the most DEFLATE can take for --max-size bytes (`deflate_bound`) is 1009 before any of its payload is read."""
        limit = 100_000
        header = ws_server.frame_header(Opcode.BINARY, ws_server.deflate_bound(limit) + 1, masked=True, rsv1=True)
        events = server_receiver(max_size=limit).feed(header + KEY)
        self.assertEqual((type(events[-1]), events[-1].code), (ProtocolError, 1009))
        self.assertGreater(ws_server.deflate_bound(limit), len(MessageDeflater(level=9).compress(random.randbytes(limit))))


class CountingDeflater(MessageDeflater):
    """A deflater that counts its compressions."""

    calls = 0

    def compress(self, payload):
        self.calls += 1
        return super().compress(payload)


class Member:
    """The part of a connection the room uses: its protocol, and a place for frames."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.frames: list = []

    def send_frame_bytes(self, frame, cost=None) -> None:
        self.frames.append(frame)


class Test06ABroadcastIsCompressedOnce(unittest.TestCase):
    """RFC 7692 §7.1.1.1 Without server context takeover one compression serves every client."""

    def test_01_a_thousand_clients_share_one_compression_and_one_frame(self):
        """RFC 7692 §7.1.1.1 Every client that agreed the same parameters gets the same compressed frame."""
        shared = Compression(DeflateParameters(True, True), CountingDeflater(), threshold=128)
        room = ws_server.ChatRoom()
        members = [Member(Protocol(compression=shared)) for _ in range(1000)] + [Member(Protocol())]
        for member in members:
            room.join(member)
        room.broadcast(Message(Opcode.TEXT, b'{"price": 1.2345, "symbol": "EURUSD"}' * 10))
        self.assertEqual(shared.deflater.calls, 1)
        frames = {id(member.frames[0]) for member in members[:-1]}
        self.assertEqual(len(frames), 1)  # one object, queued for all
        self.assertEqual(members[0].frames[0][0], 0xC1)
        self.assertEqual(members[-1].frames[0][0], 0x81)  # the one without compression: plain
        room.broadcast(Message(Opcode.TEXT, b"hi"))  # below the threshold: one plain frame for everyone
        self.assertEqual(shared.deflater.calls, 1)
        self.assertEqual({member.frames[1] for member in members}, {b"\x81\x02hi"})


class Test07Fuzz(unittest.TestCase):

    def test_01_any_extensions_header_is_answered_or_declined_never_a_crash(self):
        """RFC 7692 §7 Whatever a client offers, the server answers an offer or declines them all; nothing else comes out."""
        fuzz(self, lambda data: negotiate_deflate(data.decode("latin-1")),
             mutations(7692, [b"permessage-deflate; client_max_window_bits; server_max_window_bits=10",
                              b'permessage-deflate; x="1", permessage-deflate']))

    def test_02_any_compressed_frame_is_a_message_or_a_protocol_error(self):
        """RFC 7692 §6.2, RFC 6455 §7.4.1 Whatever the compressed bytes, a message comes out, or 1002, 1007, 1009."""
        def feed(payload: bytes) -> None:
            for event in server_receiver(max_size=4096).feed(client_frame(payload)):
                if isinstance(event, ProtocolError):
                    self.assertIn(event.code, (1002, 1007, 1009))
        fuzz(self, feed, mutations(7693, [HELLO, HELLO_STORED, HELLO_TWO_BLOCKS, MessageDeflater().compress(b"x" * 300)]))


if __name__ == "__main__":
    unittest.main()
