"""Before exposure: no blank tokens, no secret in any message, listen hosts judged as granian binds them."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from trackgate import config
from trackgate.config import ConfigError

PB = "application/x-protobuf"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trackgate", "check-config", str(path)],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


# -- blank tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", ['[""]', '["   "]', '["good-token", ""]', '[" padded "]', '["a\\tb"]'])
def test_blank_or_spaced_tokens_are_refused(tmp_path: Path, tokens: str) -> None:
    path = write(tmp_path, f'[server]\nlisten = "0.0.0.0:4318"\ntokens = {tokens}\n')
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert "server.tokens[" in str(err.value)
    run = check_config(path)  # what passed the exposure check before
    assert run.returncode == 2 and "server.tokens[" in run.stderr


def test_blank_sentry_public_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[receivers.sentry]\npublic_keys = [""]\n')
    with pytest.raises(ConfigError, match=r"receivers\.sentry\.public_keys\[0\] is blank"):
        config.load(path, env={})


def test_blank_tokens_variable_is_an_error_never_no_auth(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ntokens = ["file-token"]\n')
    with pytest.raises(ConfigError, match="TRACKGATE_TOKENS"):
        config.load(path, env={"TRACKGATE_TOKENS": " , "})
    # Unset or empty: the file's tokens stay; set: it replaces them, blanks between commas dropped.
    assert config.load(path, env={"TRACKGATE_TOKENS": ""}).server.tokens == ["file-token"]
    assert config.load(path, env={"TRACKGATE_TOKENS": "a, ,b"}).server.tokens == ["a", "b"]


def test_empty_bearer_value_is_refused(gateway_factory) -> None:
    from test_bad_input import good_traces, post

    gw = gateway_factory('[server]\ntokens = ["s3cret-token"]\n')
    for value in ("Bearer", "Bearer ", "Bearer    ", "bearer \t"):
        assert post(gw.url + "/v1/traces", good_traces(), PB, Authorization=value)[0] == 401, value
    assert post(gw.url + "/v1/traces", good_traces(), PB, Authorization="Bearer s3cret-token")[0] == 200


# -- secrets in messages --------------------------------------------------------------------------


def test_malformed_otlp_headers_entry_is_not_echoed() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_HEADERS": "x=1,Authorization:Bearer hdr-SECRET-1",
    }
    with pytest.raises(ConfigError) as err:
        config.load(None, env=env)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(err.value) and "entry 2" in str(err.value)
    assert "hdr-SECRET-1" not in str(err.value) and "Bearer" not in str(err.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://user:pw-SECRET-2@example.com",
        "https://user:pw-SECRET-2@example.com:99999",
        "http://user:pw/SECRET-2@",
        "gopher://example.com/?api_key=pw-SECRET-2",
    ],
)
def test_bad_endpoint_message_masks_credentials(tmp_path: Path, endpoint: str) -> None:
    path = write(tmp_path, f'[exporters.otlp]\nendpoint = "{endpoint}"\n')
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert "must be an http:// or https:// URL" in str(err.value)
    assert "SECRET-2" not in str(err.value)


def test_check_config_masks_query_strings_and_url_passwords(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[exporters.otlp]\nendpoint = "https://u:pass-SECRET-3@collector.example/otlp?api_key=key-SECRET-4&x=1"\n'
        '[exporters.sentry]\ndsn = "https://pub-SECRET-5@sentry.example/7"\n',
    )
    run = check_config(path)
    assert run.returncode == 0, run.stderr
    for secret in ("SECRET-3", "SECRET-4", "SECRET-5"):
        assert secret not in run.stdout
    assert "api_key=****" in run.stdout and "collector.example/otlp" in run.stdout


def test_mask_url() -> None:
    assert config.mask_url("https://h/p") == "https://h/p"
    assert config.mask_url("https://a:b@h:1/p?k=v&flag#frag") == "https://****@h:1/p?k=****&****#****"
    assert config.mask_url("not a url @ all") == "****@ all"


# -- listen hosts ---------------------------------------------------------------------------------


def test_listen_hosts() -> None:
    assert config.parse_listen("localhost:4318") == ("127.0.0.1", 4318)
    assert config.parse_listen("[::ffff:127.0.0.1]:4318") == ("127.0.0.1", 4318)
    assert config.parse_listen("[::1]:4318") == ("::1", 4318)
    assert config.is_loopback("::ffff:127.0.0.1") and not config.is_loopback("::ffff:10.0.0.1")
    with pytest.raises(ConfigError, match="not an IP address"):
        config.parse_listen("gateway.internal:4318")


def test_mapped_loopback_needs_no_tokens(tmp_path: Path) -> None:
    run = check_config(write(tmp_path, '[server]\nlisten = "[::ffff:127.0.0.1]:4318"\n'))
    assert run.returncode == 0, run.stderr
    run = check_config(write(tmp_path, '[server]\nlisten = "[::ffff:10.1.2.3]:4318"\n'))
    assert run.returncode == 2 and "tokens" in run.stderr


def test_hostname_listen_is_refused_clearly(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "serve", "--listen", "gateway.internal:4999"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "not an IP address" in run.stderr


@pytest.mark.slow
def test_localhost_listen_serves(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackgate", "serve", "--listen", f"localhost:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    try:
        deadline, status = time.monotonic() + 20, 0
        while time.monotonic() < deadline and proc.poll() is None and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    status = resp.status
            except OSError:
                time.sleep(0.1)
        assert status == 200, proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(30)


# -- self-monitoring ------------------------------------------------------------------------------


def test_self_monitoring_sends_no_local_variables_or_bodies() -> None:
    import sentry_sdk

    from trackgate.app import setup_self_monitoring

    cfg = config.load(None, env={})
    cfg = config.msgspec.structs.replace(
        cfg, self_monitoring=config.SelfMonitoringConfig(sentry_dsn="http://key@127.0.0.1:9/1")
    )
    try:
        setup_self_monitoring(cfg)
        options = sentry_sdk.get_client().options
        assert options["dsn"] == "http://key@127.0.0.1:9/1"  # it really was set up
        assert options["include_local_variables"] is False
        assert options["max_request_body_size"] == "never"
        assert not options["send_default_pii"]
    finally:
        sentry_sdk.init(dsn=None)
