"""Render the Helm chart (deploy/helm/pyramid-moa) and validate every manifest against Kubernetes' schemas.

- Rendering: Helm's own Go SDK (v4) through the ``helm-python-sdk`` wheel (``helm_python``: a C ABI over
  ``helm.sh/helm/v4``; no ``helm`` binary, which these machines cannot download). The same templates, Sprig
  functions and ``values.schema.json`` check as ``helm template``. Also ``helm lint``.
- Validation: ``kubernetes-validate`` (the OpenAPI JSON schemas of every Kubernetes release it ships, strict:
  an unknown field is an error), against the oldest and the newest release the chart supports.
  ``ServiceMonitor`` (a prometheus-operator CRD, in no Kubernetes schema) is checked against
  ``SERVICE_MONITOR_SCHEMA``: the fields this chart writes, typed as in monitoring.coreos.com/v1.
- The tiers' specs (ConfigMaps) are rendered with ``render.py`` here, as each pod's init container will.

usage: .venv/bin/python scripts/helm_check.py deploy/gpu-8x80gb.yaml [deploy/replay.yaml ...] \
           [--calibration FILE] [--out DIR]   (DIR: the rendered manifests, one file per spec)
Both packages are in the project's dev extra (pinned in requirements.lock): make setup installs them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

CHART = ROOT / "deploy" / "helm" / "pyramid-moa"
K8S_VERSIONS = ("1.25.0", "1.33.0")  # Chart.yaml's kubeVersion floor, and a current release
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["key", "operator"],
                                "additionalProperties": False,
                                "properties": {
                                    "key": {"type": "string"},
                                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                    "values": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                                        "targetLabel": {"type": "string"},
                                        "action": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}  # fmt: skip


class ChartError(RuntimeError):
    """The chart did not render, lint or validate; the message says what and where."""


def render_chart(values: dict[str, Any], release: str = "pyramid", namespace: str = "llm") -> dict[str, str]:
    """{template path: rendered text} of the chart with ``values`` (Helm's template engine)."""
    try:
        import helm_python as helm
    except ImportError:
        raise ChartError("helm-python-sdk is not installed: pip install the dev extra (make setup)") from None
    try:
        with helm.Chart.load(str(CHART)) as chart:
            return dict(chart.render(values, name=release, namespace=namespace))
    except helm.HelmError as exc:
        raise ChartError(f"helm template failed: {exc}") from None


def lint() -> list[str]:
    """``helm lint`` errors and warnings (informational notes left out)."""
    import helm_python as helm

    out = helm.lint(str(CHART))
    msgs = [f"{m.get('path')}: {m.get('error')}" for m in out.get("messages", []) if int(m.get("severity", 0)) >= 2]
    return msgs + [str(e) for e in out.get("errors", [])]


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every object of the rendered templates (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        try:
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        except yaml.YAMLError as exc:
            raise ChartError(f"{path}: rendered YAML does not parse: {exc}") from None
    return docs


def validate(docs: list[dict[str, Any]], versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    """Schema errors of ``docs`` (empty: all valid) against each Kubernetes version in ``versions``."""
    try:
        import kubernetes_validate
    except ImportError:
        raise ChartError("kubernetes-validate is not installed: pip install the dev extra (make setup)") from None
    import jsonschema

    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        if doc.get("kind") == "ServiceMonitor":
            for e in jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(doc):
                errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{name} (Kubernetes {v}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {v}")
    return errors


def render_tier_specs(
    docs: list[dict[str, Any]], values: dict[str, Any], calibration: Path | None, tmp: Path
) -> list[str]:
    """Render every tier's spec (its ConfigMap) with render.py, as the tier's init container will; the
    image's paths are mapped back to this checkout. Returns the models each tier renders."""
    from pyramid_deploy.render import render

    root = values.get("projectRoot", "/opt/pyramid-moa")
    out = []
    for doc in docs:
        if doc.get("kind") != "ConfigMap" or "spec.yaml" not in (doc.get("data") or {}):
            continue
        tier = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        text = doc["data"]["spec.yaml"].replace(root + "/", str(ROOT) + "/")
        spec = tmp / f"{tier}.yaml"
        spec.write_text(text, encoding="utf-8")
        router = values["tiers"][tier]["role"] == "router"
        try:
            r = render(spec, tmp / f"repo-{tier}", calibration=calibration if router else None, engines_only=not router)
        except ValueError as exc:
            raise ChartError(f"tier {tier}: its spec does not render: {exc}") from None
        out.append(f"{tier}: {', '.join(r.models)}")
    return out


def check(spec: Path, calibration: Path | None, out_dir: Path | None) -> list[str]:
    """Values from ``spec``, the chart rendered and validated; the lines of a summary. ChartError on errors."""
    from .helm_values import make_values

    values = make_values(spec, calibration, image="registry.example/pyramid-moa-trtllm:0.1.0")
    values["monitoring"] = {
        "podAnnotations": True,
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {}},
    }
    rendered = render_chart(values)
    docs = manifests(rendered)
    errors = validate(docs)
    if errors:
        raise ChartError(f"{spec}: {len(errors)} schema error(s):\n  " + "\n  ".join(errors))
    with tempfile.TemporaryDirectory() as tmp:
        cal = Path(calibration) if calibration else None
        if cal is None and values["calibration"]["json"]:
            cal = Path(tmp) / "calibration.json"
            cal.write_text(values["calibration"]["json"], encoding="utf-8")
        tiers = render_tier_specs(docs, values, cal, Path(tmp))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{spec.stem}.yaml").write_text(
            "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs), encoding="utf-8"
        )
    kinds: dict[str, int] = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    return [
        f"{spec}: {len(docs)} objects valid against Kubernetes {', '.join(K8S_VERSIONS)} (strict): "
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())),
        *(f"  tier {t}" for t in tiers),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render the pyramid-moa Helm chart and validate its manifests")
    ap.add_argument("specs", nargs="+", help="deployment specs, e.g. deploy/gpu-8x80gb.yaml")
    ap.add_argument("--calibration", help="calibration artifact for every spec (default: the spec's own)")
    ap.add_argument("--out", help="write the rendered manifests here (one file per spec)")
    args = ap.parse_args(argv)
    problems = lint()
    if problems:
        print("helm lint:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    status = 0
    for spec in args.specs:
        try:
            for line in check(Path(spec), Path(args.calibration) if args.calibration else None,
                              Path(args.out) if args.out else None):  # fmt: skip
                print(line)
        except (ChartError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
