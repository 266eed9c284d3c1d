"""The package's layering: no import cycle, one checkpoint reader, one layer plan.

Layers, lowest first (docs/architecture.md): checkpoint / atomic_io / reparam ->
models (arch -> blocks -> backbone) -> weights -> loader -> deploy / inference / benchmark /
pretrain -> cli -> tools. A module may import from its own layer and the ones below it,
never from one above, not even inside a function (a lazy import would only hide the cycle).
One owner per concern: ``loader`` alone builds a segmentor from a config and loads a
checkpoint into it; ``checkpoint`` alone reads checkpoint files.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repvgg_seg"

# module (or package) prefix -> packages it must never import.
FORBIDDEN = {
    "repvgg_seg.checkpoint": ("repvgg_seg.",),
    "repvgg_seg.errors": ("repvgg_seg.",),
    "repvgg_seg.atomic_io": ("repvgg_seg.",),
    "repvgg_seg.dir_lock": ("repvgg_seg.",),
    "repvgg_seg.equivalence": ("repvgg_seg.",),
    "repvgg_seg.models": (
        "repvgg_seg.weights",
        "repvgg_seg.deploy",
        "repvgg_seg.pretrain",
        "repvgg_seg.benchmark",
        "repvgg_seg.runner",
    ),
    "repvgg_seg.weights": (
        "repvgg_seg.deploy",
        "repvgg_seg.pretrain",
        "repvgg_seg.benchmark",
        "repvgg_seg.loader",
    ),
    "repvgg_seg.loader": (
        "repvgg_seg.deploy",
        "repvgg_seg.inference",
        "repvgg_seg.benchmark",
        "repvgg_seg.pretrain",
        "repvgg_seg.runner",
    ),
}
# The top floor: only tools/ import it.
CLI = "repvgg_seg.cli"


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


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


def test_lower_layers_never_import_higher_ones():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module != CLI:
            imported = imported_modules(path, module)
            violations += [f"{module} imports {name}" for name in imported if name == CLI]
        for prefix, forbidden in FORBIDDEN.items():
            if module == prefix or module.startswith(prefix + "."):
                violations += [
                    f"{module} imports {name}"
                    for name in sorted(imported_modules(path, module))
                    # errors.py is the floor under every module, layer 1 included.
                    if name.startswith(forbidden) and not name.startswith("repvgg_seg.errors")
                ]
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
