"""The package's layers (docs/architecture.md): a module imports only from its own layer or below, at
module level, with no cycle, and no stage imports another stage.

Read from the source with `ast` (every `from .x import` / `from kormedqa.x import`), so a new module
or an upward import fails here with the file and line, and once more at run time: a fresh
interpreter imports the modules bottom-up and checks that none pulls in a module of a higher layer.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "kormedqa"

# Bottom up. A module may import modules of its own layer or a lower one.
LAYERS = {
    0: ("errors", "text", "records", "chat", "hardware", "numerics"),      # leaves
    1: ("fsio", "provenance", "launch", "checks", "config", "validate", "hub", "data"),  # I/O, configs
    2: ("default_model", "modeling"),                                       # model
    3: ("formats", "augment", "leakage", "extract", "metrics", "batching"),  # pure logic
    4: ("trainer", "stage", "scorers", "scorer_table", "lm_eval_protocol", "vllm_backend", "endpoint", "rationales"),  # work
    5: ("prepare", "sft", "grpo", "cpt", "evaluate"),                       # stages
    6: ("report", "loop_config", "loop", "demo"),                           # orchestrators
    7: ("cli", "__main__", "__init__"),                                     # entry
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}
STAGES = set(LAYERS[5])
# A function-local package import is allowed only to defer a heavy optional dependency, named in a
# comment on the import line: `# defers vllm`.
DEFERS = re.compile(r"#.*\bdefers (\w+)")


def _imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported kormedqa module, line, inside a function?, the line's text) for every package import."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level == 1 or (child.level == 0 and (child.module or "").split(".")[0] == "kormedqa"):
                    parts = (child.module or "").split(".")
                    names = parts[1:] if child.level == 0 else parts
                    targets = [names[0]] if names and names[0] else [a.name for a in child.names]  # `from . import x`
                    out.extend((t, child.lineno, in_function, lines[child.lineno - 1]) for t in targets)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "kormedqa" and len(parts) > 1:
                        out.append((parts[1], child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, inner)

    visit(tree, False)
    return out


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))
GRAPH = {m: _imports(PACKAGE / f"{m}.py") for m in MODULES}


def test_every_module_has_a_layer():
    assert sorted(LAYER_OF) == MODULES, "add the new module to LAYERS (and to docs/architecture.md)"


def test_imports_go_down_only_and_no_stage_imports_another():
    wrong = []
    for module, imports in GRAPH.items():
        for target, line, _, _ in imports:
            if LAYER_OF[target] > LAYER_OF[module]:
                wrong.append(f"{module}.py:{line} imports {target} (layer {LAYER_OF[target]} above {LAYER_OF[module]})")
            elif module in STAGES and target in STAGES and target != module:
                wrong.append(f"{module}.py:{line} imports the stage {target}: only orchestrators call stages")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    edges = {m: {t for t, *_ in imports if t != m} for m, imports in GRAPH.items()}
    state: dict[str, str] = {}

    def walk(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for module in MODULES:
        if module not in state:
            walk(module, [module])


def test_package_imports_are_at_module_level():
    local = [f"{m}.py:{line}: {text.strip()}" for m, imports in GRAPH.items() for _, line, inside, text in imports
             if inside and not DEFERS.search(text)]
    assert not local, ("package imports inside functions (move them to the top; only a heavy optional dependency "
                       "may be deferred, said as `# defers <package>` on the line):\n" + "\n".join(local))


def test_the_checks_see_what_they_check(tmp_path):
    """The parser finds upward, relative, absolute and function-local imports (a check that finds none passes anything)."""
    sample = tmp_path / "sample.py"
    sample.write_text("from .loop import run_loop\nfrom kormedqa.cli import main\nimport kormedqa.demo\n"
                      "def f():\n    from .errors import UsageError\n    from .vllm_backend import X  # defers vllm\n")
    found = _imports(sample)
    assert [(t, inside) for t, _, inside, _ in found] == [("loop", False), ("cli", False), ("demo", False),
                                                           ("errors", True), ("vllm_backend", True)]
    assert not DEFERS.search(found[3][3]) and DEFERS.search(found[4][3]).group(1) == "vllm"


def test_importing_bottom_up_never_pulls_in_a_higher_layer():
    # `import kormedqa.x` runs kormedqa/__init__ (the top layer) first; a bare package object stands in
    # for it, so that what importing x loads is x's own imports.
    order = [m for layer in sorted(LAYERS) for m in LAYERS[layer] if m not in ("__main__", "__init__")]
    script = f"""
import importlib, json, sys, types
package = types.ModuleType("kormedqa")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["kormedqa"] = package
layer_of = {json.dumps(LAYER_OF)}
wrong = []
for name in {json.dumps(order)}:
    importlib.import_module("kormedqa." + name)
    loaded = [m.split(".")[1] for m in sys.modules if m.startswith("kormedqa.")]
    wrong += [f"importing {{name}} loaded {{m}}" for m in loaded if layer_of[m] > layer_of[name]]
print(json.dumps(wrong))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_pictures_of_the_layers_show_this_table():
    """README.md and docs/architecture.md draw the layers (`L<n> name` in 17 columns, the modules, a note
    in parentheses): the same modules as LAYERS, so a module added to the table is added to the pictures."""
    root = PACKAGE.parents[1]
    table = {layer: set(modules) - {"__main__", "__init__"} for layer, modules in LAYERS.items()}
    for doc in (root / "README.md", root / "docs" / "architecture.md"):
        drawn = {int(line[1]): {name.strip() for name in line[17:].split("(")[0].split(",")}
                 for line in doc.read_text(encoding="utf-8").splitlines() if re.match(r"L\d ", line)}
        assert drawn == table, doc.name
