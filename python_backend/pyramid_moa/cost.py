"""Cost models: what one model call costs, counting every call actually made.

Two views, always reported side by side:

* ``flops``: proportional to parameters x (prompt + generated tokens), the
  usual 2*N*T forward-pass estimate without the constant (it cancels in ratios).
* ``usd``: per-1k-token input and output prices.

Costs are reported relative to always calling the oracle on the same
questions, so the committee's own calls are part of every figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COST_MODELS = ("flops", "usd")


def estimate_tokens(text: str) -> int:
    """chars/4, the same approximation the shared traces use for output_tokens."""
    return int(round(len(text) / 4))


def prompt_tokens(output: Any, question: str) -> int:
    """A call's prompt tokens: its output's ``prompt_tokens`` where the engine reported them, else the
    question's chars/4 (every tier gets the same prompt)."""
    return output.prompt_tokens if output.prompt_tokens is not None else estimate_tokens(question)


def relative_cost(spent: float, oracle_call: float) -> float | None:
    """The cost ``spent`` relative to ``oracle_call``, the cost of one oracle call on the same question(s): what
    the router reports per request (``pyramid_triton.routing.relative_costs``) and the evaluation per policy
    (``mean_cost``, its sums over the questions); None when that reference is not positive."""
    return spent / oracle_call if oracle_call > 0 else None


@dataclass(frozen=True)
class ModelCost:
    """Size and prices of one model; either may be unknown (None)."""

    params_b: float | None = None
    price_in_per_1k: float | None = None
    price_out_per_1k: float | None = None


@dataclass
class CostModel:
    """Per-model sizes and prices, and the arithmetic of one call."""

    models: dict[str, ModelCost] = field(default_factory=dict)

    def available(self, kind: str, names: list[str]) -> bool:
        """Whether every named model has what ``kind`` needs."""
        if kind == "flops":
            return all(self.models[n].params_b for n in names)
        if kind == "usd":
            return all(
                self.models[n].price_in_per_1k is not None and self.models[n].price_out_per_1k is not None
                for n in names
            )
        raise ValueError(f"unknown cost model {kind!r}; use one of {COST_MODELS}")

    def require(self, kind: str, names: list[str]) -> None:
        if kind not in COST_MODELS:
            raise ValueError(f"unknown cost model {kind!r}; use one of {COST_MODELS}")
        if not self.available(kind, names):
            what = "params_b" if kind == "flops" else "price_usd_per_1k_tokens"
            flag = "--params NAME=BILLIONS" if kind == "flops" else "--price NAME=IN,OUT"
            missing = [n for n in names if not self.available(kind, [n])]
            raise ValueError(f"cost model {kind!r} needs {what} for {missing}; give it with {flag}")

    def call_cost(self, kind: str, name: str, prompt_tokens: float, output_tokens: float) -> float:
        m = self.models[name]
        if kind == "flops":
            return float(m.params_b) * (prompt_tokens + output_tokens)  # type: ignore[arg-type]
        if kind == "usd":
            return (m.price_in_per_1k * prompt_tokens + m.price_out_per_1k * output_tokens) / 1000.0  # type: ignore[operator]
        raise ValueError(f"unknown cost model {kind!r}")

    def output_cost(self, kind: str, name: str, output: Any, question: str) -> float:
        """Cost of the call of ``name`` that gave ``output`` (an ``AgentOutput``) on ``question``: its prompt
        tokens (``prompt_tokens``) and its output tokens (0 where unknown)."""
        return self.call_cost(kind, name, prompt_tokens(output, question), output.output_tokens or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            n: {"params_b": m.params_b, "price_in_per_1k": m.price_in_per_1k, "price_out_per_1k": m.price_out_per_1k}
            for n, m in self.models.items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostModel:
        return cls(
            {n: ModelCost(v.get("params_b"), v.get("price_in_per_1k"), v.get("price_out_per_1k")) for n, v in d.items()}
        )
