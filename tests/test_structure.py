"""The package's import structure, read from the source by ``scripts/structure_report.py``
(docs/development.md, "Lint, format and structure"):

* no module uses another module's private name (``from x import _name``,
  ``module._name``): a name another module needs is public, with a docstring;
* no import cycle among the modules at import time (module-level imports);
* every import of a module of this package inside a function is in
  :data:`LAZY_IMPORTS` with its reason, and the reason still holds (checked
  from the import graph): otherwise the import belongs at the top of the module;
* the light entry points (``import fiftyone_lazsl``, ``import
  fiftyone_lazsl.core.config``, ``fiftyone-lazsl --help``) import no heavy library
  at module level (the static side of tests/test_public_api.py and
  tests/test_robustness_newcomer.py, which check it at run time).

A failing test names the module (its id) and lists each offending import or name
with its line.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_report_module():
    spec = importlib.util.spec_from_file_location(
        "structure_report", ROOT / "scripts" / "structure_report.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("structure_report", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


sr = _load_report_module()
AN = sr.analyse(ROOT)
MODULES = sorted(AN.paths)

#: Third-party libraries that the light entry points must not import (slow to import,
#: or FiftyOne's database client).
HEAVY = frozenset(
    {
        "torch",
        "torchvision",
        "fiftyone",
        "numpy",
        "PIL",
        "open_clip",
        "pymongo",
        "bson",
        "openai",
        "ot",
        "psutil",
    }
)

# Reasons a module of this package may be imported inside a function instead of
# at the top. Each is checked against the import graph by test_lazy_imports_are_allowed.
LIGHT = "light"
LIGHT_WHY = (
    "the importing module is loaded by `import fiftyone_lazsl`, `import "
    "fiftyone_lazsl.core.config` or `fiftyone-lazsl --help` (which builds every "
    "sub-command's parser), and the imported module loads a heavy library (HEAVY) at "
    "import: the import waits for the handler that needs it"
)
CYCLE = "cycle"
CYCLE_WHY = (
    "the imported module imports the importing one at module level (directly or "
    "through others): importing it at the top would close an import cycle"
)
LAYER = "layer"
LAYER_WHY = (
    "the imported module belongs to a layer below the importing one "
    "(docs/architecture.md: each layer imports only the layers above it); a "
    "documented exception, used by one function only"
)
REASONS = {LIGHT: LIGHT_WHY, CYCLE: CYCLE_WHY, LAYER: LAYER_WHY}

_P = "fiftyone_lazsl."
#: (importing module, imported module) -> reason, for every import of a module of
#: this package inside a function. Sorted by importing module.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    # cli handlers: the FiftyOne layer and the torch/NumPy modules of core
    (_P + "cli.attributes", _P + "fo.datasets"): LIGHT,
    (_P + "cli.attributes", _P + "fo.fields"): LIGHT,
    (_P + "cli.attributes", _P + "fo.store"): LIGHT,
    (_P + "cli.attributes_generate", _P + "fo.datasets"): LIGHT,
    (_P + "cli.attributes_generate", _P + "fo.fields"): LIGHT,
    (_P + "cli.attributes_generate", _P + "fo.store"): LIGHT,
    (_P + "cli.audit", _P + "fo.audit"): LIGHT,
    (_P + "cli.audit", _P + "fo.evaluate"): LIGHT,
    (_P + "cli.audit", _P + "fo.store"): LIGHT,
    (_P + "cli.classify", _P + "fo.apply"): LIGHT,
    (_P + "cli.classify", _P + "fo.shards"): LIGHT,
    (_P + "cli.datasets", _P + "fo.import_folder"): LIGHT,
    (_P + "cli.datasets", _P + "fo.store"): LIGHT,
    (_P + "cli.demo", _P + "core.classifier"): LIGHT,
    (_P + "cli.demo", _P + "core.models"): LIGHT,
    (_P + "cli.demo", _P + "fo.apply"): LIGHT,
    (_P + "cli.demo", _P + "fo.import_folder"): LIGHT,
    (_P + "cli.demo", _P + "fo.store"): LIGHT,
    (_P + "cli.doctor", _P + "fo.doctor"): LIGHT,
    (_P + "cli.features", _P + "core.features"): LIGHT,
    (_P + "cli.features", _P + "fo.rescore"): LIGHT,
    # AttributeSet editing cleans new attributes as LLM answers are cleaned
    # (llm/text.py, standard library only)
    (_P + "core.attribute_formats", _P + "llm.text"): LAYER,
}

#: The layers of docs/architecture.md, top first (a module may import those above it).
LAYERS = ("errors", "core", "fo", "llm", "cli")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "fiftyone_lazsl" or len(parts) < 2:
        return None
    name = "errors" if parts[1] in ("errors", "env") else parts[1]
    return LAYERS.index(name) if name in LAYERS else None


def _reach(start: str, graph: dict[str, dict[str, list[int]]]) -> set[str]:
    """Modules imported at module level by ``start``, directly or not (``start`` too)."""
    seen, todo = {start}, [start]
    while todo:
        for t in graph[todo.pop()]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


GRAPH = AN.graph("module")
EXTERNAL: dict[str, set[str]] = {m: set() for m in MODULES}
for _s in AN.imports:
    if _s.runs_on_import:
        EXTERNAL[_s.module] |= {t.split(".")[0] for t in _s.targets if t not in AN.paths}


def _heavy_at_import(module: str) -> set[str]:
    """The HEAVY libraries that importing ``module`` loads (module-level imports)."""
    return set().union(*(EXTERNAL[m] for m in _reach(module, GRAPH))) & HEAVY


def _light_modules() -> set[str]:
    from fiftyone_lazsl.cli import COMMAND_MODULES  # light itself (tests/test_public_api.py)

    roots = ["fiftyone_lazsl", _P + "core.config", _P + "cli"]
    roots += [f"{_P}cli.{m}" for m in COMMAND_MODULES]
    return set().union(*(_reach(r, GRAPH) for r in roots))


LIGHT_MODULES = _light_modules()


def _reason_problem(importer: str, imported: str, reason: str) -> str | None:
    """Why the recorded reason no longer holds, or None."""
    if reason == LIGHT:
        if importer not in LIGHT_MODULES:
            return f"{importer} is not loaded by the light entry points"
        if not _heavy_at_import(imported):
            return f"{imported} loads no heavy library at import"
    elif reason == CYCLE:
        if importer not in _reach(imported, GRAPH):
            return f"{imported} does not import {importer} at module level"
    elif reason == LAYER:
        a, b = _layer(importer), _layer(imported)
        if a is None or b is None or b <= a:
            return f"{imported} is not in a layer below {importer}"
    else:
        return f"unknown reason {reason!r}"
    return None


def test_the_analysis_sees_the_package():
    assert len(MODULES) > 60 and "fiftyone_lazsl.fo.apply" in MODULES
    assert "operators.panel" in MODULES and sr.PLUGIN_ROOT in MODULES
    assert len(AN.imports) > 300 and AN.function_imports()


@pytest.mark.parametrize("module", MODULES)
def test_no_private_names_of_other_modules(module):
    uses = sorted(
        (u for u in AN.private_uses if u.module == module and u.internal),
        key=lambda u: (u.line, u.name),
    )
    if uses:
        pytest.fail(
            f"{AN.paths[module].relative_to(ROOT)} uses other modules' private names "
            "(make them public, with a docstring):\n"
            + "\n".join(f"  line {u.line}: {u.owner}.{u.name} ({u.how})" for u in uses),
            pytrace=False,
        )


def test_no_import_cycles_at_module_level():
    cycles = AN.cycles("module")
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(
        "  " + " -> ".join(c + c[:1]) for c in (AN.example_cycle(k) for k in cycles)
    )


@pytest.mark.parametrize("module", MODULES)
def test_lazy_imports_are_allowed(module):
    problems = []
    for s in AN.function_imports(internal_only=True):
        if s.module != module:
            continue
        for t in s.internal:
            reason = LAZY_IMPORTS.get((module, t))
            if reason is None:
                problems.append(
                    f"  line {s.line} ({s.function}): {t}: not in LAZY_IMPORTS; "
                    "import it at the top of the module, or add it with its reason"
                )
                continue
            why = _reason_problem(module, t, reason)
            if why:
                problems.append(
                    f"  line {s.line} ({s.function}): {t}: listed as {reason!r} but "
                    f"{why}; import it at the top of the module"
                )
    if problems:
        pytest.fail(
            f"{AN.paths[module].relative_to(ROOT)} imports modules of this package "
            "inside functions:\n" + "\n".join(problems),
            pytrace=False,
        )


def test_lazy_import_list_has_no_stale_entries():
    used = {(s.module, t) for s in AN.function_imports(internal_only=True) for t in s.internal}
    stale = sorted(set(LAZY_IMPORTS) - used)
    assert not stale, (
        "LAZY_IMPORTS entries with no such import inside a function (remove them):"
        + "".join(f"\n  {a} -> {b}" for a, b in stale)
    )
    assert set(LAZY_IMPORTS.values()) <= set(REASONS)


def test_light_entry_points_import_no_heavy_library():
    heavy = {m: EXTERNAL[m] & HEAVY for m in sorted(LIGHT_MODULES) if EXTERNAL[m] & HEAVY}
    assert {"fiftyone_lazsl.cli.demo", "fiftyone_lazsl.env"} <= LIGHT_MODULES
    assert not heavy, (
        "modules loaded by `import fiftyone_lazsl`, `import "
        "fiftyone_lazsl.core.config` or `fiftyone-lazsl --help` import heavy "
        f"libraries at module level: {heavy}"
    )


def test_the_checks_catch_what_they_look_for(tmp_path):
    """A tree with each fault: the analysis finds all of them."""
    pkg = tmp_path / "fiftyone_lazsl"
    (pkg / "fo").mkdir(parents=True)
    (tmp_path / "operators").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fo" / "__init__.py").write_text("")
    (pkg / "fo" / "a.py").write_text(
        "from fiftyone_lazsl.fo import b\nfrom fiftyone_lazsl.fo.b import _hidden\n"
        "def _own():\n    return 1\n"
    )
    (pkg / "fo" / "b.py").write_text(
        "import fiftyone_lazsl.fo.a as a\n\ndef f(self):\n    from . import a as again\n"
        "    self._x = a._own() + a.__name__.count('x')\n    return again\n_hidden = 1\n"
    )
    an = sr.analyse(tmp_path)
    assert an.cycles("module") == [["fiftyone_lazsl.fo.a", "fiftyone_lazsl.fo.b"]]
    assert [(u.module, u.owner, u.name, u.how) for u in an.private_uses] == [
        ("fiftyone_lazsl.fo.a", "fiftyone_lazsl.fo.b", "_hidden", "from-import"),
        ("fiftyone_lazsl.fo.b", "fiftyone_lazsl.fo.a", "_own", "attribute"),
    ]
    [lazy] = an.function_imports(internal_only=True)
    assert (lazy.module, lazy.function, lazy.internal) == (
        "fiftyone_lazsl.fo.b",
        "f",
        ("fiftyone_lazsl.fo.a",),
    )
