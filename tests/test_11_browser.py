"""Chapter 11: the pages in a real browser: headless Chromium against our two servers.

Skipped, with how to install it, when no Chromium is found; CI installs Debian's `chromium`.
"""

import asyncio
import base64
import hashlib
import http.server
import json
import re
import threading
import unittest
import zlib
from unittest import mock

import sse_server
import ws_server
from tests.browser import INSTALL_HINT, Chromium, DevTools, Tab, find_chromium
from tests.support import (CERT_FILE, KEY_FILE, ROOT, TIMEOUT, StreamClient, async_wait_until, http_request,
                           spki_sha256, wait_until)

BROWSER: Chromium | None = None

#: Where the README's pictures of the pages are made (by tests 16 of the chat and 14 of the SSE page).
SCREENSHOTS = ROOT / "tests" / "screenshots"

#: The entries of the chat page's wire panel, as the data each carries (JavaScript).
WIRE_ITEMS = ("Array.from(document.querySelectorAll('#wire li'))"
              ".map(function (li) { return Object.assign({}, li.dataset); })")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height, from a PNG's IHDR chunk (PNG specification §11.2.2)."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def setUpModule() -> None:
    global BROWSER
    binary = find_chromium()
    if binary is None:
        raise unittest.SkipTest(INSTALL_HINT)
    # Trust the test certificate, and only it (by the hash of its public key), for the TLS tests.
    BROWSER = Chromium(binary, f"--ignore-certificate-errors-spki-list={spki_sha256(CERT_FILE)}")


def tearDownModule() -> None:
    if BROWSER is not None:
        BROWSER.close()


class BrowserTestCase(unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self) -> None:
        self.devtools = await DevTools.open(BROWSER.ws_url)
        self.tabs: list[Tab] = []

    async def asyncTearDown(self) -> None:
        for tab in self.tabs:
            await tab.close()
        await self.devtools.close()

    async def tab(self, url: str) -> Tab:
        tab = await Tab.open(self.devtools, url)
        self.tabs.append(tab)
        return tab


class Test01ChatPage(BrowserTestCase):
    """static/chat.html, served by ws_server.py, in Chromium."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.server = await self.start_chat(0)
        self.url = f"http://127.0.0.1:{self.server.port}/"

    async def asyncTearDown(self) -> None:
        await super().asyncTearDown()
        await asyncio.wait_for(self.server.shutdown(), TIMEOUT + 2)

    async def start_chat(self, port: int) -> ws_server.WebSocketServer:
        server = ws_server.WebSocketServer(ws_server.ServerConfig(port=port, limits=ws_server.Limits(ping_interval=0)))
        await server.start()
        return server

    async def open_chat(self) -> Tab:
        tab = await self.tab(self.url)
        await tab.wait_for("document.getElementById('state').dataset.state === 'open'")
        return tab

    async def test_01_two_tabs_chat_both_ways_with_the_button_and_with_enter(self):
        """RFC 6455 §5.6 text frames, through the chat page: two tabs chat both ways, with the button and with the Enter key."""
        first, second = await self.open_chat(), await self.open_chat()
        await first.evaluate("document.getElementById('messageInput').value = 'hello from the first tab';"
                             "document.getElementById('sendButton').click()")
        for tab in (first, second):
            await tab.wait_for("document.getElementById('chatBox').textContent.includes('hello from the first tab')")
        await second.evaluate("document.getElementById('messageInput').focus()")
        await second.send("Input.insertText", {"text": "and back with Enter"})
        await second.press_enter()
        for tab in (first, second):
            await tab.wait_for("document.getElementById('chatBox').textContent.includes('and back with Enter')")
        self.assertEqual(await second.evaluate("document.getElementById('messageInput').value"), "")

    async def test_02_a_message_that_looks_like_html_is_shown_as_text_and_creates_no_element(self):
        """DOM Standard textContent (a Text node, never parsed): a message that looks like HTML is shown as text: no element, no script, no dialog."""
        tab = await self.open_chat()
        client = await ws_server.connect(self.url.replace("http", "ws"))
        payload = "<img src=x onerror=alert(1)>"
        await client.send(payload)
        await tab.wait_for(f"document.getElementById('chatBox').textContent.includes({json.dumps(payload)})")
        self.assertEqual(await tab.evaluate("document.querySelectorAll('#chatBox *').length"), 0)
        self.assertEqual(await tab.evaluate("document.querySelectorAll('img').length"), 0)
        self.assertFalse([e for e in self.devtools.events if e["method"] == "Page.javascriptDialogOpening"])
        await client.close()

    async def test_03_a_binary_message_is_shown_readably(self):
        """RFC 6455 §5.6 binary frames, through the chat page: a binary message is shown as its size and first bytes, not "[object Blob]"."""
        tab = await self.open_chat()
        client = await ws_server.connect(self.url.replace("http", "ws"))
        await client.send(b"\x00\x01\xfe\xff")
        text = await tab.wait_for("document.getElementById('chatBox').textContent.trim()")
        self.assertEqual(text, "[binary, 4 bytes: 00 01 fe ff]")
        await client.close()

    async def test_06_chromium_negotiates_compression_and_chats_through_it(self):
        """RFC 7692 §5 Chromium offers permessage-deflate; the page shows what was agreed and long lines come back whole."""
        tab = await self.open_chat()
        state = await tab.evaluate("document.getElementById('state').textContent")
        self.assertIn("permessage-deflate; server_no_context_takeover; client_no_context_takeover", state)
        line = "a long line, long enough to be compressed: " + "blah " * 60
        await tab.evaluate(f"document.getElementById('messageInput').value = {json.dumps(line)};"
                           "document.getElementById('sendButton').click()")
        await tab.wait_for(f"document.getElementById('chatBox').textContent.includes({json.dumps(line)})")

    async def test_07_a_random_message_of_exactly_max_size_passes_compressed_and_one_byte_more_is_1009(self):
        """RFC 7692 §8 From Chromium with permessage-deflate: 1 MiB of random bytes (the default --max-size), which compress to a little more than themselves, come back whole; 1 MiB + 1 closes with 1009."""
        tab = await self.open_chat()
        script = """
            new Promise(function (resolve) {
                var size = %d, data = new Uint8Array(size);
                for (var i = 0; i < size; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
                var ws = new WebSocket(location.href.replace('http', 'ws'));
                ws.binaryType = 'arraybuffer';
                ws.onopen = function () { ws.send(data); };
                ws.onmessage = function (event) {
                    var got = new Uint8Array(event.data), same = got.length === size;
                    for (var i = 0; same && i < size; i++) same = got[i] === data[i];
                    resolve(JSON.stringify({echoed: same, extensions: ws.extensions}));
                    ws.close();
                };
                ws.onclose = function (event) { resolve(JSON.stringify({code: event.code, reason: event.reason})); };
            })"""
        limit = ws_server.DEFAULT_MAX_SIZE
        at_limit = json.loads(await tab.evaluate(script % limit))
        self.assertEqual(at_limit["echoed"], True)
        self.assertIn("permessage-deflate", at_limit["extensions"])
        over = json.loads(await tab.evaluate(script % (limit + 1)))
        self.assertEqual(over["code"], 1009)

    async def test_08_no_page_may_show_the_chat_in_a_frame(self):
        """CSP Level 3 §6.4.2 frame-ancestors 'none' (and RFC 7034 X-Frame-Options: DENY): a page that puts the chat in an iframe gets no frame, not even from the same origin; without those headers (the control) the same iframe shows the chat."""
        # The framing page is this server's 404 answer (same origin, so the frame's document is
        # readable when it loads); its own CSP (default-src 'none') would forbid any frame, so
        # the browser is told to leave that one out: what is tested is the chat's answer.
        tab = await self.tab("about:blank")
        await tab.send("Page.setBypassCSP", {"enabled": True})
        await tab.send("Page.navigate", {"url": self.url + "framing-page"})
        await tab.wait_for("location.pathname === '/framing-page' && document.readyState === 'complete'")
        frame = ("new Promise(done => { const f = document.createElement('iframe'); f.src = '/';"
                 " f.onload = () => done(f.contentDocument === null ? 'no frame' : f.contentDocument.title);"
                 " document.body.appendChild(f); })")
        with mock.patch.object(ws_server, "security_headers", lambda policy=None: []):
            self.assertEqual(await tab.evaluate(frame), "WebSocket Chat Example")  # the control
        self.assertEqual(await tab.evaluate(frame), "no frame")

    async def test_05_the_state_line_is_a_status_and_the_chat_a_log(self):
        """WAI-ARIA 1.2 role=status and role=log, and the input's label: what a screen reader announces, in the live page."""
        tab = await self.open_chat()
        self.assertEqual(await tab.evaluate("document.getElementById('state').getAttribute('role')"), "status")
        self.assertEqual(await tab.evaluate("document.getElementById('chatBox').getAttribute('role')"), "log")
        label = await tab.evaluate("document.getElementById('messageInput').labels[0].textContent")
        self.assertEqual(label, "Message")

    async def test_04_the_page_reconnects_after_the_server_restarts(self):
        """RFC 6455 §7.4.1 1001 (going away): the page shows it when the server stops, and reconnects by itself when it is back."""
        tab = await self.open_chat()
        port = self.server.port
        stopping = asyncio.create_task(self.server.shutdown())
        state = await tab.wait_for("document.getElementById('state').dataset.state === 'closed' &&"
                                   "document.getElementById('state').textContent")
        self.assertIn("code 1001", state)  # going away: the server said why
        await asyncio.wait_for(stopping, TIMEOUT + 2)
        self.server = await self.start_chat(port)
        await tab.wait_for("document.getElementById('state').dataset.state === 'open'", timeout=15)
        client = await ws_server.connect(self.url.replace("http", "ws"))
        await client.send("after the restart")
        await tab.wait_for("document.getElementById('chatBox').textContent.includes('after the restart')")
        await client.close()


    async def test_08_a_page_of_another_site_cannot_open_the_chat(self):
        """RFC 6455 §10.2 Cross-site WebSocket hijacking, with the default flags: a page of another origin (here a second server on another port, which Chromium sends as Origin) opens a WebSocket to the chat and never gets it open (the server answered 403); the chat's own page still does."""
        other = await self.start_chat(0)  # "another site": any page not served by this chat
        try:
            # An attacker's page has no CSP of its own; the one our server sends (connect-src
            # 'self') would stop the socket in the browser, so this tab leaves it out: what is
            # tested is the chat server's own answer to a foreign Origin.
            tab = await self.tab("about:blank")
            await tab.send("Page.setBypassCSP", {"enabled": True})
            await tab.send("Page.navigate", {"url": f"http://localhost:{other.port}/"})
            await tab.wait_for(f"location.port === '{other.port}' && document.readyState === 'complete'")
            with self.assertLogs("ws_server", "INFO") as logs:
                outcome = await tab.evaluate(
                    "new Promise(function (done) {"
                    f"  var ws = new WebSocket('ws://127.0.0.1:{self.server.port}/');"
                    "  ws.onopen = function () { done('open'); ws.close(); };"
                    "  ws.onclose = function (event) { done('closed ' + event.code); };"
                    "})")
            self.assertEqual(outcome, "closed 1006")
            self.assertTrue([line for line in logs.output if f"403 origin 'http://localhost:{other.port}'" in line],
                            logs.output)
            await self.open_chat()
        finally:
            await asyncio.wait_for(other.shutdown(), TIMEOUT + 2)

    async def test_09_with_an_access_token_the_page_says_so_and_the_link_lets_it_in(self):
        """RFC 6265 §4.1.2.5-§4.1.2.7, RFC 6750 With --access-token, the page (served without it) says the token is required after its socket is refused; opening the link /?access=TOKEN once sets an HttpOnly cookie (no script reads it) and the page then connects and chats."""
        await asyncio.wait_for(self.server.shutdown(), TIMEOUT + 2)
        self.server = ws_server.WebSocketServer(ws_server.ServerConfig(
            port=0, limits=ws_server.Limits(ping_interval=0), access_token="Tok-3n"))
        await self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}/"
        tab = await self.tab(self.url)
        state = await tab.wait_for("document.getElementById('state').textContent.includes('access token required') &&"
                                   "document.getElementById('state').textContent")
        self.assertIn("?access=", state)
        self.assertNotIn("Tok-3n", await tab.evaluate("document.documentElement.outerHTML"))
        await tab.send("Page.navigate", {"url": self.url + "?access=Tok-3n"})
        await tab.wait_for("location.search === '' && document.getElementById('state').dataset.state === 'open'")
        self.assertEqual(await tab.evaluate("document.cookie"), "")  # HttpOnly: no script reads the token
        client = await ws_server.connect(self.url.replace("http", "ws"), access_token="Tok-3n")
        await client.send("let in")
        await tab.wait_for("document.getElementById('chatBox').textContent.includes('let in')")
        await client.close()

    async def test_10_while_the_page_retries_the_state_line_keeps_the_servers_close_code_and_reason(self):
        """RFC 6455 §7.1.5-§7.1.6 The close code and reason the server sent (1001, "server shutting down") stay on the state line while the page retries; each failed try (refused: 1006, no close frame) is said as "no connection", with when the next try is, and replaces neither."""
        tab = await self.open_chat()
        port = self.server.port
        # Every text the line shows from now on (a try on loopback is refused in a few ms: too
        # short to be caught by polling).
        await tab.evaluate("window.lines = []; new MutationObserver(function () {"
                           " var s = document.getElementById('state'); lines.push(s.dataset.state + ': ' + s.textContent);"
                           "}).observe(document.getElementById('state'), {childList: true, attributes: true})")
        await asyncio.wait_for(self.server.shutdown(), TIMEOUT + 2)
        state = await tab.wait_for("document.getElementById('state').textContent.includes('2 tries failed') &&"
                                   "document.getElementById('state').textContent", timeout=10)  # 2 x at most 1 s
        self.assertRegex(state, r"^closed by the server: code 1001 \(server shutting down\) — "
                                r"no connection \(2 tries failed\), next try in \d+\.\d s$")
        self.assertNotIn("1006", state)
        self.assertEqual(await tab.evaluate("document.getElementById('state').dataset.state"), "closed")
        # Every line since the server closed, the tries ("connecting") included, shows what it said.
        lines = await tab.evaluate("lines")
        self.assertTrue([line for line in lines if line.startswith("connecting: ")], lines)
        self.assertEqual([line for line in lines if "code 1001 (server shutting down)" not in line], [], lines)
        self.server = await self.start_chat(port)
        state = await tab.wait_for("document.getElementById('state').dataset.state === 'open' &&"
                                   "document.getElementById('state').textContent", timeout=15)
        self.assertNotIn("1001", state)  # a new connection: the old close is no longer the news


    # -- the "On the wire" panel (ws_server II.10) ------------------------------------------------

    async def restart_chat(self, **limits) -> None:
        """This test's server, started again with other limits (the same port is not needed)."""
        await asyncio.wait_for(self.server.shutdown(), TIMEOUT + 2)
        self.server = ws_server.WebSocketServer(ws_server.ServerConfig(port=0, limits=ws_server.Limits(**limits)))
        await self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}/"

    @staticmethod
    async def wire_item(tab: Tab, condition: str, timeout: float = 10.0) -> dict:
        """The data of the first entry of the tab's wire panel for which `condition` (JavaScript
        about `d`, the entry's dataset) is true, once there is one."""
        return await tab.wait_for(f"{WIRE_ITEMS}.filter(function (d) {{ return {condition}; }})[0]", timeout)

    async def type_message(self, tab: Tab, text: str) -> None:
        await tab.evaluate("document.getElementById('messageInput').focus()")
        await tab.send("Input.insertText", {"text": text})
        await tab.press_enter()

    async def test_11_a_typed_message_shows_on_the_wire_masked_and_unmasking_its_bytes_gives_it(self):
        """§5.2, §5.3 In Chromium, a message typed in the chat appears in the "On the wire" panel as the server received it: its header bytes (FIN, RSV1, opcode 1, MASK 1, the length, the key), the masking key and the masked bytes, which unmasked here (and inflated when RSV1 says Chromium compressed it, RFC 7692 §7.2.2) give the message; the handshake entry shows the accept key (§4.2.2) worked out from the browser's key."""
        tab = await self.open_chat()
        handshake = await self.wire_item(tab, "d.kind === 'handshake'")
        digest = hashlib.sha1((handshake["key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        self.assertEqual(handshake["accept"], base64.b64encode(digest).decode())
        message = "masked by the browser, unmasked here"
        await self.type_message(tab, message)
        item = await self.wire_item(tab, f"d.from === 'client' && d.opcode === '1' && d.text === {json.dumps(message)}")
        key, masked = bytes.fromhex(item["maskingKey"]), bytes.fromhex(item["payload"])
        unmasked = bytes(byte ^ key[i % 4] for i, byte in enumerate(masked))
        self.assertEqual(unmasked.hex(), item["unmasked"])
        compressed = item["rsv1"] == "1"
        data = zlib.decompressobj(-15).decompress(unmasked + b"\x00\x00\xff\xff") if compressed else unmasked
        self.assertEqual(data, message.encode())
        header = bytes.fromhex(item["header"])
        self.assertEqual(header, bytes([0x80 | (0x40 if compressed else 0) | 0x1, 0x80 | len(masked)]) + key)
        self.assertEqual(int(item["length"]), len(masked))

    async def test_12_a_compressed_message_shows_rsv1_and_both_sizes_both_ways(self):
        """RFC 7692 §6, §7.2.1 A long line, compressed by Chromium and by the server (over --compression-threshold), appears twice in the panel with RSV1 1, its size on the wire smaller than its inflated size, which is the line's."""
        tab = await self.open_chat()
        line = "a long line, long enough to be compressed: " + "blah " * 60
        await self.type_message(tab, line)
        for sender in ("client", "server"):
            with self.subTest(sender=sender):
                item = await self.wire_item(tab, f"d.from === '{sender}' && d.opcode === '1' && d.rsv1 === '1'")
                self.assertEqual(int(item["inflated"]), len(line))
                self.assertLess(int(item["length"]), len(line))
                self.assertTrue(line.startswith(item["text"]))

    async def test_13_the_servers_ping_and_the_browsers_pong_appear(self):
        """§5.5.2, §5.5.3 With keepalive pings every 0.3 s, the panel shows the server's Ping (unmasked) and the Pong that Chromium sent by itself, masked, whose unmasked payload is the Ping's."""
        await self.restart_chat(ping_interval=0.3)
        tab = await self.open_chat()
        ping = await self.wire_item(tab, "d.from === 'server' && d.opcode === '9'")
        self.assertEqual(ping["maskingKey"], "")
        pong = await self.wire_item(tab, f"d.from === 'client' && d.opcode === '10' && d.unmasked === '{ping['payload']}'")
        self.assertNotEqual(pong["maskingKey"], "")

    async def test_14_a_tab_without_the_panel_receives_only_chat_messages(self):
        """Operational: a second tab that turned the panel off (remembered) and reloaded opens one WebSocket, without `wire` or a ticket, and receives exactly the chat's messages, while the first tab's panel shows the same messages as frames."""
        first = await self.open_chat()
        second = await self.open_chat()
        await second.evaluate("document.getElementById('wireToggle').click()")
        await second.send("Network.enable")
        start = len(self.devtools.events)
        await second.send("Page.reload")
        await second.wait_for("document.getElementById('state').dataset.state === 'open' &&"
                              "!document.getElementById('wireToggle').checked")
        for text in ("one", "two"):
            await self.type_message(first, text)
            await second.wait_for(f"document.getElementById('chatBox').textContent.includes('{text}')")
            await self.wire_item(first, f"d.from === 'server' && d.text === '{text}'")

        def of_second(method: str) -> list[dict]:
            return [event["params"] for event in self.devtools.events[start:]
                    if event["method"] == method and event.get("sessionId") == second.session]
        self.assertEqual([created["url"] for created in of_second("Network.webSocketCreated")], [self.url.replace("http", "ws")])
        (request,) = of_second("Network.webSocketWillSendHandshakeRequest")
        self.assertNotIn("sec-websocket-protocol", {name.lower() for name in request["request"]["headers"]})
        await async_wait_until(lambda: len(of_second("Network.webSocketFrameReceived")) >= 2)
        self.assertEqual([frame["response"]["payloadData"] for frame in of_second("Network.webSocketFrameReceived")],
                         ["one", "two"])

    async def test_15_turned_off_the_panel_closes_its_connection_and_on_again_it_shows_a_new_handshake(self):
        """Operational: the toggle off closes the page's `wire` connection (the server stops watching); on again, the chat reconnects through a new one and the panel shows that connection's handshake; the chat goes on."""
        tab = await self.open_chat()
        await self.wire_item(tab, "d.kind === 'handshake'")
        with self.assertLogs("ws_server", "INFO") as logs:
            await tab.evaluate("document.getElementById('wireToggle').click()")
            await async_wait_until(lambda: any("stopped watching the wire" in line for line in logs.output))
        self.assertTrue(await tab.evaluate("document.getElementById('wire').hidden"))
        await tab.evaluate("document.getElementById('wireToggle').click()")
        await tab.wait_for(f"{WIRE_ITEMS}.filter(function (d) {{ return d.kind === 'handshake'; }}).length === 2")
        await tab.wait_for("document.getElementById('state').dataset.state === 'open'")
        await self.type_message(tab, "still chatting")
        await self.wire_item(tab, "d.from === 'server' && d.text === 'still chatting'")

    async def test_17_a_server_that_shows_no_wire_says_so_and_the_page_chats_without_it(self):
        """RFC 6455 §7.1.5-§7.1.6 (Operational: --wire-rate 0): the server closes the page's `wire` connection at once with its reason, which the page shows; the page chats without the panel and asks no more after a reconnection."""
        await asyncio.wait_for(self.server.shutdown(), TIMEOUT + 2)
        self.server = ws_server.WebSocketServer(ws_server.ServerConfig(
            port=0, limits=ws_server.Limits(ping_interval=0), wire_rate=0))
        await self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}/"
        tab = await self.open_chat()
        status = await tab.wait_for("document.getElementById('wireStatus').textContent")
        self.assertEqual(status, f"Closed by the server: {ws_server.WIRE_OFF}.")
        await self.type_message(tab, "no wire here")
        await tab.wait_for("document.getElementById('chatBox').textContent.includes('no wire here')")
        self.assertEqual(await tab.evaluate(f"{WIRE_ITEMS}.length"), 0)
        await tab.send("Network.enable")
        start = len(self.devtools.events)
        for client in tuple(self.server.room.clients):  # the server restarts the chat connection
            client.start_close(1012, "service restart")
        await tab.wait_for("document.getElementById('state').textContent.includes('code 1012')")
        await tab.wait_for("document.getElementById('state').dataset.state === 'open'")
        created = [event["params"]["url"] for event in self.devtools.events[start:]
                   if event["method"] == "Network.webSocketCreated" and event.get("sessionId") == tab.session]
        self.assertEqual(created, [self.url.replace("http", "ws")])  # the chat alone: no `wire` asked again

    async def test_16_the_readme_picture_of_the_page_with_its_panel_open_is_made_here(self):
        """Operational (the README's picture): a screenshot of the chat page with its panel open, after a message and a ping, written to tests/screenshots/chat.png: a PNG of 750 x 480 pixels, under 80 KiB."""
        await self.restart_chat(ping_interval=0.5)
        tab = await self.open_chat()
        await self.type_message(tab, "Hello, wire!")
        await self.wire_item(tab, "d.from === 'client' && d.opcode === '10'")
        await tab.evaluate("var list = document.getElementById('wire'), first = list.querySelector('li[data-from=client]');"
                           "list.scrollTop += first.getBoundingClientRect().top - list.getBoundingClientRect().top - 4")
        data = await tab.screenshot(SCREENSHOTS / "chat.png")
        self.assertEqual((data[:8], png_size(data)), (b"\x89PNG\r\n\x1a\n", (750, 480)))
        self.assertLess(len(data), 80 * 1024)
        self.assertEqual((SCREENSHOTS / "chat.png").read_bytes(), data)

class Test02SSEPage(BrowserTestCase):
    """static/sse.html, served by sse_server.py, in Chromium: EventSource reconnects by itself."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.server = self.start_sse(0)
        self.port = self.server.port

    async def asyncTearDown(self) -> None:
        await super().asyncTearDown()
        await asyncio.to_thread(self.server.stop)

    def start_sse(self, port: int, **options) -> sse_server.SSEServer:
        server = sse_server.SSEServer(sse_server.ServerConfig(port=port, retry=300, heartbeat=0, **options))
        server.start()
        return server

    async def open_page(self) -> Tab:
        tab = await self.tab(f"http://127.0.0.1:{self.port}/")
        await tab.wait_for("source.readyState === 1")
        return tab

    def items(self, contains: str) -> str:
        return f"[...document.querySelectorAll('#ul li')].filter(li => li.textContent.includes({json.dumps(contains)})).length"

    async def test_01_the_page_shows_the_clock_ticking_with_ids(self):
        """WHATWG HTML §9.2.6 lastEventId: the SSE page shows the tutorial's clock ticking, with each event's type and id."""
        tab = await self.open_page()
        await tab.wait_for(f"{self.items('Current time: ')} >= 2", timeout=5)
        text = await tab.evaluate("document.querySelector('#ul li').textContent")
        self.assertRegex(text, r"^Current time: \d\d:\d\d:\d\d \[message, id \d+\]$")
        self.assertEqual(await tab.evaluate("document.getElementById('state').dataset.state"), "open")

    async def test_02_after_the_server_stops_and_restarts_the_page_reconnects_by_itself(self):
        """WHATWG HTML §9.2.2 (the end of the body) and §9.2.3 "reestablish the connection": EventSource reconnects by itself after a restart, and the page shows the reset."""
        tab = await self.open_page()
        await tab.wait_for(f"{self.items('Current time: ')} >= 1", timeout=5)
        await asyncio.to_thread(self.server.stop)
        await tab.wait_for("source.readyState === 0")  # connecting again: the browser retries
        self.server = self.start_sse(self.port)
        await tab.wait_for("source.readyState === 1", timeout=10)
        # A fresh in-memory server does not know the page's last id: it says so with `reset`.
        await tab.wait_for("document.querySelectorAll('#ul li.reset').length === 1")
        self.server.hub.publish("after the restart")
        await tab.wait_for(f"{self.items('after the restart')} === 1")

    async def test_03_a_message_published_with_post_appears_as_text(self):
        """DOM Standard textContent: a published event's data (a string, WHATWG HTML §9.2.6) appears in the page as text, never as HTML."""
        tab = await self.open_page()
        status, _, _ = await asyncio.to_thread(http_request, self.port, "POST", "/publish",
                                               b"<b onmouseover=alert(1)>published</b>")
        self.assertEqual(status, 204)
        await tab.wait_for(f"{self.items('<b onmouseover=alert(1)>published</b>')} === 1")
        self.assertEqual(await tab.evaluate("document.querySelectorAll('#ul b').length"), 0)

    async def test_04_the_page_form_publishes_a_named_event_that_the_page_listens_to(self):
        """WHATWG HTML §9.2.6 `event` sets the type: the page's form publishes a named event, and the page listens for that name."""
        tab = await self.open_page()
        await tab.evaluate("document.getElementById('publishText').value = 'from the form';"
                           "document.getElementById('publishEvent').value = 'note';"
                           "document.querySelector('#publishForm button').click()")
        text = await tab.wait_for("[...document.querySelectorAll('#ul li')].map(li => li.textContent)"
                                  ".find(t => t.includes('from the form'))")
        self.assertRegex(text, r"^from the form \[note, id \d+\]$")

    async def test_06_an_event_named_message_is_shown_once(self):
        """WHATWG HTML §9.2.6 An event named "message" has the type of one with no name: it reaches the page's one listener for it, once."""
        tab = await self.open_page()
        await tab.evaluate("document.getElementById('publishText').value = 'named message';"
                           "document.getElementById('publishEvent').value = 'message';"
                           "document.querySelector('#publishForm button').click()")
        await tab.wait_for(f"{self.items('named message')} === 1")
        status, _, _ = await asyncio.to_thread(http_request, self.port, "POST", "/publish", b"the next one")
        self.assertEqual(status, 204)
        await tab.wait_for(f"{self.items('the next one')} === 1")  # the page has seen both events now
        self.assertEqual(await tab.evaluate(self.items("named message")), 1)
        self.assertEqual(await tab.evaluate("document.getElementById('state').getAttribute('role')"), "status")

    async def test_07_an_empty_message_is_not_published(self):
        """WHATWG HTML §9.2.6 An empty publish would dispatch an event with empty data, an empty line on every page: the form says so instead, and sends nothing."""
        tab = await self.open_page()
        history = self.server.hub.history
        before = history.next_id - 1
        await tab.evaluate("document.getElementById('publishText').value = '';"
                           "document.querySelector('#publishForm button').click()")
        await tab.wait_for("document.getElementById('state').textContent.includes('nothing to publish')")
        status, _, _ = await asyncio.to_thread(http_request, self.port, "POST", "/publish", b"marker")
        self.assertEqual(status, 204)
        await tab.wait_for(f"{self.items('marker')} === 1")  # anything the form had sent came before this
        published = [event.payload for event in history.after(before)]
        self.assertTrue(published[-1].endswith(b"data: marker\n\n"))
        self.assertFalse([payload for payload in published if payload.endswith(b"data: \n\n")])  # no empty event

    async def test_05_another_origin_may_read_the_stream_but_not_with_credentials_and_star(self):
        """Fetch "CORS protocol": another origin may read `*`, but not with credentials."""
        # The tutorial's page connects from another origin, and its server sends `*` with
        # credentials allowed.  `*` alone works; a credentialed request is refused by the browser.
        other = self.start_sse(0)
        try:
            # A page of another origin stands for someone else's site, whose CSP is its own: the
            # one our servers send (connect-src 'self') would rightly keep it from connecting
            # anywhere else, so the browser is told to leave this tab's CSP out.
            tab = await self.tab("about:blank")
            await tab.send("Page.setBypassCSP", {"enabled": True})
            await tab.send("Page.navigate", {"url": f"http://127.0.0.1:{other.port}/missing-page"})
            await tab.wait_for(f"location.port === '{other.port}' && document.readyState === 'complete'")
            script = ("new Promise(done => { const s = new EventSource('http://127.0.0.1:%d/sse/', %s);"
                      " s.onopen = () => { s.close(); done('open'); };"
                      " s.onerror = () => { if (s.readyState === 2) done('refused'); }; })")
            self.assertEqual(await tab.evaluate(script % (self.port, "{}")), "open")
            self.assertEqual(await tab.evaluate(script % (self.port, "{withCredentials: true}")), "refused")
        finally:
            await asyncio.to_thread(other.stop)

    async def test_08_the_form_sends_the_publish_token_and_says_when_it_is_missing_or_wrong(self):
        """RFC 6750 §2.1 Bearer (Operational: --publish-token): the form's token field (a labelled password field) goes in `Authorization`; a 401 is said on the page, with or without a token typed."""
        server = self.start_sse(0, clock=0, publish_token="publish-secret")
        self.addAsyncCleanup(asyncio.to_thread, server.stop)
        tab = await self.tab(f"http://127.0.0.1:{server.port}/")
        await tab.wait_for("source.readyState === 1")
        self.assertEqual(await tab.evaluate("document.querySelector('label[for=publishToken]').textContent"),
                         "Publish token (if required)")
        self.assertEqual(await tab.evaluate("document.getElementById('publishToken').type"), "password")
        for token, said in (("", "needs a publish token"), ("wrong", "the publish token was refused")):
            await tab.evaluate(f"document.getElementById('publishText').value = 'try';"
                               f"document.getElementById('publishToken').value = {json.dumps(token)};"
                               "document.querySelector('#publishForm button').click()")
            await tab.wait_for(f"document.getElementById('state').textContent.includes({json.dumps(said)})")
        await tab.evaluate("document.getElementById('publishToken').value = 'publish-secret';"
                           "document.querySelector('#publishForm button').click()")
        await tab.wait_for(f"{self.items('try')} === 1")

    async def test_09_an_access_link_opens_the_page_and_its_stream(self):
        """RFC 6265 (an HttpOnly, SameSite=Strict cookie) with --access-token: opening /?access=TOKEN lands on / with the cookie, which EventSource sends (same origin), so the stream opens; without it, the stream is 401 and the page says it gave up."""
        server = self.start_sse(0, clock=0, access_token="access-secret")
        self.addAsyncCleanup(asyncio.to_thread, server.stop)
        refused = await self.tab(f"http://localhost:{server.port}/")  # (another host name: no cookie yet)
        await refused.wait_for("source.readyState === 2 && document.getElementById('state').textContent.includes('access token')")
        tab = await self.tab(f"http://127.0.0.1:{server.port}/?access=access-secret")
        await tab.wait_for("source.readyState === 1")
        self.assertEqual(await tab.evaluate("location.search + document.cookie"), "")  # the link gone, the cookie unreadable
        server.hub.publish("for holders of the link")
        await tab.wait_for(f"{self.items('for holders of the link')} === 1")

    async def test_10_a_page_refused_for_capacity_comes_back_by_itself(self):
        """WHATWG HTML §9.2.2 and §9.2.3: refused for capacity with a 200 that sets retry and ends (not a 503, after which it would give up for good), the page's EventSource reconnects by itself and gets events once there is room."""
        server = self.start_sse(0, clock=0, max_clients=1)
        self.addAsyncCleanup(asyncio.to_thread, server.stop)
        holder = await asyncio.to_thread(StreamClient, server.port)
        await asyncio.to_thread(holder.wait_until, lambda: holder.parser.retry is not None)
        tab = await self.tab(f"http://127.0.0.1:{server.port}/")
        await tab.wait_for("document.getElementById('state').textContent.includes('reconnecting')")
        holder.close()
        await tab.wait_for("source.readyState === 1", timeout=10)  # after the retry: 5 x 300 ms
        await asyncio.to_thread(wait_until, lambda: server.hub.subscriber_count == 1, TIMEOUT, "the page")
        server.hub.publish("room again")
        await tab.wait_for(f"{self.items('room again')} === 1")

    async def test_11_a_named_multi_line_event_is_shown_on_the_wire_and_as_dispatched(self):
        """WHATWG HTML §9.2.5-§9.2.6 `event: note` and two `data:` lines, published with ?event=note (a name the page had never seen): the wire panel shows the lines and the blank line that dispatches; the list shows the event with its type, id and both lines (from the wire if EventSource dispatched it before the page listened); the next one is EventSource's own dispatch, to the listener the wire added."""
        tab = await self.open_page()
        await tab.wait_for(f"{self.wire_lines()}.some(l => l.startsWith('retry: '))")
        status, _, _ = await asyncio.to_thread(http_request, self.port, "POST", "/publish?event=note",
                                               b"line one\nline two")
        self.assertEqual(status, 204)
        text = await tab.wait_for(f"{self.texts()}.find(t => t.startsWith('line one'))")
        event_id = re.match(r"^line one\nline two \[note, id (\d+)(\]| — from the wire: .*\]$)", text)[1]
        lines = await tab.wait_for(f"{self.wire_lines()}.includes('id: {event_id}') && {self.wire_lines()}")
        at = lines.index("event: note")
        self.assertEqual(lines[at:at + 5], ["event: note", f"id: {event_id}", "data: line one", "data: line two",
                                            f'(blank line: dispatches the event "note", lastEventId {event_id})'])
        self.assertEqual(await tab.evaluate("getComputedStyle(document.querySelector('#ul li .data')).whiteSpace"),
                         "pre-wrap")
        # The name is known now: the next note is EventSource's own dispatch, shown once.
        status, _, _ = await asyncio.to_thread(http_request, self.port, "POST", "/publish?event=note",
                                               b"second note\nstill two lines")
        self.assertEqual(status, 204)
        text = await tab.wait_for(f"{self.texts()}.find(t => t.startsWith('second note'))")
        self.assertRegex(text, r"^second note\nstill two lines \[note, id \d+\]$")
        await tab.wait_for("(document.documentElement.dataset.pendingWireChecks || '0') === '0'")  # none can add more
        self.assertEqual(await tab.evaluate(f"{self.texts()}.filter(t => t.startsWith('second note')).length"), 1)
        self.assertEqual(await tab.evaluate(f"{self.texts()}.filter(t => t.startsWith('line one')).length"), 1)

    async def test_12_after_a_restart_the_wire_shows_the_last_event_id_the_server_received_and_its_answer(self):
        """WHATWG HTML §9.2.4 Last-Event-ID: after a restart, the wire panel, which reconnects with the Last-Event-ID the EventSource sent, shows the server's comment right after `retry:`, naming that id and its answer: a reset, from a fresh server that never issued it."""
        tab = await self.open_page()
        await tab.wait_for(f"{self.wire_lines()}.includes(': no Last-Event-ID: live events from now')")
        await tab.wait_for(f"{self.items('Current time: ')} >= 1", timeout=5)
        await asyncio.to_thread(self.server.stop)
        await tab.wait_for("source.readyState === 0")
        last = await tab.evaluate("lastId")
        self.assertRegex(last, r"^\d{16}$")  # microseconds since the epoch at the server's start, + 1 per event
        self.server = self.start_sse(self.port)
        await tab.wait_for("source.readyState === 1", timeout=10)
        said = f": Last-Event-ID {last} is unknown here or older than the history kept: reset, then live events"
        lines = await tab.wait_for(f"{self.wire_lines()}.includes({json.dumps(said)}) && {self.wire_lines()}")
        at = lines.index(said)
        self.assertEqual(lines[at - 4:at + 2], [f"→ GET sse, Last-Event-ID: {last}", "← 200 text/event-stream; charset=utf-8",
                                                "retry: 300", "(blank line: no data, so no event is dispatched)",
                                                said, "event: reset"])
        self.assertIn("— the server ended the stream —", lines[:at])

    async def test_13_the_wire_panel_can_be_turned_off_and_on(self):
        """Operational: the toggle hides the panel and closes its connection (one subscriber left, the EventSource); on again, it reads from the page's last id: the server says it replays nothing."""
        tab = await self.open_page()
        await asyncio.to_thread(wait_until, lambda: self.server.hub.subscriber_count == 2, TIMEOUT, "the page's two streams")
        self.assertEqual(await tab.evaluate("document.getElementById('wireToggle').labels[0].textContent"),
                         "Show the stream as it arrives")
        await tab.evaluate("document.getElementById('wireToggle').click()")
        await tab.wait_for(f"{self.wire_lines()}.includes('— stopped: the panel is off —')")
        self.assertTrue(await tab.evaluate("document.getElementById('wire').hidden"))
        await asyncio.to_thread(wait_until, lambda: self.server.hub.subscriber_count == 1, TIMEOUT, "the EventSource alone")
        self.server.hub.publish("while the wire is off")
        await tab.wait_for(f"{self.items('while the wire is off')} === 1")
        last = await tab.evaluate("lastId")
        await tab.evaluate("document.getElementById('wireToggle').click()")
        await tab.wait_for(f"{self.wire_lines()}.includes(': Last-Event-ID {last} received: replaying 0 events, then live events')")
        self.assertFalse(await tab.evaluate("document.getElementById('wire').hidden"))

    async def test_14_the_readme_picture_of_the_page_with_its_panel_open_is_made_here(self):
        """Operational (the README's picture): a screenshot of the SSE page with its wire panel open, after the clock ticked and a two-line `note` was published, written to tests/screenshots/sse.png: a PNG of 750 x 480 pixels, under 80 KiB."""
        tab = await self.open_page()
        await tab.wait_for(f"{self.items('Current time: ')} >= 2", timeout=5)
        status, _, _ = await asyncio.to_thread(http_request, self.port, "POST", "/publish?event=note",
                                               b"Hello from curl\non two lines")
        self.assertEqual(status, 204)
        await tab.wait_for(f"{self.wire_lines()}.includes('data: on two lines')")
        await tab.wait_for(f"{self.texts()}.some(t => t.startsWith('Hello from curl'))")
        data = await tab.screenshot(SCREENSHOTS / "sse.png")
        self.assertEqual((data[:8], png_size(data)), (b"\x89PNG\r\n\x1a\n", (750, 480)))
        self.assertLess(len(data), 80 * 1024)
        self.assertEqual((SCREENSHOTS / "sse.png").read_bytes(), data)

    def texts(self) -> str:
        return "[...document.querySelectorAll('#ul li')].map(li => li.textContent)"

    def wire_lines(self) -> str:
        return "[...document.querySelectorAll('#wire div')].map(d => d.textContent)"

#: A page of another site, which makes the visitor's browser POST to the event server in the
#: three ways that need no preflight: a no-cors fetch, a "simple" CORS fetch (text/plain), and
#: a form with enctype=text/plain submitted by script (into a frame, so the page stays).
ATTACK_PAGE = """<!DOCTYPE html><html><body>
<iframe name="sink"></iframe>
<form id="forged" method="POST" enctype="text/plain" target="sink" action="{target}/publish">
<input type="hidden" name="forged by a form" value="">
</form>
<script>
var done = [];
fetch('{target}/publish', {{method: 'POST', mode: 'no-cors', body: 'forged by a no-cors fetch'}})
    .then(function () {{ done.push('no-cors'); }}, function () {{ done.push('no-cors'); }});
fetch('{target}/publish', {{method: 'POST', body: 'forged by a text/plain fetch', headers: {{'Content-Type': 'text/plain'}}}})
    .then(function () {{ done.push('cors'); }}, function () {{ done.push('cors'); }});
document.querySelector('iframe').onload = function () {{ done.push('form'); }};
document.getElementById('forged').submit();
</script></body></html>"""


class AttackPage(http.server.BaseHTTPRequestHandler):
    """Serves ATTACK_PAGE, aimed at the server's `target` origin, from another port: another origin."""

    def do_GET(self):
        body = ATTACK_PAGE.format(target=self.server.target).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Test04OtherSitesCannotPublish(BrowserTestCase):
    """Cross-site request forgery (Fetch "CORS protocol": simple requests are sent without a preflight), in Chromium: a page on another port makes the browser POST to /publish three ways."""

    async def attack(self, server: sse_server.SSEServer) -> list[str]:
        """Open the attack page against `server`; the data of every event a subscriber got."""
        attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AttackPage)
        attacker.target = f"http://127.0.0.1:{server.port}"
        threading.Thread(target=attacker.serve_forever, daemon=True).start()
        self.addCleanup(attacker.server_close)
        self.addCleanup(attacker.shutdown)
        watcher = await asyncio.to_thread(StreamClient, server.port)
        self.addCleanup(watcher.close)
        tab = await self.tab(f"http://127.0.0.1:{attacker.server_address[1]}/attack.html")
        await tab.wait_for("done.length === 3")
        status, _, _ = await asyncio.to_thread(http_request, server.port, "POST", "/publish", b"marker")
        self.assertEqual(status, 204)  # after the three: whatever they published came before it
        await asyncio.to_thread(watcher.wait_until, lambda: any(e.data == "marker" for e in watcher.events))
        return [event.data for event in watcher.events]

    async def test_01_with_the_default_flags_none_of_the_three_forged_posts_publishes(self):
        """Fetch "CORS protocol": a no-cors fetch, a text/plain fetch and an auto-submitted text/plain form from another origin reach the server, which refuses them (403): no subscriber gets them."""
        server = sse_server.SSEServer(sse_server.ServerConfig(port=0, clock=0, heartbeat=0))
        server.start()
        self.addAsyncCleanup(asyncio.to_thread, server.stop)
        with self.assertLogs("sse_server", "INFO") as logged:
            self.assertEqual(await self.attack(server), ["marker"])
        self.assertEqual(sum("403 origin 'http://127.0.0.1:" in line for line in logged.output), 3)

    async def test_02_the_same_posts_do_publish_where_every_origin_is_allowed(self):
        """Fetch "CORS protocol": the control experiment: with --allow-origin '*' the same page publishes all three, so the first test's silence is the server's refusal, not a failed attack."""
        server = sse_server.SSEServer(sse_server.ServerConfig(port=0, clock=0, heartbeat=0, allowed_origins=("*",)))
        server.start()
        self.addAsyncCleanup(asyncio.to_thread, server.stop)
        published = await self.attack(server)
        self.assertEqual(sorted(data.strip() for data in published[:3]),
                         ["forged by a form=", "forged by a no-cors fetch", "forged by a text/plain fetch"])
        self.assertEqual(published[3:], ["marker"])


class Test03ThePagesOverTLS(BrowserTestCase):
    """Both pages over https://, the chat over wss://: Chromium trusts the test certificate."""

    async def test_01_the_chat_page_works_over_https_and_wss(self):
        """RFC 6455 §3 A page served over https opens wss:// and chats through it."""
        tls = ws_server.server_tls_context(CERT_FILE, KEY_FILE)
        server = ws_server.WebSocketServer(ws_server.ServerConfig(port=0, tls=tls, limits=ws_server.Limits(ping_interval=0)))
        await server.start()
        try:
            tab = await self.tab(f"https://localhost:{server.port}/")
            state = await tab.wait_for("document.getElementById('state').dataset.state === 'open' &&"
                                       "document.getElementById('state').textContent")
            self.assertIn("wss://localhost", state)
            await tab.evaluate("document.getElementById('messageInput').value = 'over wss';"
                               "document.getElementById('sendButton').click()")
            await tab.wait_for("document.getElementById('chatBox').textContent.includes('over wss')")
        finally:
            for tab in self.tabs:
                await tab.close()
            self.tabs.clear()
            await asyncio.wait_for(server.shutdown(), TIMEOUT + 2)

    async def test_02_the_clock_page_works_over_https(self):
        """Operational (TLS deployment): EventSource (WHATWG HTML §9.2.2) over https shows the clock, and the page's form publishes over https."""
        tls = ws_server.server_tls_context(CERT_FILE, KEY_FILE)
        server = sse_server.SSEServer(sse_server.ServerConfig(port=0, heartbeat=0, tls=tls))
        server.start()
        try:
            tab = await self.tab(f"https://localhost:{server.port}/")
            await tab.wait_for("source.readyState === 1")
            await tab.wait_for("[...document.querySelectorAll('#ul li')].some(li => li.textContent.includes('Current time'))")
            await tab.evaluate("document.getElementById('publishText').value = 'over https';"
                               "document.querySelector('#publishForm button').click()")
            await tab.wait_for("[...document.querySelectorAll('#ul li')].some(li => li.textContent.includes('over https'))")
        finally:
            for tab in self.tabs:
                await tab.close()
            self.tabs.clear()
            await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    unittest.main()
