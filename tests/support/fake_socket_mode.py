"""A fake Slack Socket Mode endpoint on loopback: a minimal RFC 6455 WebSocket server that says hello,
sends envelopes to the connected app and records its acks."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import uuid
from typing import Any
from urllib.parse import urlencode

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG = 1000, 1002, 1009
MAX_MESSAGE = 16 * 1024 * 1024
MAX_HANDSHAKE = 64 * 1024
# Slack asks for the response payload of these envelope types (the ack can carry a message).
ACCEPTS_RESPONSE_PAYLOAD = {"slash_commands": True, "interactive": False, "events_api": False}


def accept_key(key: str) -> str:
    """`Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, *, mask: bytes | None = None, fin: bool = True) -> bytes:
    """One frame; servers send unmasked frames, clients pass a 4-byte `mask`."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    length = len(payload)
    if length <= 125:
        head.append(mask_bit | length)
    elif length <= 0xFFFF:
        head += struct.pack("!BH", mask_bit | 126, length)
    else:
        head += struct.pack("!BQ", mask_bit | 127, length)
    if mask:
        head += mask
        payload = _unmask(payload, mask)
    return bytes(head) + payload


def read_frame(stream: Any) -> tuple[bool, int, bool, bytes]:
    """`(fin, opcode, masked, payload)` of the next frame, unmasked; ConnectionError at EOF."""
    first, second = _read_exactly(stream, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _read_exactly(stream, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _read_exactly(stream, 8))
    if length > MAX_MESSAGE:
        raise ValueError(f"frame of {length} bytes")
    masked = bool(second & 0x80)
    mask = _read_exactly(stream, 4) if masked else b""
    payload = _read_exactly(stream, length)
    return bool(first & 0x80), first & 0x0F, masked, _unmask(payload, mask) if masked else payload


def _unmask(data: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: fast enough for multi-megabyte frames without numpy.
    whole = (mask * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(whole, "big")).to_bytes(len(data), "big")


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _read_exactly(stream: Any, n: int) -> bytes:
    data = stream.read(n) if n else b""
    if len(data) < n:
        raise ConnectionError("connection closed mid-frame")
    return data


class _Connection:
    """One accepted WebSocket; `send` may be called from any thread."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self.stream = sock.makefile("rb")
        self.open = True
        self.close_sent = False
        self._lock = threading.Lock()

    def send(self, opcode: int, payload: bytes) -> None:
        with self._lock:
            if opcode == OP_CLOSE:
                if self.close_sent:
                    return
                self.close_sent = True
            self.sock.sendall(encode_frame(opcode, payload))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a network failure would."""
        self.open = False
        for action in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self.stream.close, self.sock.close):
            try:
                action()
            except OSError:
                pass


class FakeSocketMode:
    """Slack's Socket Mode WebSocket side. Hand `issue_url()` out from `apps.connections.open`
    (FakeSlack does when given this as `socket_mode`), then drive the app with `send_envelope`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, app_id: str = "A000") -> None:
        self.host = host
        self.port = port
        self.app_id = app_id
        self.messages: list[dict] = []  # every JSON message the app sent, in order
        self.acks: dict[str, dict] = {}  # envelope_id -> the app's ack
        self.close_codes: list[int | None] = []  # close frames the app sent (None: no status code)
        self.pongs: list[bytes] = []
        self.tickets_issued = 0
        self._connections: list[_Connection] = []
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> FakeSocketMode:
        if self._listener is None:
            self._stopping.clear()
            self._listener = socket.create_server((self.host, self.port))
            self._listener.settimeout(0.1)
            self.port = self._listener.getsockname()[1]
            self._spawn(self._accept_loop, "fake-socket-mode")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._cond:
            live = list(self._connections)
        for conn in live:
            conn.abort()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def issue_url(self) -> str:
        """A fresh `wss_url` as `apps.connections.open` returns (plain ws:// on loopback)."""
        with self._cond:
            self.tickets_issued += 1
            ticket = self.tickets_issued
        return f"ws://{self.host}:{self.port}/link/?{urlencode({'ticket': ticket, 'app_id': self.app_id})}"

    # -- driving the app ------------------------------------------------------------

    @property
    def connections(self) -> int:
        """How many WebSocket handshakes have completed, ever."""
        with self._cond:
            return len(self._connections)

    @property
    def live_connections(self) -> int:
        with self._cond:
            return sum(conn.open for conn in self._connections)

    def wait_for_connections(self, n: int, timeout: float = 10) -> None:
        """Block until `n` handshakes have completed and the newest is open; AssertionError on timeout."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._current(n) is not None, timeout)
            seen = len(self._connections)
        assert done, f"expected {n} Socket Mode connections within {timeout} s, got {seen}"

    def send_envelope(
        self,
        type: str,  # noqa: A002 - Slack's field name
        payload: dict,
        *,
        accepts_response_payload: bool | None = None,
        timeout: float = 10,
    ) -> str:
        """Send `payload` in a Slack envelope on the newest open connection; returns its envelope_id."""
        envelope_id = str(uuid.uuid4())
        if accepts_response_payload is None:
            accepts_response_payload = ACCEPTS_RESPONSE_PAYLOAD.get(type, False)
        envelope = {
            "envelope_id": envelope_id,
            "type": type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if type == "events_api":
            envelope.update(retry_attempt=0, retry_reason="")
        self.send_json(envelope, timeout=timeout)
        return envelope_id

    def send_disconnect(self, reason: str = "refresh_requested", timeout: float = 10) -> None:
        """Slack's polite `disconnect` message: the app should open a new connection."""
        self.send_json(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}}, timeout=timeout
        )

    def send_json(self, message: dict, *, timeout: float = 10) -> None:
        self._newest(timeout).send(OP_TEXT, json.dumps(message).encode())

    def ping(self, payload: bytes = b"fake", timeout: float = 10) -> None:
        self._newest(timeout).send(OP_PING, payload)

    def wait_for_ack(self, envelope_id: str, timeout: float = 10) -> dict:
        """The app's ack of `envelope_id`: `{"envelope_id": ...}`, plus `"payload"` when it answered
        with a message. AssertionError on timeout."""
        with self._cond:
            done = self._cond.wait_for(lambda: envelope_id in self.acks, timeout)
            ack = self.acks.get(envelope_id)
        assert done and ack is not None, f"no ack for envelope {envelope_id} within {timeout} s"
        return ack

    def drop(self, timeout: float = 10) -> None:
        """Abruptly drop the newest open connection (no close frame). A client's handshake can finish
        before the server counts the connection as open (it says hello first): wait for it."""
        conn = self._newest(timeout)
        conn.abort()
        with self._cond:
            self._cond.notify_all()

    def _current(self, n: int) -> _Connection | None:
        if len(self._connections) < n or not self._connections[-1].open:
            return None
        return self._connections[-1]

    def _newest(self, timeout: float) -> _Connection:
        with self._cond:
            self._cond.wait_for(lambda: self._current(1) is not None, timeout)
            conn = self._current(1)
        assert conn is not None, f"no open Socket Mode connection within {timeout} s"
        return conn

    # -- server -------------------------------------------------------------------

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stopping.is_set() and listener is not None:
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            self._spawn(self._serve, "fake-socket-mode-conn", sock)

    def _serve(self, sock: socket.socket) -> None:
        path = self._handshake(sock)
        if path is None:
            sock.close()
            return
        conn = _Connection(sock, path)
        try:
            # Hello goes out before the connection counts as open, so no envelope can overtake it.
            conn.send(OP_TEXT, json.dumps(self._hello(self.live_connections + 1)).encode())
            with self._cond:
                self._connections.append(conn)
                self._cond.notify_all()
            self._read_messages(conn)
        except (OSError, ConnectionError):
            pass
        except ValueError:
            self._close(conn, CLOSE_TOO_BIG)
        finally:
            conn.abort()
            with self._cond:
                self._cond.notify_all()

    def _hello(self, live: int) -> dict:
        return {
            "type": "hello",
            "num_connections": live,
            "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id},
        }

    def _handshake(self, sock: socket.socket) -> str | None:
        """Answer the HTTP upgrade; returns the request path, or None after refusing it."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk or len(data) > MAX_HANDSHAKE:
                return None
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        verb, path, *_ = head[0].split(" ") + ["", ""]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key", "")
        if (
            verb != "GET"
            or headers.get("upgrade", "").lower() != "websocket"
            or "upgrade" not in headers.get("connection", "").lower()
            or headers.get("sec-websocket-version") != "13"
            or not _valid_key(key)
        ):
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return None
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
            ).encode()
        )
        return path

    def _read_messages(self, conn: _Connection) -> None:
        message = bytearray()
        kind: int | None = None
        while conn.open:
            fin, opcode, masked, payload = read_frame(conn.stream)
            if not masked:  # RFC 6455 §5.1: a server must close on an unmasked client frame
                self._close(conn, CLOSE_PROTOCOL_ERROR)
                return
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                with self._cond:
                    self.close_codes.append(code)
                self._close(conn, code or CLOSE_NORMAL)
                return
            if opcode == OP_PING:
                conn.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                with self._cond:
                    self.pongs.append(payload)
                    self._cond.notify_all()
                continue
            if opcode in (OP_TEXT, OP_BINARY):
                message, kind = bytearray(payload), opcode
            elif opcode == OP_CONTINUATION and kind is not None:
                message += payload
            else:
                self._close(conn, CLOSE_PROTOCOL_ERROR)
                return
            if len(message) > MAX_MESSAGE:
                raise ValueError("message too big")
            if fin:
                if kind == OP_TEXT:
                    self._record(message.decode("utf-8"))
                message, kind = bytearray(), None

    def _record(self, text: str) -> None:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"text": text}
        with self._cond:
            self.messages.append(parsed)
            if isinstance(parsed, dict) and "envelope_id" in parsed:
                self.acks[parsed["envelope_id"]] = parsed
            self._cond.notify_all()

    def _close(self, conn: _Connection, code: int) -> None:
        try:
            conn.send(OP_CLOSE, struct.pack("!H", code))
        except OSError:
            pass
        conn.abort()
