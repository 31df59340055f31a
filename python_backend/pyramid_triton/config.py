"""Reading a Python-backend model's ``parameters`` (string values) into typed settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
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
        return default if v is None else v.strip().lower() in _TRUE

    def get_typed(self, key: str, defaults: Mapping[str, Any]) -> Any:
        """Parameter ``key`` as the type of its default ``defaults[key]`` (bool, int, float or str: e.g.
        ``protocol.ROUTER_PARAMS``, whose types the renderer writes by too), that default where it is unset."""
        default = defaults[key]
        return _GETTERS[param_type(default)](self, key, default)

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


def param_type(default: Any) -> type:
    """The type a parameter is written and read as: its default's (bool, int, float or str)."""
    for t in (bool, int, float, str):  # bool first: a bool is an int too
        if isinstance(default, t):
            return t
    raise TypeError(f"a parameter's default must be a bool, int, float or str, got {default!r}")


def typed_value(key: str, value: Any, default: Any) -> Any:
    """``value`` (a deployment spec's) as the type of ``default``, as ``ModelParams.get_typed`` reads it back: a
    string flag by ``get_bool``'s rule; an int only from a whole number; ValueError naming ``key`` otherwise."""
    t = param_type(default)
    try:
        if t is bool:
            return value.strip().lower() in _TRUE if isinstance(value, str) else bool(value)
        if t is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return t(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameter {key!r} must be a {t.__name__}: {exc}") from None


_TRUE = ("1", "true", "yes", "on")
_GETTERS = {
    bool: ModelParams.get_bool,
    int: ModelParams.get_int,
    float: ModelParams.get_float,
    str: ModelParams.get_str,
}
_REQUIRED = object()
REQUIRED = _REQUIRED
