"""One reading of Triton's error text (``pyramid_client.wire.classify_error``) for the client, the gateway and
``pyramid record``, over the messages tritonserver 2.51 (and gRPC, and the project's own models) send."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "client", ROOT / "gateway", ROOT / "python_backend"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pyramid_client import PyramidError  # noqa: E402
from pyramid_client.types import error_from_message  # noqa: E402
from pyramid_client.wire import classify_error  # noqa: E402

UNKNOWN_MODEL = "Request for unknown model: 'nope' is not found"
GRPC_KEY = "This protocol is restricted, expecting header 'triton-grpc-protocol-pyramid-inference-key'"
REFUSED = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"  # fmt: skip
DATATYPE = "[request id: <id_unknown>] unexpected datatype TYPE_INT32 for inference input 'text_input', expecting TYPE_STRING for model 'pyramid'"  # fmt: skip
SHAPE = "[request id: <id_unknown>] unexpected shape for input 'text_input' for model 'pyramid'. Expected [-1,1], got [1,1,2]"  # fmt: skip
MISSING = "[request id: <id_unknown>] expected number of inputs between 1 and 18 but got 1 inputs for model 'pyramid'. Got input(s) ['max_tokens'], but missing required input(s) ['text_input']. Please provide all required input(s)."  # fmt: skip

# (message, gRPC status name / HTTP status / None on a gRPC stream, code, message as returned or None: unchanged)
CASES = [
    # the project's models: the [CODE] prefix wins over any status, and is taken off
    (
        "[INVALID_ARG] invalid input 'max_tokens': must be >= 1, got 0",
        None,
        "INVALID_ARG",
        "invalid input 'max_tokens': must be >= 1, got 0",
    ),
    ("[NOT_FOUND] strict: the oracle failed", "INTERNAL", "NOT_FOUND", "strict: the oracle failed"),
    (
        "[NOT_FOUND] replay engine 'a': question not found in traces",
        400,
        "NOT_FOUND",
        "replay engine 'a': question not found in traces",
    ),
    ("[UNSUPPORTED] task 'text' has no calibration", None, "UNSUPPORTED", "task 'text' has no calibration"),
    ("[INVALID_ARGUMENT] x", None, "INVALID_ARG", "x"),
    # an unknown model: NOT_FOUND, whatever carries it (stream, gRPC status, HTTP 404 or an older 400)
    (UNKNOWN_MODEL, None, "NOT_FOUND", None),
    (UNKNOWN_MODEL, "NOT_FOUND", "NOT_FOUND", None),
    (UNKNOWN_MODEL, 404, "NOT_FOUND", None),
    (UNKNOWN_MODEL, 400, "NOT_FOUND", None),
    (f"model 'pyramid': {UNKNOWN_MODEL}", "UNAVAILABLE", "NOT_FOUND", None),
    # a model that is known but not loaded / not ready: UNAVAILABLE (retried)
    ("Request for unknown model: 'pyramid' has no available versions", None, "UNAVAILABLE", None),
    ("Request for unknown model: 'pyramid' version 1 is not at ready state", "UNAVAILABLE", "UNAVAILABLE", None),
    ("not ready", 503, "UNAVAILABLE", None),
    # a restricted API without its key: PERMISSION_DENIED (not retried), gRPC's UNAVAILABLE or HTTP's 403
    (GRPC_KEY, "UNAVAILABLE", "PERMISSION_DENIED", None),
    ("This API is restricted, expecting header 'pyramid-inference-key'", 403, "PERMISSION_DENIED", None),
    ("This API is restricted, expecting header 'pyramid-admin-key'", None, "PERMISSION_DENIED", None),
    # a request Triton refuses before the model runs: INVALID_ARG
    (DATATYPE, None, "INVALID_ARG", None),
    (DATATYPE, "INVALID_ARGUMENT", "INVALID_ARG", None),
    (SHAPE, None, "INVALID_ARG", None),
    ("[request id: <id_unknown>] unexpected inference input 'foo' for model 'pyramid'", None, "INVALID_ARG", None),
    (MISSING, None, "INVALID_ARG", None),
    # timeouts
    ("Deadline Exceeded", "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", None),
    ("Deadline Exceeded", None, "DEADLINE_EXCEEDED", None),
    ("", 504, "DEADLINE_EXCEEDED", None),
    # nothing listening
    (REFUSED, "UNAVAILABLE", "UNAVAILABLE", None),
    (REFUSED, None, "UNAVAILABLE", None),
    ("failed to connect", "StatusCode.UNAVAILABLE", "UNAVAILABLE", None),
    # else the status, then UNKNOWN
    ("bad", "INVALID_ARGUMENT", "INVALID_ARG", None),
    ("no such method", "UNIMPLEMENTED", "UNSUPPORTED", None),
    ("failed to parse the request JSON buffer", 500, "INTERNAL", None),
    ("<html>bad gateway</html>", 502, "HTTP_502", None),
    ("something odd", None, "UNKNOWN", None),
]


@pytest.mark.parametrize("message,status,code,text", CASES)
def test_triton_errors_are_classified_once(message, status, code, text):
    assert classify_error(message, status) == (code, message if text is None else text)
    e = error_from_message(message, status)  # the client's transports (and the gateway's engine calls)
    assert (e.code, e.message) == (code, message if text is None else text)


def test_the_gateway_maps_the_classified_codes():
    pytest.importorskip("fastapi")
    from pyramid_gateway.errors import from_pyramid

    assert from_pyramid(error_from_message(UNKNOWN_MODEL), 1).status == 400  # NOT_FOUND, as the client says
    assert from_pyramid(error_from_message(GRPC_KEY, "UNAVAILABLE"), 1).status == 502  # a configuration error


class _Triton(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, str]] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        status, error = self.answers[self.path.split("/")[3]]
        body = json.dumps({"error": error}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_record_reads_a_model_configs_error_with_the_same_classifier(monkeypatch):
    from pyramid_cli import record

    monkeypatch.setattr(record, "_admin_key", lambda: None)
    _Triton.answers = {
        "gone": (400, UNKNOWN_MODEL),  # an HTTP 400 (not 404): still NOT_FOUND, by its wording
        "missing": (404, UNKNOWN_MODEL),
        "loading": (503, "Request for unknown model: 'loading' has no available versions"),
        "broken": (500, "failed to parse the request JSON buffer"),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Triton)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"127.0.0.1:{server.server_address[1]}"
        for model, code in (("gone", "NOT_FOUND"), ("missing", "NOT_FOUND"), ("loading", "UNAVAILABLE"), ("broken", "INTERNAL")):  # fmt: skip
            with pytest.raises(PyramidError) as err:
                record.model_config("http", url, model, timeout_s=5)
            assert err.value.code == code, model
    finally:
        server.shutdown()
        server.server_close()
