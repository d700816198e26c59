"""Chapter 4: the text/event-stream format, the WHATWG parser, chunked framing, the history.

Pure functions and literal bytes: no sockets.  Sections are those of the HTML Living Standard,
§9.2 "Server-sent events", and RFC 9112 for chunked transfer coding.
"""

import os
import tempfile
import time
import unittest

import sse_server
from sse_server import (EventStreamParser, History, ServerSentEvent, SQLiteHistory, StoredEvent,
                        encode_chunk, format_comment, format_event, format_retry)


def parse(stream: bytes) -> list[ServerSentEvent]:
    return EventStreamParser().feed(stream)


class Test01FormattingAnEvent(unittest.TestCase):
    """§9.2.5: fields are `name: value` lines; a blank line ends the event."""

    def test_01_data_becomes_a_data_line_and_a_blank_line_ends_the_event(self):
        self.assertEqual(format_event("hello"), "data: hello\n\n")

    def test_02_multi_line_data_becomes_one_data_line_per_line_split_on_cr_lf_and_crlf(self):
        self.assertEqual(format_event("a\nb\rc\r\nd"), "data: a\ndata: b\ndata: c\ndata: d\n\n")

    def test_03_only_cr_lf_and_crlf_split_lines_not_what_str_splitlines_splits_on(self):
        # U+2028 LINE SEPARATOR, U+0085 NEL and form feed are ordinary characters in an event
        # stream; str.splitlines() would split on them and drop the trailing empty line.
        self.assertEqual(format_event("a\u2028b\x85c\x0cd"), "data: a\u2028b\x85c\x0cd\n\n")
        self.assertEqual(format_event("line\n"), "data: line\ndata: \n\n")

    def test_04_event_id_and_retry_fields(self):
        self.assertEqual(format_event("x", event="note", id="42", retry=5000),
                         "event: note\nid: 42\nretry: 5000\ndata: x\n\n")

    def test_05_an_event_name_with_cr_or_lf_is_refused_so_no_field_can_be_injected(self):
        for name in ("a\nb", "a\rb", "a\r\ndata: injected"):
            with self.subTest(name=name), self.assertRaises(ValueError):
                format_event("x", event=name)

    def test_06_an_id_with_cr_lf_or_nul_is_refused(self):
        for id in ("1\n", "1\rretry: 1", "1\x002"):
            with self.subTest(id=id), self.assertRaises(ValueError):
                format_event("x", id=id)

    def test_07_a_negative_retry_is_refused(self):
        with self.assertRaises(ValueError):
            format_event("x", retry=-1)
        with self.assertRaises(ValueError):
            format_retry(-1)

    def test_08_comments_start_with_a_colon_one_per_line(self):
        self.assertEqual(format_comment("heartbeat"), ": heartbeat\n")
        self.assertEqual(format_comment("two\nlines"), ": two\n: lines\n")
        self.assertEqual(format_comment(), ":\n")

    def test_09_every_stream_starts_with_retry_alone(self):
        self.assertEqual(format_retry(3000), "retry: 3000\n\n")

    def test_10_whatever_is_formatted_parses_back_to_the_same_data(self):
        for data in ("", " leading space", "a\r\nb", "\n\n", "tab\there", "emoji \U0001F600", ":colon", "x\r"):
            with self.subTest(data=data):
                text = format_event(data, event="e", id="7")
                expected = data.replace("\r\n", "\n").replace("\r", "\n")
                self.assertEqual(parse(text.encode()), [ServerSentEvent(expected, "e", "7")])


class Test02ParsingTheSpecExamples(unittest.TestCase):
    """The examples of §9.2.6, through the parser, with the results the spec gives."""

    def test_01_three_data_lines_make_one_event_joined_with_lf(self):
        stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
        self.assertEqual(parse(stream), [ServerSentEvent("YHOO\n+2\n10")])

    def test_02_comment_id_and_an_id_field_with_no_value(self):
        stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
        self.assertEqual(parse(stream), [
            ServerSentEvent("first event", last_event_id="1"),
            ServerSentEvent("second event", last_event_id=""),  # `id` alone resets it
            ServerSentEvent(" third event", last_event_id=""),  # only one space is removed
        ])

    def test_03_empty_data_events_and_a_last_block_with_no_blank_line_is_discarded(self):
        stream = b"data\n\ndata\ndata\n\ndata:"
        self.assertEqual(parse(stream), [ServerSentEvent(""), ServerSentEvent("\n")])

    def test_04_the_space_after_the_colon_is_optional(self):
        self.assertEqual(parse(b"data:test\n\ndata: test\n\n"), [ServerSentEvent("test")] * 2)


class Test03ParsingRules(unittest.TestCase):
    """§9.2.5 and §9.2.6, rule by rule."""

    def test_01_one_leading_bom_is_ignored_a_second_one_is_not(self):
        self.assertEqual(parse(b"\xef\xbb\xbfdata: a\n\n"), [ServerSentEvent("a")])
        # "\ufeffdata" is then a field name nobody knows: ignored.
        self.assertEqual(parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"), [])

    def test_02_lines_end_with_cr_lf_or_crlf(self):
        for eol in (b"\n", b"\r", b"\r\n"):
            with self.subTest(eol=eol):
                self.assertEqual(parse(b"data: a" + eol + b"data: b" + eol + eol), [ServerSentEvent("a\nb")])

    def test_03_a_crlf_split_across_two_reads_is_one_line_break(self):
        parser = EventStreamParser()
        self.assertEqual(parser.feed(b"data: a\r"), [])
        self.assertEqual(parser.feed(b"\ndata: b\r\n\r"), [ServerSentEvent("a\nb")])
        self.assertEqual(parser.feed(b"\ndata: c\n\n"), [ServerSentEvent("c")])

    def test_04_feeding_one_byte_at_a_time_gives_the_same_events(self):
        stream = "\ufeffid: 1\r\nevent: é\rdata: ü\r\n\r\n: c\ndata: x\n\nretry: 10\n".encode()
        parser = EventStreamParser()
        events = [e for i in range(len(stream)) for e in parser.feed(stream[i:i + 1])]
        self.assertEqual(events, parse(stream))
        self.assertEqual(events, [ServerSentEvent("ü", "é", "1"), ServerSentEvent("x", "message", "1")])

    def test_05_event_names_the_type_which_defaults_to_message_for_the_next_event(self):
        self.assertEqual(parse(b"event: add\ndata: 1\n\ndata: 2\n\n"),
                         [ServerSentEvent("1", "add"), ServerSentEvent("2", "message")])

    def test_06_the_last_event_id_persists_until_the_stream_sets_another(self):
        parser = EventStreamParser()
        events = parser.feed(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\n\n")
        self.assertEqual([e.last_event_id for e in events], ["7", "7"])
        self.assertEqual(parser.last_event_id, "8")  # set at dispatch even with no data

    def test_07_an_id_containing_nul_is_ignored(self):
        self.assertEqual(parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")[1].last_event_id, "1")

    def test_08_retry_takes_ascii_digits_only(self):
        parser = EventStreamParser()
        parser.feed(b"retry: 1500\n")
        self.assertEqual(parser.retry, 1500)
        for bad in (b"retry: 15s\n", b"retry: -1\n", b"retry: \xd9\xa1\n", b"retry:\n", b"retry: 1 \n"):
            parser.feed(bad)
        self.assertEqual(parser.retry, 1500)

    def test_09_unknown_fields_and_comments_are_ignored(self):
        self.assertEqual(parse(b": hi\nfoo: bar\nDATA: no\ndata: yes\n\n"), [ServerSentEvent("yes")])

    def test_10_a_field_with_no_colon_has_an_empty_value(self):
        self.assertEqual(parse(b"data\ndata\n\n"), [ServerSentEvent("\n")])

    def test_11_only_the_first_colon_separates_name_and_value(self):
        self.assertEqual(parse(b"data: a: b\n\n"), [ServerSentEvent("a: b")])

    def test_12_invalid_utf8_becomes_the_replacement_character(self):
        self.assertEqual(parse(b"data: \xff\xfe ok\n\n"), [ServerSentEvent("\ufffd\ufffd ok")])

    def test_13_a_utf8_character_split_across_two_reads_is_kept_whole(self):
        parser = EventStreamParser()
        data = "data: €\n\n".encode()
        self.assertEqual(parser.feed(data[:7]) + parser.feed(data[7:]), [ServerSentEvent("€")])


class Test04ChunkedFraming(unittest.TestCase):
    """RFC 9112 §7.1: each event is one chunk; size in hex, CRLF, bytes, CRLF."""

    def test_01_an_event_as_one_chunk(self):
        self.assertEqual(encode_chunk(b"data: hello\n\n"), b"d\r\ndata: hello\n\n\r\n")

    def test_02_sizes_are_hex_and_the_last_chunk_is_zero(self):
        self.assertEqual(encode_chunk(b"x" * 255)[:5], b"ff\r\nx")
        self.assertEqual(sse_server.LAST_CHUNK, b"0\r\n\r\n")

    def test_03_the_media_type_has_its_charset_after_a_semicolon(self):
        self.assertEqual(sse_server.EVENT_STREAM_TYPE, "text/event-stream; charset=utf-8")


def stored(id: int) -> StoredEvent:
    return StoredEvent.from_payload(id, format_event(f"event {id}", id=str(id)).encode())


class Test05HistoryForLastEventID(unittest.TestCase):
    """§9.2.4: a reconnecting client sends the last id it saw; the server resumes after it."""

    def test_01_every_event_after_the_last_id_in_order(self):
        history = History(10, first_id=1)
        for id in range(1, 6):
            history.append(stored(id))
        self.assertEqual([e.id for e in history.after(2)], [3, 4, 5])
        self.assertEqual(history.after(5), [])
        self.assertEqual([e.id for e in history.after(0)], [1, 2, 3, 4, 5])

    def test_02_an_id_older_than_the_history_or_never_issued_cannot_be_resumed(self):
        history = History(3, first_id=1)
        for id in range(1, 8):
            history.append(stored(id))  # keeps 5, 6, 7
        self.assertEqual([e.id for e in history.after(4)], [5, 6, 7])
        self.assertIsNone(history.after(3))  # event 4 is gone: a gap
        self.assertIsNone(history.after(8))  # not issued yet

    def test_03_ids_of_an_earlier_run_in_memory_are_too_old_for_this_one(self):
        earlier = History(10)
        earlier.append(stored(earlier.next_id))
        time.sleep(0.001)  # the first id is the start time in microseconds
        later = History(10)
        self.assertGreater(later.next_id, earlier.next_id)
        self.assertIsNone(later.after(earlier.next_id - 1 - 1))

    def test_04_an_sqlite_store_keeps_events_and_ids_across_a_restart(self):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "events.sqlite3")
            first = SQLiteHistory(path, maxlen=3)
            start = first.next_id
            for id in range(start, start + 5):
                first.store(stored(id))
                first.append(stored(id))
            first.close()
            second = SQLiteHistory(path, maxlen=3)
            try:
                self.assertEqual(second.next_id, start + 5)
                self.assertEqual([e.id for e in second.after(start + 1)], [start + 2, start + 3, start + 4])
                self.assertEqual(second.after(start + 2)[0].payload, stored(start + 3).payload)
                self.assertIsNone(second.after(start))
            finally:
                second.close()


if __name__ == "__main__":
    unittest.main()
