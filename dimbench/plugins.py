"""Plugins: modules that add metrics or model families without editing dimbench.

A plugin is an importable module with a ``register()`` function that calls
:func:`dimbench.metrics.register_metric`, :func:`models.register_family` and :func:`models.register_model`.
dimbench loads, in this order: the installed packages' entry points in the group ``dimbench.plugins`` (each
naming such a module), the modules named in ``DIMBENCH_PLUGINS`` (comma-separated), and those given with
``dimbench --plugin MODULE``. Plugins are code the user chose to install or name; a suite file cannot load one.

Workers load the same plugins (whatever else a plugin registers, a scan backend say, is then there too), and are
handed the declarations of what they measure (the metric and the model) besides.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from dimbench.errors import UserError

PLUGIN_GROUP = "dimbench.plugins"
PLUGINS_ENV = "DIMBENCH_PLUGINS"
_loaded: set[str] = set()


def plugin_names(extra: list[str] | None = None) -> list[str]:
    """Every plugin module to load: entry points, then the environment variable, then ``extra``."""
    names = [ep.value.split(":")[0] for ep in entry_points(group=PLUGIN_GROUP)]
    names += [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys(names + list(extra or [])))


def loaded_plugins() -> list[str]:
    """The plugins loaded in this process so far (a worker loads the same ones)."""
    return sorted(_loaded)


def load_plugins(extra: list[str] | None = None) -> list[str]:
    """Import each plugin module once and call its ``register()``; returns the names loaded now."""
    loaded = []
    for name in plugin_names(extra):
        if name in _loaded:
            continue
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the user's plugin to fix
            raise UserError(f"plugin {name!r} cannot be imported: {type(exc).__name__}: {exc}") from None
        register = getattr(module, "register", None)
        if not callable(register):
            raise UserError(f"plugin {name!r} ({module.__file__}) has no register() function")
        try:
            register()
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"plugin {name!r}: register() failed: {type(exc).__name__}: {exc}") from None
        _loaded.add(name)
        loaded.append(name)
    return loaded
