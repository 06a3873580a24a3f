"""The layout's rules, read from the source with `ast` (every import, those inside functions included): no import
cycle between modules, the core library never importing the layers above it, no module over 400 lines, and a
docstring on every package of captioning/ and tuning/."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("captioning", "tuning", "reports", "benchmarks")
UPPER = ("tuning", "reports", "benchmarks", "app")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")] + [ROOT / "app.py"]
    out = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. A package's own __init__ importing its submodules is not an edge
    (it is how a package exposes its parts); a submodule importing its package's __init__ is."""
    modules = _modules()
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = _resolve(target, modules)
                if found and found != name and not (path.name == "__init__.py" and found.startswith(name + ".")):
                    edges[name].add(found)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (break each by moving the shared piece below both): " + "; ".join(
        " <-> ".join(group) for group in cycles)


def test_the_core_imports_no_upper_layer():
    upward = sorted((a, b) for a, targets in import_graph().items() for b in targets
                    if a.split(".")[0] == "captioning" and b.split(".")[0] in UPPER)
    assert not upward, "captioning/ must not import tuning/, reports/, app.py or benchmarks/: " + ", ".join(
        f"{a} -> {b}" for a, b in upward)


def test_no_module_is_over_400_lines():
    long = sorted((str(path.relative_to(ROOT)), n) for package in ("captioning", "tuning", "reports")
                  for path in (ROOT / package).rglob("*.py")
                  if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert not long, f"modules over {MAX_LINES} lines (split them by job): " + ", ".join(f"{p} ({n})" for p, n in long)


def test_every_package_says_what_it_is():
    missing = [str(init.relative_to(ROOT)) for package in ("captioning", "tuning")
               for init in sorted((ROOT / package).rglob("__init__.py"))
               if not ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))]
    assert not missing, "packages without a docstring (say what the package is): " + ", ".join(missing)


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks themselves: a two-module cycle is found, and a lone module is not one."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": set(), "b": {"a"}}) == []
    graph = import_graph()
    assert "captioning.training.run" in graph["captioning.cli"]  # imported inside functions only: counted too
