#!/usr/bin/env python3
"""Fails when a crate of the workspace declares a dependency its code never names.

For every member's Cargo.toml, each entry of [dependencies] and [dev-dependencies] must appear
in its src/, build.rs, tests/ or benches/, as `name::` or `use name`
(dashes read as underscores). It is the check cargo-machete makes, in a few lines and without
a download.
"""
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def sources(crate: pathlib.Path, folders):
    text = []
    for folder in folders:
        path = crate / folder
        files = [path] if path.is_file() else sorted(path.rglob("*.rs")) if path.is_dir() else []
        text.extend(f.read_text(encoding="utf-8") for f in files)
    return "\n".join(text)


def named(code: str, dependency: str) -> bool:
    ident = dependency.replace("-", "_")
    return re.search(rf"(\b{ident}::|\buse {ident}\b|\bextern crate {ident}\b|#\[{ident}[(\]])", code) is not None


def main() -> int:
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    unused = []
    for member in workspace["workspace"]["members"]:
        crate = ROOT / member
        manifest = tomllib.loads((crate / "Cargo.toml").read_text())
        checks = [
            # Integration tests may use regular dependencies too (the tests crate does).
            ("dependencies", ["src", "build.rs", "tests", "benches"]),
            ("dev-dependencies", ["src", "tests", "benches"]),
        ]
        for section, folders in checks:
            code = sources(crate, folders)
            for dependency in manifest.get(section, {}):
                if not named(code, dependency):
                    unused.append(f"{member}/Cargo.toml [{section}] {dependency}")
    for line in unused:
        print(f"unused dependency: {line}", file=sys.stderr)
    return 1 if unused else 0


if __name__ == "__main__":
    sys.exit(main())
