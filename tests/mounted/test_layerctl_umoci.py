"""The image a person gets: `layerctl import` + `layerctl mount` against
`umoci unpack` (Debian's umoci, an independent OCI implementation) of the
same OCI layout.  Skipped where umoci is not installed."""

import os
import shutil
import subprocess

from harness import Fail, Skip, test
import images
from test_layerctl import base_layers, import_ok, lc_mount, need_layerctl, \
    new_store, write_source


def _umoci_rootfs(ctx, layout, ref):
    if not shutil.which("umoci"):
        raise Skip("umoci not installed")
    bundle = os.path.join(ctx.newdir("bundle"), "b")
    r = subprocess.run(["umoci", "unpack", "--image", "%s:%s" % (layout, ref),
                        bundle], capture_output=True, timeout=120)
    if r.returncode != 0:
        raise Fail("umoci unpack: %s" % r.stderr.decode(errors="replace"))
    return os.path.join(bundle, "rootfs")


def _compare(got, want, what):
    # Directory mtimes: umoci stamps a directory when it applies a lower
    # change inside it; the merged view shows the providing layer's.
    # Everything else must agree.
    for fields in (got, want):
        for f in fields.values():
            if f["type"] == "dir":
                f.pop("mtime", None)
    if len(want) < 20:
        raise Fail("umoci's rootfs has only %d entries" % len(want))
    lines = images.diff_fields(got, want)
    if lines:
        raise Fail("%s differs from umoci's rootfs:\n  %s" % (
            what, "\n  ".join(lines)))


@test(timeout=180)
def layerctl_mount_matches_umoci_unpack(ctx):
    need_layerctl()
    img = images.Image(base_layers(), "umoci-cmp:1")
    for comps in ("plain", "gzip"):
        src, _ = write_source(ctx, img, "oci", comps, ref_name="latest")
        rootfs = _umoci_rootfs(ctx, src, "latest")
        store = new_store(ctx)
        import_ok(store, src, img, "umoci-cmp:1")
        with lc_mount(ctx, store, "umoci-cmp:1", ["--read-only"]) as m:
            _compare(images.tree_fields(m.mnt),
                     images.tree_fields(rootfs), "mount (%s)" % comps)
