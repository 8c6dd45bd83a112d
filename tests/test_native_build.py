"""The compiled event loop's extension: built by the install, found by ``load_kernel``.

Without a C compiler the install still succeeds and ``load_kernel()`` returns None (the Python
engine runs); CI (``CI=true``) or ``LLMSERVINGSIM_REQUIRE_KERNEL=1`` demands the build, so a
broken build fails there instead of silently falling back.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from llmservingsim import native
from llmservingsim.native import KERNEL_VERSION, load_kernel

ROOT = Path(__file__).resolve().parents[1]
MODULE = "llmservingsim.native._loop"


@pytest.fixture
def fresh_loader() -> Iterator[None]:
    """``load_kernel`` remembers its answer; these tests change what it would find."""
    load_kernel.cache_clear()
    yield
    load_kernel.cache_clear()


def kernel_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("LLMSERVINGSIM_REQUIRE_KERNEL") == "1"


@pytest.mark.usefixtures("fresh_loader")
def test_the_install_built_the_kernel() -> None:
    kernel = load_kernel()
    if kernel is None:
        if kernel_required():
            pytest.fail(
                f"{MODULE} is not built or does not load (CI / LLMSERVINGSIM_REQUIRE_KERNEL=1 "
                "need it): rerun `pip install -e .` and read the build_ext warning"
            )
        pytest.skip(f"{MODULE} is not built here (no C compiler?): the Python engine runs")
    assert kernel.__name__ == MODULE
    assert kernel.VERSION == KERNEL_VERSION
    assert load_kernel() is kernel  # looked up once


def with_module(monkeypatch: pytest.MonkeyPatch, module: ModuleType | None) -> None:
    """Make ``import llmservingsim.native._loop`` find ``module`` (None: fail to import)."""
    monkeypatch.setitem(sys.modules, MODULE, module)


@pytest.mark.usefixtures("fresh_loader")
@pytest.mark.parametrize("version", [KERNEL_VERSION - 1, KERNEL_VERSION + 1, None])
def test_a_build_of_another_version_counts_as_none(
    monkeypatch: pytest.MonkeyPatch, version: int | None
) -> None:
    stale = ModuleType(MODULE)
    if version is not None:
        stale.VERSION = version  # type: ignore[attr-defined]
    with_module(monkeypatch, stale)
    assert load_kernel() is None


@pytest.mark.usefixtures("fresh_loader")
def test_a_build_of_this_version_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    current = ModuleType(MODULE)
    current.VERSION = KERNEL_VERSION  # type: ignore[attr-defined]
    with_module(monkeypatch, current)
    assert load_kernel() is current


@pytest.mark.usefixtures("fresh_loader")
def test_a_kernel_that_fails_to_import_counts_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    with_module(monkeypatch, None)  # import raises ImportError
    assert load_kernel() is None


@pytest.mark.usefixtures("fresh_loader")
def test_the_version_is_compared_to_the_python_side(monkeypatch: pytest.MonkeyPatch) -> None:
    current = ModuleType(MODULE)
    current.VERSION = KERNEL_VERSION  # type: ignore[attr-defined]
    with_module(monkeypatch, current)
    monkeypatch.setattr(native, "KERNEL_VERSION", KERNEL_VERSION + 1)
    assert load_kernel() is None


def test_the_extension_is_optional_and_compiled_without_fma_contraction() -> None:
    """A machine without a compiler must still install; fused multiply-adds would round
    differently from Python and break the engines' exactness."""
    (ext,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "ext-modules"
    ]
    assert ext["name"] == MODULE
    assert ext["optional"] is True
    assert [(ROOT / s).resolve() for s in ext["sources"]] == [
        (ROOT / "src/llmservingsim/native/loop.c").resolve()
    ]
    assert "-ffp-contract=off" in ext["extra-compile-args"]
    assert not any("fast-math" in a and a != "-fno-fast-math" for a in ext["extra-compile-args"])
