"""Several batches in flight per exporter and signal (`concurrency`): bounded as configured, and
acknowledged in queue order, so a slow batch is never skipped over, not even across a restart."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sentry_upstream import Received, SentryUpstream
from sentry_upstream import envelope as sentry_envelope
from trackgate import Pipeline
from trackgate._core import Batch
from trackgate.config import BatchConfig, Config, OtlpExporterConfig, RetryConfig, SentryExporterConfig
from trackgate.exporters.base import Exporter, HttpDestination, Outcome, Runner, waiting_on_destination
from trackgate.exporters.otlp_http import OtlpHttpExporter
from trackgate.exporters.sentry import SentryExporter
from trackgate.pipeline import close_together
from trackgate.ratelimits import RateLimits
from upstream import Reply, Upstream

FAST_RETRY = RetryConfig(initial_interval_s=0.05, max_interval_s=0.2)


class Counting(Upstream):
    """An OTLP stand-in that answers after `delay_s` and records the most requests it held at once."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.default = Reply(delay_s=delay_s)
        self.in_flight = 0
        self.most = 0

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            super()._handle(h)
        finally:
            with self.lock:
                self.in_flight -= 1


def one_record_batches() -> Config:
    """A memory queue whose every batch holds one record: one send per record ingested."""
    cfg = Config(batch=BatchConfig(max_records=1, max_delay_ms=0))
    cfg.storage.queue = "memory"
    return cfg


def logs(text: str) -> bytes:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return msg.SerializeToString()


@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_batches_in_flight_are_bounded_by_concurrency(concurrency: int) -> None:
    upstream = Counting(delay_s=0.2)
    cfg = one_record_batches()
    cfg.exporters.otlp = OtlpExporterConfig(endpoint=upstream.url, concurrency=concurrency, retry=FAST_RETRY)
    try:
        with Pipeline(cfg) as p:
            for i in range(20):  # one record per batch: twenty batches, each answered after 0.2 s
                p.ingest("logs", logs(f"r{i}"))
            assert upstream.wait_for(lambda u: len(u.log_records()) == 20)
            assert p.flush(5)
            assert p.pending() == 0
    finally:
        upstream.close()
    assert sorted(r.body.string_value for r in upstream.log_records()) == sorted(f"r{i}" for i in range(20))
    assert upstream.most == concurrency


class Sleepy(Exporter):
    """Takes `seconds` per send, waiting on the destination (`far`) or working on the gateway's
    side; records how many sends were in flight as each send began, after the first one ended."""

    def __init__(self, concurrency: int, seconds: float, far: bool, crowded: bool = False) -> None:
        self.name = "sleepy"
        self.concurrency = concurrency
        self.seconds = seconds
        self.far = far
        self.crowded = crowded  # the wait grows with the square of the sends in flight
        self.lock = threading.Lock()
        self.in_flight = 0
        self.first_ended = False
        self.overlaps: list[int] = []  # in flight when each later send began
        self.sent = 0

    def send(self, batch: Batch) -> Outcome:
        with self.lock:
            self.in_flight += 1
            crowd = self.in_flight
            if self.first_ended:
                self.overlaps.append(self.in_flight)
        if self.far:
            with waiting_on_destination():
                time.sleep(self.seconds * (crowd * crowd if self.crowded else 1))
        else:
            time.sleep(self.seconds)  # the gateway's own work (a batch compressed, encoded)
        with self.lock:
            self.in_flight -= 1
            self.first_ended = True
            self.sent += batch.records
        return Outcome.ok()


@pytest.mark.parametrize(
    ("far", "crowded", "fewest", "most"),
    [
        (True, False, 4, 4),  # waits that do not grow as sends are added: up to the concurrency
        (False, False, 1, 1),  # the gateway's own work makes the send: one at a time
        (True, True, 2, 3),  # waits that grow with the sends in flight: more is tried, then fewer
    ],
)
def test_sends_in_flight_adapt_to_where_a_send_spends_its_time(
    far: bool, crowded: bool, fewest: int, most: int
) -> None:
    exporter = Sleepy(concurrency=4, seconds=0.1 if not crowded else 0.02, far=far, crowded=crowded)
    cfg = one_record_batches()
    with Pipeline(cfg, [exporter]) as p:
        for i in range(24):
            p.ingest("logs", logs(f"r{i}"))
        assert p.flush(30)
        assert p.pending() == 0
    assert exporter.sent == 24
    assert fewest <= max(exporter.overlaps) <= most


def test_a_lane_that_fails_stops_acknowledging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the runner's own code after a send: what was taken stays queued, never acked."""
    exporter = Sleepy(concurrency=4, seconds=0.01, far=True)

    def broken(self: Runner, *args: object) -> None:
        raise RuntimeError("runner bug")

    monkeypatch.setattr(Runner, "_adapt", broken)
    cfg = one_record_batches()
    with Pipeline(cfg, [exporter]) as p:
        p.ingest("logs", logs("r0"))
        deadline = time.monotonic() + 5
        while "delivery stopped: a lane failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "delivery stopped: a lane failed" in caplog.text
        assert exporter.sent == 1  # it was sent, but the runner could not settle it: not acked
        assert p.pending() == 1
        assert p.delivery_failed and not p.ready  # /readyz says so


def test_one_at_a_time_delivery_outlives_a_bug_of_its_own(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The one-at-a-time runner's loop raising once (a bug, not the destination): it logs the
    traceback and goes on; nothing is lost, delivery does not stop."""
    exporter = Sleepy(concurrency=1, seconds=0.001, far=True)
    real_poll = Runner._poll_s
    raised = threading.Event()

    def once(self: Runner) -> float:
        if not raised.is_set():
            raised.set()
            raise RuntimeError("runner bug")
        return real_poll(self)

    monkeypatch.setattr(Runner, "_poll_s", once)
    monkeypatch.setattr(Runner, "READ_RETRY_S", 0.05)
    cfg = one_record_batches()
    with Pipeline(cfg, [exporter]) as p:
        for i in range(5):
            p.ingest("logs", logs(f"r{i}"))
        assert p.flush(10)
        assert p.pending() == 0 and not p.delivery_failed
    assert raised.is_set() and "delivery loop failed unexpectedly" in caplog.text
    assert exporter.sent == 5


class StuckHead(Exporter):
    """Fails the batch `r0` (retryable) until `released`; sends every other batch at once, and
    records how many it had sent while `r0` was still failing."""

    def __init__(self, concurrency: int) -> None:
        self.name = "stuck"
        self.concurrency = concurrency
        self.retry = RetryConfig(initial_interval_s=0.02, max_interval_s=0.05)
        self.released = threading.Event()
        self.sent_while_stuck = 0
        self.delivered: list[str] = []
        self.lock = threading.Lock()

    def send(self, batch: Batch) -> Outcome:
        text = ExportLogsServiceRequest.FromString(batch.body).resource_logs[0].scope_logs[0].log_records[0]
        name = text.body.string_value
        with waiting_on_destination():
            time.sleep(0.002)
        with self.lock:
            if name == "r0" and not self.released.is_set():
                return Outcome.retry("status_503", "head batch refused")
            if not self.released.is_set():
                self.sent_while_stuck += 1
            self.delivered.append(name)
        return Outcome.ok()


def test_a_failing_head_batch_bounds_the_batches_taken_behind_it() -> None:
    """Acks are cumulative: while the first batch keeps failing, nothing after it can be acked.
    The batches taken meanwhile wait in memory, so only a bounded window of them is taken."""
    exporter = StuckHead(concurrency=2)
    cfg = one_record_batches()
    with Pipeline(cfg, [exporter]) as p:
        for i in range(20):  # quick sends first: the allowance grows to the concurrency
            p.ingest("logs", logs(f"w{i}"))
        assert p.flush(10)
        with exporter.lock:
            exporter.sent_while_stuck = 0
        for i in range(60):
            p.ingest("logs", logs(f"r{i}"))
        time.sleep(1.0)  # dozens of the head's retries, each time the others could be taken
        with exporter.lock:
            stuck = exporter.sent_while_stuck
        assert 0 < stuck < 4 * exporter.concurrency  # Runner.WINDOW_PER_LANE
        assert p.pending() == 60
        exporter.released.set()
        assert p.flush(10)
        assert p.pending() == 0
    assert sorted(exporter.delivered) == sorted([f"w{i}" for i in range(20)] + [f"r{i}" for i in range(60)])


def test_otlp_metrics_keep_one_batch_at_a_time() -> None:
    """A series' points must arrive in order: backends refuse a sample older than one they have."""
    exporter = OtlpHttpExporter("otlp", OtlpExporterConfig(endpoint="http://127.0.0.1:9", concurrency=8))
    try:
        assert [exporter.concurrency_for(s) for s in ("logs", "traces", "metrics")] == [8, 8, 1]
    finally:
        exporter.close()


def test_senders_sharing_a_destination_wait_for_its_connections(caplog: pytest.LogCaptureFixture) -> None:
    """An adopted shard's pipeline shares its exporter with the owner's: together they must not
    open more connections than the exporter's concurrency allows (urllib3 would close each extra
    one after its request, with a warning every time)."""
    upstream = Counting(delay_s=0.1)
    dest = HttpDestination(5.0, "the stand-in", pools=1, maxsize=2)
    statuses: list[int] = []

    def post(i: int) -> None:
        resp = dest.post(f"{upstream.url}/v1/logs", logs(f"r{i}"), {"Content-Type": "application/x-protobuf"})
        assert not isinstance(resp, Outcome), resp
        statuses.append(resp.status)

    try:
        senders = [threading.Thread(target=post, args=(i,)) for i in range(6)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(10)
    finally:
        dest.close()
        upstream.close()
    assert statuses == [200] * 6
    assert upstream.most == 2
    assert "pool is full" not in caplog.text


def envelope(event_id: str) -> bytes:
    return sentry_envelope(
        {"event_id": event_id}, ("event", {"event_id": event_id, "message": "job failed", "level": "error"})
    )


def event_ids(sentry: SentryUpstream) -> list[str]:
    return [env.headers["event_id"] for env in sentry.delivered()]


@pytest.fixture
def sentry(sentry_upstream: SentryUpstream) -> SentryUpstream:
    return sentry_upstream


def forward_pipeline(sentry: SentryUpstream, queue_dir: Path, timeout_s: float = 5.0) -> Pipeline:
    """The gateway's Sentry forwarding pipeline on a disk queue, one envelope per batch."""
    cfg = Config(batch=BatchConfig(max_records=1, max_delay_ms=0))
    cfg_exporter = SentryExporterConfig(dsn=sentry.dsn(), timeout_s=timeout_s, retry=FAST_RETRY, concurrency=4)
    exporter = SentryExporter(cfg_exporter, RateLimits())
    forward = Pipeline(cfg, [exporter], queue_dir=queue_dir, register_metrics=False)
    exporter.core = forward.core
    return forward


# The destination's answers take most of each send (as from a backend a few ms away or more), so
# the runner keeps several in flight.
AWAY = Reply(200, body=b"{}", delay_s=0.05)


def warmed_up(forward: Pipeline, sentry: SentryUpstream) -> None:
    """Starts `forward` and sends it envelopes until it keeps several in flight (it starts with
    one, and adds one after each send at its full allowance whose wait stayed short)."""
    warm = [uuid.uuid4().hex for _ in range(16)]
    for event_id in warm:
        forward.core.enqueue("logs", envelope(event_id), 1)
    forward.start()
    assert sentry.wait_for(lambda s: set(warm) <= set(event_ids(s)))
    assert forward.flush(5)
    [runner] = [r for r in forward._runners if r.signal == "logs"]
    assert isinstance(runner, Runner) and runner.allowed >= 2


def pending_is(forward: Pipeline, expected: int) -> bool:
    """Whether the queue holds `expected` records within 5 s, and still after 0.3 s more."""
    deadline = time.monotonic() + 5
    while forward.pending() != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    return forward.pending() == expected


def held(event_id: str, released: threading.Event) -> Callable[[Received], Reply]:
    """A responder that holds `event_id`'s answer until `released`, and answers the others."""

    def respond(record: Received) -> Reply:
        if record.envelope is not None and record.envelope.headers.get("event_id") == event_id:
            released.wait(10.0)
            return Reply(200, body=b"{}")
        return AWAY

    return respond


@pytest.mark.parametrize("slow_index", [0, 2])
def test_a_slow_batch_holds_back_the_acks_of_the_batches_after_it(
    sentry: SentryUpstream, tmp_path: Path, slow_index: int
) -> None:
    ids = [uuid.uuid4().hex for _ in range(4)]
    released = threading.Event()
    sentry.responder = held(ids[slow_index], released)
    forward = forward_pipeline(sentry, tmp_path / "queue")
    warmed_up(forward, sentry)
    for event_id in ids:
        forward.core.enqueue("logs", envelope(event_id), 1)
    with forward:
        others = set(ids) - {ids[slow_index]}
        assert sentry.wait_for(lambda s: others <= set(event_ids(s)))
        # Acked: the batches before the slow one. Still queued: the slow one and every one after.
        assert pending_is(forward, len(ids) - slow_index)
        released.set()
        assert sentry.wait_for(lambda s: set(ids) <= set(event_ids(s)))
        assert forward.flush(5)
        assert forward.pending() == 0


def test_a_batch_unsettled_at_shutdown_is_delivered_after_the_restart(sentry: SentryUpstream, tmp_path: Path) -> None:
    ids = [uuid.uuid4().hex for _ in range(4)]
    # The oldest envelope keeps failing (retryable); the three after it go through.
    sentry.responder = lambda r: (
        Reply(503, body=b"{}") if r.envelope and r.envelope.headers["event_id"] == ids[0] else AWAY
    )
    forward = forward_pipeline(sentry, tmp_path / "queue")
    warmed_up(forward, sentry)
    for event_id in ids:
        forward.core.enqueue("logs", envelope(event_id), 1)
    try:
        assert sentry.wait_for(lambda s: set(ids[1:]) <= set(event_ids(s)))
        assert sentry.wait_for(lambda s: sum(r.status == 503 for r in s.requests()) >= 2)  # retried
    finally:
        forward.close(grace_s=0.2)
    assert forward.pending() == 4  # shut down with the oldest unsettled: nothing acknowledged past it
    del forward
    gc.collect()  # a process that is gone: its queue lock goes with the core
    sentry.responder = None
    before = len(event_ids(sentry))
    with forward_pipeline(sentry, tmp_path / "queue") as again:
        # Redelivered: the oldest, never lost, and the ones after it (at least once).
        assert sentry.wait_for(lambda s: set(ids) <= set(event_ids(s)[before:]))
        assert again.flush(5)
        assert again.pending() == 0


def all_sending(exporters: list[Sleepy]) -> None:
    """Waits (up to 5 s) until each of `exporters` is in a send."""
    deadline = time.monotonic() + 5
    while sum(e.in_flight for e in exporters) < len(exporters) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(e.in_flight for e in exporters) == len(exporters)


def test_shutdown_waits_for_sends_in_flight_once_not_once_per_runner() -> None:
    """Past the grace period, sends still in flight get 2 s in all: granian kills the worker
    `shutdown_grace_s` + 5 s after asking it to stop, and three exporters each stuck in a send
    must not take 2 s apiece."""
    exporters = []
    for i in range(3):
        exporter = Sleepy(concurrency=1, seconds=8.0, far=True)
        exporter.name = f"stuck{i}"
        exporters.append(exporter)
    cfg = one_record_batches()
    p = Pipeline(cfg, exporters).start()
    p.ingest("logs", logs("r0"))
    all_sending(exporters)
    started = time.monotonic()
    p.close(0)
    assert time.monotonic() - started < 4.0  # 2 s, not 3 x 2 s


def test_pipelines_shut_down_together_share_one_window() -> None:
    """The app's three queues (OTLP, Sentry, events) close together: one grace period and one
    2 s window for all of their sends in flight, not one each."""
    cfg = one_record_batches()
    stuck = [Sleepy(concurrency=1, seconds=8.0, far=True) for _ in range(3)]
    pipelines = [Pipeline(cfg, [exporter], register_metrics=False).start() for exporter in stuck]
    for p in pipelines:
        p.ingest("logs", logs("r0"))
    all_sending(stuck)
    started = time.monotonic()
    close_together(pipelines, time.monotonic() + 0.5)
    assert time.monotonic() - started < 4.5  # 0.5 s + 2 s, not 3 x (0.5 s + 2 s)
