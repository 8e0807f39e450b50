"""Compile the contract in protos/ into generated/ (messages, gRPC stubs, type stubs).

Run from the repository root:

    uv run python protos/generate.py            # rewrite generated/
    uv run python protos/generate.py --check    # exit 1 if generated/ is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED = ROOT / "generated"
PACKAGE_DOCSTRING = '"""Generated from protos/; do not edit. Run protos/generate.py."""\n'


def generate(out: Path) -> None:
    """Write the generated package for every .proto under protos/ into `out`."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    for directory in [p for p in out.rglob("*") if p.is_dir()]:
        (directory / "__init__.py").write_text(PACKAGE_DOCSTRING)
    (out / "daily_aggregator" / "py.typed").write_text("")


def differences(left: Path, right: Path) -> list[str]:
    """Relative paths that differ between two trees, ignoring caches."""
    names = {
        str(p.relative_to(tree))
        for tree in (left, right)
        for p in tree.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    return sorted(
        name
        for name in names
        if not ((left / name).is_file() and (right / name).is_file())
        or not filecmp.cmp(left / name, right / name, shallow=False)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated/ is stale")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = differences(Path(tmp), GENERATED)
        if stale:
            print(
                "generated/ is stale; run `uv run python protos/generate.py`:", *stale, sep="\n  "
            )
            sys.exit(1)
        print("generated/ is up to date")
        return
    shutil.rmtree(GENERATED, ignore_errors=True)
    generate(GENERATED)
    print(f"wrote {GENERATED.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
