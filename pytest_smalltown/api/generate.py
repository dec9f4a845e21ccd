"""Regenerate the Python node-API modules from ``protos/`` (development tool).

Run ``python -m pytest_smalltown.api.generate`` after editing a ``.proto``
file. The generated modules are committed so that users need no protoc; the
test suite regenerates into a temporary directory and fails when the
committed files differ (i.e. when someone forgot to run this).

The protos are mapped onto the virtual path ``pytest_smalltown/api`` so that
generated imports are absolute package imports
(``from pytest_smalltown.api import enrolment_pb2``), which works both in the
installed plugin and inside the reference node image.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "protos"
PROTO_FILES = ("enrolment.proto", "debug.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Generate the modules under ``out_root/pytest_smalltown/api``; return their paths."""
    from grpc_tools import protoc  # dev dependency: pip install -e .[dev]

    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-Ipytest_smalltown/api={PROTO_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{PROTO_DIR / name}" for name in PROTO_FILES),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}: {' '.join(args)}")
    target = out_root / "pytest_smalltown" / "api"
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    written = generate(REPO_ROOT)
    for path in written:
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
