#!/usr/bin/env python3
"""Packages tollgate_filter.wasm as an OCI image layout (`make oci`), standard library only.

The layout holds two images of the same module, told apart by their ref name:

* `<version>`: the Wasm OCI artifact of the CNCF TAG Runtime specification: config
  `application/vnd.wasm.config.v0+json` (architecture `wasm`, os `wasip1`, `layerDigests`)
  and one `application/wasm` layer, the module itself. What wkg, wasmCloud, Spin and runwasi
  read.
* `<version>-istio`: the image istio-agent can load. Its fetcher (pkg/wasm/imagefetcher.go)
  accepts Docker images, the solo.io "compat" variant (one `application/vnd.oci.image.layer.
  v1.tar+gzip` layer holding `plugin.wasm`) and the two-layer solo.io "oci" variant, but not
  the single `application/wasm` layer of the CNCF format. The compat variant uses only standard
  media types, so every registry and copy tool takes it.

Everything is deterministic (sorted JSON, fixed tar and gzip headers, `created` from
SOURCE_DATE_EPOCH), so the same module gives the same digests: the digest of the
`<version>-istio` manifest is the `sha256` an `oci://` URL needs in the Istio manifests.

Usage: wasm_oci.py WASM LAYOUT_DIR --version 0.1.0   (prints the refs and digests as JSON)
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
WASM_CONFIG = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
ISTIO_SUFFIX = "-istio"


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True)

    def put(self, media_type: str, data: bytes, annotations: dict | None = None) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        descriptor = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
        if annotations:
            descriptor["annotations"] = annotations
        return descriptor


def plugin_tar_gz(wasm: bytes, mtime: int) -> tuple[bytes, bytes]:
    """The compat variant's layer: a tar holding `plugin.wasm`, gzipped; (tar, tar.gz)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o644, mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(raw.getvalue())
    return raw.getvalue(), packed.getvalue()


def build(wasm_path: Path, out: Path, version: str, epoch: int) -> dict:
    wasm = wasm_path.read_bytes()
    if wasm[:4] != b"\0asm":
        raise SystemExit(f"{wasm_path} is not a WebAssembly module")
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if out.exists():
        shutil.rmtree(out)
    layout = Layout(out)
    common = {
        "org.opencontainers.image.title": "tollgate-filter",
        "org.opencontainers.image.description": "Tollgate, the LLM gateway for Amazon Bedrock, as a proxy-wasm filter for Envoy",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }

    module = layout.put(WASM_LAYER, wasm, {"org.opencontainers.image.title": wasm_path.name})
    wasm_config = layout.put(WASM_CONFIG, canonical({
        "created": created, "architecture": "wasm", "os": "wasip1", "layerDigests": [module["digest"]],
    }))
    cncf = layout.put(MANIFEST, canonical({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": wasm_config, "layers": [module],
        "annotations": common,
    }), {REF_NAME: version})

    tar, tar_gz = plugin_tar_gz(wasm, epoch)
    plugin = layout.put(TAR_GZIP_LAYER, tar_gz)
    image_config = layout.put(IMAGE_CONFIG, canonical({
        "created": created, "architecture": "wasm", "os": "wasip1", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    }))
    istio = layout.put(MANIFEST, canonical({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": image_config, "layers": [plugin],
        "annotations": {**common, "module.wasm.image/variant": "compat"},
    }), {REF_NAME: version + ISTIO_SUFFIX})

    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [cncf, istio]}))
    return {
        "layout": str(out),
        "wasm_sha256": module["digest"].removeprefix("sha256:"),
        "images": {
            version: {"format": "cncf-wasm-artifact", "manifest_digest": cncf["digest"]},
            version + ISTIO_SUFFIX: {"format": "istio-compat", "manifest_digest": istio["digest"]},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wasm", type=Path)
    parser.add_argument("layout", type=Path)
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
    json.dump(build(args.wasm, args.layout, args.version, epoch), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
