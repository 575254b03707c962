"""Policies never know the mechanism: no module under serving/scheduler imports the simulator, even lazily inside a
function (a capacity profiler that needs it is passed in)."""

import ast
from pathlib import Path

SERVING = Path(__file__).resolve().parents[2] / "serving"


def imported_modules(path: Path, root: Path = SERVING.parent) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (relative ones resolved from the
    file's package under `root`)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from serving import sim` imports serving.sim
    return out


def test_scan_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "serving" / "scheduler"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("def f():\n    from ..sim.simulator import simulate\n    import serving.sim\nfrom serving import sim\n")
    assert {"serving.sim.simulator", "serving.sim"} <= imported_modules(f, tmp_path)


def test_scheduler_never_imports_the_simulator():
    files = sorted((SERVING / "scheduler").rglob("*.py"))
    assert files
    bad = {str(f.relative_to(SERVING.parent)): sorted(m for m in imported_modules(f)
                                                      if m == "serving.sim" or m.startswith("serving.sim."))
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}
