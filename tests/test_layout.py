"""The tree keeps its shape: no import cycle among nba's and bandit's modules, bandit imports
nothing of nba, the leaf modules stay leaves, and nothing on the Decide or Feedback path
imports inside a function (a first call would pay for the import, and an import hidden in a
function is how a cycle hides).

The imports are read from the source (``ast``), so an import inside a function counts as
much as one at the top. Imports for type annotations only (under ``if TYPE_CHECKING:``) run
nothing and are not counted."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT

from nba.errors import NbaError

PACKAGES = ("nba", "bandit")
#: generated code and Alembic's revision scripts, which import nothing of ours that matters
SKIPPED = ("nba/v1/", "nba/storage/migrations/versions/")
#: modules on the path of a Decide or a Feedback call (with bandit, all of it)
REQUEST_PATH = (
    "nba.service.servicers",
    "nba.service.auth",
    "nba.service.http.app",
    "nba.service.http.routes",
    "nba.service.http.schema",
    "nba.decision.decider",
    "nba.decision.screening",
    "nba.decision.arbitration",
    "nba.decision.contacts",
    "nba.decision.reservations",
    "nba.service.context",
    "nba.service.wire",
    "nba.policy.rules",
    "nba.policy.schema",
    "nba.policy.policy_set",
    "nba.policy.predicates",
    "nba.policy.loading",
    "nba.learning.loop",
    "nba.learning.feedback",
    "nba.storage.store",
    "nba.storage.tables",
    "nba.storage.bus",
    "nba.storage.decision_log",
    "nba.storage.recent",
    "nba.storage.replication",
    "nba.storage.engine",
    "nba.storage.feedback",
    "nba.storage.decisions",
    "nba.storage.contacts",
    "nba.service.maintenance",
    "nba.records",
    "nba.inputs",
    "nba.ids",
    "nba.days",
    "nba.clock",
    "nba.metrics",
    "nba.errors",
)
#: the kernel: modules at nba's top that every package may import
KERNEL = (
    "nba",
    "nba.errors",
    "nba.clock",
    "nba.ids",
    "nba.inputs",
    "nba.days",
    "nba.metrics",
    "nba.config",
    "nba.yaml_loader",
    "nba.records",
)
#: what each part may import besides itself, the kernel and bandit (the README's Layout, and each
#: package's docstring, say the same): the shell on top, the domain below it, storage beside it
MAY_IMPORT = {
    "kernel": set(),
    "nba.policy": set(),
    "nba.learning": set(),
    "nba.decision": {"nba.policy", "nba.learning"},
    "nba.storage": set(),
    "nba.profiles": {"nba.policy"},
    "nba.governance": {"nba.policy", "nba.profiles"},
    "nba.evaluation": {"nba.policy", "nba.learning", "nba.decision", "nba.profiles"},
    "nba.service": {
        "nba.policy",
        "nba.learning",
        "nba.decision",
        "nba.storage",
        "nba.evaluation",
        "nba.profiles",
        "nba.governance",
        "nba.v1",
    },
    "nba.simulation": {"nba.evaluation"},
    "nba.cli": {
        "nba.policy",
        "nba.learning",
        "nba.decision",
        "nba.storage",
        "nba.evaluation",
        "nba.service",
        "nba.simulation",
        "nba.profiles",
        "nba.governance",
    },
}
#: the parts that speak gRPC (the service shell, and the simulator and the CLI as its clients)
GRPC_PARTS = ("nba.service", "nba.simulation", "nba.cli")
#: modules that import nothing of nba
LEAVES = ("nba.decision.arbitration", "nba.storage.tables", "nba.errors", "nba.clock", "nba.ids")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not any(path.relative_to(ROOT).as_posix().startswith(skip) for skip in SKIPPED):
                out[module_name(path)] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(module imported, whether inside a function) for every import of ``name`` that names one
    of ``known`` (``from a import b`` counts ``a.b`` when that is a module, else ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, inside) for alias in child.names if alias.name in known)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    if target in known:
                        found.append((target, inside))
                    elif base in known:
                        found.append((base, inside))
            visit(child, inside)

    visit(tree, False)
    return [(target, inside) for target, inside in found if target != name]


def graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """Each module's imports of our modules, and per module the ones made inside a function."""
    found = modules()
    known = set(found)
    edges: dict[str, set[str]] = {}
    nested: dict[str, list[str]] = {}
    for name, path in found.items():
        pairs = imports(name, path, known)
        edges[name] = {target for target, _ in pairs}
        nested[name] = sorted({target for target, inside in pairs if inside})
    return edges, nested


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    edges, _ = graph()
    assert len(edges) > 40  # the walk found the tree
    assert cycles(edges) == []


def test_bandit_imports_nothing_of_nba_and_the_leaves_nothing_of_ours() -> None:
    edges, _ = graph()
    assert {
        name: sorted(t for t in targets if t.startswith("nba"))
        for name, targets in edges.items()
        if name.startswith("bandit") and any(t.startswith("nba") for t in targets)
    } == {}
    assert {leaf: sorted(edges[leaf]) for leaf in LEAVES if edges[leaf]} == {}


def test_nothing_on_the_decide_or_feedback_path_imports_inside_a_function() -> None:
    _, nested = graph()
    on_path = [name for name in nested if name in REQUEST_PATH or name.startswith("bandit")]
    assert set(REQUEST_PATH) <= set(nested)  # every module named still exists
    assert {name: nested[name] for name in on_path if nested[name]} == {}


def part(module: str) -> str:
    """The part a module belongs to: its package under nba, or "kernel" for nba's top modules."""
    if module in KERNEL or module.startswith("bandit"):
        return "kernel"
    if module == "nba.__main__":
        return "nba.cli"
    return ".".join(module.split(".")[:2])


def test_every_module_belongs_to_a_known_part() -> None:
    edges, _ = graph()
    assert sorted({part(name) for name in edges if name.startswith("nba")} - set(MAY_IMPORT)) == []


def test_the_parts_import_one_way() -> None:
    """Domain packages import no storage, gRPC or service; storage no decision or learning logic."""
    edges, _ = graph()
    wrong = {}
    for name, targets in edges.items():
        if name.startswith("bandit"):
            continue
        mine = part(name)
        allowed = MAY_IMPORT[mine] | {mine, "kernel"}
        bad = sorted(t for t in targets if part(t) not in allowed)
        if bad:
            wrong[name] = bad
    assert wrong == {}


def test_the_layer_check_catches_a_wrong_import() -> None:
    assert part("nba.storage.store") == "nba.storage" and part("nba.errors") == "kernel"
    assert "nba.decision" not in MAY_IMPORT["nba.storage"] | {"nba.storage", "kernel"}


def test_only_the_shell_and_its_clients_speak_grpc() -> None:
    """The domain, storage and kernel import neither grpc, nor protobuf, nor the generated
    ``nba.v1``: the same domain code serves every surface."""
    speaking = {}
    for name, path in modules().items():
        if name.startswith("bandit") or part(name) in GRPC_PARTS:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
        wire = sorted(
            m
            for m in found
            if m.split(".")[0] in ("grpc", "grpc_status") or m.startswith(("google.protobuf", "google.rpc", "nba.v1"))
        )
        if wire:
            speaking[name] = wire
    assert len(modules()) > 40
    assert speaking == {}


def test_the_tests_mirror_the_parts() -> None:
    """A folder of tests per part (unit tests beside the end-to-end ones of that part), and
    every folder on pytest's path (pyproject.toml), so a file runs alone as in the suite."""
    folders = sorted(p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    parts = {name.split(".")[1] for name in MAY_IMPORT if name.startswith("nba.")} | {"bandit", "loadtests"}
    assert folders and set(folders) <= parts, f"test folders that are no part: {set(folders) - parts}"
    assert sorted(p.name for p in (ROOT / "tests").glob("test_*.py")) == ["test_layout.py"]  # the tree-wide one
    paths = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["pythonpath"]
    assert sorted(paths) == sorted(["tests", *(f"tests/{f}" for f in folders)])


#: exceptions that stay outside nba.errors' tree: the command line's own (it turns every error
#: into one line and an exit code), the supervisor's port clash (an OSError), a YAML parser
#: detail (turned into a Problem), and private markers caught where they are raised
OUTSIDE_THE_TREE = {
    "nba.cli.common.CliError",
    "nba.service.supervisor.PortInUse",
    "nba.service.http.server.HttpPortUnavailable",
    "nba.yaml_loader.DuplicateKeyError",
    "nba.evaluation.logs._Refused",
}


def test_every_error_of_the_parts_is_in_the_one_tree() -> None:
    """A part's error that reaches a caller has a status: it is an ``NbaError``."""
    found = {}
    for name in modules():
        if not name.startswith("nba") or name in ("nba.__main__", "nba.storage.migrations.env"):  # scripts, not modules
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name:
                found[f"{name}.{value.__qualname__}"] = issubclass(value, NbaError)
    assert len(found) > 15  # the walk found them
    assert sorted(k for k, inside in found.items() if not inside and k not in OUTSIDE_THE_TREE) == []
    assert all(k in found for k in OUTSIDE_THE_TREE)  # the exceptions still exist


def test_the_service_and_the_command_line_import_neither_numba_nor_river() -> None:
    """Each costs most of a second of CPU to import, which every ``nba`` command and every
    server process would pay: numba's kernels load when first needed (a service loads them
    beside its start-up), river where a profile defines a score, scipy.optimize when a reward
    model is fitted. Run in a fresh interpreter: this one has imported them for other tests."""
    code = (
        "import sys, nba.service.server, nba.cli.main, nba.profiles.scores, nba.evaluation\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'river') "
        "or m in ('scipy.stats', 'scipy.optimize')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    assert done.stdout.split() == ["[]"]
