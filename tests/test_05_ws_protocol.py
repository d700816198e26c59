"""Chapter 5: one connection's state machine (RFC 6455 §4.1, §5.5, §7), with literal bytes.

`Protocol` is fed what the peer sent and asked what to send back; no socket and no clock.
The closing handshake from each side, ping and pong in every state, failing the connection,
and the close code the connection ends with.
"""

import os
import unittest
from unittest import mock

import ws_server
from tests.support import fuzz, mutations
from ws_server import (Close, CloseCode, ConnectionClosed, Message, Opcode, Ping, Pong, Protocol, ProtocolError,
                       Receiver, State, encode_frame)

KEY = bytes([0x37, 0xFA, 0x21, 0x3D])  # §5.7's masking key

# From a client (masked, §5.3), as a server receives them.
MASKED_PING_HELLO = encode_frame(Opcode.PING, b"Hello", masking_key=KEY)
MASKED_TEXT_HI = encode_frame(Opcode.TEXT, b"hi", masking_key=KEY)
MASKED_CLOSE_1000_BYE = encode_frame(Opcode.CLOSE, b"\x03\xe8bye", masking_key=KEY)
MASKED_CLOSE_EMPTY = encode_frame(Opcode.CLOSE, b"", masking_key=KEY)

# What a server sends (unmasked, §5.1), byte for byte.
PONG_HELLO = bytes([0x8A, 0x05]) + b"Hello"
CLOSE_1000 = bytes([0x88, 0x02, 0x03, 0xE8])
CLOSE_EMPTY = bytes([0x88, 0x00])
TEXT_HI = bytes([0x81, 0x02]) + b"hi"

# §1.3: the server's answer to §1.2's request, whose key is "dGhlIHNhbXBsZSBub25jZQ==".
RFC_RESPONSE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
RFC_OPENING = ws_server.OpeningHandshake("dGhlIHNhbXBsZSBub25jZQ==", ("chat", "superchat"))


def sent(protocol: Protocol) -> bytes:
    """Everything the protocol has queued, as the bytes that would go on the wire."""
    return b"".join(frame if isinstance(frame, bytes) else b"".join(frame) for frame in protocol.data_to_send())


def decoded(data: bytes, *, masked: bool) -> list:
    """The frames in `data`, decoded as their receiver would decode them."""
    return Receiver(mask_expected=masked).feed(data)


def events(protocol: Protocol) -> list:
    """Every event waiting, handed out (and reacted to) in order."""
    taken = []
    while (event := protocol.next_event()) is not None:
        taken.append(event)
    return taken


class Test01TheClientsOpeningHandshake(unittest.TestCase):
    """§4.1: a client is CONNECTING until the server's answer passes its checks."""

    def test_01_a_client_is_connecting_until_the_answer_then_open(self):
        """§4.1 "_The WebSocket Connection is Established_" once the answer of §1.3 is read."""
        client = Protocol(client=True, opening=RFC_OPENING)
        self.assertEqual(client.state, State.CONNECTING)
        for i in range(0, len(RFC_RESPONSE), 7):  # in pieces, as TCP may deliver it
            client.receive_data(RFC_RESPONSE[i:i + 7])
        self.assertEqual(client.state, State.OPEN)
        self.assertEqual(client.subprotocol, "chat")

    def test_02_frames_right_after_the_answer_are_decoded(self):
        """§4.1: once OPEN, the bytes that followed the answer are frames."""
        client = Protocol(client=True, opening=RFC_OPENING)
        client.receive_data(RFC_RESPONSE + TEXT_HI)
        self.assertEqual(events(client), [Message(Opcode.TEXT, b"hi")])

    def test_03_a_refusal_fails_the_connection_with_the_servers_status(self):
        """§4.1: "If the status code received from the server is not 101, ... _Fail the WebSocket Connection_"."""
        client = Protocol(client=True, opening=RFC_OPENING)
        client.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(client.state, State.CLOSED)
        self.assertEqual(client.handshake_failure.status, 403)
        self.assertTrue(client.close_transport)

    def test_04_the_end_of_tcp_before_the_answer_fails_the_connection(self):
        """§4.1: no answer is no acceptance."""
        client = Protocol(client=True, opening=RFC_OPENING)
        client.receive_data(b"HTTP/1.1 101 Switching")
        client.receive_eof()
        self.assertEqual(client.state, State.CLOSED)
        self.assertIsNotNone(client.handshake_failure)

    def test_05_an_answer_head_without_end_fails_past_the_limit(self):
        """Operational: a client bounds the answer head it reads (16 KiB, as the server's --max-header-bytes): past it the handshake fails (§4.1) and TCP is to be closed."""
        client = Protocol(client=True, opening=RFC_OPENING)
        client.receive_data(b"HTTP/1.1 101 x\r\n" + b"X: y\r\n" * 5000)
        self.assertIn("over", client.handshake_failure.reason)
        self.assertEqual(client.state, State.CLOSED)
        self.assertTrue(client.close_transport)

    def test_06_a_head_of_exactly_the_limit_is_still_waited_for(self):
        """Operational: the client's bound is DEFAULT_MAX_HEADER_BYTES (16384) bytes of answer head not yet ended: exactly that many, with no blank line yet, are waited for; one byte more fails the handshake (§4.1)."""
        start = b"HTTP/1.1 101 Switching Protocols\r\n"
        head = start + b"X: " + b"y" * (ws_server.DEFAULT_MAX_HEADER_BYTES - len(start) - 3)
        self.assertEqual(len(head), ws_server.DEFAULT_MAX_HEADER_BYTES)
        client = Protocol(client=True, opening=RFC_OPENING)
        client.receive_data(head)
        self.assertEqual((client.state, client.handshake_failure), (State.CONNECTING, None))
        client.receive_data(b"y")
        self.assertEqual(client.state, State.CLOSED)
        self.assertEqual(client.handshake_failure.reason, "response head over 16384 bytes")

    def test_07_an_answer_that_starts_with_a_blank_line_fails_at_once(self):
        """§4.1, RFC 9112 §4: an answer begins with its status line; one that begins with the blank line that ends a head (CRLF CRLF, or LF LF, RFC 9112 §2.2) has none, and the handshake fails as soon as it arrives."""
        for answer in (b"\r\n\r\n", b"\n\n"):
            with self.subTest(answer=answer):
                client = Protocol(client=True, opening=RFC_OPENING)
                client.receive_data(answer)
                self.assertEqual(client.state, State.CLOSED)
                self.assertIsNotNone(client.handshake_failure)

    def test_08_the_states_are_the_browsers_ready_state_numbers(self):
        """WHATWG WebSockets: readyState is CONNECTING 0, OPEN 1, CLOSING 2, CLOSED 3; `State` uses the same numbers, so the tutorial's `readyState === WebSocket.OPEN` reads the same here."""
        self.assertEqual((State.CONNECTING, State.OPEN, State.CLOSING, State.CLOSED), (0, 1, 2, 3))

    def test_09_a_servers_protocol_starts_open_with_nothing_to_close(self):
        """§4.2.2 Once the server has sent its 101, "the WebSocket connection is established": a server's Protocol starts OPEN, with nothing queued and no decision taken (close_transport, half_close_transport, close_expected all False)."""
        server = Protocol()
        self.assertEqual(server.state, State.OPEN)
        self.assertEqual((server.close_transport, server.half_close_transport, server.close_expected), (False, False, False))
        self.assertEqual((server.pending_bytes, server.data_to_send()), (0, ()))


class Test02PingAndPong(unittest.TestCase):
    """§5.5.2, §5.5.3: a Ping is answered with a Pong carrying the same Application data."""

    def test_01_a_ping_is_answered_with_a_pong_carrying_the_same_data(self):
        """§5.5.2 Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in response."""
        server = Protocol()
        server.receive_data(MASKED_PING_HELLO)
        self.assertEqual(events(server), [Ping(b"Hello")])
        self.assertEqual(sent(server), PONG_HELLO)  # §5.7: 0x8a 0x05 "Hello"

    def test_02_a_ping_between_fragments_is_answered_before_the_message_is_complete(self):
        """§5.4 A Ping injected in a fragmented message is answered at once; the message follows."""
        server = Protocol()
        server.receive_data(encode_frame(Opcode.TEXT, b"Hel", fin=False, masking_key=KEY) + MASKED_PING_HELLO)
        self.assertEqual(events(server), [Ping(b"Hello")])
        self.assertEqual(sent(server), PONG_HELLO)
        server.receive_data(encode_frame(Opcode.CONTINUATION, b"lo", masking_key=KEY))
        self.assertEqual(events(server), [Message(Opcode.TEXT, b"Hello")])

    def test_03_a_ping_after_this_side_sent_its_close_is_still_answered(self):
        """§5.5.2 "unless it already received a Close frame": having sent one changes nothing."""
        server = Protocol()
        server.send_close(CloseCode.GOING_AWAY)
        sent(server)
        server.receive_data(MASKED_PING_HELLO)
        self.assertEqual(server.state, State.CLOSING)
        self.assertEqual(events(server), [Ping(b"Hello")])
        self.assertEqual(sent(server), PONG_HELLO)

    def test_04_a_ping_after_a_close_was_received_is_not_answered(self):
        """§5.5.2 "... unless it already received a Close frame" (and §1.4: what follows is discarded)."""
        server = Protocol()
        server.receive_data(MASKED_CLOSE_1000_BYE + MASKED_PING_HELLO)
        self.assertEqual(events(server), [Close(1000, "bye")])
        self.assertEqual(sent(server), CLOSE_1000)  # the echo, and no Pong
        server.receive_data(MASKED_PING_HELLO)
        self.assertEqual((events(server), sent(server)), ([], b""))

    def test_05_an_unsolicited_pong_is_ignored(self):
        """§5.5.3 "A Pong frame MAY be sent unsolicited ... A response to an unsolicited Pong frame is not expected"."""
        server = Protocol()
        server.receive_data(encode_frame(Opcode.PONG, b"?", masking_key=KEY))
        self.assertEqual(events(server), [Pong(b"?")])
        self.assertEqual(sent(server), b"")

    def test_06_a_clients_pong_is_masked(self):
        """§5.1 A client masks every frame it sends, a Pong too."""
        client = Protocol(client=True)
        client.receive_data(bytes([0x89, 0x05]) + b"Hello")  # §5.7's unmasked Ping
        events(client)
        self.assertEqual(decoded(sent(client), masked=True), [Pong(b"Hello")])

    def test_07_a_ping_is_sent_and_its_pong_recognised(self):
        """§5.5.2 A Ping may be sent at any time after the connection is established."""
        server = Protocol()
        server.send_ping(b"1234")
        self.assertEqual(sent(server), bytes([0x89, 0x04]) + b"1234")
        server.receive_data(encode_frame(Opcode.PONG, b"1234", masking_key=KEY))
        self.assertEqual(events(server), [Pong(b"1234")])

    def test_08_no_ping_after_a_close(self):
        """§5.5.2, §1.4 A Ping sent after this side's Close arrives after it, at a peer that, having received a Close, owes it no Pong and discards it; after the peer's Close the connection is over: send_ping raises ConnectionClosed in both cases and queues nothing."""
        for who, close in (("this side", lambda protocol: protocol.send_close()),
                           ("the peer", lambda protocol: (protocol.receive_data(MASKED_CLOSE_1000_BYE), events(protocol)))):
            with self.subTest(closed_by=who):
                server = Protocol()
                close(server)
                sent(server)  # the Close
                with self.assertRaises(ConnectionClosed):
                    server.send_ping(b"late")
                self.assertEqual(sent(server), b"")

    def test_09_a_ping_refused_says_how_the_connection_ended(self):
        """§7.1.5 The ConnectionClosed that refuses a Ping carries the close code: 1000 and its reason after the peer's Close(1000, "bye"); 1006 after the end of TCP with no Close, or after this side's own Close while the peer's has not come (no Close received: no code yet)."""
        theirs = Protocol()
        theirs.receive_data(MASKED_CLOSE_1000_BYE)
        events(theirs)
        dropped = Protocol()
        dropped.receive_eof()
        ours = Protocol()
        ours.send_close()
        for name, protocol, expected in (("peer's close", theirs, (1000, "bye")), ("end of tcp", dropped, (1006, "")),
                                         ("our close", ours, (1006, ""))):
            with self.subTest(name), self.assertRaises(ConnectionClosed) as caught:
                protocol.send_ping(b"late")
            self.assertEqual((caught.exception.code, caught.exception.reason), expected)


class Test03TheClosingHandshakeStartedByThePeer(unittest.TestCase):
    """§5.5.1, §7.1.1: a Close is answered with a Close; the server ends TCP first."""

    def test_01_the_server_echoes_the_code_and_closes_tcp_at_once(self):
        """§5.5.1 The endpoint sends a Close in response, echoing the status code; §7.1.1 the server closes TCP first."""
        server = Protocol()
        server.receive_data(MASKED_CLOSE_1000_BYE)
        self.assertEqual(events(server), [Close(1000, "bye")])
        self.assertEqual(sent(server), CLOSE_1000)
        self.assertEqual(server.state, State.CLOSED)
        self.assertTrue(server.close_transport)
        self.assertEqual((server.close_code, server.close_reason), (1000, "bye"))

    def test_02_the_client_echoes_and_waits_for_the_server_to_end_tcp(self):
        """§7.1.1 The client waits for the server to close the TCP connection (within a timeout)."""
        client = Protocol(client=True)
        client.receive_data(bytes([0x88, 0x02, 0x03, 0xE9]))  # Close 1001, unmasked
        self.assertEqual(events(client), [Close(1001, "")])
        self.assertEqual(decoded(sent(client), masked=True), [Close(1001, "")])
        self.assertEqual(client.state, State.CLOSED)
        self.assertTrue(client.close_expected)
        self.assertFalse(client.close_transport)
        client.receive_eof()  # the server's FIN
        self.assertTrue(client.close_transport)
        self.assertEqual(client.close_code, 1001)

    def test_03_a_close_without_a_code_is_answered_without_one_and_its_code_is_1005(self):
        """§7.1.5 "If this Close control frame contains no status code, _The WebSocket Connection Close Code_ is considered to be 1005"."""
        server = Protocol()
        server.receive_data(MASKED_CLOSE_EMPTY)
        events(server)
        self.assertEqual(sent(server), CLOSE_EMPTY)
        self.assertEqual(server.close_code, CloseCode.NO_STATUS_RCVD)

    def test_04_a_message_before_the_close_is_delivered_and_answered_first(self):
        """§5.5.1 The answering Close goes out "as soon as practical", and an endpoint may first finish what it is sending: events are handled in the order they arrived, so the echo of a message read before the Close goes out before the answering Close."""
        server = Protocol()
        server.receive_data(MASKED_TEXT_HI + MASKED_CLOSE_1000_BYE)  # one read
        self.assertEqual(server.next_event(), Message(Opcode.TEXT, b"hi"))
        self.assertEqual(server.state, State.OPEN)
        server.send_text("hi")  # the chat's echo
        self.assertEqual(server.next_event(), Close(1000, "bye"))
        self.assertEqual(sent(server), TEXT_HI + CLOSE_1000)

    def test_05_what_follows_a_close_is_discarded(self):
        """§1.4 "after receiving a control frame indicating the connection should be closed, a peer discards any further data"."""
        server = Protocol()
        server.receive_data(MASKED_CLOSE_1000_BYE + MASKED_TEXT_HI)
        self.assertEqual(events(server), [Close(1000, "bye")])
        with self.assertRaises(ConnectionClosed):
            server.send_text("too late")

    def test_06_the_answering_close_echoes_the_code_alone_and_a_late_message_is_refused_with_it(self):
        """§5.5.1 The answering Close echoes the status code it received (not the reason): close_sent is Close(1000, ""); §7.1.5, §7.1.6 after it, send_text raises ConnectionClosed carrying the peer's code and reason, 1000 and "bye"."""
        server = Protocol()
        server.receive_data(MASKED_CLOSE_1000_BYE)
        events(server)
        self.assertEqual(server.close_sent, Close(1000, ""))
        with self.assertRaises(ConnectionClosed) as caught:
            server.send_text("too late")
        self.assertEqual((caught.exception.code, caught.exception.reason), (1000, "bye"))


class Test04TheClosingHandshakeStartedHere(unittest.TestCase):
    """§7.1.2 Start the WebSocket Closing Handshake: send a Close, wait for the peer's."""

    def test_01_send_close_sends_a_close_and_waits_for_the_peers(self):
        """§7.1.2 A Close with the code goes out; the state is CLOSING until the peer's Close."""
        server = Protocol()
        server.send_close(CloseCode.GOING_AWAY, "going away")
        self.assertEqual(sent(server), bytes([0x88, 0x0C, 0x03, 0xE9]) + b"going away")
        self.assertEqual(server.state, State.CLOSING)
        self.assertTrue(server.close_expected)
        self.assertFalse(server.close_transport)
        server.receive_data(encode_frame(Opcode.CLOSE, b"\x03\xe9", masking_key=KEY))
        self.assertEqual(events(server), [Close(1001, "")])
        self.assertEqual(sent(server), b"")  # it was already sent: no second Close
        self.assertEqual(server.state, State.CLOSED)
        self.assertTrue(server.close_transport)
        self.assertEqual(server.close_code, 1001)

    def test_02_no_data_may_be_sent_after_this_sides_close(self):
        """§5.5.1 "The application MUST NOT send any more data frames after sending a Close frame"."""
        server = Protocol()
        server.send_close()
        with self.assertRaises(ConnectionClosed):
            server.send_text("after")
        self.assertFalse(server.send_frame(TEXT_HI, len(TEXT_HI) + ws_server.QUEUED_FRAME_CHARGE))

    def test_03_messages_received_while_closing_are_still_delivered(self):
        """§1.4, §5.5.1 The peer may still be sending when our Close arrives (it "MAY delay sending a Close frame until its current message is sent"): its messages are delivered."""
        server = Protocol()
        server.send_close()
        server.receive_data(MASKED_TEXT_HI)
        self.assertEqual(events(server), [Message(Opcode.TEXT, b"hi")])

    def test_04_codes_that_may_not_be_sent_are_refused(self):
        """§7.4.1 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close control frame"; nor out-of-range codes."""
        server = Protocol()
        for code in (1004, 1005, 1006, 1015, 999, 2000, 5000):
            with self.subTest(code=code), self.assertRaises(ValueError):
                server.send_close(code)
        self.assertEqual(server.state, State.OPEN)
        self.assertEqual(sent(server), b"")
        server.send_close(4000)
        self.assertEqual(sent(server), bytes([0x88, 0x02, 0x0F, 0xA0]))

    def test_05_a_long_reason_is_trimmed_to_fit_125_bytes(self):
        """§5.5 "All control frames MUST have a payload length of 125 bytes or less"."""
        server = Protocol()
        server.send_close(1000, "€" * 100)
        frame = sent(server)
        self.assertLessEqual(frame[1], 125)
        self.assertEqual(decoded(frame, masked=False)[0].code, 1000)

    def test_06_the_client_masks_its_close_and_ends_after_the_servers_close_and_fin(self):
        """§7.1.1 The client sends a masked Close, reads the server's, then the server's FIN."""
        client = Protocol(client=True)
        client.send_close(1000)
        self.assertEqual(decoded(sent(client), masked=True), [Close(1000, "")])
        client.receive_data(CLOSE_1000)
        events(client)
        self.assertEqual(client.state, State.CLOSED)
        self.assertFalse(client.close_transport)  # waiting for the server's FIN
        client.receive_eof()
        self.assertTrue(client.close_transport)

    def test_07_send_close_with_no_arguments_sends_1000_and_data_after_it_is_refused_with_1006(self):
        """§7.4.1 send_close() closes with 1000 (normal closure): 0x88 0x02 0x03 0xe8 on the wire, close_sent Close(1000, ""); §5.5.1 a message after it raises ConnectionClosed, whose code is 1006 while no Close has been received (§7.1.5)."""
        server = Protocol()
        server.send_close()
        self.assertEqual(sent(server), CLOSE_1000)
        self.assertEqual(server.close_sent, Close(1000, ""))
        with self.assertRaises(ConnectionClosed) as caught:
            server.send_text("after")
        self.assertEqual((caught.exception.code, caught.exception.reason), (1006, ""))

    def test_08_the_end_of_tcp_while_closing_ends_the_wait(self):
        """§7.1.4 When TCP ends the connection is closed: a server waiting for the peer's Close after its own (close_expected) waits no more, closes its side (close_transport), and the close code is 1006, no Close having come."""
        server = Protocol()
        server.send_close()
        self.assertTrue(server.close_expected)
        server.receive_eof()
        self.assertEqual(server.state, State.CLOSED)
        self.assertEqual((server.close_expected, server.close_transport), (False, True))
        self.assertEqual(server.close_code, CloseCode.ABNORMAL_CLOSURE)


class Test05FailingTheConnection(unittest.TestCase):
    """§7.1.7 Fail the WebSocket Connection: a Close with the code, then the end of TCP."""

    def test_01_a_broken_rule_sends_its_code_then_half_closes(self):
        """§7.1.7 A Close with the error's code is sent; TCP is half-closed; the peer has a timeout to end it."""
        server = Protocol()
        server.receive_data(encode_frame(Opcode.TEXT, b"unmasked"))  # §5.1: a client masks
        [error] = events(server)
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual(error.code, CloseCode.PROTOCOL_ERROR)
        self.assertEqual(decoded(sent(server), masked=False)[0].code, 1002)
        self.assertEqual(server.state, State.CLOSING)
        self.assertTrue(server.half_close_transport)
        self.assertTrue(server.close_expected)

    def test_02_after_failing_not_even_the_peers_close_is_read(self):
        """§7.1.7 "MUST NOT continue to attempt to process data (including a responding Close frame)"."""
        server = Protocol()
        server.receive_data(encode_frame(5, b"", masking_key=KEY))  # a reserved opcode
        events(server)
        sent(server)
        server.receive_data(encode_frame(Opcode.CLOSE, b"\x03\xea", masking_key=KEY))
        self.assertEqual(events(server), [])
        self.assertIsNone(server.close_code)

    def test_03_the_close_code_is_1006_when_no_close_was_received(self):
        """§7.1.5 "If _The WebSocket Connection is Closed_ and no Close control frame was received ... 1006"."""
        failed = Protocol()
        failed.receive_data(encode_frame(5, b"", masking_key=KEY))
        events(failed)
        failed.receive_eof()
        self.assertEqual(failed.close_code, CloseCode.ABNORMAL_CLOSURE)
        self.assertEqual(failed.failure.code, CloseCode.PROTOCOL_ERROR)  # our own code is kept apart
        dropped = Protocol()
        dropped.receive_eof()  # TCP ended in OPEN: no Close at all
        self.assertEqual((dropped.state, dropped.close_code), (State.CLOSED, CloseCode.ABNORMAL_CLOSURE))

    def test_04_each_kind_of_bad_data_has_its_code(self):
        """§7.4.1 1002 protocol error, 1007 data inconsistent with the type, 1009 too big to process."""
        for frame, code in ((encode_frame(Opcode.TEXT, b"\xff", masking_key=KEY), 1007),
                            (encode_frame(Opcode.BINARY, bytes(11), masking_key=KEY), 1009),
                            (encode_frame(Opcode.PING, bytes(126), masking_key=KEY), 1002)):
            with self.subTest(code=code):
                server = Protocol(max_size=10)
                server.receive_data(frame)
                self.assertEqual(events(server)[-1].code, code)
                self.assertEqual(decoded(sent(server), masked=False)[0].code, code)

    def test_05_the_io_layer_may_fail_a_connection_and_drop_what_is_queued(self):
        """Operational: the I/O layer fails a connection for its own reasons too (a client too slow for --max-buffer: 1008, §7.1.7), and with discard_queued the Close does not wait behind queued data."""
        server = Protocol()
        for _ in range(3):
            server.send_text("queued")
        server.fail(CloseCode.POLICY_VIOLATION, "too slow", discard_queued=True)
        self.assertEqual(decoded(sent(server), masked=False), [Close(1008, "too slow")])

    def test_06_a_message_complete_before_the_bad_frame_is_delivered(self):
        """§6.2, §7.1.7 A message received whole before the broken rule is still handed over, then the error, in order."""
        server = Protocol()
        server.receive_data(MASKED_TEXT_HI + encode_frame(5, b"", masking_key=KEY))
        kinds = [type(event) for event in events(server)]
        self.assertEqual(kinds, [Message, ProtocolError])

    def test_07_failing_keeps_the_queued_frames_unless_told_and_the_close_goes_last(self):
        """§7.1.7 The Close is sent after what was already queued unless discard_queued is given: two messages queued, then fail(1011), leave as the two messages then Close(1011)."""
        server = Protocol()
        server.send_text("one")
        server.send_text("two")
        server.fail(CloseCode.INTERNAL_ERROR, "gone wrong")
        self.assertEqual(decoded(sent(server), masked=False),
                         [Message(Opcode.TEXT, b"one"), Message(Opcode.TEXT, b"two"), Close(1011, "gone wrong")])

    def test_08_a_connection_is_failed_once(self):
        """§7.1.7 Failing is done once: a second fail() keeps the first failure and sends no second Close; failing while CLOSING (our Close already sent) records the failure and half-closes without another Close; once CLOSED, fail() does nothing at all."""
        server = Protocol()
        server.fail(CloseCode.POLICY_VIOLATION, "first")
        server.fail(CloseCode.INTERNAL_ERROR, "second")
        self.assertEqual((server.failure.code, server.failure.reason), (1008, "first"))
        self.assertEqual(decoded(sent(server), masked=False), [Close(1008, "first")])
        closing = Protocol()
        closing.send_close()
        sent(closing)
        closing.fail(CloseCode.INTERNAL_ERROR, "no answer")
        self.assertEqual(closing.failure.code, 1011)
        self.assertTrue(closing.half_close_transport)
        self.assertEqual(sent(closing), b"")
        closed = Protocol()
        closed.receive_eof()
        closed.fail(CloseCode.INTERNAL_ERROR, "too late")
        self.assertIsNone(closed.failure)
        self.assertFalse(closed.half_close_transport)
        self.assertEqual(sent(closed), b"")

    def test_09_after_the_io_layer_fails_a_connection_nothing_more_is_decoded(self):
        """§7.1.7 "MUST NOT continue to attempt to process data": after fail() from the I/O layer, the events not yet handed out are dropped and a valid frame that arrives later gives no event."""
        server = Protocol()
        server.receive_data(MASKED_TEXT_HI)
        server.fail(CloseCode.POLICY_VIOLATION, "too slow")
        self.assertIsNone(server.next_event())
        server.receive_data(MASKED_TEXT_HI + MASKED_PING_HELLO)
        self.assertEqual(events(server), [])
        self.assertEqual(decoded(sent(server), masked=False), [Close(1008, "too slow")])

    def test_10_discarding_the_queue_leaves_only_the_close_to_pay_for(self):
        """Operational: fail(discard_queued=True) empties the queue and its budget: pending_bytes is then exactly what the Close costs, its bytes plus QUEUED_FRAME_CHARGE."""
        server = Protocol()
        server.send_binary(bytes(1000))
        server.fail(CloseCode.POLICY_VIOLATION, "too slow", discard_queued=True)
        close = bytes([0x88, 0x0A, 0x03, 0xF0]) + b"too slow"
        self.assertEqual(server.pending_bytes, len(close) + ws_server.QUEUED_FRAME_CHARGE)
        self.assertEqual(sent(server), close)


class Test06Sending(unittest.TestCase):
    """§5.1-§5.3 what goes out, and the queue it waits in."""

    def test_01_a_servers_frames_are_unmasked(self):
        """§5.1 "A server MUST NOT mask any frames that it sends to the client"."""
        server = Protocol()
        server.send_text("hi")
        server.send_binary(b"\x00\xff")
        self.assertEqual(sent(server), TEXT_HI + bytes([0x82, 0x02, 0x00, 0xFF]))

    def test_02_a_clients_frames_are_masked_each_with_a_fresh_key_from_os_urandom(self):
        """§5.3 The client "MUST pick a fresh masking key" for each frame, "derived from a strong source of entropy": each frame's key is a new draw from os.urandom (the OS's CSPRNG), and the frames unmask to what was sent."""
        keys = [b"\x01\x02\x03\x04", b"\xa0\xb0\xc0\xd0"]
        client = Protocol(client=True)
        with mock.patch.object(ws_server.os, "urandom", side_effect=keys) as draw:
            client.send_text("hi")
            client.send_text("hi")
        self.assertEqual(draw.call_args_list, [mock.call(4), mock.call(4)])
        first, second = client.data_to_send()
        self.assertEqual((first[2:6], second[2:6]), tuple(keys))
        self.assertEqual(decoded(first + second, masked=True), [Message(Opcode.TEXT, b"hi")] * 2)
        client.send_text("hi")
        client.send_text("hi")
        third, fourth = client.data_to_send()  # the real source: two draws, two keys
        self.assertNotEqual(third[2:6], fourth[2:6])

    def test_03_data_to_send_with_a_limit_takes_whole_frames_and_at_least_one(self):
        """Operational: data_to_send(limit) takes whole frames, in order, and at least one; the limit only says how many leave now, each costing its bytes plus QUEUED_FRAME_CHARGE."""
        server = Protocol()
        for text in ("a", "b", "c"):
            server.send_text(text)
        cost = 3 + ws_server.QUEUED_FRAME_CHARGE
        self.assertEqual(server.pending_bytes, 3 * cost)
        self.assertEqual(server.data_to_send(limit=1), [b"\x81\x01a"])  # at least one
        self.assertEqual(server.data_to_send(limit=2 * cost), [b"\x81\x01b", b"\x81\x01c"])
        self.assertEqual(server.pending_bytes, 0)

    def test_04_a_frame_encoded_once_for_many_is_queued_only_while_open(self):
        """§5.5.1 A broadcast frame is data: once this side has sent its Close it is not queued; §1.4 nor once the peer's Close has come (and been answered)."""
        cost = len(TEXT_HI) + ws_server.QUEUED_FRAME_CHARGE
        ours = Protocol()
        self.assertTrue(ours.send_frame(TEXT_HI, cost))
        ours.send_close()
        self.assertEqual(ours.state, State.CLOSING)
        self.assertFalse(ours.send_frame(TEXT_HI, cost))
        self.assertEqual(sent(ours), TEXT_HI + CLOSE_1000)
        theirs = Protocol()
        self.assertTrue(theirs.send_frame(TEXT_HI, cost))
        theirs.receive_data(MASKED_CLOSE_1000_BYE)
        events(theirs)
        self.assertFalse(theirs.send_frame(TEXT_HI, cost))
        self.assertEqual(sent(theirs), TEXT_HI + CLOSE_1000)

    def test_05_a_frame_of_64_kib_or_more_is_queued_as_header_and_payload_and_leaves_whole(self):
        """Operational: from LARGE_PAYLOAD (64 KiB) up a server frame is queued as (header, payload), not copied into one bytes; frame_size counts both, data_to_send takes it whole even under a smaller limit, and its bytes on the wire decode back (§5.2)."""
        payload = os.urandom(ws_server.LARGE_PAYLOAD)
        server = Protocol()
        server.send_binary(payload)
        server.send_text("after")
        self.assertEqual(server.pending_bytes, 10 + len(payload) + 7 + 2 * ws_server.QUEUED_FRAME_CHARGE)
        [frame] = server.data_to_send(limit=1000)  # at least one frame, and never part of one
        self.assertIsInstance(frame, tuple)
        header, body = frame
        self.assertIs(body, payload)  # the payload itself, not a copy
        self.assertEqual(ws_server.frame_size(frame), 10 + len(payload))
        self.assertEqual(decoded(header + body, masked=False), [Message(Opcode.BINARY, payload)])
        self.assertEqual(server.data_to_send(), [b"\x81\x05after"])
        smaller = Protocol()
        smaller.send_binary(payload[:-1])  # 65535 bytes: one bytes object
        self.assertIsInstance(smaller.data_to_send()[0], bytes)

    def test_06_frames_encoded_once_are_queued_in_order_and_charged_their_cost(self):
        """Operational: send_frame queues the broadcast's frame as it is, after those already queued, and adds its cost to pending_bytes: two frames, both sent in order, the sum of their costs charged."""
        server = Protocol()
        other = b"\x81\x05other"
        self.assertTrue(server.send_frame(TEXT_HI, 100))
        self.assertTrue(server.send_frame(other, 200))
        self.assertEqual(server.pending_bytes, 300)
        self.assertEqual(server.data_to_send(), [TEXT_HI, other])
        self.assertEqual(server.pending_bytes, 0)

    def test_07_data_to_send_with_a_limit_takes_every_frame_that_fits_and_one_larger_alone(self):
        """Operational: data_to_send(limit) takes frames while their costs fit in the limit: of three frames of equal cost, a limit of exactly two costs takes two; a frame larger than the limit leaves alone, then the next, and so does one that is alone in the queue."""
        server = Protocol()
        for text in ("a", "b", "c"):
            server.send_text(text)
        cost = 3 + ws_server.QUEUED_FRAME_CHARGE
        self.assertEqual(server.data_to_send(limit=2 * cost), [b"\x81\x01a", b"\x81\x01b"])
        self.assertEqual(server.pending_bytes, cost)
        self.assertEqual(server.data_to_send(), [b"\x81\x01c"])
        server.send_binary(bytes(500))
        server.send_text("d")
        [large] = server.data_to_send(limit=100)
        self.assertEqual(large, bytes([0x82, 0x7E, 0x01, 0xF4]) + bytes(500))
        self.assertEqual(server.data_to_send(limit=100), [b"\x81\x01d"])
        server.send_binary(bytes(500))
        [alone] = server.data_to_send(limit=100)  # the only frame queued, larger than the limit
        self.assertEqual((alone, server.pending_bytes), (large, 0))


class Test07Fuzz(unittest.TestCase):
    """Seeded random and mutated bytes fed to both sides: the protocol never raises, whatever arrives."""

    def test_01_any_bytes_leave_the_protocol_in_a_state_of_the_machine(self):
        """§7.1.7 Whatever the peer sends, the answer is events, frames and decisions, never an exception."""
        seeds = [MASKED_TEXT_HI + MASKED_PING_HELLO + MASKED_CLOSE_1000_BYE, RFC_RESPONSE + TEXT_HI, PONG_HELLO + CLOSE_1000]

        def run(data: bytes) -> None:
            for protocol in (Protocol(max_size=100), Protocol(client=True, opening=RFC_OPENING), Protocol(client=True)):
                for i in range(0, len(data), 7):
                    protocol.receive_data(data[i:i + 7])
                    events(protocol)
                    sent(protocol)
                protocol.receive_eof()
                self.assertEqual(protocol.state, State.CLOSED)
                self.assertIsNotNone(protocol.close_code)
        fuzz(self, run, mutations(6455, seeds, 1500))


class Test08EventsWaitTheirTurn(unittest.TestCase):
    """Operational: what arrives waits for `next_event`, in the order it arrived."""

    def test_01_two_reads_before_next_event_deliver_both_in_order(self):
        """Operational: events from two receive_data calls made before next_event is asked are all kept, in the order they arrived: a Ping from the first read, then the message and Ping of the second."""
        server = Protocol()
        server.receive_data(MASKED_PING_HELLO)
        server.receive_data(MASKED_TEXT_HI + encode_frame(Opcode.PING, b"2", masking_key=KEY))
        self.assertEqual(events(server), [Ping(b"Hello"), Message(Opcode.TEXT, b"hi"), Ping(b"2")])


class Member:
    """The part of a connection the room uses: its protocol, and `send_frame_bytes`, here
    straight to `Protocol.send_frame` (the budget checks of Part II left out)."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol

    def send_frame_bytes(self, frame, cost) -> None:
        self.protocol.send_frame(frame, cost)


class Test09TheChatRoom(unittest.TestCase):
    """The tutorial's `server.clients.forEach(...)`: `ChatRoom` over Protocols, no sockets."""

    def test_01_a_broadcast_reaches_every_member_and_a_member_that_left_gets_nothing(self):
        """The tutorial's chat: a message goes to every client in the room; after one of two leaves, the other still gets every message and the one that left none; after both leave, nobody does."""
        alice, bob = Member(Protocol()), Member(Protocol())
        room = ws_server.ChatRoom()
        room.join(alice)
        room.join(bob)
        room.broadcast(Message(Opcode.TEXT, b"hi"))
        self.assertEqual((sent(alice.protocol), sent(bob.protocol)), (TEXT_HI, TEXT_HI))
        room.leave(alice)
        room.broadcast(Message(Opcode.TEXT, b"hi"))
        self.assertEqual((sent(alice.protocol), sent(bob.protocol)), (b"", TEXT_HI))
        room.leave(bob)
        room.broadcast(Message(Opcode.TEXT, b"hi"))
        self.assertEqual((sent(alice.protocol), sent(bob.protocol)), (b"", b""))
        self.assertEqual(room.clients, set())

    def test_02_each_member_is_charged_the_frames_size_plus_the_queue_charge(self):
        """Operational: a broadcast charges each client's budget (pending_bytes) the frame's size on the wire plus QUEUED_FRAME_CHARGE, the same as a frame it sent itself."""
        members = [Member(Protocol()) for _ in range(2)]
        room = ws_server.ChatRoom()
        for member in members:
            room.join(member)
        room.broadcast(Message(Opcode.BINARY, bytes(300)))
        for member in members:
            self.assertEqual(member.protocol.pending_bytes, 4 + 300 + ws_server.QUEUED_FRAME_CHARGE)


if __name__ == "__main__":
    unittest.main()
