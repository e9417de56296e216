#!/usr/bin/env python3
"""Import throughput: `layerctl import` of an OCI image against `umoci
unpack` of the same layout (both verify digests and extract every layer),
on one generated image, fresh destination each repetition, median of N.

usage: benchmarks/importbench.py [--mb 256] [--files 4000] [--reps 3]
                                 [--dir /var/tmp/layerfs-importbench]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERCTL = os.path.join(REPO, "bin", "layerctl")


def layer_tar(seed, n_files, total_bytes):
    """A deterministic layer: n_files files of pseudo-random bytes."""
    b = io.BytesIO()
    per = max(1, total_bytes // n_files)
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(n_files):
            data = (block * (per // len(block) + 1))[:per]
            data = hashlib.sha256(b"%d-%d" % (seed, i)).digest() + data[32:]
            ti = tarfile.TarInfo("d%03d/f%05d" % (i % 100, i))
            ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


def make_image(dest, mb, files):
    if os.path.exists(os.path.join(dest, "index.json")):
        return
    blobs = os.path.join(dest, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        h = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, h), "wb") as f:
            f.write(data)
        return h

    layers = []
    for i in range(4):    # four layers of a quarter each, gzip'd
        raw = layer_tar(i, files // 4, (mb << 20) // 4)
        gz = gzip.compress(raw, compresslevel=1)
        layers.append((hashlib.sha256(raw).hexdigest(), put(gz), len(gz)))
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids":
                                 ["sha256:" + d for d, _, _ in layers]}}
                     ).encode()
    man = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + put(cfg), "size": len(cfg)},
        "layers": [{"mediaType":
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + h, "size": n}
                   for _, h, n in layers]}).encode()
    mh = put(man)
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + mh, "size": len(man),
            "annotations": {"org.opencontainers.image.ref.name": "bench"}}]},
            f)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')


def timed(argv, cleanup):
    shutil.rmtree(cleanup, ignore_errors=True)
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit("importbench: %s failed: %s" % (
            argv[0], r.stderr.decode(errors="replace")))
    shutil.rmtree(cleanup, ignore_errors=True)
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp/layerfs-importbench")
    a = ap.parse_args()
    image = os.path.join(a.dir, "image-%dm-%d" % (a.mb, a.files))
    make_image(image, a.mb, a.files)
    store, bundle = os.path.join(a.dir, "store"), os.path.join(a.dir, "bundle")
    runs = {"layerctl import": [], "umoci unpack": []}
    have_umoci = shutil.which("umoci") is not None
    for _ in range(a.reps):
        runs["layerctl import"].append(timed(
            [LAYERCTL, "--store", store, "import", image], store))
        if have_umoci:
            runs["umoci unpack"].append(timed(
                ["umoci", "unpack", "--image", image + ":bench", bundle],
                bundle))
    print("import of a %d MiB, %d-file, 4-layer gzip OCI image "
          "(median of %d):" % (a.mb, a.files, a.reps))
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    for k, v in med.items():
        print("  %-16s %6.2f s  %7.1f MB/s" % (k, v, a.mb / v))
    if len(med) == 2:
        print("  layerctl is %.2fx as fast as umoci" %
              (med["umoci unpack"] / med["layerctl import"]))


if __name__ == "__main__":
    main()
