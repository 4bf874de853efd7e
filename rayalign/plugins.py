"""A user's own code named in a config or on the command line: `module` or `module:attribute`.

The module is imported with the current directory first on the path (as `python -m` and `python script.py` have
it; the `rayalign` command's own path does not hold it), so a `my_tasks.py` beside the job works without
PYTHONPATH; a submitted job runs in a copy of that directory. A module that is not there, or an attribute it does
not have, is one line naming the setting it came from.
"""

from __future__ import annotations

import importlib
import os
import sys

from rayalign.errors import ConfigError


def import_module(name: str, setting: str):
    """Import module `name` (named by `setting`, for the error)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(f"{setting}: cannot import '{name}' ({error}); name a module in the current directory or "
                          "on the Python path, e.g. my_tasks (a my_tasks.py here)") from None


def load_attribute(spec: str, setting: str):
    """The object `spec` ("module:attribute") names."""
    module, _, attribute = spec.partition(":")
    if not module or not attribute:
        raise ConfigError(f"{setting}: '{spec}' is not module:attribute (e.g. my_tasks:polite)")
    found = import_module(module, setting)
    if not hasattr(found, attribute):
        raise ConfigError(f"{setting}: module '{module}' has no '{attribute}'")
    return getattr(found, attribute)
