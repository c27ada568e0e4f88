"""The package's shape: layer contracts, sizes, where torch.distributed and device checks may appear,
and that tests use public names only (docs/architecture.md)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from code_shape import definitions  # noqa: E402

PACKAGE = REPO_ROOT / "continual"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 60, 250


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module a file imports, ``from a import b`` giving both a and a.b."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_package_has_its_subpackages() -> None:
    assert len(SOURCES) > 40  # the checks below would pass vacuously on an empty glob
    folders = {p.parent.name for p in SOURCES}
    assert {"config", "model", "data", "method", "train", "state", "runtime", "report"} <= folders


def test_no_function_over_60_lines_and_no_class_over_250() -> None:
    too_long = [f"{path.relative_to(REPO_ROOT)}: {kind} {name} has {lines} lines"
                for path in SOURCES for kind, name, lines in definitions(parsed(path))
                if lines > (MAX_FUNCTION_LINES if kind == "function" else MAX_CLASS_LINES)]
    assert not too_long, "\n".join(too_long)


def test_only_the_runtime_imports_torch_distributed() -> None:
    """torch.utils.data.distributed (the sampler) is data loading, not a process group."""
    offenders = [str(path.relative_to(REPO_ROOT)) for path in SOURCES
                 if path.parent.name != "runtime"
                 and any(m == "torch.distributed" or m.startswith("torch.distributed.")
                         for m in imported_modules(parsed(path)))]
    assert offenders == []
    assert "torch.distributed" in imported_modules(parsed(PACKAGE / "runtime" / "distributed.py"))


def device_branches(tree: ast.AST) -> list[int]:
    """Lines that compare a device's type (``x.device.type == "cuda"``) or test ``.is_cuda``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Attribute) and side.attr == "type" and \
                        isinstance(side.value, ast.Attribute) and side.value.attr == "device":
                    lines.append(node.lineno)
        if isinstance(node, ast.Attribute) and node.attr in ("is_cuda", "is_cpu"):
            lines.append(node.lineno)
    return lines


def test_the_model_never_branches_on_the_device_type() -> None:
    """The GPSA kernel is chosen when the layer is built (continual.runtime.device.attention_kernel_for)."""
    models = [p for p in SOURCES if p.parent.name == "model"]
    assert models
    assert {str(p.relative_to(REPO_ROOT)): device_branches(parsed(p)) for p in models} == \
        {str(p.relative_to(REPO_ROOT)): [] for p in models}
    assert device_branches(ast.parse('if x.device.type == "cuda": pass')) == [1]  # the check sees one


def test_model_code_is_device_agnostic() -> None:
    """No hard-coded ``.cuda()`` anywhere in the package (every subpackage, not only the top level)."""
    for source in SOURCES:
        assert ".cuda()" not in source.read_text(), source


def test_the_import_contracts_hold() -> None:
    """The contracts of .importlinter (layers; the model alone; no namespace below the entry points)."""
    linter = Path(sys.executable).parent / "lint-imports"
    if not linter.exists():
        pytest.fail(f"{linter} missing: pip install -r requirements.txt")
    result = subprocess.run([str(linter), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_tests_use_public_names_of_the_package() -> None:
    private = []
    for path in sorted((REPO_ROOT / "tests").rglob("*.py")):
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("continual"):
                private += [f"{path.name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
    assert private == []
