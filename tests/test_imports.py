"""The import graph of vidhash has no cycle, kernels/ imports nothing that dispatches, the
references import without triton, and pyproject.toml packages every package and config file.

The graph is read from the source with ``ast`` (nothing is imported): every module under
vidhash/ and the folders installed inside it — kernels/ as vidhash.kernels, pipelines/ as
vidhash.pipelines, configs/ as vidhash.configs (pyproject.toml, "Layout") — with its imports at
the top and inside functions.
"""
from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder of the repository -> package name it is imported as
FOLDERS = {"vidhash": "vidhash", "kernels": "vidhash.kernels", "pipelines": "vidhash.pipelines", "configs": "vidhash.configs"}
KERNELS = "vidhash.kernels"

# Edges allowed to close a cycle (none: the cli package removed the last ones). A new entry needs a
# reason beside it; the test fails when an entry goes stale.
KNOWN_CLI_CYCLE_EDGES: set[tuple[str, str]] = set()


# --------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------
def module_files() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every .py file of the four folders."""
    mods = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            is_pkg = rel[-1] == "__init__"
            name = ".".join((package, *(rel[:-1] if is_pkg else rel)))
            mods[name] = (path, is_pkg)
    return mods


def _resolve_from(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    """The absolute module of ``from X import ...`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, mods) -> str | None:
    """``name`` or its longest prefix that is a module of the graph (``vidhash.x.y.f`` → ``vidhash.x.y``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
            return ".".join(parts[:i])
    return None


def imports_of(module: str, path: Path, is_pkg: bool, mods) -> tuple[set[str], set[str]]:
    """(modules of the graph that ``module`` imports, top-level names of the other imports).

    ``from X import name`` counts as ``X.name`` when that is a module, else as ``X``. A module that
    calls ``importlib.import_module`` also imports every module its string constants name (the
    CLI's lazy command table)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_pkg)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in mods else base)
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            dynamic = True
    if dynamic:
        found.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in mods)
    internal = {_known(name, mods) for name in found if name == "vidhash" or name.startswith("vidhash.")}
    external = {name.split(".")[0] for name in found if not (name == "vidhash" or name.startswith("vidhash."))}
    return {m for m in internal if m is not None} - {module}, external


def build_graph():
    """``edges[m]``: modules ``m`` imports, without edges to its own ancestor packages.

    Why those are left out: the import system runs every ancestor package's ``__init__`` before
    the module itself, so such an edge adds nothing to the import order; and a package
    ``__init__`` that re-exports its submodules (vidhash/__init__.py → vidhash.attention) would
    otherwise close a cycle with every submodule that uses a name its package defines
    (vidhash/bench/data.py: ``from . import cpu_name``)."""
    mods = module_files()
    edges, external = {}, {}
    for name, (path, is_pkg) in mods.items():
        found, external[name] = imports_of(name, path, is_pkg, mods)
        edges[name] = {m for m in found if not name.startswith(m + ".")}
    return edges, external


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(edges):
        if start in state:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path, state[start] = [start], 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
    return None


def reach(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for m in edges.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


@pytest.fixture(scope="module")
def graph():
    return build_graph()


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------
def test_graph_sees_the_folders_and_function_level_imports(graph):
    edges, _ = graph
    assert {"vidhash.kernels.memory.ops", "vidhash.pipelines.state", "vidhash.configs", "vidhash.ops.checks"} <= set(edges)
    assert "vidhash.kernels.ops" in edges["vidhash.ops.backend"]  # imported inside triton_ops()


def test_find_cycle_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle(graph):
    edges, _ = graph
    stale = {e for e in KNOWN_CLI_CYCLE_EDGES if e[1] not in edges.get(e[0], ())}
    assert not stale, f"allow-listed edges no longer exist, remove them from KNOWN_CLI_CYCLE_EDGES: {sorted(stale)}"
    pruned = {m: {t for t in targets if (m, t) not in KNOWN_CLI_CYCLE_EDGES} for m, targets in edges.items()}
    cycle = find_cycle(pruned)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_kernels_import_nothing_that_imports_the_kernels(graph):
    """A module under kernels/ may import its own folder, other kernel folders, and modules that
    never lead back into vidhash.kernels (vidhash.ops.checks, vidhash.hashing) — nothing that
    dispatches."""
    edges, _ = graph
    bad = []
    for mod in sorted(m for m in edges if m == KERNELS or m.startswith(KERNELS + ".")):
        for dep in sorted(edges[mod]):
            if dep.startswith(KERNELS):
                continue
            back = sorted(m for m in reach(edges, dep) if m == KERNELS or m.startswith(KERNELS + "."))
            if back:
                bad.append(f"{mod} imports {dep}, which imports {back[0]}")
    assert not bad, "\n".join(bad)


def test_references_and_package_inits_import_without_triton(graph):
    """The kernel folders' __init__.py and every naive.py: no triton, directly or not."""
    edges, external = graph
    light = sorted(m for m, (_, is_pkg) in module_files().items() if m.startswith(KERNELS) and (is_pkg or m.endswith(".naive")))
    assert len(light) >= 9  # five folders, five references
    for mod in light:
        using = sorted(m for m in {mod} | reach(edges, mod) if "triton" in external[m])
        assert not using, f"{mod} reaches triton through {using}"


def test_vidhash_runs_without_triton():
    """``import vidhash`` and the reference paths work where triton cannot be imported; asking
    for the kernels is then a ValueError naming the backend."""
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # import triton -> ImportError
        import torch, vidhash
        from vidhash.kernels.block_select import naive
        q = torch.randn(1, 2, 40, 16)
        out = vidhash.hash_attention(q, q, q, density=0.5, block_size=8)
        mem = vidhash.HashedMemory(num_buckets=4, slots=2, heads=2, head_dim=16)
        mem.write(q, q, 0)
        mem.attend(q, top_k=3)
        try:
            vidhash.hash_attention(q, q, q, backend="triton")
        except ValueError as err:
            assert "backend='triton' is unavailable" in str(err), err
        else:
            raise AssertionError("no ValueError")
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_a_foreign_kernels_package_is_not_shadowed(tmp_path):
    """Another top-level package named ``kernels`` (Hugging Face's, which transformers and peft
    import) is found as itself from the repository root, where the root is on ``sys.path``; our
    ``kernels/`` is still ``vidhash.kernels`` (it has no ``__init__.py``: kernels/README.md)."""
    assert not (ROOT / "kernels" / "__init__.py").exists()
    foreign = tmp_path / "site" / "kernels"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("FOREIGN = True\n")
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, "")  # the repository root first, as `python -m` and pytest put it
        import vidhash.kernels.ops as ops, vidhash.kernels.memory.naive
        import kernels
        assert getattr(kernels, "FOREIGN", False), kernels
        assert ops.__file__.startswith(sys.argv[1]), ops.__file__
        print("ok")
    """)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    res = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_pyproject_packages_every_package_and_config():
    tomllib = pytest.importorskip("tomllib")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    on_disk = {name for name, (_, is_pkg) in module_files().items() if is_pkg} | {KERNELS}  # a namespace package
    listed = set(tool["packages"])
    assert on_disk == listed, f"packages on disk but not in pyproject.toml: {sorted(on_disk - listed)}; listed but absent: {sorted(listed - on_disk)}"
    patterns = tool["package-data"]["vidhash.configs"]
    configs = [p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".json")]
    assert configs and all(any(fnmatch.fnmatch(c, pat) and c.count("/") == pat.count("/") for pat in patterns) for c in configs), configs


def test_no_folder_linked_into_vidhash():
    """kernels/, pipelines/, configs/ reach vidhash through pyproject.toml and vidhash/__init__.py,
    never through a copy or link inside vidhash/."""
    assert not [f for f in FOLDERS if f != "vidhash" and (ROOT / "vidhash" / f).exists()]
