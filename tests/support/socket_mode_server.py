"""A local stand-in for Slack's Socket Mode endpoint: a WebSocket server on 127.0.0.1.

Slack's side of Socket Mode: the app calls `apps.connections.open` (the emulator answers with
this server's `ws://` URL), connects, receives a `hello`, then envelopes (`slash_commands`,
`interactive`, `events_api`); it acknowledges each with `{"envelope_id": …, "payload": …}`.
The WebSocket framing (RFC 6455) is small enough to speak with the standard library.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
import uuid
from typing import Any

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class SocketModeServer:
    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port = int(self._listener.getsockname()[1])
        self.received: list[dict[str, Any]] = []
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = False
        threading.Thread(target=self._accept, name="socket-mode", daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link"

    def stop(self) -> None:
        self._stopped = True
        for sock in (self._client, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # Talking to the app -----------------------------------------------------------------

    def wait_connected(self, timeout: float = 20.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._client is not None, timeout):
                raise AssertionError(f"no Socket Mode connection within {timeout:g}s")

    def send_envelope(self, kind: str, payload: dict[str, Any]) -> str:
        """Send an envelope as Slack does; returns its envelope_id."""
        envelope_id = str(uuid.uuid4())
        self._send_text(
            json.dumps(
                {
                    "envelope_id": envelope_id,
                    "type": kind,
                    "accepts_response_payload": kind != "events_api",
                    "payload": payload,
                    "retry_attempt": 0,
                    "retry_reason": "",
                }
            )
        )
        return envelope_id

    def wait_for_ack(self, envelope_id: str, timeout: float = 10.0) -> dict[str, Any]:
        def acked() -> dict[str, Any] | None:
            return next((m for m in self.received if m.get("envelope_id") == envelope_id), None)

        with self._changed:
            if not self._changed.wait_for(lambda: acked() is not None, timeout):
                raise AssertionError(
                    f"no ack of {envelope_id} within {timeout:g}s: {self.received}"
                )
            found = acked()
            assert found is not None
            return found

    # The WebSocket ----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = client.recv(4096)
            if not chunk:
                return
            request += chunk
        headers = dict(
            line.split(": ", 1) for line in request.decode().split("\r\n")[1:] if ": " in line
        )
        key = next(v for k, v in headers.items() if k.lower() == "sec-websocket-key")
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        client.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        with self._changed:
            self._client = client
            self._changed.notify_all()
        hello = {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0IMMUNE"}}
        self._send_text(json.dumps(hello))
        self._read_frames(client, request.split(b"\r\n\r\n", 1)[1])

    def _read_frames(self, client: socket.socket, buffered: bytes) -> None:
        data = buffered

        def take(count: int) -> bytes:
            nonlocal data
            while len(data) < count:
                chunk = client.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            piece, data = data[:count], data[count:]
            return piece

        try:
            while not self._stopped:
                first, second = take(2)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", take(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", take(8))
                mask = take(4) if second & 0x80 else b"\0\0\0\0"
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(take(length)))
                if opcode == 0x1:
                    with self._changed:
                        self.received.append(json.loads(payload))
                        self._changed.notify_all()
                elif opcode == 0x9:
                    self._send(0xA, payload)
                elif opcode == 0x8:
                    return
        except (ConnectionError, OSError):
            return

    def _send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def _send(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([len(payload)])
        elif len(payload) < 65536:
            header += bytes([126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([127]) + struct.pack("!Q", len(payload))
        client = self._client
        if client is None:
            raise AssertionError("no Socket Mode connection")
        with self._lock:
            client.sendall(header + payload)
