"""The shape of a package: modules, the largest functions and classes, imports between its modules.

    python scripts/code_shape.py [PACKAGE_DIR]     # default: continual

Lengths count the lines of a definition, its docstring and decorators included.
The limits the project keeps (tests/test_architecture.py): no function over 60
lines, no class over 250.
"""
from __future__ import annotations

import argparse
import ast
import statistics
from pathlib import Path


def definitions(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(kind, qualified name, lines) of every function and class, nested ones included."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                name = f"{prefix}{child.name}"
                found.append((kind, name, child.end_lineno - start + 1))  # type: ignore[operator]
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def internal_imports(tree: ast.AST, package_dir: Path) -> set[str]:
    """Modules of the package that a module imports (``from package.sub import module`` counts that module)."""
    package = package_dir.name
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            folder = package_dir.parent / node.module.replace(".", "/")
            if folder.is_dir():  # a package: the imported names that are its modules
                names.update(f"{node.module}.{a.name}" for a in node.names if (folder / f"{a.name}.py").exists())
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == package)
    return names


def shape(package_dir: Path) -> dict[str, object]:
    rows = []
    imports = {}
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = ".".join(path.relative_to(package_dir.parent).with_suffix("").parts)
        rows += [(kind, f"{module}.{name}", lines) for kind, name, lines in definitions(tree)]
        imports[module] = len(internal_imports(tree, package_dir))
    functions = sorted((r for r in rows if r[0] == "function"), key=lambda r: -r[2])
    classes = sorted((r for r in rows if r[0] == "class"), key=lambda r: -r[2])
    counted = [n for m, n in imports.items() if not m.endswith("__init__")]
    return {
        "modules": len([m for m in imports if not m.endswith("__init__")]),
        "largest functions": functions[:3],
        "largest classes": classes[:3],
        "functions over 60 lines": [r[1] for r in functions if r[2] > 60],
        "classes over 250 lines": [r[1] for r in classes if r[2] > 250],
        "internal imports per module (max, mean)": (max(counted), round(statistics.mean(counted), 1)),
        "most internal imports": sorted(imports.items(), key=lambda item: -item[1])[:4],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package_dir", type=Path, nargs="?", default=Path("continual"))
    for key, value in shape(parser.parse_args().package_dir).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
