"""Reading a Python-backend model's ``parameters`` (string values) into typed settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyramid_client.wire import config_parameters


class ModelParams:
    """``parameters { key: "k" value: { string_value: "v" } }`` of a model config, typed on read."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.config = json.loads(args["model_config"])
        self.name: str = self.config.get("name", args.get("model_name", "?"))
        self.model_dir = Path(args.get("model_repository", "."))
        self.raw = config_parameters(self.config)

    def _get(self, key: str, default: Any) -> str | None:
        v = self.raw.get(key)
        if v is None or v == "" or v.startswith("${"):  # upstream fill_template: "${...}" means unset
            if default is _REQUIRED:
                raise ValueError(f"model {self.name!r}: parameter {key!r} is required")
            return None
        return v

    def get_str(self, key: str, default: Any = None) -> str | None:
        v = self._get(key, default)
        return default if v is None else v

    def get_int(self, key: str, default: Any = None) -> int | None:
        v = self._get(key, default)
        return default if v is None else int(v)

    def get_float(self, key: str, default: Any = None) -> float | None:
        v = self._get(key, default)
        return default if v is None else float(v)

    def get_bool(self, key: str, default: bool = False) -> bool:
        v = self._get(key, default)
        return default if v is None else v.strip().lower() in ("1", "true", "yes", "on")

    def get_list(self, key: str) -> list[str]:
        v = self._get(key, None)
        return [] if v is None else [x.strip() for x in v.split(",") if x.strip()]

    def get_path(self, key: str, default: Any = None) -> Path | None:
        """A path parameter; relative paths are relative to the model's directory."""
        v = self._get(key, default)
        if v is None:
            return None if default in (None, _REQUIRED) else Path(default)
        p = Path(v)
        return p if p.is_absolute() else self.model_dir / p


_REQUIRED = object()
REQUIRED = _REQUIRED
