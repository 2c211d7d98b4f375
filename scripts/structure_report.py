"""Structure report of fiftyone-lazsl, read from the source with :mod:`ast` (nothing is
imported, so it runs without torch or FiftyOne).

Over the modules of ``fiftyone_lazsl/``, ``operators/`` and the plugin's root
``__init__.py`` (shown as ``(plugin)``) it prints, as Markdown:

(a) the named parameters of the public entry points (:data:`ENTRY_POINTS`);
(b) uses of another module's private names: ``from x import _name``, or
    ``alias._name`` where ``alias`` is a module bound by an import (``self._x``,
    ``cls._x`` and dunder names do not count; private *modules* such as
    ``operators/_forms.py`` do not count either, only names inside modules);
    this package's modules, then other libraries' for information;
(c) the imports inside functions: how many statements, and how many import a
    module of this package ("sibling" imports);
(d) the longest functions (lines from ``def``, decorators included, to the last line);
(e) import cycles among the package's modules: once with the imports that run
    when a module is imported (module level, ``if TYPE_CHECKING:`` blocks left
    out), once with every import (function level and ``TYPE_CHECKING`` included).

An edge of the import graph goes from the importing module to each module of
this package that the statement names (``from fiftyone_lazsl.core import
published`` names ``fiftyone_lazsl.core.published``; ``from fiftyone_lazsl.fo.runs
import F`` names ``fiftyone_lazsl.fo.runs``). The parent packages that Python
also executes are not edges: the package ``__init__`` files import nothing of
the package at module level, which this report would show as their edges.

``tests/test_structure.py`` imports :func:`analyse` from here and checks (b),
(c) against its allow-list, and (e).

Usage: ``python scripts/structure_report.py [--root DIR] [--list-lazy] [--top N]``.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
from collections import defaultdict, deque
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parents[1]
#: Top-level folders whose modules are analysed (the plugin's root ``__init__.py`` too).
PACKAGES = ("fiftyone_lazsl", "operators")
#: The name given to the plugin's root ``__init__.py``.
PLUGIN_ROOT = "(plugin)"
#: (module, qualified name) of the public entry points whose parameters (a) lists.
ENTRY_POINTS = (
    ("fiftyone_lazsl.fo.apply", "run_lazsl"),
    ("fiftyone_lazsl.fo.rescore", "rescore"),
    ("fiftyone_lazsl.fo.shards", "queue_shards"),
    ("fiftyone_lazsl.fo.doctor", "attribute_doctor"),
    ("fiftyone_lazsl.fo.zoo_model", "load_model"),
    ("fiftyone_lazsl.fo.zoo_model", "LaZSLZooModelConfig"),
    ("fiftyone_lazsl.fo.zoo_model", "LaZSLZooModel.__init__"),
)
#: Documented public names of the standard library that start with an underscore.
PUBLIC_UNDERSCORED = frozenset({("os", "_exit"), ("sys", "_getframe"), ("sys", "_exit")})


@dataclass(frozen=True)
class ImportStmt:
    """One ``import`` / ``from ... import`` statement.

    ``targets``: the modules (or, outside this package, dotted names) it names;
    ``internal``: those that are modules of this package; ``function``: the
    qualified name of the enclosing function, None at module level (a class
    body at module level is module level); ``type_checking``: inside
    ``if TYPE_CHECKING:``.
    """

    module: str
    line: int
    targets: tuple[str, ...]
    internal: tuple[str, ...]
    function: str | None
    type_checking: bool

    @property
    def runs_on_import(self) -> bool:
        """True when the statement runs as the module is imported."""
        return self.function is None and not self.type_checking


@dataclass(frozen=True)
class PrivateUse:
    """A use of module ``owner``'s private ``name`` in ``module`` at ``line``.

    ``how``: ``"from-import"`` (``from owner import _name``) or ``"attribute"``
    (``alias._name``)."""

    module: str
    line: int
    owner: str
    name: str
    how: str
    internal: bool


@dataclass(frozen=True)
class Function:
    """A function or method: ``qualname`` (``Class.method``, ``outer.inner``),
    first line (its first decorator's), number of lines."""

    module: str
    qualname: str
    line: int
    n_lines: int


@dataclass
class Analysis:
    """Everything the report and ``tests/test_structure.py`` need, for one tree."""

    root: pathlib.Path
    paths: dict[str, pathlib.Path]
    imports: list[ImportStmt] = field(default_factory=list)
    private_uses: list[PrivateUse] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)
    trees: dict[str, ast.Module] = field(default_factory=dict)

    def function_imports(self, internal_only: bool = False) -> list[ImportStmt]:
        """Import statements inside functions (only those naming a module of this
        package with ``internal_only``)."""
        return [
            s for s in self.imports if s.function is not None and (s.internal or not internal_only)
        ]

    def graph(self, level: str = "module") -> dict[str, dict[str, list[int]]]:
        """``{importer: {imported: [lines]}}`` among this package's modules.

        Args:
            level: ``"module"``: the statements that run on import;
                ``"all"``: every import statement.

        Raises:
            ValueError: another ``level``.
        """
        if level not in ("module", "all"):
            raise ValueError(f"level must be 'module' or 'all', not {level!r}")
        g: dict[str, dict[str, list[int]]] = {m: {} for m in self.paths}
        for s in self.imports:
            if level == "module" and not s.runs_on_import:
                continue
            for t in s.internal:
                if t != s.module:
                    g[s.module].setdefault(t, []).append(s.line)
        return g

    def cycles(self, level: str = "module") -> list[list[str]]:
        """The strongly connected components of :meth:`graph` with more than one
        module (every module of one reaches every other by imports), each sorted;
        empty when the graph has no cycle. :meth:`example_cycle` gives a cycle."""
        g = self.graph(level)
        return sorted(c for c in _sccs({m: set(t) for m, t in g.items()}) if len(c) > 1)

    def example_cycle(self, component: list[str], level: str = "module") -> list[str]:
        """A shortest cycle through the first module of a component of
        :meth:`cycles` (the modules in import order; the last imports the first)."""
        return _shortest_cycle(self.graph(level), min(component), set(component))

    def component_edges(
        self, component: list[str], level: str = "module"
    ) -> list[tuple[str, str, list[int]]]:
        """The import edges inside one component of :meth:`cycles`: ``(importer,
        imported, lines)``."""
        g, comp = self.graph(level), set(component)
        return [
            (a, b, lines) for a in sorted(comp) for b, lines in sorted(g[a].items()) if b in comp
        ]


def discover(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{dotted module name: path}`` of the analysed modules under ``root``."""
    mods: dict[str, pathlib.Path] = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    if (root / "__init__.py").is_file():
        mods[PLUGIN_ROOT] = root / "__init__.py"
    return mods


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ModuleVisitor:
    """Collects one module's imports, private-name uses and functions."""

    def __init__(self, name: str, is_package: bool, modules: set[str]) -> None:
        self.name, self.is_package, self.modules = name, is_package, modules
        self.imports: list[ImportStmt] = []
        self.private: list[PrivateUse] = []
        self.functions: list[Function] = []
        self.aliases: dict[str, str] = {}  # bound name -> module dotted name

    # -------------------------------------------------------------- resolution
    def _internal(self, dotted: str) -> bool:
        return dotted in self.modules

    def _from_base(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        return ".".join(parts + ([node.module] if node.module else []))

    def _record_import(
        self, node: ast.Import | ast.ImportFrom, function: str | None, tc: bool
    ) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            for a in node.names:
                targets.append(a.name)
                if a.asname:
                    self.aliases[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    self.aliases.setdefault(top, top)
        else:
            base = self._from_base(node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if self._internal(sub):
                    targets.append(sub)
                    self.aliases[a.asname or a.name] = sub
                    continue
                targets.append(base)
                if _is_private(a.name) and a.name != "*":
                    self.private.append(
                        PrivateUse(
                            self.name,
                            node.lineno,
                            base,
                            a.name,
                            "from-import",
                            self._internal(base),
                        )
                    )
        uniq = tuple(dict.fromkeys(targets))
        self.imports.append(
            ImportStmt(
                self.name,
                node.lineno,
                uniq,
                tuple(t for t in uniq if self._internal(t)),
                function,
                tc,
            )
        )

    def _attribute(self, node: ast.Attribute) -> None:
        chain, cur = [node.attr], node.value
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if not isinstance(cur, ast.Name) or cur.id not in self.aliases:
            return
        chain.reverse()  # attributes after the bound name, outermost last
        owner = self.aliases[cur.id]
        for middle in chain[:-1]:
            nxt = f"{owner}.{middle}"
            if self._internal(owner) or self._internal(nxt):
                if not self._internal(nxt):
                    return  # an attribute of a name of the module, not of the module
            elif not middle.islower() or _is_private(middle):
                return  # outside the package: a class or a private name in the chain
            owner = nxt
        if _is_private(chain[-1]) and (owner, chain[-1]) not in PUBLIC_UNDERSCORED:
            self.private.append(
                PrivateUse(
                    self.name, node.lineno, owner, chain[-1], "attribute", self._internal(owner)
                )
            )

    # ----------------------------------------------------------------- walking
    def visit(
        self, node: ast.AST, function: str | None = None, qual: str = "", tc: bool = False
    ) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = f"{qual}.{child.name}" if qual else child.name
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                self.functions.append(
                    Function(self.name, q, first, (child.end_lineno or first) - first + 1)
                )
                self.visit(child, q, q, tc)
            elif isinstance(child, ast.ClassDef):
                self.visit(child, function, f"{qual}.{child.name}" if qual else child.name, tc)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    self.visit(ast.Module(body=[stmt], type_ignores=[]), function, qual, True)
                for stmt in child.orelse:
                    self.visit(ast.Module(body=[stmt], type_ignores=[]), function, qual, tc)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                self._record_import(child, function, tc)
            else:
                self.visit(child, function, qual, tc)


def analyse(root: pathlib.Path | str = REPO) -> Analysis:
    """Parse every analysed module under ``root`` (see the module docstring).

    Raises:
        SyntaxError: a module does not parse.
    """
    root = pathlib.Path(root)
    paths = discover(root)
    an = Analysis(root, paths)
    names = set(paths)
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        an.trees[name] = tree
        v = _ModuleVisitor(name, path.name == "__init__.py" and name != PLUGIN_ROOT, names)
        v.visit(tree)
        # attribute uses after every import is known (a module-level alias may be
        # used in a function above its import statement)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                v._attribute(node)
        an.imports += v.imports
        an.private_uses += v.private
        an.functions += v.functions
    return an


def _sccs(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in g:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def _shortest_cycle(g: dict[str, dict[str, list[int]]], start: str, within: set[str]) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside ``within`` (breadth first),
    as the list of modules without the repeated ``start``."""
    prev: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        v = queue.popleft()
        for w in sorted(g[v]):
            if w not in within:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return path[::-1]
            if w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return [start]


def signature(an: Analysis, module: str, qualname: str) -> list[str]:
    """The named parameters of a function (``name=default`` / ``name``; ``*`` and
    ``/`` markers as written; ``*args``, ``**kwargs``), or the fields of a class
    body (a dataclass), from the source.

    Raises:
        KeyError: no such module or name.
    """
    node: ast.AST = an.trees[module]
    for part in qualname.split("."):
        found = [
            n
            for n in getattr(node, "body", [])
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and n.name == part
        ]
        if not found:
            raise KeyError(f"{module}: no {qualname}")
        node = found[0]
    if isinstance(node, ast.ClassDef):
        return [
            f"{n.target.id}={ast.unparse(n.value)}" if n.value else n.target.id
            for n in node.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
        ]
    a = node.args  # type: ignore[attr-defined]
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    out = []
    for i, (arg, d) in enumerate(zip(pos, defaults)):
        out.append(arg.arg if d is None else f"{arg.arg}={ast.unparse(d)}")
        if a.posonlyargs and i == len(a.posonlyargs) - 1:
            out.append("/")
    if a.vararg:
        out.append(f"*{a.vararg.arg}")
    elif a.kwonlyargs:
        out.append("*")
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append(arg.arg if d is None else f"{arg.arg}={ast.unparse(d)}")
    if a.kwarg:
        out.append(f"**{a.kwarg.arg}")
    return [p for p in out if p not in ("self", "cls")]


def _named(params: list[str]) -> list[str]:
    """The named parameters: not the ``*`` / ``/`` markers, ``*args`` or ``**kwargs``."""
    return [p for p in params if not p.startswith(("*", "/"))]


def report(an: Analysis, top: int = 10, list_lazy: bool = False) -> str:
    """The Markdown report (sections a-e) of one analysis."""
    lines = [f"# Structure report ({len(an.paths)} modules)", ""]

    lines += [
        "## (a) Parameters of the public entry points",
        "",
        "| entry point | named parameters | parameters |",
        "| --- | --- | --- |",
    ]
    for module, qual in ENTRY_POINTS:
        try:
            params = signature(an, module, qual)
        except KeyError:
            lines.append(f"| `{module}.{qual}` | - | (not found) |")
            continue
        lines.append(
            f"| `{module}.{qual}` | {len(_named(params))} | "
            f"{', '.join(params).replace('|', '&#124;')} |"
        )

    for internal, title in (
        (True, "(b) Uses of another module's private names"),
        (False, "(b') For information: private names of other libraries"),
    ):
        uses = sorted(
            (u for u in an.private_uses if u.internal == internal),
            key=lambda u: (u.module, u.line, u.name),
        )
        lines += [
            "",
            f"## {title}",
            "",
            f"{len(uses)} uses"
            + (f" of {len({(u.owner, u.name) for u in uses})} names" if uses else ""),
            "",
        ]
        if uses:
            lines += ["| module | line | owner | name | how |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {u.module} | {u.line} | {u.owner} | `{u.name}` | {u.how} |" for u in uses]

    fi, fi_int = an.function_imports(), an.function_imports(internal_only=True)
    lines += [
        "",
        "## (c) Imports inside functions",
        "",
        f"{len(fi)} import statements inside functions, {len(fi_int)} of them import "
        f"modules of this package (in {len({s.module for s in fi_int})} modules).",
        "",
    ]
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in fi:
        per[s.module][0] += 1
        per[s.module][1] += bool(s.internal)
    lines += ["| module | inside functions | of this package |", "| --- | --- | --- |"]
    lines += [
        f"| {m} | {a} | {b} |"
        for m, (a, b) in sorted(per.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
    ]
    if list_lazy:
        lines += ["", "| module | line | function | imports |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {s.module} | {s.line} | {s.function} | {', '.join(s.internal)} |"
            for s in sorted(fi_int, key=lambda s: (s.module, s.line))
        ]

    lines += [
        "",
        f"## (d) The {top} longest functions",
        "",
        "| lines | function | module | line |",
        "| --- | --- | --- | --- |",
    ]
    for f in sorted(an.functions, key=lambda f: (-f.n_lines, f.module, f.line))[:top]:
        lines.append(f"| {f.n_lines} | `{f.qualname}` | {f.module} | {f.line} |")

    lines += ["", "## (e) Import cycles among the package's modules"]
    for level, what in (
        ("module", "imports that run on import (module level)"),
        ("all", "all imports, function level included"),
    ):
        cyc = an.cycles(level)
        lines += ["", f"### {what}: {len(cyc)} cycle component(s)", ""]
        for comp in cyc:
            cycle = an.example_cycle(comp, level)
            lines.append(f"* {len(comp)} modules: {', '.join(comp)}")
            lines.append(f"  * e.g. {' -> '.join(cycle + cycle[:1])}")
            if level == "module" or len(comp) <= 4:
                for a, b, ln in an.component_edges(comp, level):
                    lines.append(f"  * {a} -> {b} (line {', '.join(map(str, ln))})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the report of the tree at ``--root`` (default: this checkout)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(REPO), help="repository root to analyse")
    p.add_argument("--top", type=int, default=10, help="how many longest functions")
    p.add_argument(
        "--list-lazy",
        action="store_true",
        help="list every function-level import of this package's modules",
    )
    args = p.parse_args(argv)
    print(report(analyse(args.root), args.top, args.list_lazy), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
