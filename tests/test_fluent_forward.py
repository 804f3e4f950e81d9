"""The Fluentd forward protocol (`[receivers.forward]`), with a client written here from the
protocol specification (Forward Protocol v1.5) and, where present, a real Fluent Bit."""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest

from conftest import dash0_config, free_port
from otel_clients import attrs
from upstream import Reply, Upstream

pytestmark = pytest.mark.slow

T0 = 1795936387
FLUENT_BIT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "fluent-bit"


def event_time(secs: int, nanos: int = 0) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", secs, nanos))


def forward_gateway(gateway_factory: Any, upstream: Upstream, extra: str = "") -> tuple[Any, int]:
    port = free_port()
    gw = gateway_factory(dash0_config(upstream, f'[receivers.forward]\nlisten = "127.0.0.1:{port}"\n{extra}'))
    return gw, port


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, message: object) -> None:
        self.sock.sendall(msgpack.packb(message))

    def answer(self) -> Any:
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()


def bodies(upstream: Upstream) -> list[str]:
    return sorted(r.body.string_value for r in upstream.log_records())


def test_each_mode_with_chunk_ack(gateway_factory, upstream: Upstream) -> None:
    _, port = forward_gateway(gateway_factory, upstream)
    c = Client(port)
    # Message mode, EventTime, with a chunk.
    c.send(["app.msg", event_time(T0, 5), {"log": "message mode", "job_id": "j-1"}, {"chunk": "c1"}])
    assert c.answer() == {"ack": "c1"}
    # Forward mode, both entry shapes, integer time.
    c.send(["app.fwd", [[T0, {"log": "forward a"}], [[event_time(T0), {}], {"log": "forward b"}]], {"chunk": "c2"}])
    assert c.answer() == {"ack": "c2"}
    # PackedForward: entries back to back in a bin.
    packed = b"".join(msgpack.packb([event_time(T0 + i), {"log": f"packed {i}"}]) for i in range(3))
    c.send(["app.packed", packed, {"chunk": "c3", "size": 3}])
    assert c.answer() == {"ack": "c3"}
    # CompressedPackedForward.
    c.send(["app.gz", gzip.compress(packed.replace(b"packed", b"gzippd")), {"chunk": "c4", "compressed": "gzip"}])
    assert c.answer() == {"ack": "c4"}
    c.sock.sendall(b"\xc0")  # heartbeat
    c.send(["app.noack", event_time(T0), {"log": "no chunk"}])
    c.close()
    want = ["forward a", "forward b", "message mode", "no chunk"]
    want += [f"packed {i}" for i in range(3)] + [f"gzippd {i}" for i in range(3)]
    assert upstream.wait_for(lambda u: len(u.log_records()) == len(want))
    assert bodies(upstream) == sorted(want)
    by_body = {r.body.string_value: r for r in upstream.log_records()}
    rec = by_body["message mode"]
    assert rec.time_unix_nano == T0 * 10**9 + 5
    a = attrs(rec.attributes)
    assert a["job.id"] == "j-1" and a["fluent.tag"] == "app.msg"
    assert by_body["forward a"].time_unix_nano == T0 * 10**9
    assert attrs(by_body["gzippd 2"].attributes)["fluent.tag"] == "app.gz"


def test_messages_split_across_reads_and_sent_together(gateway_factory, upstream: Upstream) -> None:
    """A message arriving in pieces (cut inside its header and inside its packed entries), a
    heartbeat, and the next message in the same write: each acked once whole, in order."""
    _, port = forward_gateway(gateway_factory, upstream)
    c = Client(port)
    packed = b"".join(msgpack.packb([event_time(T0 + i), {"log": f"piece {i}", "pad": "x" * 500}]) for i in range(200))
    first = msgpack.packb(["app.split", packed, {"chunk": "s1", "size": 200}])
    second = msgpack.packb(["app.after", event_time(T0), {"log": "right after"}, {"chunk": "s2"}])
    cuts = [1, 7, len(first) // 3, len(first) - 1]
    pieces = [first[a:b] for a, b in zip([0, *cuts], [*cuts, len(first)], strict=True)]
    for piece in pieces[:-1]:
        c.sock.sendall(piece)
    c.sock.sendall(pieces[-1] + b"\xc0" + second)
    assert c.answer() == {"ack": "s1"}
    assert c.answer() == {"ack": "s2"}
    c.close()
    assert upstream.wait_for(lambda u: len(u.log_records()) == 201)
    assert bodies(upstream) == sorted([f"piece {i}" for i in range(200)] + ["right after"])


def test_broken_frame_closes_only_its_connection(gateway_factory, upstream: Upstream) -> None:
    _, port = forward_gateway(gateway_factory, upstream)
    healthy, broken = Client(port), Client(port)
    broken.sock.sendall(b"\xc1\x00\x00")  # 0xc1 is never valid msgpack
    broken.sock.settimeout(10)
    assert broken.sock.recv(10) == b""  # closed by the gateway
    healthy.send(["ok", event_time(T0), {"log": "still served"}, {"chunk": "h1"}])
    assert healthy.answer() == {"ack": "h1"}
    assert upstream.wait_for(lambda u: bodies(u) == ["still served"])
    healthy.close()


def test_ack_withheld_while_the_queue_is_full(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(503, {"Retry-After": "1"})  # nothing drains: the queue fills
    _, port = forward_gateway(gateway_factory, upstream, "[storage]\nmax_bytes = 4000\n")
    c = Client(port)
    c.sock.settimeout(3)
    sent, withheld = [], None
    for i in range(40):
        c.send(["t", [[T0, {"log": f"r{i} " + "x" * 300}]], {"chunk": f"c{i}"}])
        sent.append(f"r{i}")
        try:
            assert c.answer() == {"ack": f"c{i}"}
        except TimeoutError:
            withheld = f"c{i}"
            break
    assert withheld is not None, "the queue never filled"
    upstream.default = Reply(200)  # the destination comes back: the queue drains, the entry fits
    c.sock.settimeout(30)
    assert c.answer() == {"ack": withheld}
    assert upstream.wait_for(lambda u: {b.split()[0] for b in bodies(u)} >= set(sent), timeout=30)
    c.close()


@pytest.mark.skipif(not FLUENT_BIT.exists(), reason=f"no Fluent Bit binary at {FLUENT_BIT} (a fresh clone has none)")
def test_real_fluent_bit_forward_output_with_acks(gateway_factory, upstream: Upstream, tmp_path: Path) -> None:
    _, port = forward_gateway(gateway_factory, upstream)
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"forwarded line {i} job_id=job-{i}\n" for i in range(30)))
    cmd = [
        str(FLUENT_BIT), "-q", "-f", "1",
        "-i", "tail", "-p", f"path={log_file}", "-p", "read_from_head=true", "-t", "app.log",
        "-o", "forward", "-m", "*", "-p", "host=127.0.0.1", "-p", f"port={port}",
        "-p", "require_ack_response=true",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        assert upstream.wait_for(lambda u: len(u.log_records()) >= 30, timeout=30)
    finally:
        proc.terminate()
        proc.wait(10)
    assert bodies(upstream) == sorted(f"forwarded line {i} job_id=job-{i}" for i in range(30))
    rec = next(r for r in upstream.log_records() if r.body.string_value.startswith("forwarded line 4 "))
    assert attrs(rec.attributes)["job.id"] == "job-4" and rec.time_unix_nano > 0
