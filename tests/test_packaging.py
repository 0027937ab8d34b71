"""The built wheel carries every package and the web page (an editable install would hide a missing one)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_package_and_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("vecserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [
        str(init.relative_to(ROOT))
        for top in ("service", "clients")
        for init in (ROOT / top).rglob("__init__.py")
    ] + [str(init.relative_to(ROOT / "proto")) for init in (ROOT / "proto").rglob("__init__.py")]
    missing = [name for name in expected if name not in names]
    assert not missing, f"packages missing from the wheel: {missing}"
    assert {"vecserve/v1/embedding.proto", "vecserve/v1/embedding_pb2.py"} <= names
    page = {str(path.relative_to(ROOT)) for path in (ROOT / "service/http_server/static").iterdir()}
    assert page <= names, f"web page files missing from the wheel: {sorted(page - names)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vecserve = clients.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
