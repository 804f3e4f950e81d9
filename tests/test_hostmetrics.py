"""Host and GPU metrics: the GPU part against a stand-in NVML, the encoder decoded with
opentelemetry-proto, the config, and the agent's buffer while its target is down."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pynvml
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from conftest import free_port
from fake_nvml import FakeGpu, FakeNvml
from trackgate import config as config_mod
from trackgate.config import ConfigError
from trackgate.hostmetrics import Collector, GpuCollector, Metric, encode_request
from trackgate.hostmetrics.agent import Agent, metrics_url
from upstream import Upstream


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, part: str) -> list[str]:
        return [r.getMessage() for r in self.records if part in r.getMessage()]


@pytest.fixture
def logs() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("trackgate")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def by_name(metrics: list[Metric]) -> dict[str, Metric]:
    return {m.name: m for m in metrics if m.points}


def points_for(metric: Metric, index: int) -> list[tuple[dict[str, Any], float | int]]:
    return [(dict(a), v) for a, v in metric.points if dict(a)["gpu.index"] == index]


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("GPU-aaaa", util_gpu=97, processes=[(4242, 3 * 2**30), (4243, None)]),
        FakeGpu("GPU-bbbb", name="NVIDIA A10G", util_gpu=0, fan=None, ecc=None, reasons=0x20),
    ]


# -- GPU part ---------------------------------------------------------------------------------


def test_several_gpus_each_reported_with_their_attributes_and_units(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch, two_gpus())
    gpus = GpuCollector("auto", nvml=pynvml, process_names=False)
    m = by_name(gpus.collect())

    util = m["hw.gpu.utilization"]
    assert (util.unit, util.kind) == ("1", "gauge")
    [(attrs0, v0)] = points_for(util, 0)
    [(attrs1, v1)] = points_for(util, 1)
    assert (v0, v1) == (0.97, 0.0)
    assert attrs0 == {
        "hw.id": "GPU-aaaa", "hw.type": "gpu", "gpu.index": 0, "gpu.uuid": "GPU-aaaa", "gpu.name": "NVIDIA H200",
    }  # fmt: skip
    assert attrs1["gpu.name"] == "NVIDIA A10G" and attrs1["gpu.uuid"] == "GPU-bbbb"

    assert points_for(m["hw.gpu.memory.usage"], 0)[0][1] == 4 * 2**30
    assert points_for(m["hw.gpu.memory.limit"], 0)[0][1] == 141 * 2**30
    assert points_for(m["hw.gpu.memory.free"], 0)[0][1] == 137 * 2**30
    assert m["hw.gpu.memory.usage"].unit == "By" and m["hw.gpu.memory.usage"].kind == "updown"
    assert points_for(m["hw.gpu.memory.controller.utilization"], 0)[0][1] == 0.2
    assert points_for(m["hw.gpu.power.draw"], 0)[0][1] == 250.0  # mW -> W
    assert points_for(m["hw.gpu.power.limit"], 0)[0][1] == 700.0
    assert points_for(m["hw.gpu.temperature"], 0)[0][1] == 61.0 and m["hw.gpu.temperature"].unit == "Cel"
    assert points_for(m["hw.gpu.clock.sm"], 0)[0][1] == 1980
    assert points_for(m["hw.gpu.clock.memory"], 0)[0][1] == 2619
    errors = {(a["gpu.index"], a["error.type"]): v for a, v in ((dict(a), v) for a, v in m["hw.errors"].points)}
    assert errors == {(0, "ecc_corrected"): 3, (0, "ecc_uncorrected"): 0}  # GPU 1 has ECC off
    throttled = {
        (dict(a)["gpu.index"], dict(a)["gpu.throttle.reason"]) for a, v in m["hw.gpu.clock.throttle"].points if v
    }
    assert throttled == {(0, "gpu_idle"), (0, "sw_power_cap"), (1, "sw_thermal_slowdown")}
    # Per-process memory where NVML gives a figure; the process without one is left out.
    procs = [(dict(a)["process.pid"], v) for a, v in m["hw.gpu.process.memory.usage"].points]
    assert procs == [(4242, 3 * 2**30)]


def test_missing_driver_one_log_line_and_host_metrics_continue(monkeypatch: pytest.MonkeyPatch, logs: Records) -> None:
    fake = FakeNvml(monkeypatch, [], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    collector = Collector("auto", env={})
    for _ in range(3):
        names = {m.name for m in collector.collect() if m.points}
        assert "system.cpu.utilization" in names and "system.memory.usage" in names
        assert not any(n.startswith("hw.") for n in names)
    assert not collector.gpu.available
    assert len(logs.messages("NVML")) == 1, logs.records
    assert fake.calls == {}  # nothing asked of a driver that is not there


def test_gpu_false_never_touches_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(monkeypatch, two_gpus())
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: pytest.fail("nvmlInit called with gpu = false"))
    gpus = GpuCollector(False)
    assert gpus.collect() == [] and fake.calls == {}


def test_not_supported_skips_that_metric_and_is_not_asked_again(monkeypatch: pytest.MonkeyPatch, logs: Records) -> None:
    fake = FakeNvml(monkeypatch, [FakeGpu("GPU-nofan", fan=None)])
    gpus = GpuCollector("auto", nvml=pynvml, process_names=False)
    for _ in range(3):
        m = by_name(gpus.collect())
        assert "hw.gpu.fan_speed" not in m
        assert points_for(m["hw.gpu.utilization"], 0)[0][1] == 0.5  # the rest of the card still reports
    assert fake.calls["fan"] == 1
    assert not logs.messages("stopped answering")


def test_fan_speed_as_fraction_where_the_card_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch, [FakeGpu("GPU-fan", fan=35)])
    m = by_name(GpuCollector("auto", nvml=pynvml, process_names=False).collect())
    assert points_for(m["hw.gpu.fan_speed"], 0)[0][1] == 0.35


def test_gpu_failing_mid_run_reported_once_skipped_then_back(monkeypatch: pytest.MonkeyPatch, logs: Records) -> None:
    cards = two_gpus()
    FakeNvml(monkeypatch, cards)
    gpus = GpuCollector("auto", nvml=pynvml, process_names=False)
    assert {dict(a)["gpu.index"] for a, _ in by_name(gpus.collect())["hw.gpu.utilization"].points} == {0, 1}

    cards[1].error = pynvml.NVML_ERROR_GPU_IS_LOST  # an Xid / fallen off the bus
    for _ in range(3):
        util = by_name(gpus.collect())["hw.gpu.utilization"]
        assert {dict(a)["gpu.index"] for a, _ in util.points} == {0}
    assert len(logs.messages("stopped answering")) == 1

    cards[1].error = None  # reset done: it answers again
    for _ in range(2):
        util = by_name(gpus.collect())["hw.gpu.utilization"]
        assert {dict(a)["gpu.index"] for a, _ in util.points} == {0, 1}
    assert len(logs.messages("answers again")) == 1
    assert len(logs.messages("stopped answering")) == 1


def test_gpu_unopenable_at_start_joins_when_it_answers(monkeypatch: pytest.MonkeyPatch, logs: Records) -> None:
    cards = [FakeGpu("GPU-0"), FakeGpu("GPU-1", error=pynvml.NVML_ERROR_UNKNOWN)]
    FakeNvml(monkeypatch, cards)
    gpus = GpuCollector("auto", nvml=pynvml, process_names=False)
    assert {dict(a)["gpu.index"] for a, _ in by_name(gpus.collect())["hw.gpu.utilization"].points} == {0}
    cards[1].error = None
    m = by_name(gpus.collect())
    assert points_for(m["hw.gpu.utilization"], 1)[0][0]["gpu.uuid"] == "GPU-1"
    assert len(logs.messages("cannot be opened")) == 1


# -- the request, decoded with opentelemetry-proto ------------------------------------------------


def decode(body: bytes) -> Any:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    req.ParseFromString(body)
    return req


def test_encoder_round_trips_through_opentelemetry_proto() -> None:
    gauge = Metric("g", "1", "gauge", "a gauge")
    gauge.add(0.25, (("s", "x"), ("i", -3), ("b", True), ("f", 1.5)))
    counter = Metric("c", "By", "counter")
    counter.add(2**40)
    updown = Metric("u", "By", "updown")
    updown.add(-7)
    empty = Metric("e", "1", "gauge")
    req = decode(encode_request((("host.name", "h"),), ("scope", "1.0"), [gauge, counter, updown, empty], 2000, 1000))
    [rm] = req.resource_metrics
    assert [(kv.key, kv.value.string_value) for kv in rm.resource.attributes] == [("host.name", "h")]
    [sm] = rm.scope_metrics
    assert (sm.scope.name, sm.scope.version) == ("scope", "1.0")
    g, c, u = sm.metrics  # the metric without points is left out
    assert (g.name, g.unit, g.description, g.WhichOneof("data")) == ("g", "1", "a gauge", "gauge")
    [p] = g.gauge.data_points
    assert p.as_double == 0.25 and p.time_unix_nano == 2000 and p.start_time_unix_nano == 0
    attrs = {kv.key: kv.value for kv in p.attributes}
    assert attrs["s"].string_value == "x" and attrs["i"].int_value == -3
    assert attrs["b"].bool_value is True and attrs["f"].double_value == 1.5
    assert c.WhichOneof("data") == "sum" and c.sum.is_monotonic and c.sum.aggregation_temporality == 2
    assert c.sum.data_points[0].as_int == 2**40 and c.sum.data_points[0].start_time_unix_nano == 1000
    assert u.WhichOneof("data") == "sum" and not u.sum.is_monotonic and u.sum.data_points[0].as_int == -7


def test_collector_request_has_host_and_gpu_metrics_and_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch, two_gpus())
    env = {"MACHINE_ID": "m-1", "WORKER_ID": "w-7", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"}
    collector = Collector("auto", env=env, nvml=pynvml)
    req = decode(collector.request())
    [rm] = req.resource_metrics
    resource = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
    assert resource["machine.id"] == "m-1" and resource["worker.id"] == "w-7"
    assert resource["service.name"] == "trackgate" and resource["host.name"]
    assert resource["deployment.environment"] == "test"
    metrics = {m.name: m for m in rm.scope_metrics[0].metrics}
    for name in (
        "system.cpu.utilization", "system.cpu.time", "system.memory.usage", "system.memory.limit",
        "system.paging.usage", "system.filesystem.usage", "system.process.count", "system.cpu.load_average.1m",
        "hw.gpu.utilization", "hw.gpu.memory.usage",
    ):  # fmt: skip
        assert name in metrics, name
    modes = {kv.value.string_value for p in metrics["system.cpu.utilization"].gauge.data_points for kv in p.attributes}
    assert {"user", "system", "idle"} <= modes
    assert metrics["system.memory.usage"].unit == "By" and not metrics["system.memory.usage"].sum.is_monotonic


# -- config ------------------------------------------------------------------------------------


def write(tmp_path: Any, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_hostmetrics_config_defaults_and_interval_forms(tmp_path: Any) -> None:
    cfg = config_mod.load(None, env={})
    assert (cfg.hostmetrics.enabled, cfg.hostmetrics.interval, cfg.hostmetrics.gpu) == (False, 30.0, "auto")
    for given, seconds in (('"30s"', 30.0), ("5", 5.0), ('"500ms"', 0.5), ('"2m"', 120.0), ("1.5", 1.5)):
        cfg = config_mod.load(
            write(tmp_path, f"[hostmetrics]\nenabled = true\ninterval = {given}\ngpu = false\n"), env={}
        )
        assert cfg.hostmetrics.interval == seconds and cfg.hostmetrics.gpu is False
    cfg = config_mod.load(None, env={"METRICS_COLLECTION_INTERVAL": "15s"})
    assert cfg.hostmetrics.interval == 15.0
    # Its own interval wins; the effective config survives the trip to the workers.
    cfg = config_mod.load(write(tmp_path, "[hostmetrics]\ninterval = 7\n"), env={"METRICS_COLLECTION_INTERVAL": "15"})
    assert config_mod.from_json(config_mod.to_json(cfg)).hostmetrics.interval == 7.0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('interval = "soon"', "hostmetrics.interval"),
        ("interval = 0", "hostmetrics.interval"),
        ('gpu = "yes"', "gpu"),
        ("colour = 1", "colour"),
    ],
)
def test_hostmetrics_config_errors_name_the_key(tmp_path: Any, body: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_mod.load(write(tmp_path, f"[hostmetrics]\n{body}\n"), env={})


# -- the agent's buffer ------------------------------------------------------------------------------


def test_metrics_url() -> None:
    assert metrics_url("http://gw:4318") == "http://gw:4318/v1/metrics"
    assert metrics_url("http://gw:4318/v1/metrics/") == "http://gw:4318/v1/metrics"


def test_agent_buffers_while_down_drops_oldest_then_delivers(logs: Records) -> None:
    port = free_port()
    agent = Agent(f"http://127.0.0.1:{port}", token="tok", interval=1.0, gpu=False, buffer=3, timeout_s=2.0)
    try:
        for _ in range(5):
            agent.sample()
            agent.deliver(ignore_backoff=True)  # nothing listens: each try fails
        assert agent.stats.sent == 0 and agent.stats.dropped_full == 2 and len(agent.buffer) == 3
        assert len(logs.messages("buffer full")) == 1
        assert len(logs.messages("unreachable")) == 1

        up = Upstream(port)
        try:
            agent.deliver(ignore_backoff=True)
            assert agent.stats.sent == 3 and not agent.buffer
            got = up.delivered("/v1/metrics")
            assert len(got) == 3
            assert all(r.headers["authorization"] == "Bearer tok" for r in got)
            times = [
                r.message.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].time_unix_nano  # type: ignore[union-attr]
                for r in got
            ]
            assert times == sorted(times)  # oldest kept sample first
            assert len(logs.messages("answers again")) == 1
        finally:
            up.close()
    finally:
        agent.close()


def test_agent_drops_a_sample_the_target_refuses_for_good(upstream: Upstream) -> None:
    from upstream import Reply

    upstream.script = [Reply(400, body=b"bad"), Reply(503), Reply(200)]
    agent = Agent(upstream.url, interval=1.0, gpu=False, buffer=5)
    try:
        agent.sample()
        agent.sample()
        agent.deliver(ignore_backoff=True)  # 400: first dropped; 503: second kept for a retry
        assert agent.stats.dropped_rejected == 1 and len(agent.buffer) == 1
        agent.deliver(ignore_backoff=True)
        assert agent.stats.sent == 1 and not agent.buffer
    finally:
        agent.close()
