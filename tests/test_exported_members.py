"""Each public package says what it offers (`__all__`), and offers exactly that: every name it
lists is there, and every public name it holds (other than its submodules) is listed."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "models",
    "infra",
    "streams",
    "streams.audit",
    "streams.billing",
    "streams.cli",
    "streams.demo",
    "streams.state",
    "streams.vast",
    "streams.worker",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_a_package_exports_what_it_lists(name: str) -> None:
    package = importlib.import_module(name)
    listed = package.__all__
    assert all(hasattr(package, member) for member in listed)
    held = {
        member
        for member, value in vars(package).items()
        if not member.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert held == set(listed)
