"""The fake Socket Mode endpoint, driven by websocket-client and slack-sdk's own Socket Mode client."""

import json
import socket
import threading

import pytest
import websocket
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.socket_mode.websocket_client import SocketModeClient
from support.fake_slack import FakeSlack
from support.fake_socket_mode import OP_CLOSE, FakeSocketMode, accept_key

APP_TOKEN = "xapp-1-fake"


@pytest.fixture
def server():
    with FakeSocketMode() as fake:
        yield fake


def connect(server: FakeSocketMode) -> websocket.WebSocket:
    ws = websocket.create_connection(server.issue_url(), timeout=5)
    hello = json.loads(ws.recv())
    assert hello["type"] == "hello" and hello["connection_info"] == {"app_id": "A000"}
    return ws


def test_accept_key_matches_rfc_6455_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [10, 126, 65535, 70_000, 1_000_000])
def test_text_frames_of_every_length_encoding_both_ways(server, size):
    ws = connect(server)
    text = "x" * size
    envelope_id = server.send_envelope("slash_commands", {"text": text})
    envelope = json.loads(ws.recv())
    assert envelope["envelope_id"] == envelope_id and envelope["payload"]["text"] == text
    assert envelope["accepts_response_payload"] is True
    ws.send(json.dumps({"envelope_id": envelope_id, "payload": {"text": text}}))
    assert server.wait_for_ack(envelope_id, timeout=5)["payload"]["text"] == text
    ws.close()


def test_ping_is_answered_and_pong_recorded(server):
    ws = connect(server)
    ws.ping(b"are-you-there")
    opcode, data = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PONG and data.data == b"are-you-there"
    server.ping(b"and-you")
    opcode, data = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PING  # websocket-client answers it by itself
    assert wait(lambda: server.pongs == [b"and-you"])


def test_close_handshake_echoes_the_code(server):
    ws = connect(server)
    ws.send_close(status=1000, reason=b"bye")
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == OP_CLOSE and frame.data[:2] == b"\x03\xe8"
    assert wait(lambda: server.close_codes == [1000] and server.live_connections == 0)


def test_drop_closes_without_a_close_frame(server):
    ws = connect(server)
    server.drop()
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv()
    assert server.connections == 1 and server.live_connections == 0


def test_unmasked_client_frame_is_a_protocol_error(server):
    url = server.issue_url()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            (
                f"GET {url.split(str(server.port), 1)[1]} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"HTTP/1.1 101")
        while stream.readline() != b"\r\n":
            pass
        sock.sendall(b"\x81\x02{}")  # FIN + text, no mask bit
        frames = stream.read()
    assert b"\x88\x02\x03\xea" in frames  # close 1002 after the hello


def test_not_a_websocket_upgrade_is_refused(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /link/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert server.connections == 0


def test_slack_sdk_client_connects_acks_and_reconnects(server):
    with FakeSlack(bot_token="xoxb-fake", app_token=APP_TOKEN, socket_mode=server) as slack:
        client = SocketModeClient(APP_TOKEN, web_client=WebClient(token="xoxb-fake", base_url=slack.url))
        seen = []

        def listener(client, request):
            seen.append(request.payload)
            client.send_socket_mode_response(SocketModeResponse(request.envelope_id, {"text": "ok"}))

        client.socket_mode_request_listeners.append(listener)
        client.connect()
        try:
            server.wait_for_connections(1)
            first = server.send_envelope("slash_commands", {"command": "/kps-tasks"})
            assert server.wait_for_ack(first) == {"envelope_id": first, "payload": {"text": "ok"}}

            server.drop()
            server.wait_for_connections(2)
            second = server.send_envelope("interactive", {"type": "block_actions"})
            assert server.wait_for_ack(second)["envelope_id"] == second

            # Slack says `disconnect`, then closes the connection itself a few seconds later if the
            # app has not moved on; slack-sdk sometimes misses the message while it is still busy
            # replacing the dropped connection, so the fake closes it as Slack would.
            server.send_disconnect()
            try:
                server.wait_for_connections(3, timeout=5)
            except AssertionError:
                server.drop()
                server.wait_for_connections(3)
        finally:
            client.close()
        assert seen == [{"command": "/kps-tasks"}, {"type": "block_actions"}]
        opened = slack.calls_to("apps.connections.open")
        # slack-sdk may open a spare URL while replacing a connection; every call uses the app token.
        assert len(opened) >= 3 and {c["token"] for c in opened} == {APP_TOKEN}


def test_connections_open_checks_the_app_token(server):
    with FakeSlack(bot_token="xoxb-fake", app_token=APP_TOKEN, socket_mode=server) as slack:
        with pytest.raises(SlackApiError) as caught:
            WebClient(base_url=slack.url).apps_connections_open(app_token="xapp-wrong")
        assert caught.value.response["error"] == "invalid_auth"
        answer = WebClient(base_url=slack.url).apps_connections_open(app_token=APP_TOKEN)
        assert answer["url"].startswith(f"ws://127.0.0.1:{server.port}/link/?ticket=1")


def wait(predicate, timeout: float = 5) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        done.wait(0.02)
    return predicate()
