"""The public API's docstrings: every public class has a runnable `Examples:` section, and
every example in the package's docstrings runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fastis

# The modules whose __all__ is the public API.
PUBLIC = ["fastis", "fastis.ops", "fastis.samplers", "fastis.data", "fastis.distributed",
          "fastis.datasets", "fastis.integrations.lightning", "fastis.integrations.transformers"]


def package_modules() -> list[str]:
    names = ["fastis"]
    for info in pkgutil.walk_packages(fastis.__path__, "fastis."):
        # Triton-only kernels (no examples); __main__ runs the command line when imported.
        if not info.name.startswith("fastis.triton_kernels") and info.name != "fastis.__main__":
            names.append(info.name)
    return sorted(names)


def public_classes() -> list[tuple[str, type]]:
    found = {}
    for name in PUBLIC:
        module = importlib.import_module(name)
        for attr in module.__all__:
            value = getattr(module, attr)
            if isinstance(value, type):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return sorted(found.items())


@pytest.mark.parametrize(("name", "cls"), public_classes(), ids=lambda v: str(v))
def test_every_public_class_has_an_examples_section(name, cls):
    assert "Examples:" in (cls.__doc__ or ""), f"{name} has no Examples: section"
    assert ">>> " in cls.__doc__.split("Examples:", 1)[1]


def test_the_public_api_is_found():
    # A guard on the collection above: it must see the classes users meet first.
    names = {name.rsplit(".", 1)[1] for name, _ in public_classes()}
    assert {"SumTree", "AliasTable", "ImportanceSampler", "BatchSampler", "PoolSampler",
            "Sharded", "Scores", "Batch", "ImportanceSamplingTrainer"} <= names


@pytest.mark.parametrize("name", package_modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
