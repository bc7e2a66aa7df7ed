#!/usr/bin/env python3
"""Fills in the module location of the Istio manifests (`make istio-manifests`), standard library
only: `${TOLLGATE_WASM_IMAGE}` becomes the URL given, `${TOLLGATE_WASM_SHA256}` the digest
istio-agent checks for it, read from the OCI layout `make oci` wrote:

* `oci://REGISTRY/REPOSITORY:TAG` (or `@sha256:...`): the digest of the layout's
  `<version>-istio` image manifest, which is what istio-agent compares for an OCI image. Push
  that image with a tool that keeps manifests byte for byte (`oras cp --from-oci-layout`,
  `skopeo copy --preserve-digests`, `crane push`).
* `https://...`: the sha256 of the module itself (serve target/.../tollgate_filter.wasm).

Usage: render.py --image URL --layout target/oci/tollgate-filter --version 0.1.0 --out target/istio
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDERS = ("${TOLLGATE_WASM_IMAGE}", "${TOLLGATE_WASM_SHA256}")


def manifest_digest(layout: Path, ref: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            return m["digest"].removeprefix("sha256:")
    raise SystemExit(f"{layout} has no image {ref!r}: run `make oci`")


def module_sha256(layout: Path, ref: str) -> str:
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest(layout, ref)).read_text())
    [layer] = manifest["layers"]
    return layer["digest"].removeprefix("sha256:")


def sha256_for(image: str, layout: Path, version: str) -> str:
    if image.startswith("oci://"):
        return manifest_digest(layout, version + "-istio")
    if image.startswith("https://"):
        return module_sha256(layout, version)
    raise SystemExit(f"TOLLGATE_WASM_IMAGE must be oci://... or https://..., not {image!r}")


def render(text: str, image: str, sha256: str) -> str:
    for placeholder in PLACEHOLDERS:
        if placeholder not in text:
            raise SystemExit(f"a manifest lost its placeholder {placeholder}")
    out = text.replace(PLACEHOLDERS[0], image).replace(PLACEHOLDERS[1], sha256)
    left = re.findall(r"\$\{[A-Z_]+\}", out)
    if left:
        raise SystemExit(f"unknown placeholders {left}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--layout", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not re.fullmatch(r"(oci|https)://[^\s\"'$]+", args.image):
        raise SystemExit(f"not an oci:// or https:// URL: {args.image!r}")
    sha256 = sha256_for(args.image, args.layout, args.version)
    args.out.mkdir(parents=True, exist_ok=True)
    for manifest in sorted(HERE.glob("*.yaml")):
        (args.out / manifest.name).write_text(render(manifest.read_text(), args.image, sha256))
        print(f"{args.out / manifest.name}: {args.image} sha256 {sha256}")


if __name__ == "__main__":
    main()
