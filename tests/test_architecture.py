"""The layout keeps gRPC out of the core: only the transports and the message layer (service/api) may
import the stubs, and only the gRPC transport may import grpc."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"
# Transport packages, and the message layer they share; everything else under service/ is the core,
# which imports neither grpc nor the vecserve stubs.
# service/cluster's ingress runs the gRPC server inside a Ray Serve replica.
GRPC_TRANSPORTS = {"grpc_server", "http_server", "cluster"}
MESSAGE_LAYER = "api"
GRPC_MODULES = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "vecserve")
# The message layer and the HTTP transport use the stubs' messages, never grpc itself.
GRPC_FREE_PACKAGES = (MESSAGE_LAYER, "http_server")
GRPC_ONLY_MODULES = tuple(name for name in GRPC_MODULES if name != "vecserve")


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> list[Path]:
    return sorted(
        path
        for path in SERVICE.rglob("*.py")
        if path.relative_to(SERVICE).parts[0] not in {*GRPC_TRANSPORTS, MESSAGE_LAYER}
    )


def grpc_free_modules() -> list[Path]:
    return sorted(path for package in GRPC_FREE_PACKAGES for path in (SERVICE / package).rglob("*.py"))


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


def test_the_message_layer_and_the_http_transport_import_no_grpc() -> None:
    offenders = {
        module_name(path): sorted(
            name for name in imported_modules(path) if name.split(".")[0] in GRPC_ONLY_MODULES
        )
        for path in grpc_free_modules()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def assert_imports_leave_out(modules: list[str], forbidden: tuple[str, ...]) -> None:
    """In a fresh interpreter, module by module: no indirect import (through a package __init__,
    say) brings a forbidden module in, and the first module that would is named."""
    probe = (
        "import importlib, sys\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        f"    loaded = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "    if loaded:\n"
        "        sys.exit(f'{module} loads {loaded}')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=SERVICE.parent)
    assert result.returncode == 0, result.stderr


def test_importing_a_core_module_leaves_grpc_out() -> None:
    assert_imports_leave_out([module_name(path) for path in core_modules()], GRPC_MODULES)


def test_importing_the_message_layer_or_the_http_transport_leaves_grpc_out() -> None:
    assert_imports_leave_out([module_name(path) for path in grpc_free_modules()], GRPC_ONLY_MODULES)


def test_no_module_of_the_service_is_over_600_lines() -> None:
    lengths = {module_name(path): len(path.read_text().splitlines()) for path in SERVICE.rglob("*.py")}
    assert {module: lines for module, lines in lengths.items() if lines > 600} == {}
