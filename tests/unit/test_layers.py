"""The layers of docs/architecture.md, held by the source itself: every import statement
of localserve (inside functions and under TYPE_CHECKING too) points down the order, the
daemon's side never imports the engine, only the engine imports llama_cpp, and no two
modules import each other, however indirectly."""

from __future__ import annotations

from tests.support import imports


def test_every_import_points_down_the_layers() -> None:
    assert imports.violations() == []


def test_no_import_cycles_between_modules_or_packages() -> None:
    packages, modules = imports.graphs()
    assert imports.cycles(packages) == []
    assert imports.cycles(modules) == []


def test_every_package_has_a_layer() -> None:
    packages = {imports.layer_of(name) for name in imports.modules()}
    assert packages <= set(imports.RANK), packages - set(imports.RANK)


def test_the_checker_sees_what_it_must_refuse(tmp_path: object) -> None:
    """The rules catch an upward import made inside a function, the daemon importing the
    engine, and llama_cpp outside the engine: each, written into a module, is reported."""
    cases = {
        "localserve.store.x": ("def f():\n    from localserve.server import app\n", "not below"),
        "localserve.scheduler.x": ("import localserve.engine.llama\n", "never imports the engine"),
        "localserve.plan.x": ("def f():\n    import llama_cpp\n", "only engine may import"),
        "localserve.config": ("from localserve import runtime\n", "not below"),
    }
    for module, (source, reason) in cases.items():
        found = imports.violations_in(module, source)
        assert len(found) == 1 and reason in found[0], (module, found)
    assert imports.violations_in("localserve.engine.x", "import llama_cpp\n") == []
    assert imports.violations_in("localserve.cli.x", "from localserve.engine import rpc\n") == []
