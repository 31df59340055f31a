"""Readiness of a started tritonserver: its HTTP readiness endpoint and, when metrics are on, its metrics
listener, which tritonserver opens after HTTP (a scrape right after HTTP readiness was refused in CI)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from pyramid_ops.server import TritonServer


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def listener():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("extra", "on"),
    [([], True), (["--allow-metrics=false"], False), (["--allow-metrics", "false"], False),
     (["--allow-metrics=true"], True), (["--allow-metrics=FALSE"], False)],
)  # fmt: skip
def test_metrics_on_unless_turned_off(extra, on):
    s = TritonServer(Path("repo"), http_port=1, metrics_port=2, extra_args=extra)
    assert s.metrics_enabled() is on
    assert any(u.endswith(":2/metrics") for u in s.readiness_urls()) is on


def test_not_ready_until_the_metrics_listener_answers(listener):
    s = TritonServer(Path("repo"), http_port=listener, metrics_port=_closed_port())
    assert not s.is_ready()  # HTTP answers, metrics refused
    s.metrics_port = listener
    assert s.is_ready()


def test_ready_without_a_metrics_listener_when_metrics_are_off(listener):
    s = TritonServer(
        Path("repo"), http_port=listener, metrics_port=_closed_port(), extra_args=["--allow-metrics=false"]
    )
    assert s.is_ready()
    s.http_port = _closed_port()
    assert not s.is_ready()
