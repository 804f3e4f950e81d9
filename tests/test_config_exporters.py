"""Exporter settings that would fail every send, or send every batch back into the gateway: refused
when the config loads (or when `serve` knows its listeners), each error naming the key and never
the secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_config_cli import write
from trackgate import config
from trackgate.config import ConfigError, OtlpExporterConfig
from trackgate.exporters.otlp_http import OtlpHttpExporter


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('token = "tok-SECRET\\n"', "exporters.dash0.token"),
        ('token = "tok"\ndataset = "prod\\r"', "exporters.dash0.dataset"),
        ('token = "tok"\nheaders = { "x-key" = "key-SECRET\\n" }', "exporters.dash0.headers['x-key']"),
        ('token = "tok-SECRET\u2013x"', "exporters.dash0.token"),
    ],
)
def test_a_header_with_a_control_character_is_refused_by_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, f'[exporters.dash0]\nendpoint = "https://example.com"\n{text}\n')
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert key in str(err.value) and "SECRET" not in str(err.value)


@pytest.mark.parametrize("name", ["x key", "x-\u00e9", "x:y", ""])
def test_a_header_name_must_be_a_header_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'[exporters.otlp]\nendpoint = "http://collector:4318"\nheaders = {{ "{name}" = "v" }}\n')
    with pytest.raises(ConfigError, match="not a valid HTTP header name"):
        config.load(path, env={})


def test_grpc_metadata_values_are_ascii(tmp_path: Path) -> None:
    text = (
        '[exporters.otlp]\nendpoint = "http://collector:4317"\nprotocol = "{protocol}"\n'
        'headers = {{ team = "caf\u00e9" }}\n'
    )
    assert config.load(write(tmp_path, text.format(protocol="http")), env={}).exporters.otlp is not None
    with pytest.raises(ConfigError, match=r"exporters\.otlp\.headers\['team'\] has a character gRPC metadata"):
        config.load(write(tmp_path, text.format(protocol="grpc")), env={})


def test_dash0_secrets_from_the_environment_lose_a_trailing_newline() -> None:
    cfg = config.load(None, env={"DASH0_AUTH_TOKEN": "tok\n", "DASH0_DATASET": " prod\n"})
    assert cfg.exporters.dash0 is not None
    assert (cfg.exporters.dash0.token, cfg.exporters.dash0.dataset) == ("tok", "prod")


def test_dash0_without_a_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exporters\.dash0\.token is required"):
        config.load(None, env={"DASH0_DATASET": "prod"})
    with pytest.raises(ConfigError, match=r"exporters\.dash0\.token is required"):
        config.load(None, env={"DASH0_AUTH_TOKEN": "\n"})
    path = write(
        tmp_path, '[exporters.dash0]\nendpoint = "https://example.com"\nheaders = { Authorization = "Bearer t" }\n'
    )
    assert config.load(path, env={}).exporters.dash0 is not None  # a token in the headers will do


def test_the_token_replaces_an_authorization_header_in_another_case() -> None:
    """OTEL_EXPORTER_OTLP_HEADERS (the SDKs' token for this gateway) merged into the Dash0 exporter
    must not go out beside the Dash0 token."""
    cfg = config.load(
        None,
        env={
            "DASH0_AUTH_TOKEN": "dash0-tok",
            "DASH0_DATASET": "prod",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer gw-tok,dash0-dataset=other,x-team=gpu",
        },
    )
    assert cfg.exporters.dash0 is not None
    assert cfg.exporters.dash0.auth_headers() == {
        "x-team": "gpu",
        "Authorization": "Bearer dash0-tok",
        "Dash0-Dataset": "prod",
    }
    exporter = OtlpHttpExporter("dash0", cfg.exporters.dash0)
    try:
        auth = [v for k, v in exporter.headers.items() if k.lower() == "authorization"]
        assert auth == ["Bearer dash0-tok"]
    finally:
        exporter.close()
    # Without a token of its own, an exporter keeps the header it was given.
    plain = OtlpExporterConfig(endpoint="http://collector:4318", headers={"authorization": "Bearer x"})
    assert plain.auth_headers() == {"authorization": "Bearer x"}


@pytest.mark.parametrize(
    ("env", "listen", "key"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "127.0.0.1:4318", "exporters.otlp.endpoint"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318/"}, "0.0.0.0:4318", "exporters.otlp.endpoint"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "127.0.0.1:4318",
            "exporters.otlp.endpoint",
        ),
        ({"SENTRY_DSN": "http://key-SECRET@127.0.0.1:4318/1"}, "127.0.0.1:4318", "exporters.sentry.dsn"),
    ],
)
def test_an_exporter_pointing_at_the_gateway_itself_is_refused(env: dict[str, str], listen: str, key: str) -> None:
    cfg = config.load(None, env={**env, "TRACKGATE_TOKENS": "t"})
    cfg = config.msgspec.structs.replace(cfg, server=config.msgspec.structs.replace(cfg.server, listen=listen))
    with pytest.raises(ConfigError) as err:
        config.check_exposure(cfg, "--listen")
    assert key in str(err.value) and "loop" in str(err.value) and "SECRET" not in str(err.value)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:14318"},  # another port: a collector beside it
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        # grpc to the HTTP port's number on another host, http to the gRPC port: not this gateway's
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"SENTRY_DSN": "https://key@o1.ingest.sentry.io/1"},
    ],
)
def test_an_exporter_elsewhere_is_not_a_loop(env: dict[str, str]) -> None:
    config.check_exposure(config.load(None, env=env), "<defaults>")


def test_serve_refuses_to_start_looping_into_itself(tmp_path: Path) -> None:
    """The quickstart's SDK variables left in the gateway's own shell."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "TRACKGATE_CONFIG": ""}
    env.pop("TRACKGATE_CONFIG")
    path = write(tmp_path, f'[storage]\ndir = "{tmp_path / "data"}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "serve", "--config", str(path), "--listen", "127.0.0.1:4318"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "exporters.otlp.endpoint" in run.stderr and "OTEL_EXPORTER_OTLP_ENDPOINT" in run.stderr
