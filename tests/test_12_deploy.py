"""Chapter 12: deployment: TLS on the standard `ssl` module (https://, wss://), and a real nginx
in front of both servers, with the configuration the README gives.

The nginx tests start Debian's `nginx` as a foreground child process on free ports, and skip
(saying how to install it) when there is none; CI installs it.
"""

import asyncio
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import sse_server
import ws_server
from tests.support import (CA_FILE, CERT_FILE, KEY_FILE, ROOT, SERVING, TIMEOUT, LogReader, SSEServerTestCase,
                           ServerTestCase, StreamClient, async_wait_until, free_port, python_command, start_process,
                           stop_process, wait_for_service, wait_until)

NGINX_HINT = "no nginx found: install it (Debian/Ubuntu: sudo apt-get install nginx) or set NGINX=/path/to/nginx"


def https_request(port: int, method: str, path: str, body: bytes | None = None, cafile: str | None = CA_FILE):
    connection = http.client.HTTPSConnection("localhost", port, timeout=TIMEOUT,
                                             context=ws_server.client_tls_context(cafile))
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def tls_handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake in memory (ssl.MemoryBIO, no socket) with `localhost`: the client's side,
    once both sides are done; ssl.SSLError if it fails."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname="localhost")
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):  # a handshake is two or three flights; ten rounds is plenty
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if done == 2:
            return client
    raise AssertionError("the TLS handshake did not finish")


def next_events(response: http.client.HTTPResponse, parser: sse_server.EventStreamParser, count: int,
                timeout: float = TIMEOUT) -> list[sse_server.ServerSentEvent]:
    """`count` events read from an open stream, within `timeout` seconds (each read is bounded
    by the connection's own timeout too); AssertionError if the stream ends first or time runs out."""
    deadline = time.monotonic() + timeout
    events: list[sse_server.ServerSentEvent] = []
    while len(events) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {events!r}")
        data = response.read1(65536)
        if not data:
            raise AssertionError(f"the stream ended after {events!r}")
        events += parser.feed(data)
    return events


def closed_without_answer(port: int, data: bytes, timeout: float = TIMEOUT) -> bool:
    """Send `data` raw (no TLS) and read to the end: True if the server closed the connection
    answering nothing, or only a TLS alert record (RFC 8446 §6: content type 21)."""
    answer = raw_answer(port, data, timeout)
    return answer == b"" or answer[0] == 21


def raw_answer(port: int, data: bytes, timeout: float = TIMEOUT, source: str = "127.0.0.1") -> bytes:
    """Send `data` raw (no TLS) and read everything the server answers, to its end."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def served_certificate(port: int) -> bytes:
    """The certificate a TLS server on 127.0.0.1 sends now (DER), whoever signed it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # looked at, not trusted
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        with context.wrap_socket(sock) as tls:
            return tls.getpeercert(binary_form=True)


def der_of(pem_file: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(pem_file).read_text())


SECOND_CERT_FILE = str(Path(CERT_FILE).with_name("second.pem"))
SECOND_KEY_FILE = str(Path(CERT_FILE).with_name("second-key.pem"))


class Test01TheContexts(unittest.TestCase):
    """What the ssl module is asked for, on each side."""

    def test_01_a_server_speaks_tls_1_2_or_later_and_offers_http_1_1(self):
        """RFC 8996 TLS 1.0 and 1.1 are deprecated; RFC 7301 ALPN: offered h2 and http/1.1, the server picks the one it speaks."""
        context = ws_server.server_tls_context(CERT_FILE, KEY_FILE)
        self.assertGreaterEqual(context.minimum_version, ssl.TLSVersion.TLSv1_2)
        client_context = ws_server.client_tls_context(CA_FILE)
        client_context.set_alpn_protocols(["h2", "http/1.1"])
        self.assertEqual(tls_handshake(context, client_context).selected_alpn_protocol(), "http/1.1")

    def test_02_the_key_may_be_in_the_certificate_file(self):
        """RFC 7468 One PEM file may hold the certificate chain and the private key: a server context from it completes a verified handshake."""
        with tempfile.TemporaryDirectory() as folder:
            both = os.path.join(folder, "both.pem")
            with open(both, "w") as file:
                file.write(Path(CERT_FILE).read_text() + Path(KEY_FILE).read_text())
            context = ws_server.server_tls_context(both)
        client = tls_handshake(context, ws_server.client_tls_context(CA_FILE))  # verifies chain and name
        self.assertIn(("commonName", "localhost"), [field for rdn in client.getpeercert()["subject"] for field in rdn])

    def test_03_a_certificate_that_cannot_be_loaded_is_one_clear_error_naming_the_file(self):
        """Operational: --certfile/--keyfile: a certificate or key that cannot be loaded is one line (ValueError) with the file's name."""
        for certfile, keyfile in (("/nonexistent.pem", None), (CERT_FILE, None), (CA_FILE, KEY_FILE)):
            with self.subTest(certfile=certfile, keyfile=keyfile), self.assertRaises(ValueError) as caught:
                ws_server.server_tls_context(certfile, keyfile)
            self.assertIn(certfile, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_04_a_client_verifies_the_certificate_and_the_host_name(self):
        """RFC 9110 §4.3.4 A client checks that the certificate is valid for the host it asked for."""
        context = ws_server.client_tls_context(CA_FILE)
        self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)
        self.assertTrue(context.check_hostname)

    def test_06_the_first_bytes_tell_tls_from_plain_http(self):
        """RFC 8446 §5.1 a TLS record starts with its content type (22, handshake); RFC 9112 §3 an HTTP request with its method and a space: the TLS port tells them apart from the first bytes, and waits while letters could still be a method."""
        sniff = ws_server.sniff_tls_port
        self.assertEqual(sniff(b"\x16\x03\x01\x02\x00"), "tls")
        self.assertEqual(sniff(b"\x80\x2e"), "tls")  # not a letter: TLS decides (and refuses)
        self.assertEqual(sniff(b"GET / HTTP/1.1"), "http")
        self.assertEqual(sniff(b"OPTIONS *"), "http")
        self.assertIsNone(sniff(b""))
        self.assertIsNone(sniff(b"GE"))
        self.assertEqual(sniff(b"GET\r\n"), "neither")
        self.assertEqual(sniff(b"A" * 21), "neither")

    def test_07_handshake_slots_are_capped_in_all_and_per_address(self):
        """Operational: --max-tls-handshakes and --max-tls-handshakes-per-address: one address cannot take every slot, and a slot given back can be taken again."""
        slots = ws_server.HandshakeSlots(total=3, per_address=2)
        self.assertTrue(slots.acquire("10.0.0.1"))
        self.assertTrue(slots.acquire("10.0.0.1"))
        self.assertFalse(slots.acquire("10.0.0.1"))  # its share
        self.assertTrue(slots.acquire("10.0.0.2"))
        self.assertFalse(slots.acquire("10.0.0.3"))  # all of them
        slots.release("10.0.0.1")
        self.assertTrue(slots.acquire("10.0.0.3"))
        self.assertEqual(slots.in_use, 3)

    def test_08_a_failed_load_into_a_context_in_use_would_break_it_so_a_reload_builds_a_new_one(self):
        """RFC 8446 §4.4.2 the server sends its certificate: load_cert_chain again into the same context does replace it for new handshakes, but a load that fails halfway (a key that does not match) leaves a context that completes none: why SIGHUP builds a new context and swaps it in whole."""
        context = ws_server.server_tls_context(CERT_FILE, KEY_FILE)
        look = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        look.check_hostname, look.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(SECOND_CERT_FILE, SECOND_KEY_FILE)
        self.assertEqual(tls_handshake(context, look).getpeercert(binary_form=True), der_of(SECOND_CERT_FILE))
        with self.assertRaises(ssl.SSLError):
            context.load_cert_chain(CERT_FILE, SECOND_KEY_FILE)
        with self.assertRaises(ssl.SSLError):
            tls_handshake(context, look)

    def test_05_x_forwarded_for_is_believed_only_from_a_trusted_proxy(self):
        """Operational: --trusted-proxy: X-Forwarded-For (the older twin of RFC 7239 §5.2 "for") is believed only from a trusted proxy, and only its hop."""
        trusted = ["10.0.0.1"]
        self.assertEqual(ws_server.client_address("10.0.0.1", "203.0.113.7", trusted), "203.0.113.7")
        self.assertEqual(ws_server.client_address("198.51.100.2", "203.0.113.7", trusted), "198.51.100.2")
        # What the client wrote itself, before the proxy's hop, is not believed:
        self.assertEqual(ws_server.client_address("10.0.0.1", "6.6.6.6, 203.0.113.7", trusted), "203.0.113.7")
        self.assertEqual(ws_server.client_address("10.0.0.1", "203.0.113.7, 10.0.0.1", trusted), "203.0.113.7")
        for junk in ("<script>", "x" * 100, ""):
            self.assertEqual(ws_server.client_address("10.0.0.1", junk, trusted), "10.0.0.1")


class Test02TheChatOverTLS(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    server_options = {"tls": ws_server.server_tls_context(CERT_FILE, KEY_FILE), "handshake_timeout": 0.5}

    async def asyncSetUp(self) -> None:
        # The test case runs asyncio in debug mode, which logs every failed TLS accept with its
        # traceback; the server runs without it, and these tests check what it logs then.
        asyncio.get_running_loop().set_debug(False)
        await super().asyncSetUp()

    async def test_01_two_clients_chat_over_wss(self):
        """RFC 6455 §3 wss:// is the WebSocket over TLS; the chat works the same."""
        self.assertEqual(self.server.scheme, "https")
        url = f"wss://localhost:{self.port}/"
        alice = await ws_server.connect(url, cafile=CA_FILE)
        bob = await ws_server.connect(url, cafile=CA_FILE)
        self.clients += [alice, bob]
        await self.wait_for_clients(2)
        await alice.send("over TLS " * 30)  # long enough to be compressed too
        self.assertEqual(await asyncio.wait_for(bob.recv(), TIMEOUT), "over TLS " * 30)

    async def test_02_a_client_refuses_a_certificate_it_cannot_verify(self):
        """RFC 6125 §6 A client that does not trust the issuer fails the connection."""
        with self.assertRaises(ssl.SSLCertVerificationError):
            await ws_server.connect(f"wss://localhost:{self.port}/")  # the system's CAs only

    async def test_03_plain_http_gets_a_400_saying_use_https_and_garbage_is_one_log_line(self):
        """RFC 9110 §15.5.1 plain HTTP on the TLS port (a method and a space, not RFC 8446 §5.1's record type 22) gets a 400 that says to use https:// or wss://; RFC 8446 §6 a record that is not TLS ends the connection: a log line each, never a traceback."""
        with self.assertLogs("ws_server", "INFO") as logs:
            answer = await asyncio.to_thread(raw_answer, self.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 50 + b"\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
            self.assertTrue(answer.endswith(b"\r\n\r\nthis port speaks TLS: use https:// (or wss://)\n"), answer)
            self.assertTrue(await asyncio.to_thread(closed_without_answer, self.port, b"\x16\x03\x01\x00\x05hello, not TLS at all"))
            await async_wait_until(lambda: any("TLS handshake failed" in line for line in logs.output),
                                   message="the handshake's log line")
        self.assertEqual(sum("plain HTTP" in line and "400" in line for line in logs.output), 1)
        self.assertEqual(sum("TLS handshake failed" in line for line in logs.output), 1)
        self.assertNotIn("Traceback", "\n".join(logs.output))

    async def test_04_a_client_that_never_speaks_tls_is_dropped_in_time(self):
        """Operational: --handshake-timeout bounds the TLS handshake too: a client that never speaks TLS (a TLS slowloris) is dropped, answered nothing."""
        self.assertTrue(await asyncio.to_thread(closed_without_answer, self.port, b""))


class Test03TheEventsOverTLS(SSEServerTestCase):

    options = {"tls": ws_server.server_tls_context(CERT_FILE, KEY_FILE), "request_timeout": 0.5, "retry": 50}

    def test_01_the_stream_and_a_publish_over_https(self):
        """Operational (TLS deployment): the stream (WHATWG HTML §9.2.2) and POST /publish work the same over https://."""
        connection, response = sse_server.open_stream(f"https://localhost:{self.port}/sse", timeout=TIMEOUT,
                                                      cafile=CA_FILE)
        self.addCleanup(connection.close)
        wait_until(lambda: self.server.hub.subscriber_count == 1, message="the subscriber")
        self.assertEqual(https_request(self.port, "POST", "/publish", b"over https"), (204, b""))
        events = next_events(response, sse_server.EventStreamParser(), 1)
        self.assertEqual(events[0].data, "over https")

    def test_02_last_event_id_replay_over_https(self):
        """WHATWG HTML §9.2.4 Last-Event-ID over https: a client reconnecting gets what it missed."""
        first = self.server.hub.publish("one")
        self.server.hub.publish("two")
        connection, response = sse_server.open_stream(f"https://localhost:{self.port}/sse", str(first),
                                                      TIMEOUT, cafile=CA_FILE)
        try:
            events = next_events(response, sse_server.EventStreamParser(), 1)
            self.assertEqual(events[0].data, "two")
        finally:
            connection.close()

    def test_03_a_client_refuses_a_certificate_it_cannot_verify(self):
        """RFC 6125 §6 The SSE client verifies too: without the test CA (the system's CAs only), no connection."""
        with self.assertRaises(ssl.SSLCertVerificationError):
            sse_server.open_stream(f"https://localhost:{self.port}/sse", timeout=TIMEOUT)

    def test_05_the_terminal_clients_end_on_an_unverified_certificate_and_name_cafile(self):
        """Operational: `--connect` to a certificate the client cannot verify ends at once, exit code 1, with one line naming --cafile, for both clients (it is never retried as a lost connection)."""
        for script, url in (("sse_server.py", f"https://localhost:{self.port}/sse"),
                            ("ws_server.py", f"wss://localhost:{self.port}/")):
            with self.subTest(script=script):
                result = subprocess.run([sys.executable, str(ROOT / script), "--connect", url], capture_output=True,
                                        text=True, timeout=TIMEOUT * 2, cwd=ROOT, stdin=subprocess.DEVNULL)
                self.assertEqual(result.returncode, 1, result.stderr)
                self.assertIn("--cafile", result.stderr.strip().splitlines()[-1])

    def test_04_plain_http_gets_a_400_garbage_and_silence_are_one_log_line_each(self):
        """RFC 9110 §15.5.1 plain HTTP on the TLS port gets a 400 that says to use https://; RFC 8446 §6 not TLS: one log line, no traceback; and (Operational: --request-timeout) no TLS at all: dropped."""
        with self.assertLogs("sse_server", "INFO") as logs:
            answer = raw_answer(self.port, b"GET /sse HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 50 + b"\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
            self.assertTrue(answer.endswith(b"\r\n\r\nthis port speaks TLS: use https://\n"), answer)
            for data in (b"\x16\x03\x01\x00\x05garbage", b""):
                self.assertTrue(closed_without_answer(self.port, data))
            wait_until(lambda: sum("TLS handshake" in line for line in logs.output) == 2)
        self.assertEqual(sum("plain HTTP" in line and "400" in line for line in logs.output), 1)
        self.assertNotIn("Traceback", "\n".join(logs.output))


class Test04TheCommandLine(unittest.TestCase):

    def test_01_the_servers_print_https_and_wss_urls(self):
        """RFC 6455 §3 (wss) and RFC 9110 §4.2.2 (https): with a certificate, the URLs the servers print say so."""
        for script, schemes in (("ws_server.py", ("https://", "wss://")), ("sse_server.py", ("https://",))):
            with self.subTest(script=script):
                process = subprocess.Popen(python_command(script, "--port", "0", "--certfile", CERT_FILE,
                                                          "--keyfile", KEY_FILE),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                logs = LogReader(process)
                try:
                    wait_until(lambda: SERVING.search(logs.text), message=f"{script}'s Serving line")
                    line = next(line for line in logs.lines if SERVING.search(line))
                    for scheme in schemes:
                        self.assertIn(scheme, line)
                    self.assertNotIn("http://", line)
                    self.assertNotIn("ws://", line)
                finally:
                    process.terminate()
                    process.wait(TIMEOUT)
                    logs.thread.join(TIMEOUT)
                    stop_process(process)

    def test_02_a_bad_certificate_path_is_one_line_and_exit_code_2(self):
        """Operational: --certfile that cannot be loaded: one clear line on stderr, exit code 2."""
        for script in ("ws_server.py", "sse_server.py"):
            with self.subTest(script=script):
                result = subprocess.run([sys.executable, str(ROOT / script), "--port", "0", "--certfile", "/nonexistent.pem"],
                                        capture_output=True, text=True, timeout=TIMEOUT * 2)
                self.assertEqual(result.returncode, 2)
                self.assertEqual(len(result.stderr.strip().splitlines()), 1)
                self.assertIn("/nonexistent.pem", result.stderr)


    def run_script(self, script: str, *args: str, prelude: str = "") -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", f"import runpy, sys; {prelude}sys.argv = {[script, *args]!r}; "
                                         f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')"]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT * 2, cwd=ROOT)

    def test_03_start_up_mistakes_are_one_error_line_naming_the_value_and_exit_code_2(self):
        """Operational: a port out of range, a --static folder that does not exist, a certificate without its key, a port in use, a --store that cannot be written: exit code 2 and a last line on stderr that names the value, never a traceback."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            in_use = str(taken.getsockname()[1])
            for script in ("ws_server.py", "sse_server.py"):
                for args, named in ((["--port", "70000"], "70000"), (["--port", "-1"], "-1"),
                                    (["--static", "/nonexistent-folder"], "/nonexistent-folder"),
                                    (["--port", "0", "--certfile", CERT_FILE], "--keyfile"),
                                    (["--port", in_use], in_use)):
                    with self.subTest(script=script, args=args):
                        result = self.run_script(script, *args)
                        self.assertEqual(result.returncode, 2, result.stderr)
                        self.assertNotIn("Traceback", result.stderr)
                        self.assertIn(named, result.stderr.strip().splitlines()[-1])
            with self.subTest(script="sse_server.py", args="--store in a folder that does not exist"):
                result = self.run_script("sse_server.py", "--port", "0", "--store", "/nonexistent-folder/events.sqlite3")
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn("/nonexistent-folder/events.sqlite3: cannot be opened for writing", result.stderr)

    def test_04_an_older_python_is_told_which_version_is_needed(self):
        """Operational: under a Python older than 3.10 (simulated by its version_info), each module says that 3.10 is needed, in one line, with exit code 2."""
        for script in ("ws_server.py", "sse_server.py"):
            with self.subTest(script=script):
                result = self.run_script(script, prelude="sys.version_info = (3, 9, 18, 'final', 0); ")
                self.assertEqual(result.returncode, 2)
                self.assertEqual(result.stderr.strip().splitlines(), [result.stderr.strip()])
                self.assertIn("Python 3.10 or later is needed", result.stderr)


def find_nginx() -> str | None:
    explicit = os.environ.get("NGINX")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def readme_nginx_configuration(tls: bool = False) -> str:
    """The nginx block of the README's "Deploying" section: the configuration under test; with
    `tls`, its `listen 80;` replaced by the README's TLS lines (its second nginx block)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    site, tls_lines = re.findall(r"```nginx\n(.*?)```", readme, re.S)[:2]
    if not tls:
        return site
    listen = re.search(r"^ *listen 80;.*$", site, re.M).group()
    return site.replace(listen, tls_lines.rstrip())


class Nginx:
    """Debian's nginx in the foreground, in a folder of its own, with the README's configuration
    on a free port in front of the two servers."""

    def __init__(self, binary: str, chat_port: int, events_port: int, tls: bool = False) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="nginx-")
        os.chmod(self.folder.name, 0o755)  # nginx's workers may run as another user
        self.port = free_port()
        site = (readme_nginx_configuration(tls).replace("127.0.0.1:8080", f"127.0.0.1:{chat_port}")
                .replace("127.0.0.1:8088", f"127.0.0.1:{events_port}")
                .replace("listen 80;", f"listen 127.0.0.1:{self.port};")
                .replace("listen 443 ", f"listen 127.0.0.1:{self.port} ")
                .replace("/etc/nginx/tls/fullchain.pem", str(CERT_FILE))
                .replace("/etc/nginx/tls/privkey.pem", str(KEY_FILE)))
        folder = self.folder.name
        temp = "\n".join(f"    {kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        config = (f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\nerror_log stderr notice;\n"
                  f"events {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n{temp}\n{site}\n}}\n")
        path = os.path.join(folder, "nginx.conf")
        with open(path, "w") as file:
            file.write(config)
        self.process = subprocess.Popen([binary, "-p", folder, "-c", path], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        if not wait_for_service(self.process, self.answers):
            error = self.process.stderr.read() if self.process.poll() is not None else "no answer"
            self.close()
            raise RuntimeError(f"nginx did not start: {error}")

    def answers(self) -> bool:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return True

    def close(self) -> None:
        stop_process(self.process)
        self.folder.cleanup()


class NginxInFront(unittest.TestCase):
    """Both servers, each in a process of its own, behind Debian's nginx with the README's
    configuration (`tls`: with its TLS lines and the test certificate)."""

    tls = False

    @classmethod
    def setUpClass(cls) -> None:
        binary = find_nginx()
        if binary is None:
            raise unittest.SkipTest(NGINX_HINT)
        cls.chat, chat_port = start_process("ws_server.py", "--trusted-proxy", "127.0.0.1")
        cls.events, events_port = start_process("sse_server.py", "--trusted-proxy", "127.0.0.1", "--clock", "0")
        cls.events_log = LogReader(cls.events)
        try:
            cls.nginx = Nginx(binary, chat_port, events_port, tls=cls.tls)
        except BaseException:
            stop_process(cls.chat)
            stop_process(cls.events)
            raise
        cls.base = f"127.0.0.1:{cls.nginx.port}"

    @classmethod
    def tearDownClass(cls) -> None:
        cls.nginx.close()
        stop_process(cls.chat)
        stop_process(cls.events)


class Test05BehindNginx(NginxInFront):
    """Both servers behind Debian's nginx, configured as the README says."""

    def publish(self, text: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.nginx.port, timeout=TIMEOUT)
        try:
            connection.request("POST", "/events/publish", body=text.encode())
            return connection.getresponse().status
        finally:
            connection.close()

    def test_01_a_chat_message_goes_through_the_proxy_both_ways(self):
        """RFC 6455 §4.1 The upgrade reaches the server through nginx, messages flow both ways, and a page of the proxy's own origin (its port included, which nginx passes on in Host) is the chat's own page (§10.2)."""
        async def chat() -> tuple[str, str]:
            alice = await ws_server.connect(f"ws://{self.base}/", origin=f"http://{self.base}")
            bob = await ws_server.connect(f"ws://{self.base}/")
            try:
                await alice.send("from alice " * 20)
                heard_by_bob = await asyncio.wait_for(bob.recv(), TIMEOUT)
                await bob.send("from bob")
                while (heard_by_alice := await asyncio.wait_for(alice.recv(), TIMEOUT)) != "from bob":
                    pass
                return heard_by_bob, heard_by_alice
            finally:
                await alice.close()
                await bob.close()
        self.assertEqual(asyncio.run(chat()), ("from alice " * 20, "from bob"))

    def test_02_each_event_comes_through_the_proxy_while_the_stream_stays_open(self):
        """Operational (the README's nginx configuration, proxy_buffering on): the stream (WHATWG HTML §9.2.2) passes nginx, which takes X-Accel-Buffering: no for itself, and each event arrives before the next is published."""
        stream = StreamClient(self.nginx.port, "/events/sse")
        self.addCleanup(stream.close)
        stream.wait_until(lambda: stream.parser.retry is not None)
        self.assertEqual(stream.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertNotIn("x-accel-buffering", stream.headers)  # read by nginx, not passed on
        for i in range(3):  # a stream nginx held back would bring none of them in time
            self.assertEqual(self.publish(f"event {i}"), 204)
            self.assertEqual(stream.next_events(1)[0].data, f"event {i}")

    def test_03_last_event_id_reaches_the_server_through_the_proxy(self):
        """WHATWG HTML §9.2.4 Last-Event-ID passes nginx: the reconnecting client gets what it missed."""
        stream = StreamClient(self.nginx.port, "/events/sse")
        self.addCleanup(stream.close)
        stream.wait_until(lambda: stream.parser.retry is not None)
        self.publish("seen")
        seen = stream.next_events(1)[0]
        stream.close()
        self.publish("missed")
        again = StreamClient(self.nginx.port, "/events/sse", {"Last-Event-ID": seen.last_event_id})
        self.addCleanup(again.close)
        self.assertEqual(again.next_events(1)[0].data, "missed")

    def test_04_the_logs_name_the_client_from_x_forwarded_for(self):
        """Operational: --trusted-proxy 127.0.0.1: the log names the address X-Forwarded-For gives past the trusted hops (nginx, and this test's client: both on 127.0.0.1), not the proxy's."""
        stream = StreamClient(self.nginx.port, "/events/sse", {"X-Forwarded-For": "203.0.113.7"})
        self.addCleanup(stream.close)
        stream.wait_until(lambda: stream.parser.retry is not None)
        wait_until(lambda: any("subscriber 203.0.113.7 joined" in line for line in self.events_log.lines),
                   message="the log line naming 203.0.113.7")

    def test_05_the_pages_load_through_the_proxy(self):
        """RFC 9110 §9.3.1 The chat page at /, the clock's page at /events/."""
        for path, marker in (("/", b"WebSocket Chat"), ("/events/", b"Server-Sent Events")):
            connection = http.client.HTTPConnection("127.0.0.1", self.nginx.port, timeout=TIMEOUT)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                self.assertEqual(response.status, 200)
                self.assertIn(marker, response.read())
            finally:
                connection.close()



class Test06BehindNginxWithTLS(NginxInFront):
    """Both servers behind Debian's nginx with the README's TLS lines and the test certificate."""

    tls = True

    def test_01_the_readme_tls_lines_serve_wss_and_https_through_nginx(self):
        """Operational (the README's nginx TLS lines, accepted by Debian's nginx): a chat message over wss:// and an event over https://, both through nginx, the certificate verified."""
        async def chat() -> str:
            client = await ws_server.connect(f"wss://localhost:{self.nginx.port}/", cafile=CA_FILE)
            try:
                await client.send("over wss through nginx")
                return await asyncio.wait_for(client.recv(), TIMEOUT)
            finally:
                await client.close()
        self.assertEqual(asyncio.run(chat()), "over wss through nginx")
        connection, response = sse_server.open_stream(f"https://localhost:{self.nginx.port}/events/sse",
                                                      timeout=TIMEOUT, cafile=CA_FILE)
        try:
            self.assertEqual(https_request(self.nginx.port, "POST", "/events/publish", b"over https")[0], 204)
            parser, events = sse_server.EventStreamParser(), []
            while not events:
                data = response.read1(65536)
                self.assertTrue(data, "the stream ended before the event came")
                events += parser.feed(data)
            self.assertEqual(events[0].data, "over https")
        finally:
            connection.close()


def rss_kib(pid: int) -> int:
    """A process's resident memory, from Linux's /proc/PID/status."""
    with open(f"/proc/{pid}/status") as file:
        return int(re.search(r"VmRSS:\s+(\d+) kB", file.read()).group(1))


@unittest.skipUnless(sys.platform.startswith("linux") and os.path.exists("/proc/self/status"),
                     "measures memory with Linux's /proc/PID/status, and connects from 127.0.0.2 (Linux's loopback)")
class Test07SilentConnectionsOnTheTLSPort(unittest.TestCase):
    """What connections that never start TLS cost: the target is at most 20 MiB for 1,000 of them
    (asyncio's own TLS server took some 300 KiB each: 300 MB), so at most 4 MiB for 200."""

    COUNT = 200
    BOUND_KIB = 20 * 1024 * COUNT // 1000

    def check(self, script: str) -> None:
        process, port = start_process(script, "--certfile", CERT_FILE, "--keyfile", KEY_FILE)
        logs = LogReader(process)
        self.addCleanup(stop_process, process)
        self.assertEqual(https_request(port, "GET", "/")[0], 200)  # everything a first request allocates
        before = rss_kib(process.pid)
        silent = []
        self.addCleanup(lambda: [sock.close() for sock in silent])
        for _ in range(self.COUNT):  # from another address than the real client's
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)))
        # A real client meanwhile: served, and only after the server accepted every silent one
        # before it (one listening queue, in order).
        self.assertEqual(https_request(port, "GET", "/")[0], 200)
        growth = rss_kib(process.pid) - before
        self.assertLess(growth, self.BOUND_KIB, f"{script}: {growth} KiB for {self.COUNT} silent connections")
        self.assertNotIn("Traceback", logs.text)

    def test_01_the_chat_server(self):
        """Operational (RFC 8446 §4.1.2: nothing happens before the ClientHello): 200 TCP connections to ws_server's TLS port that send nothing cost it less than 4 MiB, and a real client is served meanwhile."""
        self.check("ws_server.py")

    def test_02_the_events_server(self):
        """Operational (RFC 8446 §4.1.2): 200 silent connections cost sse_server less than 4 MiB (at most --max-tls-handshakes-per-address of them get a thread; the others are closed at once), and a real client is served meanwhile."""
        self.check("sse_server.py")


class Test08HandshakesBeyondTheShareWait(ServerTestCase, unittest.IsolatedAsyncioTestCase):

    server_options = {"tls": ws_server.server_tls_context(CERT_FILE, KEY_FILE), "handshake_timeout": 2.0,
                      "max_tls_handshakes_per_address": 1}

    async def asyncSetUp(self) -> None:
        asyncio.get_running_loop().set_debug(False)  # (as in Test02)
        await super().asyncSetUp()

    @unittest.skipUnless(sys.platform.startswith("linux"), "connects from 127.0.0.2 (Linux's loopback)")
    async def test_01_a_stalled_handshake_takes_its_addresss_share_not_everyone_s(self):
        """Operational: --max-tls-handshakes-per-address 1: two connections from one address that begin TLS (RFC 8446 §5.1 record type 22) and stall hold one slot and one waits; a client from another address is served at once."""
        stalled = []
        self.addCleanup(lambda: [sock.close() for sock in stalled])
        gate = self.server._server
        with self.assertLogs("ws_server", "WARNING") as logs:
            for _ in range(2):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT, source_address=("127.0.0.2", 0))
                sock.sendall(b"\x16\x03\x01")
                stalled.append(sock)
            await async_wait_until(lambda: gate.slots.in_use == 1 and len(gate.waiting) == 1, message="one slot, one waiting")
        self.assertIn("TLS handshakes at their limit", logs.output[0])
        client = await asyncio.wait_for(ws_server.connect(f"wss://localhost:{self.port}/", cafile=CA_FILE), 1.5)
        self.clients.append(client)
        self.assertEqual(gate.slots.in_use, 1)


@unittest.skipUnless(hasattr(signal, "SIGHUP"), "this platform has no SIGHUP")
class Test09SIGHUPReloadsTheCertificate(unittest.TestCase):
    """SIGHUP: the certificate and key again, for new connections (both servers)."""

    def test_01_new_connections_get_the_new_certificate_and_a_bad_file_keeps_the_old(self):
        """RFC 8446 §4.4.2 the certificate a server sends: after SIGHUP, the one now in --certfile; a file that cannot be loaded keeps the one in use, with one log line saying why; the server keeps serving."""
        for script in ("ws_server.py", "sse_server.py"):
            with self.subTest(script=script), tempfile.TemporaryDirectory() as folder:
                certfile, keyfile = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
                shutil.copy(CERT_FILE, certfile)
                shutil.copy(KEY_FILE, keyfile)
                process, port = start_process(script, "--certfile", certfile, "--keyfile", keyfile)
                logs = LogReader(process)
                try:
                    self.assertEqual(served_certificate(port), der_of(CERT_FILE))
                    shutil.copy(SECOND_CERT_FILE, certfile)
                    shutil.copy(SECOND_KEY_FILE, keyfile)
                    process.send_signal(signal.SIGHUP)
                    wait_until(lambda: "SIGHUP: reloaded" in logs.text, message="the reload's log line")
                    self.assertEqual(served_certificate(port), der_of(SECOND_CERT_FILE))
                    with open(certfile, "w") as file:
                        file.write("not a certificate\n")
                    process.send_signal(signal.SIGHUP)
                    wait_until(lambda: "not reloaded" in logs.text, message="the failed reload's log line")
                    self.assertEqual(served_certificate(port), der_of(SECOND_CERT_FILE))
                    failed = [line for line in logs.lines if "not reloaded" in line]
                    self.assertEqual(len(failed), 1)
                    self.assertIn(certfile, failed[0])
                    self.assertIsNone(process.poll())
                finally:
                    stop_process(process)

    def test_02_without_tls_sighup_is_logged_and_ignored(self):
        """Operational: SIGHUP used to end both servers silently (exit status 129); without TLS it is one log line, and the server goes on."""
        for script in ("ws_server.py", "sse_server.py"):
            with self.subTest(script=script):
                process, port = start_process(script)
                logs = LogReader(process)
                try:
                    process.send_signal(signal.SIGHUP)
                    wait_until(lambda: "SIGHUP: no certificate to reload" in logs.text, message="the log line")
                    self.assertIsNone(process.poll())
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
                    try:
                        connection.request("GET", "/")
                        self.assertEqual(connection.getresponse().status, 200)
                    finally:
                        connection.close()
                finally:
                    stop_process(process)


class Test10TheServerHeader(unittest.TestCase):

    def test_01_no_server_says_its_versions(self):
        """RFC 9110 §10.2.4 a Server field without needless detail: sse_server says `sse_server` (not Python's version), ws_server sends none."""
        server = sse_server.SSEServer(sse_server.ServerConfig(port=0, clock=0, heartbeat=0))
        server.start()
        self.addCleanup(server.stop)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        try:
            connection.request("OPTIONS", "/sse")  # (its static pages, ws_server's answers, carry none)
            response = connection.getresponse()
            response.read()
            self.assertEqual(response.getheader("Server"), "sse_server")
        finally:
            connection.close()
        page = ws_server.static_response(ws_server.STATIC_DIR, ws_server.parse_request(b"GET / HTTP/1.1\r\nHost: x"), "chat.html")
        self.assertNotIn(b"\r\nserver:", page.split(b"\r\n\r\n")[0].lower())


if __name__ == "__main__":
    unittest.main()
