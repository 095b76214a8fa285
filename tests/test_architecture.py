"""The architecture rules of ``diag`` (issue 11), checked on the source with :mod:`ast` alone.

- no import cycles between diag's modules (module-level imports; ``if TYPE_CHECKING:`` ones excluded);
- function-level imports only for optional or heavy packages (never diag itself: that hides a cycle);
- statistics and rules import no engine, models, trainer or pipeline;
- no private name (leading underscore) of one diag module imported or reached into from another, and no
  private attribute of another object;
- no ``isinstance``/``issubclass`` check on a backbone family class outside ``diag/models/``;
- no module over ~600 lines, except the single-concept statistics modules;
- no docstring or comment naming a diag module (or file) that does not exist;
- (repeated blocks are checked with the ``duplicates`` tool, outside the tests);
- every subpackage re-exports its public API through an explicit ``__all__``, and a name another package
  imports is in its module's ``__all__``.

Nothing is imported: a name such as ``diag.pipeline.diagnose`` is resolved against the source tree
(a module, or a name bound at the top level of one), which is what :func:`importlib.util.find_spec`
would answer for diag's own modules without importing torch on the way (seconds on a loaded machine).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diag"

#: Modules that may be long because they are one concept (a family of shift tests, of transfer scores).
LONG_SINGLE_CONCEPT = {"diag.stats.shift", "diag.stats.transfer"}
MAX_LINES = 600

#: The dependencies a function may import on first use, and why: optional extras, or imports that cost
#: seconds and serve one path. Everything else (diag itself included) is imported at the top.
DEFERRED_OK = {
    "streamlit": "optional (the dashboard extra)",
    "plotly": "optional (the dashboard extra)",
    "umap": "optional (the dashboard extra)",
    "timm": "heavy: imports torchvision and registers its models; only image backbones need it",
    "transformers": "heavy (seconds); only text backbones and the CLI's log settings need it",
    "sklearn": "heavy; only the linear probe and its cross-validation folds need it",
    "pandas": "heavy; only CSV/Parquet text tables need it",
    "datasets": "optional (the hf extra), and seconds to import",
    "ray": "optional (the ray extra: --engine ray), and seconds to import",
}
#: Light function-level imports waiting to move to the top of their module (none now; keep it empty).
PENDING: set[tuple[str, str]] = set()


@dataclass
class Module:
    """One parsed module of diag."""

    name: str
    path: Path
    tree: ast.Module
    source: str
    top_imports: set[str] = field(default_factory=set)  # diag modules imported at module level
    bound: set[str] = field(default_factory=set)  # names bound at the top level

    @property
    def package(self) -> str:
        """The subpackage (``diag.stats``) or, for a top-level module, the module itself."""
        parts = self.name.split(".")
        return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run on import: the body, through ``if``/``try``/``with``, minus ``if TYPE_CHECKING:``."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def _absolute(node: ast.ImportFrom, module: Module) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if module.path.name != "__init__.py":
        base.pop()
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.Import | ast.ImportFrom, module: Module, names: set[str]) -> set[str]:
    """The diag modules an import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        found = {a.name for a in node.names if a.name.split(".")[0] == "diag"}
    else:
        source = _absolute(node, module)
        if source.split(".")[0] != "diag":
            return set()
        submodules = {f"{source}.{a.name}" for a in node.names} & names
        found |= submodules
        # `from pkg import mod` needs pkg only as mod's parent; any other name needs pkg's body.
        if len(submodules) < len(node.names):
            found.add(source)
    return {t for t in found if t in names}


@cache
def modules() -> dict[str, Module]:
    """Every module of diag, parsed, with its module-level diag imports and top-level names."""
    found: dict[str, Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = _module_name(path)
        found[name] = Module(name, path, ast.parse(source, filename=str(path)), source)
    for module in found.values():
        for node in _module_level(module.tree.body):
            if isinstance(node, ast.Import | ast.ImportFrom):
                module.top_imports |= _targets(node, module, set(found))
                module.bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                module.bound.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    module.bound |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = {name: module.top_imports for name, module in modules().items()}
    assert _cycles(graph) == []


#: What statistics and rules may not import at run time (STYLE.md: they are pure functions over arrays
#: and never import the engine, the trainer or the pipeline; nothing below the CLI imports the CLI).
FORBIDDEN = {
    "diag.stats": ("diag.engine", "diag.models", "diag.train", "diag.pipeline", "diag.predict", "diag.cli"),
    "diag.predict": ("diag.engine", "diag.models", "diag.train", "diag.pipeline", "diag.cli"),
}
#: The one known exception: the shift profile reads :class:`~diag.engine.Embeddings` (manifest, probes,
#: labels) rather than arrays; feeding it arrays from the pipeline is a change of its signature.
LAYER_EXCEPTIONS = {("diag.predict.profile", "diag.engine.embeddings")}


def test_statistics_and_rules_import_no_engine_trainer_or_pipeline() -> None:
    found = [
        f"{name} imports {target}"
        for name, module in modules().items()
        for target in sorted(module.top_imports)
        if target.startswith(FORBIDDEN.get(module.package, ("-",))) and (name, target) not in LAYER_EXCEPTIONS
    ]
    assert found == []


def _function_imports(module: Module) -> Iterator[tuple[int, str]]:
    for func in ast.walk(module.tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                yield from ((node.lineno, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield node.lineno, _absolute(node, module)


def test_function_level_imports_only_defer_heavy_dependencies() -> None:
    # A function-level import of diag itself papers over a cycle; one of a light dependency hides it.
    bad = [
        f"{module.name}:{line} imports {target}"
        for module in modules().values()
        for line, target in _function_imports(module)
        if target.split(".")[0] not in DEFERRED_OK and (module.name, target.split(".")[0]) not in PENDING
    ]
    assert bad == []


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(module: Module, names: dict[str, Module]) -> Iterator[str]:
    """Private names of other diag modules this module imports or reaches into."""
    imported: dict[str, str] = {}  # local name -> the diag module it comes from (or is)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, module)
            if source not in names or source == module.name:
                continue
            if any(_private(part) for part in source.split(".")):
                yield f"{module.name}:{node.lineno} imports the private module {source}"
            for alias in node.names:
                if _private(alias.name):
                    yield f"{module.name}:{node.lineno} imports {source}.{alias.name}"
                imported[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in names and alias.asname:
                    imported[alias.asname] = alias.name
    for node in ast.walk(module.tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
            and _private(node.attr)
        ):
            yield f"{module.name}:{node.lineno} uses {imported[node.value.id]}.{node.attr}"


def test_no_private_name_crosses_modules() -> None:
    names = modules()
    assert [use for module in names.values() for use in _private_uses(module, names)] == []


def _private_attributes(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """``obj._name`` on anything but ``self``, ``cls``, ``other`` (the same class's instance) or a
    third-party module (``argparse._ArgumentGroup`` is argparse's business, not diag's)."""
    outside = {
        (a.asname or a.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if a.name.split(".")[0] != "diag"
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls", "other"} | outside:
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            yield node.lineno, ast.unparse(node)


def test_no_private_attribute_of_another_object() -> None:
    # A backbone's private layout or a trainer's private method read from outside (issue 11 found
    # `backbone._stages` and `Trainer._features_of` used that way) is a public method missing.
    found = [
        f"{module.name}:{line} {expr}"
        for module in modules().values()
        for line, expr in _private_attributes(module.tree)
    ]
    assert found == []


def _all(module: Module) -> set[str] | None:
    for node in module.tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return None


def test_names_used_across_packages_are_public() -> None:
    # A name another package imports is part of its module's public API: listed in that module's __all__.
    names = modules()
    missing = []
    for module in names.values():
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _absolute(node, module)
            if source not in names or names[source].package == module.package:
                continue
            public = _all(names[source]) or set()
            missing += [
                f"{module.name}:{node.lineno} imports {source}.{alias.name}"
                for alias in node.names
                if alias.name not in public and f"{source}.{alias.name}" not in names
            ]
    assert missing == []


@cache
def backbone_families() -> set[str]:
    """The classes of diag/models/ that derive, directly or not, from ``Backbone``."""
    bases: dict[str, set[str]] = {}
    for name, module in modules().items():
        if name.startswith("diag.models"):
            for node in ast.walk(module.tree):
                if isinstance(node, ast.ClassDef):
                    bases[node.name] = {ast.unparse(b).split(".")[-1] for b in node.bases}
    families: set[str] = set()
    grew = True
    while grew:
        new = {c for c, b in bases.items() if b & (families | {"Backbone"})} - families
        families |= new
        grew = bool(new)
    return families


def _family_checks(tree: ast.AST, families: set[str]) -> Iterator[int]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"isinstance", "issubclass"}
            and len(node.args) == 2
        ):
            named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if named & families:
                yield node.lineno


def test_backbone_families_are_told_apart_only_in_models() -> None:
    families = backbone_families()
    assert {"TimmBackbone", "HFTextBackbone"} <= families
    found = [
        f"{module.name}:{line}"
        for module in modules().values()
        if not module.name.startswith("diag.models")
        for line in _family_checks(module.tree, families)
    ]
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"benchmarks/{path.name}:{line}" for line in _family_checks(tree, families)]
    assert found == []


def test_modules_are_short_unless_one_concept() -> None:
    long = {
        name: module.source.count("\n")
        for name, module in modules().items()
        if module.source.count("\n") > MAX_LINES and name not in LONG_SINGLE_CONCEPT
    }
    assert long == {}


def _prose(module: Module) -> Iterator[tuple[int, str]]:
    """The docstrings and comments of a module, with their first line."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc and node.body:
                yield node.body[0].lineno, doc
    for token in tokenize.generate_tokens(io.StringIO(module.source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


DOTTED = re.compile(r"(?<![\w./])diag(?:\.[A-Za-z_]\w*)+")
FILE = re.compile(r"(?<![\w./])diag(?:/\w+)+\.py\b")


def _resolves(dotted: str, names: dict[str, Module]) -> bool:
    """A module, a name bound at the top level of one, or a class attribute (``diag.models.Backbone.to``).

    The module is the longest prefix that is one; after it, one name, or a capitalised one (a class) and
    one more, so that ``diag.train.finetune.Trainer`` (the old module) does not pass for the function.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in names:
            rest = parts[cut:]
            if not rest:
                return True
            return rest[0] in names[prefix].bound and (
                len(rest) == 1 or (len(rest) == 2 and rest[0][0].isupper())
            )
    return False


def test_docstrings_and_comments_name_existing_modules() -> None:
    names = modules()
    stale = []
    for module in names.values():
        for line, text in _prose(module):
            for match in DOTTED.finditer(text):
                if not _resolves(match.group().rstrip("."), names):
                    stale.append(f"{module.name}:{line} {match.group()}")
            stale += [f"{module.name}:{line} {m}" for m in FILE.findall(text) if not (ROOT / m).is_file()]
    assert stale == []


def test_subpackages_export_an_explicit_all() -> None:
    problems = []
    for name, module in modules().items():
        if module.path.name != "__init__.py":
            continue
        exported = _all(module)
        if exported is None:
            problems.append(f"{name} has no __all__")
            continue
        problems += [f"{name}.__all__ names {n}, not bound there" for n in exported if n not in module.bound]
    assert problems == []


def test_the_rules_catch_what_they_are_meant_to() -> None:
    # The checks themselves can fail: a cycle, a private name and a family check are found.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    fake = Module("diag.x.y", PACKAGE / "x" / "y.py", ast.parse("from diag.stats.shift import _z\n"), "")
    names = {"diag.stats.shift": fake, "diag.x.y": fake}
    assert list(_private_uses(fake, names)) == ["diag.x.y:1 imports diag.stats.shift._z"]
    assert list(_family_checks(ast.parse("isinstance(b, (TimmBackbone, int))"), {"TimmBackbone"})) == [1]
    assert [e for _, e in _private_attributes(ast.parse("self._a; bb._stages; super()._b"))] == ["bb._stages"]
    assert not _resolves("diag.no_such_module", modules())
    assert _resolves("diag.pipeline.diagnose", modules())
    assert _resolves("diag.models.Backbone.to", modules())
    assert not _resolves("diag.train.finetune.Trainer", modules())
