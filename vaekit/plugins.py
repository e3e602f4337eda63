"""Plug-ins: code a run folder or a settings file names as ``"package.module:Class"``, and the
one rule for importing it.

    import_class("my_nets:Encoder", "encoder", trust=False)   # PluginError unless imported
    is_plugin_name("mog:10")                                   # False: a built-in name

A module named by a file is code: it is imported only when the user already imported it or
passed ``trust`` (``trust_plugins=True``, ``--trust-plugins``); what the user types on the
command line is their own request.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from torch import nn

from vaekit.errors import ConfigError, PluginError

__all__ = ["PLUGIN_FIELDS", "is_plugin_name", "import_plugin", "import_class"]

PLUGIN_FIELDS = ("encoder", "decoder", "prior", "posterior", "likelihood")
"""The `ModelSpec` fields that may name code as ``"package.module:Class"``."""


def is_plugin_name(value: object) -> bool:
    """True for a ``"package.module:Class"`` string (code), False for a built-in name such as
    ``"mog:10"`` or ``"mlp:512"``."""
    return isinstance(value, str) and re.fullmatch(r"[\w.]+:[A-Za-z_][\w.]*", value) is not None


def import_plugin(module: str, what: str, trust: bool) -> Any:
    """``importlib.import_module(module)``, unless it is not imported yet and not trusted.

    The one trust rule for plug-ins: a module named by a run folder or a settings file is code,
    imported only when the user already imported it or passed ``trust``.

    Raises:
        PluginError: naming the module to import or trust, or why it cannot be imported.
    """
    if not trust and module not in sys.modules:
        raise PluginError(
            f"{what} comes from the module {module!r}, which is not imported; a run's plug-ins "
            f"are code, and vaekit imports none that you did not ask for: import {module} "
            "yourself if you trust it, or pass trust_plugins=True (--trust-plugins)")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PluginError(f"cannot import {what} ({e}); make its module importable from here "
                          "(install it, or add its folder to PYTHONPATH)") from None


def import_class(spec: str | type, part: str, trust: bool = True) -> type:
    """The class named by ``"package.module:Class"`` (or the class itself).

    With ``trust=False`` a module that is not imported yet is refused (see `VAE.from_config`).
    """
    if isinstance(spec, type):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"the {part} {spec!r} is not package.module:Class")
    module, _, name = spec.partition(":")
    obj: Any = import_plugin(module, f"the {part} {spec!r}", trust)
    try:
        for attr in name.split("."):
            obj = getattr(obj, attr)
    except AttributeError as e:
        raise ConfigError(f"cannot import the {part} {spec!r} ({e}); give it as "
                          "package.module:Class, importable from here") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"the {part} {spec!r} is not a torch.nn.Module class")
    return obj
