"""Chapter 10: the two pages as HTML: what the HTML standard and accessibility ask of them.

Parsed with `html.parser`, no browser needed; chapter 11 runs them in one.
"""

import html.parser
import unittest

from tests.support import ROOT


class Page(html.parser.HTMLParser):
    """The facts the tests check: elements with their attributes and ancestors, labels, text."""

    VOID = {"meta", "link", "input", "br", "img", "hr", "source", "wbr", "area", "base", "col", "embed", "track"}

    def __init__(self, path):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.elements: list[tuple[str, dict, tuple[str, ...]]] = []  # (tag, attributes, ancestors)
        self.text_by_id: dict[str, list[tuple[str, tuple[str, ...]]]] = {}  # id -> (text, its element stack)
        self.feed(path.read_text(encoding="utf-8"))
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes, tuple(self.open)))
        if tag not in self.VOID:
            self.open.append(tag if "id" not in attributes else f"{tag}#{attributes['id']}")
            if "lang" in attributes:
                self.open[-1] += f"[lang={attributes['lang']}]"

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop().split("#")[0].split("[")[0] == tag:
                break

    def handle_data(self, data):
        for entry in self.open:
            if "#" in entry:
                identifier = entry.split("#")[1].split("[")[0]
                self.text_by_id.setdefault(identifier, []).append((data, tuple(self.open)))

    def by_id(self, identifier):
        return next(attributes for tag, attributes, _ in self.elements if attributes.get("id") == identifier)

    def text_of(self, identifier, *, skip_lang: str | None = None) -> str:
        parts = self.text_by_id.get(identifier, [])
        return "".join(text for text, stack in parts if not (skip_lang and any(f"[lang={skip_lang}]" in e for e in stack)))


CHAT = Page(ROOT / "static" / "chat.html")
SSE = Page(ROOT / "static" / "sse.html")


class Test01BothPages(unittest.TestCase):

    def test_01_every_script_is_inside_head_or_body(self):
        """WHATWG HTML §13.2.6 A script after </body> is a parse error ("after body" insertion mode) that browsers recover from; validators do not."""
        for page in (CHAT, SSE):
            for tag, _, ancestors in page.elements:
                if tag == "script":
                    self.assertTrue({"head", "body"} & {a.split("#")[0] for a in ancestors}, ancestors)

    def test_02_every_input_has_a_label_element(self):
        """WCAG 2.2 Success Criterion 3.3.2 Labels or Instructions: each input has a <label for> naming its id (a placeholder is no label)."""
        for page in (CHAT, SSE):
            labelled = {attributes.get("for") for tag, attributes, _ in page.elements if tag == "label"}
            for tag, attributes, _ in page.elements:
                if tag == "input":
                    self.assertIn(attributes.get("id"), labelled)

    def test_03_the_state_line_is_a_status_that_screen_readers_announce(self):
        """WAI-ARIA 1.2 role=status: the state line is a live region whose changes (open, closed, reconnecting) are announced."""
        for page in (CHAT, SSE):
            self.assertEqual(page.by_id("state").get("role"), "status")

    def test_04_the_pages_say_their_language(self):
        """WHATWG HTML §3.2.6.2 The lang attribute on the root <html>: the document's language is English."""
        for page in (CHAT, SSE):
            tag, attributes, _ = page.elements[0]
            self.assertEqual((tag, attributes.get("lang")), ("html", "en"))

    def test_05_the_tutorials_ids_are_kept(self):
        """The tutorial: its pages stay recognisable: the elements have the ids its scripts use."""
        def ids(page):
            return {attributes["id"] for _, attributes, _ in page.elements if "id" in attributes}
        self.assertLessEqual({"chatBox", "messageInput", "sendButton"}, ids(CHAT))
        self.assertIn("ul", ids(SSE))


    def test_06_each_wire_panel_is_not_a_live_region_and_a_keyboard_can_reach_it(self):
        """WAI-ARIA 1.2 aria-live="off" (a frame or a line every second must not be read out), no live role (log, status); WCAG 2.2 2.1.1 Keyboard: it scrolls, so tabindex=0 lets a keyboard reach it; it is named by its visible heading, "On the wire"."""
        for page in (CHAT, SSE):
            with self.subTest(page=page):
                wire = page.by_id("wire")
                self.assertEqual(wire.get("aria-live"), "off")
                self.assertNotIn(wire.get("role"), ("log", "status", "alert", "marquee", "timer"))
                self.assertEqual(wire.get("tabindex"), "0")
                self.assertEqual(page.text_of(wire.get("aria-labelledby")), "On the wire")

    def test_07_each_wire_panel_has_a_labelled_toggle_on_by_default_that_says_what_it_controls(self):
        """WCAG 2.2 3.3.2 Labels or Instructions and WAI-ARIA 1.2 aria-controls: a checkbox with its own <label>, checked by default, controlling the panel and described by the panel's note (the chat's names the masking key, the clock's `retry:`)."""
        for page, in_note in ((CHAT, "masking key"), (SSE, "retry:")):
            with self.subTest(page=page):
                toggle = page.by_id("wireToggle")
                self.assertEqual(toggle.get("type"), "checkbox")
                self.assertIn("checked", toggle)
                self.assertEqual(toggle.get("aria-controls"), "wire")
                label = [attributes for tag, attributes, _ in page.elements if tag == "label" and attributes.get("for") == "wireToggle"]
                self.assertEqual(len(label), 1)
                self.assertIn(in_note, page.text_of(toggle.get("aria-describedby")))


class Test02TheChatPage(unittest.TestCase):

    def test_01_the_chat_is_a_log(self):
        """WAI-ARIA 1.2 role=log: new messages are announced as they arrive, the old ones are not read again."""
        self.assertEqual(CHAT.by_id("chatBox").get("role"), "log")

    def test_02_the_button_keeps_the_tutorials_word_marked_as_chinese(self):
        """WHATWG HTML §3.2.6.2 The lang attribute: the Chinese word 发送 is marked lang="zh"; the English reads on its own."""
        self.assertIn("发送", CHAT.text_of("sendButton"))
        self.assertEqual(CHAT.text_of("sendButton", skip_lang="zh").strip(), "Send")
        self.assertNotIn("发送", CHAT.text_of("sendButton", skip_lang="zh"))


class Test03TheSSEPage(unittest.TestCase):

    def test_01_the_list_of_events_says_deliberately_that_it_is_not_announced(self):
        """WAI-ARIA 1.2 aria-live="off": a clock ticking every second must not be read out every second."""
        self.assertEqual(SSE.by_id("ul").get("aria-live"), "off")

    def test_02_the_events_and_the_wire_panel_are_named_by_their_visible_headings(self):
        """WAI-ARIA 1.2 aria-labelledby: the list and the wire panel are named by the headings a sighted reader sees ("On the wire")."""
        for identifier, heading in (("ul", "Events, as EventSource dispatched them"), ("wire", "On the wire")):
            labelled_by = SSE.by_id(identifier).get("aria-labelledby")
            self.assertEqual(SSE.text_of(labelled_by), heading)
            self.assertIn(("h2", {"id": labelled_by}), [(tag, attributes) for tag, attributes, _ in SSE.elements])

    def test_03_the_page_says_what_its_ids_are(self):
        """WHATWG HTML §9.2.4 Last-Event-ID: a short note says the 16-digit ids are microseconds since the epoch at the server's start, plus 1 per event."""
        note = " ".join(SSE.text_of("idNote").split())
        self.assertIn("microseconds since 1970 (the Unix epoch) at the moment the server started numbering", note)
        self.assertIn("the one before plus 1", note)


if __name__ == "__main__":
    unittest.main()
