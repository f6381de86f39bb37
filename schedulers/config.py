"""The plugin's Dask config (``taskflow.scheduler.*``), defaults from ``taskflow.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

from taskflow.errors import TaskflowError

_DEFAULTS = Path(__file__).with_name("taskflow.yaml")
_loaded = False


def load_defaults(force: bool = False) -> None:
    """Merge ``taskflow.yaml`` under the user's Dask config (once, unless ``force``: after
    something reset Dask's config, as ``distributed.utils_test`` does)."""
    global _loaded
    if force or not _loaded:
        with open(_DEFAULTS) as f:
            dask.config.update_defaults(yaml.safe_load(f))
        _loaded = True


def setting(section: str, name: str, value: Any = None) -> Any:
    """``value`` if given, else ``taskflow.scheduler.<section>.<name>`` from Dask config
    (``section=""``: ``taskflow.scheduler.<name>``)."""
    if value is not None:
        return value
    load_defaults()
    path = ".".join(["taskflow.scheduler", *([section] if section else []), name])
    try:
        return dask.config.get(path)
    except KeyError:
        load_defaults(force=True)
    try:
        return dask.config.get(path)
    except KeyError as exc:
        raise TaskflowError(f"no Dask config value {path}; set it or pass "
                            f"{name.replace('-', '_')}=") from exc


def seconds(value: Any) -> float:
    """``"100ms"``, ``"30s"`` or a number of seconds, as seconds."""
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="s"))
