"""The runnable examples in the docstrings of the pure core and the laws hold, and every public
function of the core and of the laws carries one (DESIGN.md: a short runnable example per public function)."""
from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import orchestrator.core

# every module of the core, its laws/ included (walk_packages descends into subpackages)
MODULES = sorted(info.name for info in pkgutil.walk_packages(orchestrator.core.__path__, "orchestrator.core.")
                 if not info.ispkg)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} fail (python -m pytest --doctest-modules {name.replace('.', '/')}.py shows them)"


def _public_functions(module) -> list[str]:
    return [n for n, obj in vars(module).items()
            if not n.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module.__name__]


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith(("orchestrator.core.", "orchestrator.core.laws."))])
def test_public_functions_have_an_example(name):
    module = importlib.import_module(name)
    missing = [n for n in _public_functions(module) if ">>>" not in (getattr(module, n).__doc__ or "")]
    assert not missing, f"{name}: public functions without a runnable example: {', '.join(missing)}"


def test_the_examples_are_found():
    """The collection sees the modules and their examples (else the tests above pass vacuously)."""
    assert {"orchestrator.core.cells", "orchestrator.core.family", "orchestrator.core.laws.chinchilla"} <= set(MODULES)
    finder = doctest.DocTestFinder()
    for name in ("orchestrator.core.family", "orchestrator.core.laws.chinchilla"):
        assert sum(len(t.examples) for t in finder.find(importlib.import_module(name))) >= 10, name
    laws = [importlib.import_module(m) for m in MODULES if m.startswith("orchestrator.core.laws.")]
    assert sum(len(_public_functions(m)) for m in laws) >= 70  # the rule above sees the laws' functions
