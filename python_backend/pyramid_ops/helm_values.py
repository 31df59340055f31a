"""Values for the Helm chart (deploy/helm/pyramid-moa) from one deployment spec: one tier per host kind.

    router  (CPU)   the pyramid router alone; every engine remote, over gRPC, at its tier's headless Service
    agents  (GPU)   the committee's engines (the spec's local agents), engines only
    oracle  (GPU)   the oracle's engine, engines only

Each tier's spec is ``render.host_spec`` of the whole spec (its models local, the others remote at
``tier://TIER``, which the chart turns into ``dns:///<release>-TIER-headless.<namespace>.svc...:8001``),
with TensorRT-LLM GPUs renumbered per pod and paths moved into the image (``--project-root``); each
pod's init container renders its repository from it. A model the spec already has ``remote`` stays
where it is (no tier for it). GPU tiers get ``nvidia.com/gpu`` limits (the number of GPUs their engines
use), the GPU node selector and toleration, the model store (engines on a PersistentVolumeClaim),
``/dev/shm`` in memory, TensorRT-LLM's orchestrator mode (scripts/serve_gpu.sh), slow-start probes and
autoscaling on queue time and TensorRT-LLM's waiting requests; the router autoscales on CPU and queue time.

usage: .venv/bin/python scripts/helm_values.py deploy/gpu-8x80gb.yaml --calibration out/calibration/gpu-8x80gb.json \
           --image REGISTRY/pyramid-moa-trtllm:TAG --model-store pyramid-models --out values-gpu-8x80gb.yaml
       (--calibration-configmap NAME instead of --calibration: an existing ConfigMap with calibration.json;
        --engines-only: the GPU tiers without the router, to record traces first: docs/GPU.md)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from pyramid_deploy.render import (
    PATH_KEYS,
    SpecError,
    _merged_engine,
    _model_entry,
    _remote_of,
    host_spec,
    load_spec,
)

from .access import Key, inference_key_wanted, restricted_args

ROOT = Path(__file__).resolve().parents[2]

PROJECT_ROOT = "/opt/pyramid-moa"
CALIBRATION_IN_POD = "/config/calibration/calibration.json"
TRITON_ARGS = [
    "--model-repository=/repository",
    "--http-port=8000",
    "--grpc-port=8001",
    "--metrics-port=8002",
    "--strict-readiness=true",
    "--exit-on-error=true",
    "--disable-auto-complete-config",
    "--exit-timeout-secs=25",
    "--log-verbose=0",
]
# Model control only with the admin key (and, where the spec asks, the router's inference only with the
# inference key): Kubernetes puts the chart's Secret's values in for $(PYRAMID_ADMIN_KEY) / $(PYRAMID_INFERENCE_KEY).
ADMIN_KEY_IN_POD = Key("$(PYRAMID_ADMIN_KEY)", "the chart's Secret")
INFERENCE_KEY_IN_POD = Key("$(PYRAMID_INFERENCE_KEY)", "the chart's Secret")
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}  # GPU feature discovery's label
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _in_image(value: Any, project_root: str) -> Any:
    """An absolute path under this checkout, moved to the same place under ``project_root``."""
    p = Path(str(value))
    try:
        return f"{project_root}/{p.resolve().relative_to(ROOT).as_posix()}"
    except ValueError:
        return str(value)  # outside the project: left as is (it must exist in the image or a volume)


def _move_paths(spec: dict[str, Any], project_root: str) -> dict[str, Any]:
    for block in [spec.get("engine", {}), *spec["agents"], spec["oracle"]]:
        for k in PATH_KEYS:
            if block.get(k) is not None and "remote" not in block:
                block[k] = _in_image(block[k], project_root)
    spec.pop("calibration", None)  # the router's comes from its ConfigMap (--calibration)
    return spec


def _placement(spec_path: Path) -> tuple[list[str], str, dict[str, str], set[str]]:
    """(agents, oracle, kind of each local model, models that are already remote)."""
    spec = load_spec(spec_path)
    entries = [_model_entry(e, f"{spec_path}: agents[{i}]") for i, e in enumerate(spec["agents"])]
    entries.append(_model_entry(spec["oracle"], f"{spec_path}: oracle"))
    kinds, remote = {}, set()
    for e in entries:
        where = f"{spec_path}: model {e['name']!r}"
        if _remote_of(e, where) is not None:
            remote.add(e["name"])
        else:
            kinds[e["name"]] = _merged_engine(e, spec.get("engine", {}), where)[0]
    return [e["name"] for e in entries[:-1]], entries[-1]["name"], kinds, remote


def _engine_tier(
    spec_path: Path, models: list[str], urls: dict[str, str], kinds: dict[str, str], project_root: str
) -> dict[str, Any]:
    spec = _move_paths(host_spec(spec_path, set(models), urls), project_root)
    trtllm = any(kinds[m] == "trtllm" for m in models)
    gpus = int((spec.get("node") or {}).get("gpus") or 0) if trtllm else 0
    if trtllm and not gpus:
        ids = {g for e in spec["agents"] + [spec["oracle"]] for g in e.get("gpu_device_ids") or []}
        ids |= set((spec.get("engine") or {}).get("gpu_device_ids") or [])
        gpus = len(ids)
    tier: dict[str, Any] = {
        "enabled": True,
        "role": "engines",
        "models": list(models),
        "replicas": 1,
        "gpus": gpus,
        "spec": spec,
        "renderArgs": ["--engines-only"],
        # TensorRT-LLM: orchestrator mode (each engine spawns its workers on its GPUs), as make serve-gpu runs it
        "command": ["bash", f"{project_root}/scripts/serve_gpu.sh", "/repository", *restricted_args(ADMIN_KEY_IN_POD)]
        if trtllm
        else ["tritonserver", *TRITON_ARGS, *restricted_args(ADMIN_KEY_IN_POD)],
        "resources": {
            "requests": {"cpu": str(max(2, 4 * gpus)), "memory": f"{max(4, 48 * gpus)}Gi"},
            "limits": {"memory": f"{max(8, 64 * gpus)}Gi"},
        },
        "shmSize": "8Gi" if gpus else "1Gi",
        "modelStore": trtllm,
        "nodeSelector": dict(GPU_NODE_SELECTOR) if gpus else {},
        "tolerations": [dict(t) for t in GPU_TOLERATIONS] if gpus else [],
        # engines load for minutes (a 70B engine: several); readiness gates traffic, not liveness
        "startupProbe": {"periodSeconds": 10, "failureThreshold": 90 if gpus else 30},
        "terminationGracePeriodSeconds": 60,
        # a new pod before the old one goes (if the cluster has the GPUs; the rollout waits otherwise)
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 4,
            **({} if gpus else {"cpuUtilization": 70}),  # CPU engines (replay, llama.cpp) are CPU-bound
            "queueTimeUs": 200_000,  # 200 ms mean queueing per request
            **({"trtllmWaitingRequests": 8} if trtllm else {}),
            # GPU pods start slowly: scale up on a sustained signal, scale down even more carefully
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 600,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                },
            },
        },  # fmt: skip
        "pdb": {"enabled": True, "maxUnavailable": 1},
        "service": {"type": "ClusterIP"},
    }
    return tier


def _router_tier(spec_path: Path, urls: dict[str, str], project_root: str) -> dict[str, Any]:
    spec = _move_paths(host_spec(spec_path, set(), urls), project_root)
    keyed = inference_key_wanted(load_spec(spec_path), str(spec_path))
    restricted = restricted_args(ADMIN_KEY_IN_POD, INFERENCE_KEY_IN_POD if keyed else None)
    return {
        "enabled": True,
        "role": "router",
        "models": [spec.get("router", {}).get("model_name", "pyramid")],
        "replicas": 2,
        "gpus": 0,
        "spec": spec,
        "renderArgs": ["--calibration", CALIBRATION_IN_POD],
        "command": ["tritonserver", *TRITON_ARGS, *restricted],
        "inferenceKey": keyed,
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
        "shmSize": "1Gi",
        "modelStore": False,
        "nodeSelector": {},
        "tolerations": [],
        # spread the routers over nodes
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "router"}},
                        },
                    }
                ]
            }
        },
        "startupProbe": {"periodSeconds": 5, "failureThreshold": 60},
        "terminationGracePeriodSeconds": 30,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10, "cpuUtilization": 70, "queueTimeUs": 50_000},
        "pdb": {"enabled": True, "minAvailable": 1},
        "service": {"type": "ClusterIP"},
    }  # fmt: skip


def make_values(
    spec_path: str | Path,
    calibration: str | Path | None = None,
    calibration_configmap: str = "",
    image: str = "",
    model_store: str = "",
    engines_only: bool = False,
    project_root: str = PROJECT_ROOT,
) -> dict[str, Any]:
    """The chart's values for ``spec_path`` (see the module doc)."""
    spec_path = Path(spec_path).resolve()
    agents, oracle, kinds, remote = _placement(spec_path)
    tier_of = {a: "agents" for a in agents if a not in remote}
    if oracle not in remote:
        tier_of[oracle] = "oracle"
    urls = {m: f"tier://{t}" for m, t in tier_of.items()}
    tiers: dict[str, Any] = {}
    if not engines_only:
        tiers["router"] = _router_tier(spec_path, urls, project_root)
    for tier in ("agents", "oracle"):
        models = [m for m, t in tier_of.items() if t == tier]
        if models:
            others = {m: u for m, u in urls.items() if m not in models}
            tiers[tier] = _engine_tier(spec_path, models, others, kinds, project_root)
    cal_json = ""
    if not engines_only:
        if calibration is None and not calibration_configmap:
            spec_cal = load_spec(spec_path).get("calibration")
            if spec_cal is None:
                raise SpecError(
                    f"{spec_path}: no calibration (--calibration FILE or --calibration-configmap NAME); "
                    "without one, --engines-only serves the engines to record traces (docs/GPU.md)"
                )
            calibration = (spec_path.parent / str(spec_cal)).resolve()
        if calibration is not None:
            cal_path = Path(calibration)
            if not cal_path.is_file():
                raise SpecError(f"calibration artifact {cal_path} not found")
            from pyramid_moa.artifact import load_artifact

            art = load_artifact(cal_path, known_agents=[*agents, oracle])  # what the router's render will check
            if art.oracle != oracle:
                raise SpecError(f"calibration {cal_path} has oracle {art.oracle!r}; the spec's oracle is {oracle!r}")
            cal_json = cal_path.read_text(encoding="utf-8")
    repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    if any(t["modelStore"] for t in tiers.values()) and not model_store:
        model_store = "pyramid-moa-models"
    values = {
        "profile": str(load_spec(spec_path).get("profile", spec_path.stem)),
        "image": {"repository": repo, "tag": tag or "latest", "pullPolicy": "IfNotPresent"},
        "projectRoot": project_root,
        "modelStore": {"claimName": model_store, "subPaths": ["models", "out"], "readOnly": True},
        "calibration": {"json": cal_json, "existingConfigMap": calibration_configmap},
        "tiers": tiers,
    }
    return values


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    style = "|" if "\n" in s and not any(c in s for c in "\t\r") and not s.endswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_Dumper.add_representer(str, _str)


def dump(values: dict[str, Any]) -> str:
    """YAML of the values; multi-line strings (the calibration JSON, prompt templates) as blocks."""
    return yaml.dump(values, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Helm values (deploy/helm/pyramid-moa) from a Pyramid MoA deployment spec")
    ap.add_argument("spec", help="deployment spec, e.g. deploy/gpu-8x80gb.yaml")
    ap.add_argument("--out", required=True, help="values file to write ('-': stdout)")
    ap.add_argument("--calibration", help="calibration artifact JSON (default: the spec's 'calibration')")
    ap.add_argument("--calibration-configmap", default="", help="an existing ConfigMap with calibration.json")
    ap.add_argument("--image", default="", help="REPOSITORY:TAG of the image (deploy/docker/Dockerfile)")
    ap.add_argument("--model-store", default="", help="PersistentVolumeClaim with models/ and out/ (engines)")
    ap.add_argument("--engines-only", action="store_true", help="the engine tiers only, no router")
    ap.add_argument("--project-root", default=PROJECT_ROOT, help="where the project is inside the image")
    args = ap.parse_args(argv)
    try:
        values = make_values(
            args.spec,
            args.calibration,
            args.calibration_configmap,
            args.image,
            args.model_store,
            args.engines_only,
            args.project_root,
        )
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = f"# Generated by scripts/helm_values.py from {args.spec}; regenerate rather than edit the tiers' specs.\n"
    text += dump(values)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        tiers = ", ".join(f"{k} ({v['gpus']} GPU)" for k, v in values["tiers"].items())
        print(f"wrote {args.out}: tiers {tiers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
