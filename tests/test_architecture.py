"""Import rules of the warmer package, read from its source with `ast` (docs/architecture.md).

Every `import` counts, at the top of a module or inside a function (a lazy import is still a
dependency) or under TYPE_CHECKING. A module belongs to a unit: its file under warmer/
(`warmer/restoring.py` -> restoring) or its package (`warmer/store/cas.py` -> store).

1. The agent runs inside the user's image under whatever Python it has: warmer/agent/ imports
   the standard library, warmer.agent and warmer.caches at module level (and caches imports
   only the standard library), and inside functions only the engines it drives (torch,
   Triton, vLLM), which the image brings.
2. A unit imports only units before it in `ORDER`. The order is the one the imports really
   follow, which is not quite the data flow (spec -> runtime -> agent -> harvest -> store ->
   bundle -> restoring): the store is below harvest and bundle, which write into it and read
   from it; the agent is below envkey, which probes through it; sources (bundle file,
   registry reference, store ref, cold tier) is above registry, whose pulls it uses, and
   below restoring, which resolves what it installs through it. The helpers errors, units,
   config and sqlite may be imported by anyone; cli and the package's public API
   (warmer/__init__.py, lazily) may import anything, and anyone may import the bare package
   (`import warmer`, for its location: every `import warmer.x` runs it anyway).
3. `import warmer` imports nothing third-party.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO
from helpers.interpreter import python

PACKAGE = REPO / "warmer"
ORDER = (
    "errors",
    "units",
    "config",
    "sqlite",
    "files",
    "progress",
    "caches",
    "spec",
    "agent",
    "envkey",
    "runtimes",
    "store",
    "harvest",
    "bundle",
    "signing",
    "provenance",
    "oci",
    "registry",
    "sources",
    "checking",
    "restoring",
    "saving",
    "loading",
    "runner",
    "placement",
    "fanout",
    "cluster",
    "capture",
    "k8s",
    "kernels",
    "tracking",
    "cli",
)
HELPERS = {"errors", "units", "config", "sqlite", "files", "progress"}
#: Units that may import any other (the command line, and the lazy public API).
TOP = {"cli", "__init__"}
#: What the agent's engines import inside their functions, from the user's image.
ENGINE_PACKAGES = {"torch", "triton", "vllm"}
#: Known violations, each with the reason it stays: (importing module, imported module).
ALLOWED: set[tuple[str, str]] = set()
THIRD_PARTY = ("pydantic", "yaml", "docker", "blake3", "zstandard", "requests", "rich", "click")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """warmer.store.cas -> store; warmer -> __init__; a new warmer/kernels_x.py -> kernels."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    name = parts[1]
    return name if name in ORDER else name.split("_")[0]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, at module level?) of every import in `path`."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(inner) for inner in ast.walk(node) if inner is not node)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [".".join([*base, node.module] if node.module else base)]
            elif node.module and node.module != "__future__":
                names = [node.module]
        found.extend((name, id(node) not in nested) for name in names)
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_place_in_the_order() -> None:
    units = {_unit(_module_name(path)) for path in _modules()}
    assert units - set(ORDER) - TOP == set(), "place each new module in ORDER"


def test_the_agent_needs_only_the_standard_library() -> None:
    stdlib = sys.stdlib_module_names
    problems = []
    for path in _modules():
        module = _module_name(path)
        if _unit(module) not in {"agent", "caches"}:
            continue
        for name, top_level in _imports(path):
            root = name.split(".")[0]
            if root == "warmer":
                ok = _unit(name) in {"agent", "caches"} and (
                    _unit(module) == "agent" or _unit(name) == "caches"
                )
            else:
                ok = root in stdlib or (
                    not top_level and _unit(module) == "agent" and root in ENGINE_PACKAGES
                )
            if not ok:
                problems.append(f"{module} imports {name}")
    assert problems == []


def test_no_unit_imports_one_later_in_the_order() -> None:
    problems = []
    for path in _modules():
        module = _module_name(path)
        unit = _unit(module)
        if unit in TOP:
            continue
        for name, _top_level in _imports(path):
            if name.split(".")[0] != "warmer" or name == "warmer":
                continue
            target = _unit(name)
            if target == unit or target in HELPERS or (module, name) in ALLOWED:
                continue
            if target in TOP or ORDER.index(target) > ORDER.index(unit):
                problems.append(f"{module} ({unit}) imports {name} ({target})")
    assert problems == []


def test_sources_reach_no_command_line_package() -> None:
    imported = {name.split(".")[0] for name, _ in _imports(PACKAGE / "sources.py")}
    assert imported & {"click", "rich"} == set()


def test_importing_warmer_imports_nothing_third_party() -> None:
    code = (
        "import warmer, sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(THIRD_PARTY)!r}))"
    )
    assert python(code).strip() == "[]"
