"""Tests for client/python/cairn_client.py.

CodecTest checks framing against PROTOCOL.md with a scripted in-process peer (no node needed).
NodeTest starts a real node per test from $CAIRN_BINARY and drives it through the client; it is
skipped when CAIRN_BINARY is unset (ctest always sets it, see CMakeLists.txt). No test sleeps:
every wait is a read with a deadline.

Run: CAIRN_BINARY=build/cli/cairn PYTHONPATH=client/python /usr/bin/python3 tests/python/test_client.py
"""

import os
import re
import secrets
import selectors
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import cairn_client
from cairn_client import CairnError, Client, ProtocolError

READY_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 10.0
EVENT_TIMEOUT_S = 20.0
# Fields after pid (the node adds " tls=on" when serving TLS) are allowed.
# The tiny Llama the node serves as "tiny" (--serve), for the infer.* tests.
TINY_LLAMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "fixtures", "hf",
                          "tiny-llama")
READY_LINE = re.compile(r"cairn node ready protocol=(\S+) http=(\S+) pid=(\d+)(?: \S+=\S+)*")


class ScriptedPeer:
    """A one-connection fake node on localhost: `script(conn, read_message)` plays the node side."""

    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.error = None
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script):
        try:
            conn, _ = self.listener.accept()
            with conn:
                script(conn, lambda: _read_message(conn))
        except Exception as e:  # reported by join()
            self.error = e

    def join(self):
        self.thread.join(timeout=10)
        self.listener.close()
        if self.error:
            raise self.error


def _read_message(conn):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data
    return cairn_client.decode_body(exactly(int.from_bytes(exactly(4), "big")))


def _send(conn, message):
    conn.sendall(cairn_client.encode_frame(message))


def _accept_hello(conn, read_message):
    hello = read_message()
    assert hello["id"] == 0 and hello["op"] == "hello" and hello["body"]["version"] == 1, hello
    _send(conn, {"id": 0, "status": "ok", "body": {
        "version": 1, "server": "fake", "node": "n", "node_id": "0" * 32, "role": "client",
        "max_frame_bytes": 1024}})


class CodecTest(unittest.TestCase):
    def test_ping_frame_matches_spec_bytes(self):
        frame = cairn_client.encode_frame({"id": 1, "op": "node.ping"})
        self.assertEqual(frame.hex(" "), "00 00 00 12 82 a2 69 64 01 a2 6f 70 a9 6e 6f 64 "
                                         "65 2e 70 69 6e 67")

    def test_decode_rejects_non_map_and_trailing_bytes(self):
        for body in (b"\x01", b"\x80\x01", b"\x81\xa1a", b"\xdb\xff\xff\xff\xff"):
            with self.assertRaises(ProtocolError, msg=body.hex()):
                cairn_client.decode_body(body)

    def test_parse_addr(self):
        self.assertEqual(cairn_client.parse_addr("[::1]:7420"), ("::1", 7420))
        self.assertEqual(cairn_client.parse_addr("example.org:1"), ("example.org", 1))
        for bad in ("::1:7420", "host", "host:0", ":80", "h:x"):
            with self.assertRaises(ValueError, msg=bad):
                cairn_client.parse_addr(bad)

    def test_interleaved_replies_are_kept_per_id(self):
        def script(conn, read_message):
            _accept_hello(conn, read_message)
            self.assertEqual(read_message(), {"id": 1, "op": "s"})
            self.assertEqual(read_message(), {"id": 2, "op": "node.ping"})
            for reply in ({"id": 1, "status": "more", "body": {"n": 1}},
                          {"id": 1, "status": "more", "body": {"n": 2}},
                          {"id": 2, "status": "ok"}):
                _send(conn, reply)
            self.assertEqual(read_message(), {"id": 3, "op": "cancel", "body": {"id": 1}})
            _send(conn, {"id": 3, "status": "ok"})  # before the stream's end: also allowed
            _send(conn, {"id": 1, "status": "error",
                         "error": {"code": "cancelled", "message": "by request"}})
            self.assertEqual(read_message(), {"id": 4, "op": "node.ping"})
            _send(conn, {"id": 0, "status": "error", "error": {"code": "bad_frame"}})
            _send(conn, {"id": 4, "status": "ok", "body": {"late": True}})

        peer = ScriptedPeer(script)
        with Client(peer.addr, token="t", timeout=5) as client:
            self.assertEqual((client.role, client.max_frame_bytes), ("client", 1024))
            stream = client.stream("s")
            self.assertEqual(client.call("node.ping"), {})  # read past two stream items
            self.assertEqual(next(stream), {"n": 1})
            stream.cancel()  # drops item 2, swallows `cancelled`
            self.assertTrue(stream.done)
            self.assertEqual(client.call("node.ping"), {"late": True})
            self.assertEqual(client.last_connection_error.code, "bad_frame")
        peer.join()

    def test_oversized_frame_is_refused(self):
        def script(conn, read_message):
            _accept_hello(conn, read_message)
            read_message()
            conn.sendall((1025).to_bytes(4, "big"))

        peer = ScriptedPeer(script)
        client = Client(peer.addr, token="t", timeout=5)
        with self.assertRaises(ProtocolError) as caught:
            client.call("node.ping")
        self.assertEqual(caught.exception.code, "frame_too_large")
        with self.assertRaises(ConnectionError):
            client.call("node.ping")
        peer.join()


@unittest.skipUnless(os.environ.get("CAIRN_BINARY"), "CAIRN_BINARY is not set")
class NodeTest(unittest.TestCase):
    """Each test gets a fresh node with its own data dir and one admin and one client token."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="cairn-python-test-")
        self.addCleanup(self.dir.cleanup)
        self.admin_token, self.client_token = secrets.token_hex(16), secrets.token_hex(16)
        token_file = os.path.join(self.dir.name, "tokens")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(f"# test tokens\nadmin {self.admin_token}\nclient {self.client_token}\n")
        self.log_path = os.path.join(self.dir.name, "node.log")
        self.addCleanup(self._keep_log_tail)  # runs before the directory's cleanup (LIFO)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [os.environ["CAIRN_BINARY"], "node", "--listen", "127.0.0.1:0",
                 "--http", "127.0.0.1:0", "--data-dir", os.path.join(self.dir.name, "data"),
                 "--token-file", token_file, "--serve", f"tiny={TINY_LLAMA}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        self.addr = self._read_ready_line()

    def tearDown(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def run(self, result=None):
        """Runs the test; on failure prints the tail of the node's log, which names the cause."""
        result = result if result is not None else self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        self.log_tail = ""
        super().run(result)
        if len(result.failures) + len(result.errors) > before:
            print(f"\n--- node log ({self.id()}) ---\n{self.log_tail}")
        return result

    def _keep_log_tail(self):
        with open(self.log_path, errors="replace") as log:
            self.log_tail = log.read()[-4000:]

    def _read_ready_line(self):
        """Returns the protocol address from the ready line; fails if it is late or malformed."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        fd, line = self.proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    self.fail(f"no ready line within {READY_TIMEOUT_S}s (got {line!r})")
                chunk = os.read(fd, 1)  # byte by byte: nothing past the line is consumed
                if not chunk:
                    self.fail(f"node exited ({self.proc.wait()}) before its ready line: {line!r}")
                line += chunk
        match = READY_LINE.fullmatch(line.decode().rstrip("\n"))
        self.assertIsNotNone(match, f"malformed ready line: {line!r}")
        self.assertEqual(int(match.group(3)), self.proc.pid)
        return match.group(1)

    def client(self, admin=False):
        client = Client(self.addr, token=self.admin_token if admin else self.client_token,
                        timeout=10)
        self.addCleanup(client.close)
        return client

    def test_handshake_reports_role(self):
        self.assertEqual(self.client(admin=True).role, "admin")
        client = self.client()
        self.assertEqual(client.role, "client")
        self.assertRegex(client.node_id, r"^[0-9a-f]{32}$")
        self.assertIsInstance(client.node, str)
        self.assertGreater(client.max_frame_bytes, 0)

    def test_bad_token_is_unauthenticated(self):
        with self.assertRaises(CairnError) as caught:
            Client(self.addr, token="not-" + self.client_token, timeout=10)
        self.assertEqual(caught.exception.code, "unauthenticated")

    def test_ping(self):
        rtt = self.client().ping()
        self.assertGreaterEqual(rtt, 0.0)

    def test_echo_round_trips_nested_values(self):
        payload = {"text": "h\u00e9llo \u2603 \U0001d11e", "bytes": b"\x00\xff\x80 raw",
                   "numbers": [0, -1, 2**64 - 1, -2**63, 1.5],
                   "other": [True, False, None, "", b"", [], {}],
                   "nested": {"a": [{"b": [b"\x01" * 70000, "\u00fc" * 1000]}]}}
        self.assertEqual(self.client().echo(payload), payload)

    def test_status_lists_running_echo_actor(self):
        status = self.client().status()
        echo = [actor for actor in status["actors"] if actor["name"] == "echo"]
        self.assertEqual(len(echo), 1, status["actors"])
        self.assertEqual(echo[0]["state"], "running")

    def test_pipelined_pings(self):
        results = self.client().call_many([("node.ping", None)] * 1000)
        self.assertEqual(len(results), 1000)
        self.assertEqual([r for r in results if r != {}], [])

    def test_pipelined_results_keep_order_and_errors(self):
        results = self.client().call_many(
            [("node.echo", {"payload": 1}), ("no.such_op", None), ("node.ping", None)])
        self.assertEqual(results[0], {"payload": 1})
        self.assertIsInstance(results[1], CairnError)
        self.assertEqual(results[1].code, "unknown_op")
        self.assertEqual(results[2], {})

    def test_unknown_op(self):
        client = self.client()
        with self.assertRaises(CairnError) as caught:
            client.call("no.such_op")
        self.assertEqual(caught.exception.code, "unknown_op")
        client.ping()  # the connection stays open

    def test_client_role_cannot_shutdown(self):
        client = self.client()
        with self.assertRaises(CairnError) as caught:
            client.call("node.shutdown")
        self.assertEqual(caught.exception.code, "permission_denied")
        client.ping()
        self.assertIsNone(self.proc.poll())

    def test_events_report_echo_restart(self):
        admin = self.client(admin=True)
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        with admin.stream("node.events", {"replay": True}, timeout=EVENT_TIMEOUT_S) as events:
            self.assertEqual(admin.call("node.kill_actor", {"name": "echo"}), {})
            seen = []
            for event in events:
                seen.append((event.get("actor"), event.get("event")))
                if seen[-1] == ("echo", "restarted"):
                    break
                self.assertLess(time.monotonic(), deadline, f"no echo restart in {seen}")
            self.assertEqual(seen[-1], ("echo", "restarted"), seen)
        self.assertTrue(events.done)
        self.assertEqual(admin.echo("after restart"), "after restart")
        echo = [a for a in admin.status()["actors"] if a["name"] == "echo"][0]
        self.assertGreaterEqual(echo["restarts"], 1, echo)

    def test_cancel_stream(self):
        client = self.client()
        stream = client.stream("node.events", {"replay": True})
        stream.cancel()
        self.assertTrue(stream.done)
        self.assertEqual(list(stream), [])
        with client.stream("node.events") as events:
            pass  # leaving the block cancels
        self.assertTrue(events.done)
        client.ping()

    def test_streamed_completion_equals_the_whole_one(self):
        client = self.client()
        options = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
        whole = client.complete("tiny", prompt="The quick brown fox", timeout=60, **options)
        self.assertEqual(whole["finish_reason"], "length")
        self.assertEqual(len(whole["token_ids"]), 12)
        self.assertEqual(whole["usage"]["completion_tokens"], 12)

        def collect():
            reply = yield from client.stream_completion("tiny", prompt="The quick brown fox", timeout=60,
                                                        **options)
            finals.append(reply)
        finals = []
        deltas = list(collect())
        self.assertEqual("".join(d["text"] for d in deltas), whole["text"])
        self.assertEqual([t for d in deltas for t in d.get("token_ids", [])], whole["token_ids"])
        self.assertEqual(finals[0]["finish_reason"], "length")

        chat = client.complete("tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, timeout=60)
        self.assertIn("text", chat)
        with self.assertRaises(CairnError) as caught:
            client.complete("no-such-model", prompt="x")
        self.assertEqual(caught.exception.code, "not_found")

    def test_closing_a_streamed_completion_cancels_it(self):
        client = self.client()
        deltas = client.stream_completion("tiny", prompt="go on", max_tokens=200, temperature=0,
                                          ignore_eos=True, timeout=60)
        next(deltas)
        deltas.close()  # cancels on the node
        self.assertEqual(client.complete("tiny", prompt="still fine", max_tokens=2, timeout=60)["usage"]
                         ["completion_tokens"], 2)

    def test_shutdown_exits_cleanly(self):
        self.assertEqual(self.client(admin=True).call("node.shutdown"), {})
        self.assertEqual(self.proc.wait(timeout=EXIT_TIMEOUT_S), 0)


if __name__ == "__main__":
    unittest.main()  # exits non-zero when a test fails
