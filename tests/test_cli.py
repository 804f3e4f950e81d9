"""`trackgate serve`'s options, and the container's command line read the way `serve` reads it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trackgate import cli
from trackgate.config import parse_listen

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_serve_refuses_fewer_than_one_worker(workers: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--workers", workers]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_the_image_listens_for_otlp_http_and_grpc_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOCKERFILE.read_text()
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    exposed = {int(port) for line in re.findall(r"^EXPOSE (.*)$", text, re.MULTILINE) for port in line.split()}
    monkeypatch.delenv("TRACKGATE_CONFIG", raising=False)
    monkeypatch.setenv("TRACKGATE_TOKENS", "t")  # the image's documented `docker run -e TRACKGATE_TOKENS=...`
    args = cli.parser().parse_args(command)
    cfg = cli._load(args, serving=True)
    listeners = [cfg.server.listen, cfg.receivers.otlp_grpc.listen]
    assert cfg.receivers.otlp_grpc.enabled
    assert [parse_listen(listen) for listen in listeners] == [("0.0.0.0", 4318), ("0.0.0.0", 4317)]
    assert exposed == {4318, 4317}
    # The Fluent forward listener is off unless configured, so the image neither opens nor exposes it.
    assert not cfg.receivers.forward.listen
