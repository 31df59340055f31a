"""Move a calibration artifact to other models of the same shape: rename its agents and oracle.

usage: .venv/bin/python scripts/relabel_calibration.py IN OUT --map OLD=NEW,OLD=NEW,... \
           [--params NAME=BILLIONS ...] [--price NAME=IN,OUT ...] [--note TEXT]

A transfer, not a fit: the calibrators, thresholds and schedule stay exactly as fitted on IN's
traces; only the names change (every agent and the oracle must be mapped, to distinct names). It
is refused when a feature name mentions an agent (``agreement`` and ``full`` have per-agent
features such as ``agrees[NAME]``, whose weights describe that agent): fit IN with an
agent-symmetric feature set (``pyramid calibrate --features symmetric``). The cost model's entries
are renamed too; ``--params`` / ``--price`` (new names) then replace sizes and prices. What was
done is recorded under ``fit_summary.relabelled``; the rest of ``fit_summary`` is renamed too (its
``mean_output_tokens``, the source models' mean output lengths, is what the router takes as the
length of an oracle call it did not make). OUT is written atomically, after the relabelled
artifact has been loaded back and checked.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from .artifact import ArtifactError, load_artifact, write_json_atomic
from .dataset import parse_overrides
from .features import make_feature_set

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # a Triton model name
_PROBES = ("__probe_agent_0__", "__probe_agent_1__")


class RelabelError(ValueError):
    pass


def parse_map(text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        old, sep, new = item.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise RelabelError(f"bad --map item {item!r}: expected OLD=NEW")
        if old in mapping:
            raise RelabelError(f"--map names {old!r} twice")
        if not _MODEL_NAME.match(new):
            raise RelabelError(f"--map: {new!r} is not a valid model name")
        mapping[old] = new
    if len(set(mapping.values())) != len(mapping):
        raise RelabelError(f"--map must map to distinct names, got {sorted(mapping.values())}")
    return mapping


def check_agent_independent(d: dict, models: list[str]) -> None:
    """Refuse feature names that mention an agent (per-agent features do not transfer by renaming)."""
    fs = d["feature_set"]
    probe_names = make_feature_set(fs, list(_PROBES), numeric=d.get("task", "gsm8k") != "text").names
    if any(p in n for n in probe_names for p in _PROBES):
        raise RelabelError(
            f"feature set {fs!r} has per-agent features (names depend on the agents); "
            "fit with an agent-symmetric feature set, e.g. 'pyramid calibrate --features symmetric'"
        )
    names = [n for st in d["stages"] for n in st["feature_names"]]
    if d.get("arbiter"):
        names += list(d["arbiter"]["feature_names"])
    hits = sorted({n for n in names for m in models if m in n})
    if hits:
        raise RelabelError(f"feature names mention agents: {hits}")


def relabel(
    d: dict,
    mapping: dict[str, str],
    params: dict[str, list[float]],
    prices: dict[str, list[float]],
    source: str,
    note: str | None,
) -> dict:
    models = [*d["committee"], d["oracle"]]
    missing = [m for m in models if m not in mapping]
    extra = [m for m in mapping if m not in models]
    if missing or extra:
        raise RelabelError(
            f"--map must map exactly the artifact's models {models}"
            + (f"; unmapped: {missing}" if missing else "")
            + (f"; not in the artifact: {extra}" if extra else "")
        )
    check_agent_independent(d, models)
    new = {mapping[m] for m in models}
    for name in [*params, *prices]:
        if name not in new:
            raise RelabelError(f"--params/--price name {name!r} is not one of the new names {sorted(new)}")
    for name, v in prices.items():
        if len(v) != 2:
            raise RelabelError(f"--price {name}: expected IN,OUT (USD per 1k tokens)")
    for name, v in params.items():
        if len(v) != 1:
            raise RelabelError(f"--params {name}: expected one number (billions)")

    out = dict(d)
    out["committee"] = [mapping[a] for a in d["committee"]]
    out["oracle"] = mapping[d["oracle"]]
    out["stages"] = [{**st, "agents": [mapping[a] for a in st["agents"]]} for st in d["stages"]]
    cost = {mapping[m]: dict(v) for m, v in d["cost_model"].items() if m in mapping}
    for name, (p,) in params.items():
        cost.setdefault(name, {})["params_b"] = p
    for name, (pin, pout) in prices.items():
        cost.setdefault(name, {}).update(price_in_per_1k=pin, price_out_per_1k=pout)
    out["cost_model"] = cost
    record = {
        "from": source,
        "map": {m: mapping[m] for m in models},
        "params_b": {k: v[0] for k, v in params.items()},
        "price_usd_per_1k": {k: v for k, v in prices.items()},
        "note": note
        or "names changed only: calibrators, thresholds and schedule are the ones fitted on the source models' traces",
    }
    # The fit's own summary (schedules considered, mean output tokens, ...) under the new names:
    # mean_output_tokens is the router's reference length of an oracle call it did not make.
    out["fit_summary"] = {**_rename(d.get("fit_summary", {}), mapping), "relabelled": record}
    return out


def _rename(obj: Any, mapping: dict[str, str]) -> Any:
    """``obj`` with every dict key and string that is an old model name replaced by the new one."""
    if isinstance(obj, dict):
        return {mapping.get(k, k) if isinstance(k, str) else k: _rename(v, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rename(v, mapping) for v in obj]
    if isinstance(obj, str):
        return mapping.get(obj, obj)
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path, help="calibration artifact to relabel")
    ap.add_argument("output", type=Path, help="relabelled artifact to write")
    ap.add_argument("--map", required=True, help="OLD=NEW,... for every agent and the oracle")
    ap.add_argument("--params", action="append", metavar="NAME=B", help="params (billions) of a new model")
    ap.add_argument("--price", action="append", metavar="NAME=IN,OUT", help="USD per 1k tokens of a new model")
    ap.add_argument("--note", help="why the transfer is acceptable (recorded in fit_summary.relabelled)")
    a = ap.parse_args(argv)
    try:
        art = load_artifact(a.input)
        d = relabel(
            art.to_dict(),
            parse_map(a.map),
            parse_overrides(a.params, "--params"),
            parse_overrides(a.price, "--price"),
            str(a.input),
            a.note,
        )
        with tempfile.TemporaryDirectory() as tmp:  # check it loads before it replaces anything
            probe = Path(tmp) / "relabelled.json"
            write_json_atomic(probe, d)
            load_artifact(probe, known_agents=[*d["committee"], d["oracle"]])
        write_json_atomic(a.output, d)
    except (ArtifactError, RelabelError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {a.output}: committee {','.join(d['committee'])}, oracle {d['oracle']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
