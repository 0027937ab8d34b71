"""The layout keeps gRPC out of the core: only the transport package may import grpc or the stubs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"
# Packages that speak gRPC; everything else under service/ is the core and must not.
GRPC_TRANSPORTS = {"grpc_server"}
GRPC_MODULES = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "vecserve")


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> list[Path]:
    return sorted(
        path
        for path in SERVICE.rglob("*.py")
        if path.relative_to(SERVICE).parts[0] not in GRPC_TRANSPORTS
    )


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_core_imports_no_grpc() -> None:
    offenders = {
        module_name(path): sorted(
            name for name in imported_modules(path) if name.split(".")[0] in GRPC_MODULES
        )
        for path in core_modules()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_every_package_says_its_job() -> None:
    packages = [path for path in SERVICE.rglob("__init__.py")]
    assert len(packages) >= 6
    for package in packages:
        assert ast.get_docstring(ast.parse(package.read_text())), f"{package} has no docstring"


def test_importing_a_core_module_leaves_grpc_out() -> None:
    """In a fresh interpreter, module by module: no indirect import (through a package __init__,
    say) brings grpc in, and the first module that would is named."""
    modules = [module_name(path) for path in core_modules()]
    probe = (
        "import importlib, sys\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        f"    loaded = sorted(m for m in sys.modules if m.split('.')[0] in {GRPC_MODULES!r})\n"
        "    if loaded:\n"
        "        sys.exit(f'{module} loads {loaded}')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=SERVICE.parent)
    assert result.returncode == 0, result.stderr
