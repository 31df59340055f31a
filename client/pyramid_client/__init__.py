"""Client library for a Pyramid MoA Triton deployment (gRPC, via ``tritonclient``)."""

from .client import AsyncPyramidClient, PyramidClient, PyramidError, PyramidResult, ask_main

__all__ = ["AsyncPyramidClient", "PyramidClient", "PyramidError", "PyramidResult", "ask_main"]
