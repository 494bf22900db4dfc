"""Test driver: the real worker, noting whether it changed any class of faust-streaming,
aiokafka or mode (Faust's service library) from the way it was shipped.

    python -m tests.pipeline.shipped_classes_worker     (settings from the environment)

Before anything of adstream is imported, it imports every module of those packages and records
the methods of every class they define (functions, descriptors, nested classes: whatever is
callable or binds); when the worker has stopped it writes to `$SHIPPED_CLASSES_REPORT` how
many classes it recorded and which methods differ now (replaced, added or removed), as JSON.
Class attributes that hold data are left out: Faust itself registers its web views on their
classes and aiokafka counts its producers on its class.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

PACKAGES = ("faust", "aiokafka", "mode")


def shipped_modules(packages: Iterable[str]) -> list[ModuleType]:
    """Every module of `packages` that imports here (drivers of other brokers, extras and
    modules whose own dependencies are absent don't)."""
    modules = []
    for name in packages:
        package = importlib.import_module(name)
        modules.append(package)
        for found in pkgutil.walk_packages(package.__path__, f"{name}.", onerror=lambda _: None):
            if found.name.endswith(".__main__"):  # a command line, run on import
                continue
            try:
                modules.append(importlib.import_module(found.name))
            except Exception:  # an optional module whose own dependency is absent
                continue
    return modules


def classes_of(modules: Iterable[ModuleType]) -> dict[str, type]:
    """Each class by its qualified name, in the module that defines it."""
    return {
        f"{module.__name__}.{cls.__qualname__}": cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    }


def is_method(value: object) -> bool:
    return callable(value) or hasattr(type(value), "__get__")


def methods(cls: type) -> dict[str, object]:
    return {name: value for name, value in vars(cls).items() if is_method(value)}


def changed(before: dict[str, dict[str, object]], classes: dict[str, type]) -> list[str]:
    """`class.method` of every method replaced, added or removed since `before`."""
    found = []
    for name, was in before.items():
        now = methods(classes[name])
        for method in sorted(set(was) | set(now)):
            if was.get(method, was) is not now.get(method, now):
                found.append(f"{name}.{method}")
    return found


def main() -> None:
    classes = classes_of(shipped_modules(PACKAGES))
    before = {name: methods(cls) for name, cls in classes.items()}
    assert not any(name.startswith("streams") for name in sys.modules), "imported too early"

    from streams.settings import Settings
    from streams.worker.runner import run

    try:
        run(Settings.from_env())
    finally:
        report = {"classes": len(classes), "changed": changed(before, classes)}
        Path(os.environ["SHIPPED_CLASSES_REPORT"]).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
