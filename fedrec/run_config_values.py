"""One flat run-config value read strictly: a JSON object with the key in the error, a cast that never guesses.

Flower's run config is flat (`[tool.flwr.app.config]`, `--run-config`): nested values travel as JSON text and
every value arrives as whatever TOML or the command line made of it. `fedrec.settings` reads each key with these.
"""

from __future__ import annotations

import json
from typing import Any

from fedrec.errors import ConfigError


def json_object(key: str, text: str) -> dict[str, Any]:
    """The JSON object run-config `key` holds as `text` (not JSON, or not an object: a `ConfigError`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run-config {key} is not valid JSON: {text!r}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"run-config {key} must be a JSON object, got {text!r}")
    return value


def cast_value(key: str, value: Any, typ: str) -> Any:
    """Strict cast of one run-config value: no silent truncation, no truthy strings."""
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ConfigError(f"run-config {key}={value!r} is not a valid {typ}")
