"""Configuration errors name the key and the file; check-config masks secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trackgate import config
from trackgate.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[server]\nlisten_on = 'x'\n", ["listen_on", "$.server"]),
        ("[sampling]\ntraces = 'half'\n", ["$.sampling.traces", "float"]),
        ("[sampling]\ntraces = 1.5\n", ["$.sampling.traces"]),
        ("[receivers.fluent]\nformat = 'json'\n", ["fluent"]),
        ("[exporters.dash0]\ntoken = 'x'\n", ["exporters.dash0.endpoint"]),
        ("[exporters.otlp]\nendpoint = 'ftp://x'\n", ["http"]),
        ("[server]\nlisten = 'nowhere'\n", ["HOST:PORT"]),
        ("[server\n", ["invalid TOML"]),
        ("[server]\nmax_inflight_bytes = 1000\n", ["server.max_inflight_bytes", "server.max_body_bytes"]),
        ("[server]\nmax_preauth_per_client = 0\n", ["$.server.max_preauth_per_client"]),
        ("[server]\npreauth_timeout_s = 0\n", ["$.server.preauth_timeout_s"]),
        ("[exporters.otlp]\ncompression_level = 10\n", ["$.exporters.otlp.compression_level", "<= 9"]),
        ("[exporters.dash0]\ncompression_level = 0\n", ["$.exporters.dash0.compression_level", ">= 1"]),
        ("[storage]\ncompression = 'zstd'\n", ["$.storage.compression", "zstd"]),
        ("[exporters.otlp]\nconcurrency = 0\n", ["$.exporters.otlp.concurrency", ">= 1"]),
        ("[exporters.sentry]\nconcurrency = 65\n", ["$.exporters.sentry.concurrency", "<= 64"]),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_env_overrides() -> None:
    env = {
        "DASH0_AUTH_TOKEN": "tok",
        "DASH0_DATASET": "prod",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-team=gpu,x-key=a%3Db",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,region=eu",
        "MACHINE_ID": "m7",
        "WORKER_ID": "w2",
    }
    cfg = config.load(None, env=env)
    assert cfg.exporters.dash0 is not None and cfg.exporters.dash0.token == "tok"
    assert cfg.exporters.dash0.endpoint == config.DEFAULT_DASH0_ENDPOINT
    assert cfg.exporters.dash0.dataset == "prod"
    assert cfg.exporters.otlp is not None and cfg.exporters.otlp.endpoint == "http://collector:4318"
    assert cfg.exporters.otlp.headers == {"x-team": "gpu", "x-key": "a=b"}
    assert cfg.resource.attributes == {
        "deployment.environment": "prod",
        "region": "eu",
        "machine.id": "m7",
        "worker.id": "w2",
    }
    assert cfg.exporter_names() == ["dash0", "otlp"]  # no file sink once a backend is configured


def test_default_is_the_file_sink() -> None:
    cfg = config.load(None, env={})
    assert cfg.exporter_names() == ["file"]
    file_cfg = cfg.file_exporter()
    assert file_cfg is not None and file_cfg.dir.endswith("trackgate-data/out")


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\ntokens = ["tok-AAA"]\n[exporters.dash0]\nendpoint = "https://user:pw-BBB@example.com"\n'
        'token = "tok-CCC"\nheaders = { "x-api-key" = "key-DDD" }\n',
    )
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    for secret in ("tok-AAA", "pw-BBB", "tok-CCC", "key-DDD"):
        assert secret not in run.stdout
    doc = json.loads(run.stdout)
    assert doc["exporters"]["dash0"]["token"] == "****"
    assert doc["effective_exporters"] == ["dash0"]


def test_check_config_reports_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[batch]\nmax_records = 0\n")
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2
    assert "max_records" in run.stderr and str(path) in run.stderr


def test_check_config_prints_the_admission_limits(tmp_path: Path) -> None:
    """The limits on unauthenticated work and buffered bodies are keys of [server], with defaults."""
    path = write(tmp_path, "[server]\nmax_preauth_per_client = 8\n")
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    server = json.loads(run.stdout)["server"]
    assert server["max_preauth_per_client"] == 8
    assert server["preauth_timeout_s"] == 5.0
    assert server["max_inflight_bytes"] == 256 * 1024 * 1024
    assert server["backpressure"] == 1024


def test_inflight_budget_follows_a_raised_body_limit(tmp_path: Path) -> None:
    """Raising max_body_bytes alone keeps working: the default budget grows with it."""
    cfg = config.load(write(tmp_path, "[server]\nmax_body_bytes = 536870912\n"), env={})
    assert cfg.server.inflight_budget() == 536870912
    assert config.load(None, env={}).server.inflight_budget() == 256 * 1024 * 1024


@pytest.mark.parametrize(
    ("text", "sentry", "otlp", "extra", "safe"),
    [
        ("", True, False, [], []),
        ('[scrub]\ntracks = ["all"]\n', True, True, [], []),
        ('[scrub]\ntracks = ["otlp", "fluent", "events"]\n', False, True, [], []),
        ('[scrub]\ntracks = []\nextra_keys = ["ssn"]\nsafe_keys = ["author"]\n', False, False, ["ssn"], ["author"]),
        # The older [receivers.sentry] keys still work, merged into [scrub].
        ('[receivers.sentry]\nscrub = false\nscrub_extra_keys = ["pin"]\n', False, False, ["pin"], []),
        ('[scrub]\ntracks = ["otlp"]\nextra_keys = ["ssn"]\n'
         '[receivers.sentry]\nscrub = true\nscrub_safe_keys = ["a"]\n', True, True, ["ssn"], ["a"]),
    ],
)  # fmt: skip
def test_scrub_section(tmp_path: Path, text: str, sentry: bool, otlp: bool, extra: list[str], safe: list[str]) -> None:
    cfg = config.load(write(tmp_path, text), env={})
    assert (cfg.scrubs("sentry"), cfg.scrubs("otlp"), cfg.scrub_keys()) == (sentry, otlp, (extra, safe))


def test_scrub_unknown_track_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scrub\.tracks"):
        config.load(write(tmp_path, '[scrub]\ntracks = ["sentri"]\n'), env={})


@pytest.mark.parametrize(
    ("pattern", "words"),
    [("(unclosed", "scrub.extra_patterns[0]"), ("a*", "matches the empty string"), ("(?=x)y", "not usable")],
)
def test_scrub_patterns_are_checked(tmp_path: Path, pattern: str, words: str) -> None:
    path = write(tmp_path, f"[scrub]\nextra_patterns = [{pattern!r}]\n".replace("'", '"'))
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert words in str(err.value) and str(path) in str(err.value)


def test_scrub_patterns_reach_the_scrubber() -> None:
    from trackgate._core import SentryProcessor

    with pytest.raises(ValueError, match="scrub pattern 0"):
        SentryProcessor(scrub_patterns=[""])
    assert config.load(None, env={}).scrub.extra_patterns == []


def test_a_partial_redis_retry_keeps_the_redis_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[exporters.redis]\nurl = "redis://127.0.0.1:6379"\nretry = { max_elapsed_s = 60 }\n')
    retry = config.load(path, env={}).exporters.redis.retry  # type: ignore[union-attr]
    assert (retry.initial_interval_s, retry.max_interval_s, retry.max_elapsed_s) == (0.5, 5.0, 60.0)
    path = write(tmp_path, '[exporters.redis]\nurl = "redis://127.0.0.1:6379"\nretry = { initial_interval_s = 10 }\n')
    with pytest.raises(ConfigError, match=r"exporters\.redis\.retry\.max_interval_s is below initial_interval_s"):
        config.load(path, env={})


def test_the_log_level_is_checked(tmp_path: Path) -> None:
    assert config.log_level({}) == "info"
    assert config.log_level({"TRACKGATE_LOG_LEVEL": " DEBUG "}) == "debug"
    with pytest.raises(ConfigError, match="TRACKGATE_LOG_LEVEL 'verbose': expected one of debug, info"):
        config.log_level({"TRACKGATE_LOG_LEVEL": "verbose"})
    env = {k: v for k, v in os.environ.items() if k != "TRACKGATE_CONFIG"}
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "serve", "--listen", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "TRACKGATE_LOG_LEVEL": "verbose"},
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "TRACKGATE_LOG_LEVEL" in run.stderr, run.stderr[-2000:]
