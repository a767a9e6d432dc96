"""A small client for the Cairn protocol, version 1 (docs/PROTOCOL.md).

Needs only the standard library and msgpack (Debian's python3-msgpack works).

    with Client("127.0.0.1:7420", token="...") as c:
        c.ping()
        c.echo({"a": [1, b"\\x00"]})
        with c.stream("node.events", {"replay": True}) as events:
            for event in events:
                ...

Not thread-safe: a Client (and its Streams) must be used by one thread at a time; guard it with a
lock or give each thread its own connection. Within that thread, calls and streams may interleave:
a reply read while waiting for another request is kept in a per-id inbox, never dropped.

Failures: an error reply raises CairnError; a frame that breaks PROTOCOL.md raises ProtocolError
(a CairnError) and closes the connection; a lost connection raises ConnectionError; a deadline
raises TimeoutError and leaves the connection usable (a late reply to a timed-out call is dropped).
"""

import collections
import os
import select
import socket
import ssl
import struct
import time

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_ADDR = "127.0.0.1:7420"
# Frame limit assumed until the handshake reply announces the node's own (PROTOCOL.md's default).
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")
_RECV_BYTES = 64 * 1024
_SEND_CHUNK_BYTES = 64 * 1024


class CairnError(Exception):
    """An error reply from the node: `code` is the stable code string, `message` is for people."""

    def __init__(self, code, message=""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ProtocolError(CairnError):
    """The node sent something PROTOCOL.md does not allow; the client closes the connection."""


def parse_addr(addr):
    """Splits "host:port" or "[v6]:port" into (host, port); raises ValueError on anything else."""
    host, sep, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 address must be bracketed as [addr]:port: {addr!r}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be host:port or [v6]:port: {addr!r}")
    return host, int(port)


def encode_frame(message, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
    """Packs one message map into a frame (4-byte big-endian length + msgpack body).

    bytes travel as msgpack bin, str as str. Raises ValueError if the body exceeds max_frame_bytes.
    """
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > max_frame_bytes:
        raise ValueError(f"frame of {len(body)} bytes exceeds max_frame_bytes={max_frame_bytes}")
    return _HEADER.pack(len(body)) + body


def decode_body(body):
    """Decodes one frame body into a dict; raises ProtocolError unless it is exactly one map.

    Every str, bin, array, map and ext is bounded by the body's length, so hostile input cannot
    make the decoder allocate more than the frame it already holds.
    """
    n = len(body)
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False, max_str_len=n,
                                  max_bin_len=n, max_array_len=n, max_map_len=n // 2,
                                  max_ext_len=n)
    except Exception as e:  # msgpack raises several unrelated types for malformed input
        raise ProtocolError("bad_frame", f"undecodable frame: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_frame", f"frame body is a {type(message).__name__}, not a map")
    return message


class Client:
    """One authenticated connection to a node.

    addr defaults to $CAIRN_ADDR, then DEFAULT_ADDR; token defaults to $CAIRN_TOKEN. With tls=True
    the node's certificate is checked against ca_file (or the system store) unless verify=False.
    timeout (seconds) bounds connecting, the handshake and each call unless a call names its own.
    The constructor connects and shakes hands: it raises CairnError (e.g. `unauthenticated`,
    `unsupported_version`) on an error reply, OSError/TimeoutError if the node cannot be reached.
    After it returns, role, node, node_id, server and max_frame_bytes hold the handshake reply.
    """

    def __init__(self, addr=None, token=None, tls=False, ca_file=None, verify=True,
                 timeout=10.0, client_name="cairn-python/0.1"):
        self.addr = addr or os.environ.get("CAIRN_ADDR") or DEFAULT_ADDR
        self.token = token if token is not None else os.environ.get("CAIRN_TOKEN", "")
        self.tls, self.ca_file, self.verify = tls, ca_file, verify
        self.timeout = timeout
        self.client_name = client_name
        self.max_frame_bytes = DEFAULT_MAX_FRAME_BYTES
        self.role = self.node = self.node_id = self.server = None
        self._sock = None
        self._next_id = 1  # ids are never reused on a Client, so a late reply cannot be misread
        self.connect()

    def connect(self):
        """(Re)opens the connection and performs the handshake; see the class docstring for
        errors. Requests and streams of an earlier connection are forgotten."""
        self.close()
        self._rbuf = bytearray()  # bytes received but not yet parsed into frames
        self._inbox = {0: collections.deque()}  # id in flight -> replies read, not yet consumed
        self._open_streams = set()  # ids of Streams not yet ended: a timeout does not abandon them
        self.last_connection_error = None  # the latest id-0 error (CairnError), if any
        host, port = parse_addr(self.addr)
        sock = socket.create_connection((host, port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host)
        self._sock = sock
        hello = {"version": PROTOCOL_VERSION, "token": self.token, "client": self.client_name}
        deadline = self._deadline(None)
        try:
            self._send(encode_frame({"id": 0, "op": "hello", "body": hello}), deadline)
            body = self._final(0, deadline)
        except BaseException:
            self.close()
            raise
        self.role, self.node, self.node_id = body.get("role"), body.get("node"), body.get("node_id")
        self.server = body.get("server")
        self.max_frame_bytes = int(body.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES))

    def close(self):
        """Closes the connection (the protocol's clean goodbye). Safe to call more than once."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._inbox.clear()
                self._open_streams.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests -------------------------------------------------------------------------------

    def call(self, op, body=None, timeout=None):
        """Sends one request and returns its reply body ({} when absent).

        Raises CairnError on an error reply and TimeoutError when no final reply comes within
        timeout (default: the client's). For unary ops; `more` replies, if any, are discarded.
        """
        deadline = self._deadline(timeout)
        rid = self._start(op, body, deadline)
        return self._final(rid, deadline)

    def call_many(self, requests, timeout=None):
        """Pipelines [(op, body), ...]: sends them all, then returns their results in order, each
        the reply body or a CairnError instance. timeout bounds the whole batch.

        Replies arriving while the batch is still being sent are buffered, so a node that applies
        back-pressure (protocol.max_inflight) cannot deadlock against this client.
        """
        deadline = self._deadline(timeout)
        frames, ids = [], []
        for op, body in requests:
            ids.append(self._new_id())
            frames.append(self._request_frame(ids[-1], op, body))
        self._inbox.update((rid, collections.deque()) for rid in ids)
        self._send(b"".join(frames), deadline)
        results = []
        for rid in ids:
            try:
                results.append(self._final(rid, deadline))
            except CairnError as e:
                if isinstance(e, ProtocolError):
                    raise
                results.append(e)
        return results

    def stream(self, op, body=None, timeout=None):
        """Starts a stream op and returns its Stream; timeout (default: the client's) bounds the
        wait for each item, not the stream's life."""
        deadline = self._deadline(timeout)
        return Stream(self, self._start(op, body, deadline), timeout)

    def complete(self, model, prompt=None, messages=None, timeout=None, **options):
        """Generates with a served model: infer.completions for `prompt` (text or token ids),
        infer.chat for `messages` ([{"role", "content"}]). `options` are the request's other fields
        (max_tokens, temperature, top_p, top_k, seed, stop, logprobs, ...; PROTOCOL.md, "infer").
        Returns the final reply map: text, token_ids, finish_reason, usage, model, version."""
        op, body = _completion_request(model, prompt, messages, options)
        return self.call(op, body, timeout=timeout)

    def stream_completion(self, model, prompt=None, messages=None, timeout=None, **options):
        """complete(), streamed: a generator of delta maps ({"text", "token_ids"}) in the order the
        node produces them; concatenated, their texts are the completion. The final reply
        (finish_reason, usage) is the generator's return value (`reply = yield from ...`).
        Closing the generator early cancels the request on the node, freeing its KV blocks."""
        op, body = _completion_request(model, prompt, messages, dict(options, stream=True))
        with self.stream(op, body, timeout=timeout) as deltas:
            for delta in deltas:
                yield delta
            return deltas.final

    def ping(self):
        """Returns the round-trip time of one node.ping, in seconds."""
        start = time.monotonic()
        self.call("node.ping")
        return time.monotonic() - start

    def status(self):
        """Returns the node.status map (PROTOCOL.md, "node.status reply")."""
        return self.call("node.status")

    def echo(self, payload):
        """Sends payload through the node's echo actor and returns what came back."""
        return self.call("node.echo", {"payload": payload}).get("payload")

    # -- internals ------------------------------------------------------------------------------

    def _deadline(self, timeout):
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    def _new_id(self):
        rid, self._next_id = self._next_id, self._next_id + 1
        return rid

    def _request_frame(self, rid, op, body):
        message = {"id": rid, "op": op}
        if body is not None:
            message["body"] = body
        return encode_frame(message, self.max_frame_bytes)

    def _start(self, op, body, deadline):
        rid = self._new_id()
        frame = self._request_frame(rid, op, body)  # may raise ValueError: nothing is in flight
        self._inbox[rid] = collections.deque()
        self._send(frame, deadline)
        return rid

    def _final(self, rid, deadline):
        """Waits for the final reply to rid and returns its body; raises CairnError on error."""
        while True:
            reply = self._next_reply(rid, deadline)
            if reply["status"] != "more":
                return self._unwrap(rid, reply)

    def _unwrap(self, rid, reply):
        """Retires rid on its final reply; returns the body or raises the reply's CairnError."""
        self._inbox.pop(rid, None)
        if reply["status"] == "error":
            raise _error_of(reply)
        body = reply.get("body")
        return {} if body is None else body

    def _next_reply(self, rid, deadline):
        """Returns the next reply for rid, from its inbox or the wire. Replies for other requests
        in flight go to their inboxes; replies for unknown ids (abandoned calls) are dropped.
        On TimeoutError rid is abandoned unless it is a stream, whose caller may wait again."""
        queue = self._inbox.get(rid)
        if queue is None:
            raise ValueError(f"request {rid} is not in flight")
        try:
            while not queue:
                reply = self._read_reply(deadline)
                if reply["id"] == 0 and rid != 0:
                    self.last_connection_error = _error_of(reply)
                elif reply["id"] in self._inbox:
                    self._inbox[reply["id"]].append(reply)
        except TimeoutError:
            if rid not in self._open_streams:
                self._inbox.pop(rid, None)
            raise
        return queue.popleft()

    def _read_reply(self, deadline):
        while True:
            if len(self._rbuf) >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self._rbuf)
                if not 1 <= length <= self.max_frame_bytes:
                    self.close()
                    raise ProtocolError("frame_too_large" if length else "bad_frame",
                                        f"frame length {length} outside 1..{self.max_frame_bytes}")
                if len(self._rbuf) >= _HEADER.size + length:
                    break
            self._fill(deadline)
        body = bytes(self._rbuf[_HEADER.size:_HEADER.size + length])
        del self._rbuf[:_HEADER.size + length]
        try:
            reply = decode_body(body)
            if (not isinstance(reply.get("id"), int)
                    or reply.get("status") not in ("ok", "more", "error")
                    or (reply["status"] == "error" and not isinstance(reply.get("error"), dict))):
                raise ProtocolError("bad_frame", f"malformed reply: {reply!r:.200}")
        except ProtocolError:
            self.close()
            raise
        return reply

    def _remaining(self, deadline):
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("Cairn request timed out")
        return remaining

    def _socket(self):
        if self._sock is None:
            raise ConnectionError("Cairn connection is closed")
        return self._sock

    def _fill(self, deadline):
        """Reads what the socket has (at least one byte) into the receive buffer."""
        sock = self._socket()
        sock.settimeout(self._remaining(deadline))
        try:
            data = sock.recv(_RECV_BYTES)
        except socket.timeout:
            raise TimeoutError("Cairn request timed out") from None
        if not data:
            self.close()
            why = self.last_connection_error
            raise ConnectionError("node closed the connection" + (f" ({why})" if why else ""))
        self._rbuf += data

    def _send(self, data, deadline):
        """Sends all of data, buffering whatever arrives meanwhile (see call_many). A timeout
        here closes the connection: a partly sent frame would desynchronise it."""
        view = memoryview(data)
        try:
            while view:
                sock = self._socket()
                readable, writable, _ = select.select([sock], [sock], [],
                                                      self._remaining(deadline))
                if not readable and not writable:
                    raise TimeoutError("Cairn request timed out")
                if readable:
                    self._fill(deadline)
                if writable and self._sock is not None:
                    self._sock.settimeout(self._remaining(deadline))
                    view = view[self._sock.send(view[:_SEND_CHUNK_BYTES]):]
        except TimeoutError:
            self.close()
            raise


class Stream:
    """The replies to one stream op: iterating yields each `more` body; iteration ends at the final
    `ok`; a final error raises CairnError. next() raises TimeoutError when no item comes within
    the stream's timeout; the stream stays usable and the item, if it comes, is kept.
    Leaving a `with` block cancels the stream if it has not ended.
    """

    def __init__(self, client, rid, timeout):
        self.client, self.id, self.timeout = client, rid, timeout
        self.done = False
        self.final = None  # the final reply's body, once the stream has ended normally
        client._open_streams.add(rid)

    def __iter__(self):
        return self

    def __next__(self):
        if self.done:
            raise StopIteration
        reply = self.client._next_reply(self.id, self.client._deadline(self.timeout))
        if reply["status"] == "more":
            return reply.get("body") or {}
        self._finish()
        self.final = self.client._unwrap(self.id, reply)  # raises on an error reply
        raise StopIteration

    def cancel(self):
        """Asks the node to stop the stream and drains it to its end. The `cancelled` error that
        ends it is swallowed; any other final error is raised. No-op once the stream has ended."""
        if self.done:
            return
        cancel_id = self.client._start("cancel", {"id": self.id}, self.client._deadline(None))
        try:
            for _ in self:
                pass
        except CairnError as e:
            if e.code != "cancelled":
                raise
        self.client._final(cancel_id, self.client._deadline(None))

    def _finish(self):
        self.done = True
        self.client._open_streams.discard(self.id)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        try:
            self.cancel()
        except (CairnError, OSError):
            if exc_type is None:  # else keep the exception already in flight, not this one
                raise


def _completion_request(model, prompt, messages, options):
    """(op, body) of an infer.completions or infer.chat request."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of prompt and messages")
    body = dict(options, model=model)
    if messages is not None:
        body["messages"] = list(messages)
        return "infer.chat", body
    if isinstance(prompt, str):
        body["prompt"] = prompt
    else:
        body["prompt_ids"] = list(prompt)
    return "infer.completions", body


def _error_of(reply):
    error = reply.get("error") or {}
    return CairnError(str(error.get("code", "internal")), str(error.get("message", "")))
