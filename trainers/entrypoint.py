"""`trainer.backend: python`: a user's function as the trainer, loaded from `trainer.entrypoint`.

The entrypoint is `"package.module:function"` (imported from the trial's working directory
and sys.path) or `"path/to/file.py:function"` (loaded from that file, relative to the working
directory). The function is called as `function(config, report)` with a
`trainers.contract.TrialConfig` and a reporter taking one dict per report (keys: the
contract's; extras allowed), exactly like the built-in trainers; what it returns is ignored.

>>> fn = load_entrypoint("trainers.simulated:train", ".")
>>> fn.__name__
'train'
>>> check_entrypoint("trainers.simulated:no_such_function", ".")
"module 'trainers.simulated' has no attribute 'no_such_function'"
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable, Optional


class EntrypointError(ValueError):
    """The entrypoint cannot be loaded or called as `function(config, report)`."""


def _split(entrypoint: str) -> tuple[str, str]:
    module, sep, name = entrypoint.rpartition(":")
    if not sep or not module or not name or not name.replace("_", "a").replace(".", "a").isalnum():
        raise EntrypointError(f"{entrypoint!r} is not 'package.module:function' or 'path/file.py:function'")
    return module, name


def load_entrypoint(entrypoint: str, cwd: str) -> Callable:
    """The function named by `entrypoint`; raises EntrypointError saying why it cannot be loaded."""
    module_name, attr = _split(entrypoint)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name) if Path(module_name).is_absolute() else Path(cwd) / module_name
            if not path.is_file():
                raise EntrypointError(f"file {module_name} does not exist (relative to {cwd})")
            name = f"scalesweep_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                sys.path.insert(0, str(path.parent))  # the file's own imports of its neighbours
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
        else:
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(module_name)
    except EntrypointError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the user's import raises, reported by name
        raise EntrypointError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise EntrypointError(f"module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise EntrypointError(f"{entrypoint!r} is not callable")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise EntrypointError(f"{entrypoint!r} cannot be called as function(config, report): "
                              f"its signature is {attr}{inspect.signature(fn)}") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    return fn


def check_entrypoint(entrypoint: str, cwd: str) -> Optional[str]:
    """Why the entrypoint cannot be used, or None when it loads and takes (config, report)."""
    try:
        load_entrypoint(entrypoint, cwd)
    except EntrypointError as exc:
        return str(exc)
    return None
