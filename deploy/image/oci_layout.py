#!/usr/bin/env python3
"""Packs a root filesystem as a one-layer OCI image (an OCI image layout in
a tar), with the same config the Dockerfile gives its image: what build.sh
makes where no container tool may run. `podman load -i`, `skopeo copy
oci-archive:...` and containerd's `ctr images import` take it.

    oci_layout.py ROOTFS OUT.tar TAG
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_of(rootfs):
    """The rootfs as a gzipped tar, reproducible (fixed times, sorted names)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for top, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                paths.append(os.path.join(top, name))
        for path in sorted(paths):
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
            info.mtime = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, mtime=0)
    return uncompressed, compressed


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    rootfs, out, tag = sys.argv[1:]
    uncompressed, layer = layer_of(rootfs)
    second = 1_000_000_000
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "10001:10001",
            "ExposedPorts": {"4000/tcp": {}},
            "Env": ["XDG_DATA_HOME=/var/lib", "XDG_CACHE_HOME=/var/cache", "HOME=/var/lib/switchyard"],
            "Entrypoint": ["/switchyard"],
            "Cmd": ["serve", "--config", "/etc/switchyard/switchyard.toml"],
            "Healthcheck": {
                "Test": ["CMD", "/switchyard", "healthcheck"],
                "Interval": 10 * second,
                "Timeout": 6 * second,
                "StartPeriod": 10 * second,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(uncompressed)]},
        "history": [{"created_by": "deploy/image/build.sh (no container tool: rootfs.sh + oci_layout.py)"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }, sort_keys=True).encode()
    entries = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", index),
    ] + [("blobs/sha256/" + sha256(blob).split(":")[1], blob) for blob in (config, manifest, layer)]
    with tarfile.open(out, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    print(f"{out}: {tag}, manifest {sha256(manifest)}, layer {len(layer) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
