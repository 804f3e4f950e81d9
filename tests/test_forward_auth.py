"""The forward protocol's shared-key handshake (`[receivers.forward] shared_key`): a client written
here from the Forward Protocol Specification v1 ("Handshake Messages"), the config rules, and,
where present, a real Fluent Bit with `Shared_Key`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from conftest import dash0_config, free_port
from test_fluent_forward import FLUENT_BIT, T0, Client, bodies, event_time
from trackgate import config
from trackgate.config import ConfigError
from upstream import Upstream

pytestmark = pytest.mark.slow

KEY = "s3cret-shared-key"
REFUSED_BEFORE_PING = "expected a PING message (authentication required)"


def digest(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def handshake(
    c: Client, key: str, hostname: str = "client.example", user: str = "", password: str = ""
) -> tuple[list[Any], bytes, bytes]:
    """HELO in, PING out, PONG in: returns (PONG, our salt, the server's nonce)."""
    helo = c.answer()
    assert helo[0] == "HELO" and helo[1]["keepalive"] is True
    nonce, auth_salt = helo[1]["nonce"], helo[1]["auth"]
    assert isinstance(nonce, bytes) and len(nonce) == 16
    salt = os.urandom(16)
    pw_digest = digest(auth_salt, user.encode(), password.encode()) if auth_salt else ""
    c.send(["PING", hostname, salt, digest(salt, hostname.encode(), nonce, key.encode()), user, pw_digest])
    return c.answer(), salt, nonce


def assert_closed(c: Client) -> None:
    c.sock.settimeout(10)
    assert c.sock.recv(100) == b""
    c.close()


def wait_for_log(gw: Any, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := gw.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in log
    return log


def auth_gateway(gateway_factory: Any, upstream: Upstream, forward: str) -> tuple[Any, int]:
    port = free_port()
    extra = f'[receivers.forward]\nlisten = "127.0.0.1:{port}"\n{forward}'
    return gateway_factory(dash0_config(upstream, extra)), port


def test_handshake_right_key_wrong_key_and_data_before_ping(gateway_factory, upstream: Upstream) -> None:
    gw, port = auth_gateway(gateway_factory, upstream, f'shared_key = "{KEY}"\nself_hostname = "gw.example"\n')
    # A wrong key: PONG false with the reason, then the connection is closed.
    wrong = Client(port)
    pong, _, _ = handshake(wrong, "not-the-key")
    assert pong == ["PONG", False, "shared_key mismatch", "", ""]
    assert_closed(wrong)
    # Data before any PING is refused the same way and never ingested.
    eager = Client(port)
    eager.send(["app", event_time(T0), {"log": "sent before PING"}, {"chunk": "e1"}])
    helo = eager.answer()
    assert helo[0] == "HELO"
    assert eager.answer() == ["PONG", False, REFUSED_BEFORE_PING, "", ""]
    assert_closed(eager)
    # The right key: PONG true with a digest proving the server knows the key; then data is served.
    good = Client(port)
    pong, salt, nonce = handshake(good, KEY)
    assert pong[:4] == ["PONG", True, "", "gw.example"]
    assert pong[4] == digest(salt, b"gw.example", nonce, KEY.encode())
    good.send(["app", event_time(T0), {"log": "authenticated", "job_id": "j-9"}, {"chunk": "g1"}])
    assert good.answer() == {"ack": "g1"}
    packed = b"".join(msgpack.packb([event_time(T0 + i), {"log": f"packed {i}"}]) for i in range(2))
    good.send(["app.packed", packed, {"chunk": "g2"}])
    assert good.answer() == {"ack": "g2"}
    good.close()
    assert upstream.wait_for(lambda u: len(u.log_records()) >= 3)
    assert bodies(upstream) == ["authenticated", "packed 0", "packed 1"]
    wait_for_log(gw, "client not authenticated: shared_key mismatch")
    log = wait_for_log(gw, f"client not authenticated: {REFUSED_BEFORE_PING}")
    assert KEY not in log


def test_handshake_with_users(gateway_factory, upstream: Upstream) -> None:
    users = 'users = [{ username = "alice", password = "hunter2" }]\n'
    gw, port = auth_gateway(gateway_factory, upstream, f'shared_key = "{KEY}"\n{users}')
    bad = Client(port)
    pong, _, _ = handshake(bad, KEY, user="alice", password="wrong")
    assert pong == ["PONG", False, "username/password mismatch", "", ""]
    assert_closed(bad)
    good = Client(port)
    pong, _, _ = handshake(good, KEY, user="alice", password="hunter2")
    assert pong[:3] == ["PONG", True, ""]
    good.send(["app", [[T0, {"log": "from alice"}]], {"chunk": "a1"}])
    assert good.answer() == {"ack": "a1"}
    good.close()
    assert upstream.wait_for(lambda u: bodies(u) == ["from alice"])
    assert "hunter2" not in wait_for_log(gw, "client not authenticated: username/password mismatch")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path


def test_config_shared_key_rules(tmp_path: Path) -> None:
    # Beyond loopback, a shared_key is enough (no allow_unauthenticated), as tokens are for HTTP.
    path = write(tmp_path, f'[receivers.forward]\nlisten = "0.0.0.0"\nshared_key = "{KEY}"\n')
    cfg = config.load(path, env={"TRACKGATE_TOKENS": "t"})
    config.check_exposure(cfg, str(path))
    assert cfg.receivers.forward.shared_key == KEY
    assert config.masked(cfg)["receivers"]["forward"]["shared_key"] == config.MASK
    # ... and the environment can supply it.
    path = write(tmp_path, '[receivers.forward]\nlisten = "0.0.0.0"\n')
    cfg = config.load(path, env={"TRACKGATE_TOKENS": "t", "TRACKGATE_FORWARD_SHARED_KEY": KEY})
    config.check_exposure(cfg, str(path))
    assert cfg.receivers.forward.shared_key == KEY
    with pytest.raises(ConfigError, match="TRACKGATE_FORWARD_SHARED_KEY is set but blank"):
        config.load(path, env={"TRACKGATE_FORWARD_SHARED_KEY": "  "})
    # Without one it is still refused, and the message says what to set.
    with pytest.raises(ConfigError, match=r"receivers\.forward\.listen .*shared_key"):
        config.check_exposure(config.load(path, env={"TRACKGATE_TOKENS": "t"}), str(path))


@pytest.mark.parametrize(
    ("forward", "message"),
    [
        ('shared_key = ""', r"receivers\.forward\.shared_key is blank"),
        ('shared_key = "   "', r"receivers\.forward\.shared_key is blank"),
        ('users = [{ username = "a", password = "b" }]', r"receivers\.forward\.users need .*shared_key"),
        (
            f'shared_key = "{KEY}"\nusers = [{{ username = "a", password = "" }}]',
            r"receivers\.forward\.users\[0\] needs a username and a password",
        ),
        ("shared_key = 12", r"Expected `str \| null`, got `int`"),
    ],
)
def test_config_bad_shared_key(tmp_path: Path, forward: str, message: str) -> None:
    path = write(tmp_path, f'[receivers.forward]\nlisten = "127.0.0.1"\n{forward}\n')
    with pytest.raises(ConfigError, match=message) as err:
        config.load(path, env={})
    assert KEY not in str(err.value)


@pytest.mark.skipif(not FLUENT_BIT.exists(), reason=f"no Fluent Bit binary at {FLUENT_BIT} (a fresh clone has none)")
def test_real_fluent_bit_forward_with_shared_key(gateway_factory, upstream: Upstream, tmp_path: Path) -> None:
    gw, port = auth_gateway(gateway_factory, upstream, f'shared_key = "{KEY}"\n')
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"keyed line {i}\n" for i in range(25)))
    cmd = [
        str(FLUENT_BIT), "-q", "-f", "1",
        "-i", "tail", "-p", f"path={log_file}", "-p", "read_from_head=true", "-t", "app.log",
        "-o", "forward", "-m", "*", "-p", "host=127.0.0.1", "-p", f"port={port}",
        "-p", "require_ack_response=true", "-p", f"shared_key={KEY}", "-p", "self_hostname=fb.example",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        assert upstream.wait_for(lambda u: len(u.log_records()) >= 25, timeout=30)
    finally:
        proc.terminate()
        proc.wait(10)
    assert bodies(upstream) == sorted(f"keyed line {i}" for i in range(25))  # every line, once
    assert "not authenticated" not in gw.log()


def test_core_ingest_forward_takes_one_whole_message() -> None:
    """`Core.ingest_forward` (the benchmarks' entry point): one message of any mode, nothing else."""
    from trackgate._core import Core, DecodeError

    core = Core(exporters=["t"], batch_max_delay_ms=0)
    entries = b"".join(msgpack.packb([[event_time(T0, i), {}], {"log": f"e{i}"}]) for i in range(3))
    message = msgpack.packb(["app", entries, {"chunk": "c"}])
    result = core.ingest_forward(message)
    assert (result.accepted, result.rejected) == (3, 0)
    batch = core.next_batch("t", "logs", 1.0, True)
    assert batch is not None and batch.records == 3
    for bad, why in [
        (message[:-3], "cut short"),
        (message + b"\xc0", "bytes after"),
        (b"\xc0", "heartbeat"),
        (msgpack.packb(["app", 5]), "without a record"),
    ]:
        with pytest.raises(DecodeError, match=why):
            core.ingest_forward(bad)
    core.close()
