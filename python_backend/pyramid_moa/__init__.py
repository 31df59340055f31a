"""Pyramid MoA router library: answers, committee features, calibration, policy, cost, evaluation.

Framework-free on purpose: the Triton router model imports it unchanged, so
offline and in-server decisions are made by the same code.
"""

__version__ = "0.1.0"
