"""`[receivers.fluent] default_utc_offset`: how Fluent time fields written without a zone are read."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from trackgate import config
from trackgate._core import Core
from trackgate.config import ConfigError

UTC_07_13_07 = 1_795_936_387 * 10**9


def times(offset_s: int, lines: list[dict[str, object]]) -> list[int]:
    core = Core(exporters=["t"], batch_max_delay_ms=0, fluent_utc_offset_s=offset_s)
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    assert core.ingest_fluent(body, "application/x-ndjson", "app").accepted == len(lines)
    batch = core.next_batch("t", "logs", 1.0, True)
    assert batch is not None
    req = ExportLogsServiceRequest()
    req.ParseFromString(batch.body)
    core.close()
    return [r.time_unix_nano for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def test_zoneless_text_is_utc_by_default_and_shifted_when_configured() -> None:
    lines: list[dict[str, object]] = [
        {"log": "a", "time": "2026-11-29 07:13:07"},
        {"log": "b", "time": "2026-11-29T07:13:07Z"},
        {"log": "c", "time": "2026-11-29T08:13:07+01:00"},
        {"log": "d", "time": 1795936387},
    ]
    assert times(0, lines) == [UTC_07_13_07] * 4
    # At +01:00 only the zoneless text moves: 07:13:07 local is 06:13:07 UTC.
    assert times(3600, lines) == [UTC_07_13_07 - 3600 * 10**9] + [UTC_07_13_07] * 3


@pytest.mark.parametrize(("value", "seconds"), [("+00:00", 0), ("+01:00", 3600), ("-0530", -19800), (" +2345 ", 85500)])
def test_offset_config(tmp_path: Path, value: str, seconds: int) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f'[receivers.fluent]\ndefault_utc_offset = "{value}"\n')
    assert config.load(path, env={}).receivers.fluent.utc_offset_seconds() == seconds


@pytest.mark.parametrize("value", ["CET", "+1", "+24:00", "01:00", "+01:60", ""])
def test_bad_offset_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f'[receivers.fluent]\ndefault_utc_offset = "{value}"\n')
    with pytest.raises(ConfigError, match=r"receivers\.fluent\.default_utc_offset: .* is not a UTC offset"):
        config.load(path, env={})


def test_pipeline_applies_the_configured_offset(tmp_path: Path) -> None:
    """The config reaches the core the gateway builds (nothing is started or exported)."""
    from trackgate.pipeline import Pipeline

    path = tmp_path / "t.toml"
    path.write_text('[storage]\nqueue = "memory"\n[receivers.fluent]\ndefault_utc_offset = "-02:00"\n')
    pipeline = Pipeline(config.load(path, env={}), register_metrics=False)
    core = pipeline.core
    core.ingest_fluent(b'{"log": "x", "time": "2026-11-29 05:13:07"}', "application/json", "app")
    batch = core.next_batch(pipeline.exporters[0].name, "logs", 1.0, True)
    assert batch is not None
    req = ExportLogsServiceRequest()
    req.ParseFromString(batch.body)
    assert req.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano == UTC_07_13_07
    core.close()
