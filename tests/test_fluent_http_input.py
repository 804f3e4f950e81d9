"""The drop-in for Fluent Bit's `http` input (`[receivers.fluent_http]`): services that post to
FLUENT_BIT_HOST:9880 change only the host."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from conftest import dash0_config, free_port
from http_client import call
from otel_clients import attrs
from trackgate import config
from trackgate.config import ConfigError
from upstream import Upstream

pytestmark = pytest.mark.slow


def input_gateway(gateway_factory, upstream: Upstream, env: dict[str, str] | None = None) -> str:
    port = free_port()
    gateway_factory(dash0_config(upstream, f'[receivers.fluent_http]\nlisten = "127.0.0.1:{port}"\n'), env=env)
    return f"http://127.0.0.1:{port}"


def test_seed_smoke_test_and_bodies(gateway_factory, upstream: Upstream) -> None:
    url = input_gateway(gateway_factory, upstream)
    # curl -X POST http://localhost:9880/logs -d '{"test": "message"}' (curl's default form type)
    status, _, _ = call(url + "/logs", b'{"test": "message"}', {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 201
    array = [{"message": "from array", "level": "warning"}, {"message": "second", "job_id": "j-5"}]
    status, _, _ = call(url + "/app.events", json.dumps(array).encode(), {"Content-Type": "application/json"})
    assert status == 201
    lines = b'{"msg": "nd one"}\n{"msg": "nd two"}\n'
    status, _, _ = call(url + "/nd", lines, {"Content-Type": "application/json"})
    assert status == 201
    assert upstream.wait_for(lambda u: len(u.log_records()) == 5)
    by_body = {r.body.string_value: r for r in upstream.log_records()}
    assert set(by_body) == {'{"test":"message"}', "from array", "second", "nd one", "nd two"}
    assert attrs(by_body['{"test":"message"}'].attributes)["fluent.tag"] == "logs"
    assert by_body["from array"].severity_number == 13
    a = attrs(by_body["second"].attributes)
    assert a["job.id"] == "j-5" and a["fluent.tag"] == "app.events"


def test_refusals(gateway_factory, upstream: Upstream) -> None:
    url = input_gateway(gateway_factory, upstream, env={"TRACKGATE_TOKENS": "tok"})
    status, headers, _ = call(url + "/logs", b'{"a": 1}', {"Content-Type": "application/json"})
    assert status == 401 and "bearer" in headers["www-authenticate"].lower()
    auth = {"Authorization": "Bearer tok"}
    status, _, body = call(url + "/logs", b'{"a": ', {**auth, "Content-Type": "application/json"})
    assert status == 400 and b"invalid JSON" in body
    status, _, body = call(url + "/logs", b"x", {**auth, "Content-Type": "image/gif"})
    assert status == 415 and b"image/gif" in body
    status, _, _ = call(url + "/logs", b'{"a": 1}', {**auth, "Content-Type": "application/json"})
    assert status == 201
    # A malformed request head gets a 400 and a closed connection; the listener keeps serving.
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert call(url + "/logs", b'{"b": 2}', {**auth, "Content-Type": "application/json"})[0] == 201


def test_a_request_trickling_in_is_cut_at_one_deadline(gateway_factory, upstream: Upstream) -> None:
    """A byte now and then must not hold a connection: the whole request (head and body) has
    `body_timeout_s` from its first byte, not that long per read."""
    port = free_port()
    gateway_factory(
        dash0_config(
            upstream, f'[receivers.fluent_http]\nlisten = "127.0.0.1:{port}"\n[server]\nbody_timeout_s = 1.0\n'
        )
    )
    body = b'{"msg": "slow"}'
    head = f"POST /logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode())
        started = time.monotonic()
        answer = b""
        for byte in body:  # one byte every 0.25 s: 3.75 s for the body, each read well within 1 s
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.25)
            s.setblocking(False)
            try:
                answer += s.recv(4096)
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
            if answer:
                break
        s.settimeout(10)
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 3.0
    assert upstream.log_records() == []


def test_non_loopback_listen_needs_tokens(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[receivers.fluent_http]\nlisten = "0.0.0.0:9880"\n')
    with pytest.raises(ConfigError, match=r"receivers\.fluent_http\.listen"):
        config.check_exposure(config.load(path, env={}), str(path))
    path.write_text('[receivers.forward]\nlisten = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"receivers\.forward\.listen"):
        config.check_exposure(config.load(path, env={"TRACKGATE_TOKENS": "t"}), str(path))
