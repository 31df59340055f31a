"""The ``pyramid`` command: the one place that puts the router library and the client together.

``calibrate`` and ``evaluate`` are the router library's (``pyramid_moa.cli``); ``ask`` is the
client's (``pyramid_client.cli``); ``run-gsm8k`` (``gsm8k``), ``record`` (``record``) and
``deploy-calibration`` (``deploy_calibration``) drive a deployment through the client and grade,
record its answers with the router library's rules, or hot-reload its calibration.
Each side is imported only for its own subcommands: ``calibrate`` and ``evaluate`` never load
``tritonclient``.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, help line)
DEPLOYMENT_COMMANDS = {
    "ask": ("pyramid_client.cli", "ask_main", "ask a running deployment one question (pyramid ask --help)"),
    "run-gsm8k": (
        "pyramid_cli.gsm8k",
        "run_gsm8k_main",
        "send GSM8K questions through a running deployment; accuracy, cost, latency (--help)",
    ),
    "record": (
        "pyramid_cli.record",
        "main",
        "record a deployment's committee and oracle on a question file as traces for calibrate (--help)",
    ),
    "deploy-calibration": (
        "pyramid_cli.deploy_calibration",
        "main",
        "put a new calibration live in a running router, kept across restarts; --rollback, --reset (--help)",
    ),
    "inspect": (
        "pyramid_cli.inspect_cmd",
        "main",
        "what a trace directory or a calibration holds: sources and cost facts; schedule, thresholds (--help)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """``pyramid calibrate|evaluate|ask|run-gsm8k|record ...``"""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DEPLOYMENT_COMMANDS:
        module, function, _ = DEPLOYMENT_COMMANDS[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    from pyramid_moa.cli import main as library_main

    return library_main(argv, {name: text for name, (_, _, text) in DEPLOYMENT_COMMANDS.items()})
