"""Chapter 3: WebSocket frames (RFC 6455 §5): the bytes, masking, the decoder's rules.

`Receiver` is fed literal bytes, the RFC's own examples first: no sockets.
"""

import json
import os
import random
import unittest
from unittest import mock

import ws_server
from tests.support import fuzz, mutations
from ws_server import (Close, CloseCode, Message, Opcode, Ping, Pong, Protocol, ProtocolError, Receiver,
                       apply_mask, encode_frame)

# §5.7, byte for byte.
HELLO_UNMASKED = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
HEL_LO_FRAGMENTS = bytes([0x01, 0x03, 0x48, 0x65, 0x6C]) + bytes([0x80, 0x02, 0x6C, 0x6F])
PING_HELLO_UNMASKED = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
PONG_HELLO_MASKED = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
BINARY_256_HEADER = bytes([0x82, 0x7E, 0x01, 0x00])
BINARY_64K_HEADER = bytes([0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00])
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])

# §5.2: a binary frame's header (FIN, opcode 2) for each payload length around the switches of form.
LENGTH_FORMS = {0: bytes([0x82, 0]), 125: bytes([0x82, 125]),
                126: bytes([0x82, 126, 0x00, 0x7E]), 65535: bytes([0x82, 126, 0xFF, 0xFF]),
                65536: bytes([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0])}


def server_receiver(**options) -> Receiver:
    """What the server uses: client frames must be masked."""
    return Receiver(mask_expected=True, **options)


def client_receiver(**options) -> Receiver:
    """What a client uses: server frames must not be masked."""
    return Receiver(mask_expected=False, **options)


def masked(opcode, payload=b"", fin=True, key=MASK):
    return encode_frame(opcode, payload, fin=fin, masking_key=key)


class Test01RfcExamples(unittest.TestCase):
    """§5.7 "Examples", encoded by us and decoded by us."""

    def test_01_single_frame_unmasked_text(self):
        """§5.7 A single-frame unmasked text message: 0x81 0x05 "Hello"."""
        self.assertEqual(encode_frame(Opcode.TEXT, b"Hello"), HELLO_UNMASKED)
        self.assertEqual(client_receiver().feed(HELLO_UNMASKED), [Message(Opcode.TEXT, b"Hello")])

    def test_02_single_frame_masked_text(self):
        """§5.7 A single-frame masked text message, with the key 37 fa 21 3d."""
        self.assertEqual(masked(Opcode.TEXT, b"Hello"), HELLO_MASKED)
        self.assertEqual(server_receiver().feed(HELLO_MASKED), [Message(Opcode.TEXT, b"Hello")])

    def test_03_fragmented_unmasked_text(self):
        """§5.7 A fragmented unmasked text message: "Hel", then "lo"."""
        frames = encode_frame(Opcode.TEXT, b"Hel", fin=False) + encode_frame(Opcode.CONTINUATION, b"lo")
        self.assertEqual(frames, HEL_LO_FRAGMENTS)
        self.assertEqual(client_receiver().feed(HEL_LO_FRAGMENTS), [Message(Opcode.TEXT, b"Hello")])

    def test_04_unmasked_ping_and_masked_pong(self):
        """§5.7 An unmasked Ping and a masked Pong, both carrying "Hello"."""
        self.assertEqual(encode_frame(Opcode.PING, b"Hello"), PING_HELLO_UNMASKED)
        self.assertEqual(client_receiver().feed(PING_HELLO_UNMASKED), [Ping(b"Hello")])
        self.assertEqual(masked(Opcode.PONG, b"Hello"), PONG_HELLO_MASKED)
        self.assertEqual(server_receiver().feed(PONG_HELLO_MASKED), [Pong(b"Hello")])

    def test_05_256_bytes_use_the_16_bit_length(self):
        """§5.7 256 bytes of binary data use the 16-bit extended length (126)."""
        payload = os.urandom(256)
        self.assertEqual(encode_frame(Opcode.BINARY, payload), BINARY_256_HEADER + payload)
        self.assertEqual(client_receiver().feed(BINARY_256_HEADER + payload), [Message(Opcode.BINARY, payload)])

    def test_06_64_kib_use_the_64_bit_length(self):
        """§5.7 64 KiB of binary data use the 64-bit extended length (127)."""
        payload = os.urandom(65536)
        self.assertEqual(encode_frame(Opcode.BINARY, payload), BINARY_64K_HEADER + payload)
        self.assertEqual(client_receiver().feed(BINARY_64K_HEADER + payload), [Message(Opcode.BINARY, payload)])

    def test_07_the_length_encoding_is_always_minimal(self):
        """§5.2 "the minimal number of bytes MUST be used to encode the length": 0-125 in the 7 bits, 126-65535 after 126 in 16 bits, from 65536 after 127 in 64 bits."""
        for length, header in LENGTH_FORMS.items():
            with self.subTest(length=length):
                self.assertEqual(encode_frame(Opcode.BINARY, bytes(length)), header + bytes(length))

    def test_08_the_servers_own_send_path_uses_the_same_length_forms(self):
        """§5.2 The same minimal forms for a message the server sends through `Protocol` (`encode_server_frame`), 125, 126, 65535 and 65536 bytes: the bytes on the wire, and a client decodes them back."""
        for length, header in LENGTH_FORMS.items():
            payload = os.urandom(length)
            with self.subTest(length=length):
                server = Protocol()
                server.send_binary(payload)
                [frame] = server.data_to_send()
                wire = frame if isinstance(frame, bytes) else b"".join(frame)
                self.assertEqual(wire, header + payload)
                self.assertEqual(ws_server.encode_server_frame(Opcode.BINARY, payload), frame)
                self.assertEqual(client_receiver().feed(wire), [Message(Opcode.BINARY, payload)])

    def test_09_the_header_is_read_from_the_start_of_the_bytes_unless_told_where(self):
        """§5.2 `parse_frame_header` reads the header at position 0 unless given another start, and returns where the payload begins: 0x81 0x05 is FIN, TEXT, unmasked, 5 bytes, payload at 2; the same frame after one byte is read with start=1."""
        header, payload_start = ws_server.parse_frame_header(HELLO_UNMASKED)
        self.assertEqual((header.fin, header.opcode, header.masked, header.length, payload_start), (True, Opcode.TEXT, False, 5, 2))
        self.assertEqual(ws_server.parse_frame_header(b"\x00" + HELLO_UNMASKED, 1), (header, 3))
        self.assertIsNone(ws_server.parse_frame_header(HELLO_UNMASKED[:1]))

    def test_10_frame_header_is_unmasked_final_and_uncompressed_unless_told(self):
        """§5.2 `frame_header(TEXT, 5)` is 0x81 0x05: FIN set, RSV1 clear, MASK clear unless asked (a server never masks, §5.1); with masked=True the MASK bit is set (0x85)."""
        self.assertEqual(ws_server.frame_header(Opcode.TEXT, 5), b"\x81\x05")
        self.assertEqual(ws_server.frame_header(Opcode.TEXT, 5, masked=True), b"\x81\x85")
        self.assertEqual(ws_server.frame_header(Opcode.TEXT, 5, fin=False, rsv1=True), b"\x41\x05")

    def test_11_a_frame_of_two_bytes_is_whole_an_empty_pong(self):
        """§5.2 The shortest frame is its 2 header bytes: 0x8a 0x00, fed alone, is an empty Pong; its first byte alone is nothing yet."""
        receiver = client_receiver()
        self.assertEqual(receiver.feed(b"\x8a"), [])
        self.assertEqual(receiver.feed(b"\x00"), [Pong(b"")])
        self.assertEqual(client_receiver().feed(b"\x8a\x00"), [Pong(b"")])

    def test_12_a_messages_data_is_str_for_text_and_bytes_for_binary(self):
        """§5.6 A text message's payload is UTF-8 and `Message.data` gives it as str ("hé" from 68 c3 a9); a binary message's data is bytes, the same bytes."""
        text = Message(Opcode.TEXT, b"h\xc3\xa9").data
        self.assertEqual((type(text), text), (str, "hé"))
        data = Message(Opcode.BINARY, bytearray(b"h\xc3\xa9")).data
        self.assertEqual((type(data), data), (bytes, b"h\xc3\xa9"))


class Test02Masking(unittest.TestCase):
    """§5.3: transformed[i] = original[i] XOR masking_key[i MOD 4]."""

    @staticmethod
    def by_the_definition(data, key):
        return bytes(b ^ key[i % 4] for i, b in enumerate(data))

    def test_01_apply_mask_and_mask_lanes_equal_the_definition_byte_for_byte(self):
        """§5.3 `apply_mask` (Part I) and `mask_lanes` (Part II, large payloads) give transformed[i] = original[i] XOR masking_key[i MOD 4], at every size around the switch from one to the other."""
        rng = random.Random(6455)
        lanes = ws_server.MASK_LANES_FROM
        sizes = (0, 1, 3, 4, 5, 125, 1000, lanes - 1, lanes, lanes + 1, 65536 + 7)
        for size in sizes:
            data, key = rng.randbytes(size), rng.randbytes(4)
            expected = self.by_the_definition(data, key)
            for mask in (apply_mask, ws_server.mask_lanes):
                with self.subTest(size=size, mask=mask.__name__):
                    self.assertEqual(bytes(mask(data, key)), expected)

    def test_02_masking_twice_gives_the_original(self):
        """§5.3 Masking and unmasking are the same operation."""
        data = os.urandom(100_003)
        self.assertEqual(apply_mask(apply_mask(data, MASK), MASK), data)

    def test_03_a_frame_fed_in_997_byte_pieces_is_unmasked_from_the_right_key_byte(self):
        """§5.3 A 70,000-byte payload fed in 997-byte pieces, which start at every position in the key, unmasks to the original."""
        payload = os.urandom(70_000)
        frame = masked(Opcode.BINARY, payload, key=b"\x01\x02\x03\x04")
        header_size = 2 + 8 + 4  # the 64-bit length and the key
        self.assertEqual({(i - header_size) % 4 for i in range(997, len(frame), 997)}, {0, 1, 2, 3})
        receiver, events = server_receiver(), []
        for i in range(0, len(frame), 997):
            events += receiver.feed(frame[i:i + 997])
        self.assertEqual(events, [Message(Opcode.BINARY, payload)])

    def test_04_frames_fed_one_byte_at_a_time_decode_the_same(self):
        """§5.2 Every header split at every byte (the 7-bit, 16-bit and 64-bit lengths, the masking key) and a ping between fragments, fed one byte at a time, give the same events as fed at once."""
        stream = (masked(Opcode.TEXT, b"Hel", fin=False) + masked(Opcode.PING, b"?")
                  + masked(Opcode.CONTINUATION, b"lo") + masked(Opcode.BINARY, bytes(300))
                  + masked(Opcode.BINARY, bytes(65536)) + masked(Opcode.CLOSE, b"\x03\xe8"))
        expected = [Ping(b"?"), Message(Opcode.TEXT, b"Hello"), Message(Opcode.BINARY, bytes(300)),
                    Message(Opcode.BINARY, bytes(65536)), Close(1000, "")]
        self.assertEqual(server_receiver().feed(stream), expected)
        receiver, events = server_receiver(), []
        for i in range(len(stream)):
            events += receiver.feed(stream[i:i + 1])
        self.assertEqual(events, expected)

    def test_05_a_message_in_one_piece_is_handed_over_as_unmasked_not_copied_again(self):
        """Operational: a message that arrived in one piece is handed over as the bytes unmasking made (`Message.payload`: "not copied again"); only a message in several pieces is joined, into one bytes."""
        payload = os.urandom(4096)
        made = []
        real = ws_server.mask_lanes
        with mock.patch.object(ws_server, "mask_lanes", side_effect=lambda data, key: made.append(real(data, key)) or made[-1]):
            [message] = server_receiver().feed(masked(Opcode.BINARY, payload))
            self.assertIs(message.payload, made[-1])
            self.assertEqual(message.payload, payload)
            frames = masked(Opcode.BINARY, payload[:3000], fin=False) + masked(Opcode.CONTINUATION, payload[3000:])
            [joined] = server_receiver().feed(frames)
        self.assertEqual((type(joined.payload), joined.payload), (bytes, payload))


class Test03Fragmentation(unittest.TestCase):
    """§5.4: a message in several frames; control frames may come in between."""

    def test_01_a_ping_between_fragments_is_delivered_before_the_message(self):
        """§5.4 Control frames may be injected in the middle of a fragmented message."""
        frames = (masked(Opcode.TEXT, b"frag", fin=False) + masked(Opcode.PING, b"?")
                  + masked(Opcode.CONTINUATION, b"ment"))
        self.assertEqual(server_receiver().feed(frames), [Ping(b"?"), Message(Opcode.TEXT, b"fragment")])

    def test_02_empty_fragments_are_fine(self):
        """§5.4 Nothing requires a fragment to carry data: three empty fragments are one empty message."""
        frames = (masked(Opcode.BINARY, b"", fin=False) + masked(Opcode.CONTINUATION, b"", fin=False)
                  + masked(Opcode.CONTINUATION, b""))
        self.assertEqual(server_receiver().feed(frames), [Message(Opcode.BINARY, b"")])

    def test_03_utf8_split_across_fragments_is_valid(self):
        """§5.6 A character split across fragments is valid UTF-8 once joined."""
        euro = "€".encode()
        frames = masked(Opcode.TEXT, euro[:1], fin=False) + masked(Opcode.CONTINUATION, euro[1:])
        self.assertEqual(server_receiver().feed(frames), [Message(Opcode.TEXT, euro)])

    def test_04_close_in_the_middle_of_a_fragmented_message_is_a_close(self):
        """§5.4 Control frames "MAY be injected in the middle of a fragmented message": a Close there is a Close (Autobahn 7.1.5)."""
        frames = masked(Opcode.TEXT, b"frag", fin=False) + masked(Opcode.CLOSE, b"\x03\xe8")
        self.assertEqual(server_receiver().feed(frames), [Close(1000, "")])


class Test04ProtocolErrors(unittest.TestCase):
    """Each broken rule fails the connection with its close code (§7.4.1)."""

    def assertFails(self, data, code, receiver=None, fragment=""):
        events = (receiver or server_receiver()).feed(data)
        self.assertIsInstance(events[-1], ProtocolError, events)
        self.assertEqual(events[-1].code, code)
        self.assertIn(fragment, events[-1].reason)
        return events

    def test_01_an_unmasked_client_frame_is_1002(self):
        """§5.1 A server MUST fail the connection on an unmasked frame (1002)."""
        self.assertFails(encode_frame(Opcode.TEXT, b"hi"), 1002, fragment="unmasked frame from a client")

    def test_02_a_masked_server_frame_is_1002_for_the_client(self):
        """§5.1 A client MUST fail the connection on a masked frame (1002)."""
        self.assertFails(HELLO_MASKED, 1002, client_receiver(), fragment="masked frame from a server")

    def test_03_rsv_bits_without_an_extension_are_1002(self):
        """§5.2 RSV1-3 MUST be 0 unless an extension defines them (1002)."""
        for rsv in (0x40, 0x20, 0x10):
            frame = bytearray(HELLO_MASKED)
            frame[0] |= rsv
            with self.subTest(rsv=rsv):
                self.assertFails(bytes(frame), 1002, fragment="reserved bits")

    def test_04_reserved_opcodes_are_1002(self):
        """§5.2 A reserved opcode fails the connection (1002)."""
        for opcode in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
            with self.subTest(opcode=opcode):
                self.assertFails(masked(opcode, b"x"), 1002, fragment="reserved opcode")

    def test_05_a_fragmented_control_frame_is_1002(self):
        """§5.5 "Control frames themselves MUST NOT be fragmented" (1002)."""
        self.assertFails(masked(Opcode.PING, b"x", fin=False), 1002, fragment="fragmented control")

    def test_06_a_control_frame_over_125_bytes_is_1002(self):
        """§5.5 Control frames carry at most 125 bytes (1002 past that)."""
        self.assertEqual(server_receiver().feed(masked(Opcode.PING, bytes(125))), [Ping(bytes(125))])
        self.assertFails(masked(Opcode.PING, bytes(126)), 1002, fragment="125")

    def test_07_a_continuation_with_no_message_started_is_1002(self):
        """§5.4 A continuation frame continues a message, or fails (1002)."""
        self.assertFails(masked(Opcode.CONTINUATION, b"x"), 1002, fragment="continuation")

    def test_08_a_new_data_frame_inside_a_fragmented_message_is_1002(self):
        """§5.4 Fragments of two messages never interleave (1002)."""
        frames = masked(Opcode.TEXT, b"a", fin=False) + masked(Opcode.BINARY, b"b")
        self.assertFails(frames, 1002, fragment="inside a fragmented")

    def test_09_a_64_bit_length_with_the_top_bit_set_is_1002(self):
        """§5.2 The most significant bit of a 64-bit length MUST be 0 (1002)."""
        frame = bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1]) + MASK
        self.assertFails(frame, 1002, fragment="top bit")

    def test_10_invalid_utf8_text_is_1007(self):
        """§8.1 A text message that is not UTF-8 fails the connection (1007)."""
        self.assertFails(masked(Opcode.TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), 1007)

    def test_11_invalid_utf8_fails_fast_in_the_middle_of_a_frame(self):
        """§8.1 Invalid UTF-8 fails the connection (1007); this decoder checks as bytes arrive, so it fails before the frame has ended (Autobahn's "fail fast", which the RFC allows but does not require)."""
        frame = masked(Opcode.TEXT, b"valid so far \xff and then more text")
        self.assertFails(frame[:6 + 14], 1007)  # header, key and 14 bytes: the frame is unfinished

    def test_12_truncated_utf8_at_the_end_of_a_message_is_1007(self):
        """§8.1 A message ending in the middle of a character is not UTF-8 (1007)."""
        self.assertFails(masked(Opcode.TEXT, "€".encode()[:2]), 1007)
        frames = masked(Opcode.TEXT, b"ok", fin=False) + masked(Opcode.CONTINUATION, "€".encode()[:2])
        self.assertFails(frames, 1007)

    def test_13_events_before_the_error_are_kept(self):
        """§6.2 A message whose last frame arrived "has been received"; a bad frame after it (§7.1.7) does not take it back: it is still delivered, then the error."""
        events = self.assertFails(HELLO_MASKED + masked(5, b""), 1002)
        self.assertEqual(events[0], Message(Opcode.TEXT, b"Hello"))

    def test_14_after_an_error_the_receiver_decodes_nothing(self):
        """§7.1.7 After failing, the endpoint MUST NOT process more data."""
        receiver = server_receiver()
        self.assertFails(masked(5, b""), 1002, receiver)
        self.assertEqual(receiver.feed(HELLO_MASKED), [])

    def test_15_a_receiver_made_without_options_is_a_servers_and_expects_masked_frames(self):
        """§5.1 "a server MUST close the connection upon receiving a frame that is not masked": `Receiver()` is the server's decoder, so it takes §5.7's masked "Hello" and fails an unmasked one with 1002."""
        self.assertEqual(Receiver().feed(HELLO_MASKED), [Message(Opcode.TEXT, b"Hello")])
        self.assertFails(HELLO_UNMASKED, 1002, Receiver(), fragment="unmasked frame from a client")


class Test05Limits(unittest.TestCase):
    """§10.4 and --max-size, checked from the header; a flood of fragments is charged (operational)."""

    def test_01_a_message_at_the_limit_passes_and_one_byte_more_is_1009(self):
        """§10.4 An endpoint limits the size of a message (here --max-size): one at the limit passes, one byte more is refused with §7.4.1's 1009."""
        self.assertEqual(server_receiver(max_size=1000).feed(masked(Opcode.BINARY, bytes(1000))),
                         [Message(Opcode.BINARY, bytes(1000))])
        events = server_receiver(max_size=1000).feed(masked(Opcode.BINARY, bytes(1001)))
        self.assertIsInstance(events[-1], ProtocolError)
        self.assertEqual(events[-1].code, CloseCode.MESSAGE_TOO_BIG)

    def test_02_the_limit_is_checked_from_the_header_before_the_payload(self):
        """§10.4 The size is checked from the frame header: a header that announces 1 TiB, with no payload at all, is already 1009."""
        header = bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big") + MASK  # announces 1 TiB
        events = server_receiver().feed(header)
        self.assertEqual(events[-1].code, 1009)

    def test_03_fragments_add_up_to_the_limit(self):
        """§10.4 The limit applies to the whole message, over its fragments."""
        frames = masked(Opcode.TEXT, b"a" * 600, fin=False) + masked(Opcode.CONTINUATION, b"a" * 600)
        self.assertEqual(server_receiver(max_size=1000).feed(frames)[-1].code, 1009)

    def test_04_a_flood_of_empty_continuations_is_stopped_by_the_fragment_charge(self):
        """Operational: each continuation frame costs FRAGMENT_CHARGE (64) bytes of --max-size, so a flood of empty ones ends: max_size / 64 of them pass, the next is 1009."""
        limit = 1 << 20
        receiver = server_receiver(max_size=limit)
        empty = masked(Opcode.CONTINUATION, b"", fin=False)
        events = receiver.feed(masked(Opcode.TEXT, b"", fin=False))
        events += receiver.feed(empty * (limit // ws_server.FRAGMENT_CHARGE))
        self.assertEqual(events, [])
        self.assertEqual(receiver.feed(empty)[-1].code, 1009)  # frame number max_size / 64 + 1

    def test_05_autobahn_9_3_1_four_mib_in_64_byte_fragments_passes_with_16_mib(self):
        """Operational: the fragment charge still lets an honest message through: 4 MiB in 65,536 fragments of 64 bytes passes with a 16 MiB --max-size (Autobahn 9.3.1)."""
        chunk = b"*" * 64
        fragments = [masked(Opcode.TEXT, chunk, fin=False)]
        fragments += [masked(Opcode.CONTINUATION, chunk, fin=False)] * (65536 - 2)
        fragments.append(masked(Opcode.CONTINUATION, chunk))
        events = server_receiver(max_size=16 << 20).feed(b"".join(fragments))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].payload, chunk * 65536)

    def test_06_the_default_limit_is_1_mib(self):
        """Operational: with no --max-size a message may be 1 MiB (DEFAULT_MAX_SIZE, 2**20 bytes): one of exactly 2**20 bytes passes, a header announcing 2**20 + 1 is §7.4.1's 1009."""
        self.assertEqual(ws_server.DEFAULT_MAX_SIZE, 1 << 20)
        payload = bytes(1 << 20)
        self.assertEqual(Receiver().feed(masked(Opcode.BINARY, payload)), [Message(Opcode.BINARY, payload)])
        header = bytes([0x82, 0xFF]) + ((1 << 20) + 1).to_bytes(8, "big") + MASK
        [error] = Receiver().feed(header)
        self.assertEqual((error.code, error.reason), (1009, "message over the limit of 1048576 bytes"))


class Test06ClosePayloads(unittest.TestCase):
    """§5.5.1 and §7.4: what a close frame may carry."""

    def test_01_empty_means_no_status_code(self):
        """§5.5.1 An empty Close body carries no status code."""
        self.assertEqual(ws_server.parse_close_payload(b""), Close(None, ""))

    def test_02_a_code_and_a_utf8_reason(self):
        """§5.5.1 A Close body is a 2-byte status code, then a UTF-8 reason."""
        self.assertEqual(ws_server.parse_close_payload(b"\x03\xe8bye \xe2\x82\xac"), Close(1000, "bye €"))

    def test_03_one_byte_is_1002(self):
        """§5.5.1 A Close body of 1 byte is a protocol error (1002)."""
        with self.assertRaises(ProtocolError) as caught:
            ws_server.parse_close_payload(b"\x03")
        self.assertEqual(caught.exception.code, 1002)

    def test_04_codes_not_allowed_on_the_wire_are_1002(self):
        """§7.4.1, §7.4.2 Codes that may not be sent (1004-1006, 1015, unassigned ranges) are 1002."""
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
            with self.subTest(code=code), self.assertRaises(ProtocolError) as caught:
                ws_server.parse_close_payload(code.to_bytes(2, "big"))
            self.assertEqual(caught.exception.code, 1002)

    def test_05_registered_and_application_codes_are_accepted(self):
        """§7.4.1 codes, those registered since with IANA (§11.7: 1012-1014), and §7.4.2's 3000-4999 are accepted."""
        for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999):
            with self.subTest(code=code):
                self.assertEqual(ws_server.parse_close_payload(code.to_bytes(2, "big")).code, code)

    def test_06_a_reason_that_is_not_utf8_is_1007(self):
        """§5.5.1 A Close reason is UTF-8; §8.1, §7.4.1: one that is not is 1007."""
        with self.assertRaises(ProtocolError) as caught:
            ws_server.parse_close_payload(b"\x03\xe8\xff")
        self.assertEqual(caught.exception.code, 1007)

    def test_07_our_close_reason_is_trimmed_to_123_bytes_on_a_character_boundary(self):
        """§5.5 A control frame carries at most 125 bytes: 2 for the code leave 123 for the reason; ours is trimmed to 123 bytes, and never in the middle of a character (§5.5.1: it stays UTF-8)."""
        for reason, kept in (("x" * 123, "x" * 123), ("x" * 124, "x" * 123), ("€" * 100, "€" * 41),
                             ("a" + "€" * 100, "a" + "€" * 40)):  # 1 + 3 x 41 = 124: the 41st euro does not fit
            with self.subTest(reason=reason[:3], length=len(reason.encode())):
                payload = ws_server.build_close_payload(1000, reason)
                self.assertEqual(payload, b"\x03\xe8" + kept.encode())
                self.assertLessEqual(len(payload), 125)
                self.assertEqual(ws_server.parse_close_payload(payload), Close(1000, kept))

    def test_08_a_received_close_with_a_124_byte_reason_is_1002(self):
        """§5.5 A Close with a code and a 124-byte reason has a 126-byte payload: over 125, so 1002; 123 bytes pass."""
        self.assertEqual(server_receiver().feed(masked(Opcode.CLOSE, b"\x03\xe8" + b"x" * 123)), [Close(1000, "x" * 123)])
        events = server_receiver().feed(masked(Opcode.CLOSE, b"\x03\xe8" + b"x" * 124))
        self.assertIsInstance(events[-1], ProtocolError)
        self.assertEqual(events[-1].code, 1002)

    def test_09_the_close_codes_are_the_numbers_of_section_7_4_1_and_the_iana_registry(self):
        """§7.4.1 1000 normal closure, 1001 going away, 1002 protocol error, 1003 unsupported data, 1005 no status received, 1006 abnormal closure, 1007 invalid frame payload data, 1008 policy violation, 1009 message too big, 1010 mandatory extension, 1011 internal error, 1015 TLS handshake; §11.7's IANA registry adds 1012 service restart, 1013 try again later, 1014 bad gateway."""
        numbers = {"NORMAL_CLOSURE": 1000, "GOING_AWAY": 1001, "PROTOCOL_ERROR": 1002, "UNSUPPORTED_DATA": 1003,
                   "NO_STATUS_RCVD": 1005, "ABNORMAL_CLOSURE": 1006, "INVALID_FRAME_PAYLOAD_DATA": 1007,
                   "POLICY_VIOLATION": 1008, "MESSAGE_TOO_BIG": 1009, "MANDATORY_EXTENSION": 1010,
                   "INTERNAL_ERROR": 1011, "SERVICE_RESTART": 1012, "TRY_AGAIN_LATER": 1013, "BAD_GATEWAY": 1014,
                   "TLS_HANDSHAKE": 1015}
        self.assertEqual({code.name: code.value for code in CloseCode}, numbers)

    def test_10_a_reason_without_a_code_cannot_be_sent(self):
        """§5.5.1 "If there is a body, the first two bytes of the body MUST be a 2-byte unsigned integer": a Close with no code has an empty body, and a reason with no code is a ValueError."""
        self.assertEqual(ws_server.build_close_payload(None), b"")
        with self.assertRaises(ValueError):
            ws_server.build_close_payload(None, "x")

    def test_11_a_200_character_reason_fills_the_125_bytes_exactly(self):
        """§5.5 A control frame's payload is at most 125 bytes: a 200-character ASCII reason is cut to 123, and the payload with its 2-byte code is exactly 125 bytes."""
        payload = ws_server.build_close_payload(1000, "r" * 200)
        self.assertEqual(payload, b"\x03\xe8" + b"r" * 123)
        self.assertEqual(len(payload), 125)


class Test07Fuzz(unittest.TestCase):
    """Random and mutated frames, in random pieces: only the protocol's own errors come out."""

    def test_01_random_and_mutated_input_never_raises_anything_but_protocol_errors(self):
        """§7.1.7 Whatever arrives, in whatever pieces, the decoder gives events or fails the connection with 1002, 1007 or 1009; no exception comes out."""
        rng = random.Random(20261124)
        valid = [HELLO_MASKED, PONG_HELLO_MASKED, masked(Opcode.TEXT, b"ab", fin=False),
                 masked(Opcode.CONTINUATION, "é".encode()), masked(Opcode.BINARY, bytes(300)),
                 masked(Opcode.CLOSE, b"\x03\xe8ok"), masked(Opcode.PING, b"")]
        kinds = (Message, Ping, Pong, Close)
        for _ in range(3000):
            if rng.random() < 0.3:
                data = rng.randbytes(rng.randrange(1, 64))
            else:
                data = bytearray(b"".join(rng.choice(valid) for _ in range(rng.randrange(1, 5))))
                for _ in range(rng.randrange(0, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            receiver = server_receiver(max_size=4096)
            events, position = [], 0
            while position < len(data):
                step = rng.randrange(1, 40)
                events += receiver.feed(bytes(data[position:position + step]))
                position += step
            for event in events[:-1]:
                self.assertIsInstance(event, kinds)
            if events and isinstance(events[-1], ProtocolError):
                self.assertIn(events[-1].code, (1002, 1007, 1009))
            elif events:
                self.assertIsInstance(events[-1], kinds)

    def test_02_any_close_payload_is_a_close_or_a_protocol_error(self):
        """§5.5.1 Whatever a Close carries, it is read as code and reason, or refused with 1002 or 1007."""
        fuzz(self, ws_server.parse_close_payload, mutations(5510, [b"\x03\xe8bye", b"", b"\x0f\xa0\xe2\x82\xac"]),
             (ProtocolError,))


class Test08TheTraceLine(unittest.TestCase):
    """Operational: --trace logs every frame as one line of its §5.2 fields, `FrameHeader.describe`."""

    def test_01_a_masked_ping_with_41_bytes_is_named_keyed_and_cut_at_40(self):
        """Operational: --trace names the opcode (§5.2: 0x9 is PING), shows MASK=1 and the key in hex, and the first 40 bytes of the payload followed by "..." when there are more."""
        header = ws_server.FrameHeader(True, False, False, False, Opcode.PING, True, 41, MASK)
        self.assertEqual(header.describe(b"x" * 41),
                         "FIN=1 RSV=000 opcode=0x9 PING MASK=1 len=41 key=37fa213d payload=b'" + "x" * 40 + "'...")
        self.assertEqual(header.describe(b"x" * 40),
                         "FIN=1 RSV=000 opcode=0x9 PING MASK=1 len=41 key=37fa213d payload=b'" + "x" * 40 + "'")

    def test_02_an_unmasked_frame_has_key_dash_and_a_reserved_opcode_is_named_reserved(self):
        """Operational: --trace shows key=- for an unmasked frame (§5.1: every server frame), each RSV bit in order, and RESERVED for an opcode §5.2 leaves unassigned (0x3)."""
        header = ws_server.FrameHeader(False, True, False, True, 0x3, False, 0, None)
        self.assertEqual(header.describe(), "FIN=0 RSV=101 opcode=0x3 RESERVED MASK=0 len=0 key=- payload=b''")

    def test_03_every_opcode_of_section_5_2_has_its_name(self):
        """§5.2 (registered in §11.8): 0x0 CONTINUATION, 0x1 TEXT, 0x2 BINARY, 0x8 CLOSE, 0x9 PING, 0xA PONG, each named in the trace line; the others are RESERVED."""
        names = {0x0: "CONTINUATION", 0x1: "TEXT", 0x2: "BINARY", 0x8: "CLOSE", 0x9: "PING", 0xA: "PONG"}
        self.assertEqual(ws_server.OPCODE_NAMES, names)
        for opcode in range(16):
            with self.subTest(opcode=opcode):
                header = ws_server.FrameHeader(True, False, False, False, opcode, False, 0, None)
                self.assertIn(f" opcode={opcode:#x} {names.get(opcode, 'RESERVED')} MASK=0 ", header.describe())

    def test_04_a_compressed_frame_shows_its_inflated_size_and_others_do_not(self):
        """Operational: for a compressed message (RFC 7692) --trace shows the payload after inflation and its size as inflated=N next to the length on the wire; without inflated=True there is no inflated= at all."""
        header = ws_server.FrameHeader(True, True, False, False, Opcode.TEXT, False, 7, None)
        self.assertEqual(header.describe(b"hello" * 3, inflated=True),
                         "FIN=1 RSV=100 opcode=0x1 TEXT MASK=0 len=7 inflated=15 key=- payload=b'hellohellohello'")
        self.assertEqual(header.describe(b"hello" * 3),
                         "FIN=1 RSV=100 opcode=0x1 TEXT MASK=0 len=7 key=- payload=b'hellohellohello'")

    def test_05_the_decoder_hands_every_frame_to_the_trace_unmasked_control_frames_too(self):
        """Operational: --trace sees every frame the decoder reads, through `on_frame(header, payload, inflated)`: §5.7's masked Pong with its payload unmasked (§5.3) and inflated False, then each fragment of a message with its own payload."""
        frames = []
        receiver = server_receiver(on_frame=lambda header, payload, inflated: frames.append((header.opcode, payload, inflated)))
        events = receiver.feed(PONG_HELLO_MASKED + masked(Opcode.TEXT, b"Hel", fin=False) + masked(Opcode.CONTINUATION, b"lo"))
        self.assertEqual(events, [Pong(b"Hello"), Message(Opcode.TEXT, b"Hello")])
        self.assertEqual(frames, [(Opcode.PONG, b"Hello", False), (Opcode.TEXT, b"Hel", False),
                                  (Opcode.CONTINUATION, b"lo", False)])


class Tap:
    """A `WireTap` as a server sets it up, sans I/O: a Receiver whose frames it sees, the reports
    it sends as parsed JSON, a clock the test moves, and a page that may be behind."""

    def __init__(self, rate: float = 50.0, compression=None) -> None:
        self.reports: list[dict] = []
        self.now = 0.0
        self.behind = False
        self.tap = ws_server.WireTap(lambda text: self.reports.append(json.loads(text)), rate,
                                     lambda: self.now, lambda: self.behind)
        self.receiver = server_receiver(on_frame=self.tap.frame_decoded, compression=compression)

    def read(self, data: bytes) -> list:
        """What the server does with bytes it read: the tap sees them first, then the decoder."""
        self.tap.bytes_in(data)
        return self.receiver.feed(data)


class Test09TheWirePanel(unittest.TestCase):
    """Operational (the chat page's "On the wire" panel, ws_server II.10): `WireTap` turns the frames of one connection into reports for the page, field by field as §5.2 draws them."""

    def test_01_the_rfcs_masked_hello_is_reported_with_its_key_masked_bytes_and_unmasked_bytes(self):
        """§5.7 A single-frame masked text message (0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58): the report has the header with its key, FIN 1, opcode 1, MASK 1, length 5, the masked payload as it came and "Hello" unmasked (§5.3)."""
        tap = Tap()
        self.assertEqual(tap.read(HELLO_MASKED), [Message(Opcode.TEXT, b"Hello")])
        self.assertEqual(tap.reports, [{
            "type": "frame", "from": "client", "header": "818537fa213d", "fin": True, "rsv1": False, "rsv2": False,
            "rsv3": False, "opcode": 1, "name": "TEXT", "mask": True, "length": 5, "maskingKey": "37fa213d",
            "payload": "7f9f4d5158", "unmasked": "48656c6c6f", "inflated": None, "text": "Hello", "skipped": 0}])

    def test_02_bytes_that_arrive_one_at_a_time_give_the_same_reports(self):
        """§5.7 The masked "Hello" then the masked Pong, fed one byte per read: the tap splits frames as the decoder does, whatever the reads, and reports each once, in order."""
        whole, piecewise = Tap(), Tap()
        whole.read(HELLO_MASKED + PONG_HELLO_MASKED)
        for byte in HELLO_MASKED + PONG_HELLO_MASKED:
            piecewise.read(bytes([byte]))
        self.assertEqual(piecewise.reports, whole.reports)
        self.assertEqual([(r["name"], r["unmasked"]) for r in whole.reports], [("TEXT", "48656c6c6f"), ("PONG", "48656c6c6f")])

    def test_03_a_server_frame_is_reported_unmasked_and_a_compressed_one_with_both_sizes(self):
        """§5.1 and RFC 7692 §7.2.3.1: the server's unmasked "Hello" (MASK 0, no key) and the RFC's compressed "Hello" (0xc1 0x07 0xf2 0x48 0xcd 0xc9 0xc9 0x07 0x00): RSV1 1, 7 bytes on the wire, 5 inflated, the text "Hello"."""
        tap = Tap()
        tap.tap.frames_out([HELLO_UNMASKED, bytes([0xC1, 0x07, 0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])])
        plain, compressed = tap.reports
        self.assertEqual((plain["header"], plain["mask"], plain["maskingKey"], plain["unmasked"], plain["text"]),
                         ("8105", False, None, None, "Hello"))
        self.assertEqual((compressed["rsv1"], compressed["length"], compressed["inflated"], compressed["text"],
                          compressed["payload"]), (True, 7, 5, "Hello", "f248cdc9c90700"))

    def test_04_a_compressed_client_frame_shows_the_inflated_size_the_decoder_made(self):
        """RFC 7692 §7.2.1: the browser's compressed "Hello", masked: the report pairs the bytes as they came (RSV1 1, length 7, masked DEFLATE data) with the decoder's inflated message (5 bytes, "Hello")."""
        parameters = ws_server.DeflateParameters(server_no_context_takeover=True, client_no_context_takeover=True)
        tap = Tap(compression=ws_server.Compression(parameters, ws_server.MessageDeflater()))
        frame = bytearray(masked(Opcode.TEXT, bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])))
        frame[0] |= 0x40  # RSV1
        self.assertEqual(tap.read(bytes(frame)), [Message(Opcode.TEXT, b"Hello")])
        (report,) = tap.reports
        self.assertEqual((report["rsv1"], report["length"], report["inflated"], report["text"], report["unmasked"]),
                         (True, 7, 5, "Hello", "f248cdc9c90700"))

    def test_05_a_close_frame_is_reported_with_its_code_name_and_reason(self):
        """§5.5.1 and §7.4.1: a masked Close carrying 1001 and "bye" is reported with code 1001, its name (going away) and the reason."""
        tap = Tap()
        tap.read(masked(Opcode.CLOSE, b"\x03\xe9bye"))
        self.assertEqual(tap.reports[0]["close"], {"code": 1001, "name": "going away", "reason": "bye"})

    def test_06_a_long_payload_is_cut_at_64_bytes_and_its_length_kept(self):
        """Operational: a 200-byte binary frame is reported with length 200 but only its first WIRE_SHOWN (64) bytes, masked and unmasked."""
        tap = Tap()
        tap.read(masked(Opcode.BINARY, bytes(range(200))))
        (report,) = tap.reports
        self.assertEqual(report["length"], 200)
        self.assertEqual(bytes.fromhex(report["unmasked"]), bytes(range(ws_server.WIRE_SHOWN)))
        self.assertEqual(len(bytes.fromhex(report["payload"])), ws_server.WIRE_SHOWN)

    def test_07_past_the_rate_frames_are_left_out_and_the_next_report_counts_them(self):
        """Operational (--wire-rate): at 2 a second, of five frames read at once two are reported; a second later the next report says 3 were left out."""
        tap = Tap(rate=2)
        tap.read(HELLO_MASKED * 5)
        self.assertEqual([r["skipped"] for r in tap.reports], [0, 0])
        tap.now += 1.0
        tap.read(HELLO_MASKED)
        self.assertEqual(tap.reports[-1]["skipped"], 3)
        self.assertEqual(len(tap.reports), 3)

    def test_08_while_the_page_is_behind_nothing_is_reported(self):
        """Operational (WIRE_BACKLOG): while the page's connection has reports waiting, frames are left out and counted, not queued."""
        tap = Tap()
        tap.behind = True
        tap.read(HELLO_MASKED + HELLO_MASKED)
        tap.tap.frames_out([HELLO_UNMASKED])
        self.assertEqual(tap.reports, [])
        tap.behind = False
        tap.read(HELLO_MASKED)
        self.assertEqual([r["skipped"] for r in tap.reports], [3])

    def test_09_once_stopped_it_reports_nothing_and_the_decoder_goes_on(self):
        """Operational: when the page stops watching, the tap sends nothing more, and the connection's own decoding is untouched."""
        tap = Tap()
        tap.tap.stop()
        self.assertEqual(tap.read(HELLO_MASKED), [Message(Opcode.TEXT, b"Hello")])
        tap.tap.frames_out([HELLO_UNMASKED])
        tap.tap.ended(1000, "")
        self.assertEqual(tap.reports, [])

    def test_10_a_frame_the_decoder_refuses_is_not_reported_and_the_end_is(self):
        """§5.1: an unmasked frame from a client fails the connection (1002): the tap reports no frame the decoder did not accept, then how the connection ended."""
        tap = Tap()
        events = tap.read(HELLO_UNMASKED)
        self.assertEqual(events[-1].code, CloseCode.PROTOCOL_ERROR)
        tap.tap.ended(1006, "")
        self.assertEqual(tap.reports, [{"type": "end", "code": 1006, "reason": "", "skipped": 0}])

    def test_11_the_handshake_report_works_out_the_rfcs_accept_key_and_hides_credentials(self):
        """§1.3 and §4.2.2: for the key dGhlIHNhbXBsZSBub25jZQ== the report shows key + GUID, SHA-1 b37a4f2c... and s3pPLMBiTxaQ9kYGzzhZRbK+xOo=; the request as read, its Cookie left out."""
        tap = Tap()
        head = (b"GET /?wire=t HTTP/1.1\r\nHost: localhost\r\nCookie: access=secret\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
        handshake = ws_server.Handshake(ws_server.accept_key("dGhlIHNhbXBsZSBub25jZQ=="))
        tap.tap.handshake(head, ws_server.parse_request(head), handshake)
        (report,) = tap.reports
        self.assertEqual((report["key"], report["guid"], report["sha1"], report["accept"]),
                         ("dGhlIHNhbXBsZSBub25jZQ==", "258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
                          "b37a4f2cc0624f1690f64606cf385945b2bec4ea", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
        self.assertEqual(report["request"], "GET /?wire=t HTTP/1.1\nHost: localhost\nCookie: [not shown]\n"
                                            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
        self.assertIn("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", report["response"].split("\n"))

    def test_12_the_ticket_is_read_from_the_query(self):
        """Operational: the chat connection presents its ticket as ?wire=TICKET, alone or among any number of other parameters; a query without one has none."""
        self.assertEqual(ws_server.wire_ticket("wire=abc"), "abc")
        self.assertEqual(ws_server.wire_ticket("x=1&wire=abc"), "abc")
        self.assertEqual(ws_server.wire_ticket("&".join(f"p{i}" for i in range(20)) + "&wire=abc"), "abc")
        self.assertIsNone(ws_server.wire_ticket("x=1&wired=abc"))
        self.assertIsNone(ws_server.wire_ticket(""))

    def test_13_when_it_stops_it_tells_each_hook_once_and_lets_the_page_go(self):
        """Operational: stopping (the page left, or the connection ended) calls each `on_stop` hook once, however often it is asked, and the tap no longer holds the page's `send` or `busy`."""
        tap = Tap()
        calls = []
        tap.tap.on_stop.append(lambda: calls.append("server"))
        tap.tap.on_stop.append(lambda: calls.append("connection"))
        tap.tap.ended(1000, "")
        tap.tap.stop()
        self.assertEqual(calls, ["server", "connection"])
        self.assertFalse(tap.tap.watching)
        self.assertEqual((tap.tap.send, tap.tap.busy), (None, None))


if __name__ == "__main__":
    unittest.main()
