"""The package's layering: every module in a layer, no import from above, one owner each.

The layer map is written down twice, in docs/architecture.md ("Layers") and in
:data:`LAYERS` here, and the tests hold the two together: every module of the package is in
exactly one layer (an entry is a module or a folder, with every file in it, present or
added later), every entry names something that exists and stands in the same layer in the
docs, and a module imports only from its own layer and the ones below, never from one
above, not even inside a function (a lazy import would only hide the cycle). One owner per
concern: ``loader`` alone builds a segmentor from a config and loads a checkpoint into it;
``checkpoint`` alone reads checkpoint files.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repvgg_seg"

# Module or folder under repvgg_seg/ (as the docs write it without ".py" or "/": a file may
# become a folder of modules without a change here) -> layer, lowest first; the package's
# own __init__.py is "__init__". The same entries, in the same layers, as the docs.
LAYERS = {
    "errors": 1,
    "checkpoint": 1,
    "atomic_io": 1,
    "reparam": 1,
    "equivalence": 1,
    "dir_lock": 1,
    "host": 1,
    "onnx_session": 1,
    "output_dir": 1,
    "written_record": 1,
    "models": 2,
    "weights": 3,
    "datasets": 3,
    "loader": 4,
    "onnx_segmentor": 4,
    "deploy": 5,
    "quantize": 5,
    "pretrain": 5,
    "runner": 5,
    "work_dir": 5,
    "inference": 5,
    "benchmark": 5,
    "curves": 5,
    "__init__": 5,
    "cli": 6,
}


def module_names() -> list[str]:
    return [module_name(path) for path in sorted(PACKAGE.rglob("*.py"))]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def entries_of(module: str) -> list[str]:
    """The :data:`LAYERS` entries that ``module`` (a dotted name) falls under."""
    relative = module.removeprefix("repvgg_seg").removeprefix(".") or "__init__"
    return [e for e in LAYERS if relative == e or relative.startswith(e + ".")]


def layer_of_module() -> dict[str, int]:
    """Every package module -> its layer (modules in no layer, or in two, left out)."""
    return {
        module: LAYERS[entries[0]]
        for module in module_names()
        if len(entries := entries_of(module)) == 1
    }


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (absolute names)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = f"{base}.{node.module}" if node.level and node.module else node.module or base
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_every_module_is_in_exactly_one_layer():
    placed = {module: entries_of(module) for module in module_names()}
    unplaced = [module for module, entries in placed.items() if len(entries) != 1]
    assert not unplaced, (
        f"{unplaced}: in no layer (or in two); add each to LAYERS here and to the layer map "
        "in docs/architecture.md"
    )
    used = {entry for entries in placed.values() for entry in entries}
    assert set(LAYERS) == used, f"entries naming no module: {sorted(set(LAYERS) - used)}"


def documented_layers() -> dict[int, set[str]]:
    """Layer number -> the names in backticks of its item in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"^(\d)\. ", section, flags=re.MULTILINE)
    # An item runs to the next item or to the first blank line.
    bodies = [body.split("\n\n", 1)[0] for body in items[2::2]]
    return {int(n): set(re.findall(r"`([^`]+)`", body)) for n, body in zip(items[1::2], bodies)}


def test_the_docs_give_every_entry_the_same_layer():
    documented = documented_layers()
    assert sorted(documented) == sorted(set(LAYERS.values())), documented
    wrong = [
        entry
        for entry, layer in LAYERS.items()
        if not {f"{entry}.py", f"{entry}/"} & documented[layer]
    ]
    assert not wrong, f"{wrong}: not in their layer's item of docs/architecture.md"


def test_no_module_imports_from_a_higher_layer():
    layers = layer_of_module()
    names = sorted(layers, key=len, reverse=True)
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for imported in sorted(imported_modules(path, module)):
            # The module an imported name lives in: its longest prefix that is a module.
            target = next((n for n in names if imported == n or imported.startswith(n + ".")), None)
            if target is not None and module in layers and layers[target] > layers[module]:
                violations.append(
                    f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
                )
    assert not violations, violations


def test_each_module_imports_alone_in_a_fresh_process():
    # The heavy third-party imports happen once; each module is then imported first, alone,
    # in a forked child that has loaded no repvgg_seg module yet.
    script = """
import os, sys, traceback
import torch, mmengine, mmcv, mmseg.models, mmseg.datasets  # noqa: F401
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED", failed)
sys.exit(1 if failed else 0)
"""
    names = module_names()
    assert len(names) > 30, names
    result = subprocess.run(
        [sys.executable, "-c", script, *names],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def calls_to(path: Path, names: set[str]) -> list[str]:
    """The calls in ``path`` to ``torch.load``-like dotted names (docstrings do not count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = ast.unparse(node.func)
            if name in names or node.func.attr in names:
                found.append(name)
    return found


def calls_in_package_and_tools(names: set[str]) -> dict[str, list[str]]:
    """``calls_to`` over every file of repvgg_seg/ and tools/ that makes such calls."""
    return {
        str(path.relative_to(ROOT)): calls
        for folder in ("repvgg_seg", "tools")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (calls := calls_to(path, names))
    }


def test_only_repvgg_seg_checkpoint_reads_checkpoint_files():
    readers = calls_in_package_and_tools({"torch.load", "add_safe_globals", "safe_globals"})
    assert list(readers) == ["repvgg_seg/checkpoint.py"], readers


# Calls that load weights into a model or build one from a config, outside the loader, and
# why each is not "config + checkpoint -> segmentor".
OTHER_MODEL_LOADERS = {
    "repvgg_seg/weights/loading.py": "ImageNet weights into a RepVGG backbone",
    "repvgg_seg/pretrain/engine.py": "the classifier's training state (--resume)",
    "repvgg_seg/pretrain/train.py": "the classifier's training state (--resume)",
    "tools/benchmark_winograd.py": "one conv's weights into its Winograd twin",
    "repvgg_seg/onnx_segmentor.py": "the ONNX Runtime segmentor of loader.load_segmentor's "
    "'.onnx' branch (no PyTorch weights)",
    "tools/test.py": "--tta wraps the loaded segmentor (MODELS.build of SegTTAModel)",
}


def test_only_the_loader_builds_segmentors_from_configs_and_checkpoints():
    builders = calls_in_package_and_tools({"MODELS.build", "load_state_dict", "load_checkpoint"})
    assert "repvgg_seg/loader.py" in builders
    unexplained = {
        path: calls
        for path, calls in builders.items()
        if path != "repvgg_seg/loader.py" and path not in OTHER_MODEL_LOADERS
    }
    assert not unexplained, unexplained
    # tools/test.py builds only the TTA wrapper; the segmentor comes from the loader.
    assert builders.get("tools/test.py") == ["MODELS.build"], builders.get("tools/test.py")
