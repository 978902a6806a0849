#!/usr/bin/env python3
"""Builds an OCI image archive from files on this machine, for `ctr images import`.

No image registry is reachable on the machines scripts/node-e2e.sh runs on, and there is no Docker
engine to build the Dockerfile's images. This writes the same images by hand: one uncompressed
layer holding the given files and the shared libraries `ldd` says the executables load (as the
Dockerfile's distroless base holds glibc and the CA certificates), an image config
with the Dockerfile's user, entrypoint and command, a manifest, and an `index.json` whose
`io.containerd.image.name` annotation names the image.

    oci-image.py --name docker.io/library/warren:0.1.0 --out warren.tar \
        --entrypoint /usr/local/bin/warren --cmd operator --user 65532:65532 \
        target/release/warren:/usr/local/bin/warren
"""

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile


def shared_libraries(binary):
    """The absolute paths of the libraries `ldd` resolves for a dynamic binary (none if static)."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if result.returncode != 0:
        # "not a dynamic executable": a static binary needs nothing else.
        return []
    paths = []
    for line in result.stdout.splitlines():
        if "not found" in line:
            sys.exit(f"oci-image: {binary} needs a library this machine lacks: {line.strip()}")
        match = re.search(r"(/\S+)", line)
        if match:
            paths.append(match.group(1))
    return paths


def add_file(layer, source, dest):
    """Adds one regular file (symlinks followed, mode kept) at `dest`, with its parent folders."""
    parts = dest.strip("/").split("/")
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        if folder not in layer.getnames():
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            layer.addfile(info)
    with open(source, "rb") as handle:
        data = handle.read()
    info = tarfile.TarInfo("/".join(parts))
    info.size = len(data)
    info.mode = os.stat(source).st_mode & 0o777
    layer.addfile(info, io.BytesIO(data))


def blob(archive, data, media_type):
    """Stores `data` under blobs/sha256/ and returns its OCI descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="full image name, e.g. docker.io/library/warren:0.1.0")
    parser.add_argument("--out", required=True, help="the OCI archive to write")
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--cmd", action="append", default=[])
    parser.add_argument("--user", default="65532:65532")
    parser.add_argument(
        "files",
        nargs="+",
        help="SOURCE:DEST, a file and its path in the image; executables bring their libraries",
    )
    args = parser.parse_args()

    layer_bytes = io.BytesIO()
    with tarfile.open(fileobj=layer_bytes, mode="w", format=tarfile.PAX_FORMAT) as layer:
        libraries = set()
        for spec in args.files:
            source, _, dest = spec.partition(":")
            if not dest:
                sys.exit(f"oci-image: `{spec}` is not SOURCE:DEST")
            add_file(layer, source, dest)
            if os.access(source, os.X_OK):
                libraries.update(shared_libraries(source))
        for library in sorted(libraries):
            # At the path the binary asks for (the loader's is fixed in the binary), with the
            # content of the file it links to.
            add_file(layer, os.path.realpath(library), library)
    layer_data = layer_bytes.getvalue()
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"

    with tarfile.open(args.out, mode="w") as archive:
        layer = blob(archive, layer_data, "application/vnd.oci.image.layer.v1.tar")
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": args.user,
                "Entrypoint": [args.entrypoint],
                "Cmd": args.cmd,
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        }
        config = blob(
            archive,
            json.dumps(config, sort_keys=True).encode(),
            "application/vnd.oci.image.config.v1+json",
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [layer],
        }
        manifest = blob(
            archive,
            json.dumps(manifest, sort_keys=True).encode(),
            "application/vnd.oci.image.manifest.v1+json",
        )
        manifest["platform"] = {"architecture": "amd64", "os": "linux"}
        manifest["annotations"] = {
            "io.containerd.image.name": args.name,
            "org.opencontainers.image.ref.name": tag,
        }
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest],
        }
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index, sort_keys=True).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
