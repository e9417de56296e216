"""What import will read of its input: regular files reached without any
symbolic link, copied before use.  A FIFO, a device or a link where a
manifest or blob should be is refused at once, by name, and the store is
left as it was."""

import os
import tarfile

from harness import Fail, test
from images import Image
from test_layerctl import import_ok, lc, need_layerctl, new_store, \
    small_layer, store_listing, write_source


def _refused(store, src, name, what):
    before = store_listing(store)
    r = lc(store, "import", src, timeout=20)
    if r.rc != 1 or not r.err.startswith("layerctl: import: ") or \
            name not in r.err or len(r.err.strip().splitlines()) != 1:
        raise Fail("%s: want one refusal line naming %r: %s" % (what, name, r))
    if store_listing(store) != before:
        raise Fail("%s: the store changed" % what)


def _good_store(ctx):
    need_layerctl()
    store = new_store(ctx)
    img = Image([small_layer("base")], "input-base:1")
    src, _ = write_source(ctx, img, "oci")
    import_ok(store, src, img)
    return store


@test(timeout=60)
def layerctl_import_refuses_a_fifo_manifest(ctx):
    store = _good_store(ctx)
    img = Image([small_layer("x")], "input-fifo:1")
    src, _ = write_source(ctx, img, "docker")
    os.unlink(os.path.join(src, "manifest.json"))
    os.mkfifo(os.path.join(src, "manifest.json"))
    _refused(store, src, "manifest.json", "FIFO manifest.json")


@test(timeout=60)
def layerctl_import_refuses_a_blob_reached_through_a_symlink(ctx):
    store = _good_store(ctx)
    img = Image([small_layer("y")], "input-link:1")
    src, _ = write_source(ctx, img, "oci")
    blobs = os.path.join(src, "blobs", "sha256")
    layer = img.layers[0].diff_id
    # The layer blob moved elsewhere and linked back: same bytes, but
    # reached through a link, which import does not follow.
    outside = ctx.newdir("outside")
    os.rename(os.path.join(blobs, layer), os.path.join(outside, layer))
    os.symlink(os.path.join(outside, layer), os.path.join(blobs, layer))
    _refused(store, src, layer, "symlinked layer blob")
    # A symlinked directory on the way counts too.
    os.unlink(os.path.join(blobs, layer))
    os.rename(os.path.join(outside, layer), os.path.join(blobs, layer))
    os.rename(os.path.join(src, "blobs"), os.path.join(outside, "blobs"))
    os.symlink(os.path.join(outside, "blobs"), os.path.join(src, "blobs"))
    _refused(store, src, "blobs/sha256", "blobs reached through a link")


@test(timeout=60)
def layerctl_import_refuses_an_archive_holding_links_or_fifos(ctx):
    store = _good_store(ctx)
    img = Image([small_layer("z")], "input-archive:1")
    src, _ = write_source(ctx, img, "docker")
    for kind in ("symlink", "fifo", "hardlink"):
        t = ctx.newfile("bad-%s.tar" % kind)
        with tarfile.open(t, "w") as tf:
            for name in sorted(os.listdir(src)):
                tf.add(os.path.join(src, name), arcname=name)
            ti = tarfile.TarInfo("extra")
            if kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/shadow"
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            else:
                ti.type, ti.linkname = tarfile.LNKTYPE, "manifest.json"
            tf.addfile(ti)
        _refused(store, t, "extra", "archive with a %s" % kind)


@test(timeout=60)
def layerctl_failed_multi_image_import_takes_back_what_it_committed(ctx):
    """An archive of two images whose second cannot be committed: the first
    image's layers, layer records and config are taken out again."""
    import json
    store = _good_store(ctx)
    one = Image([small_layer("first")], "multi-a:1")
    two = Image([small_layer("second")], "multi-b:1")
    src = ctx.newdir("multi")
    one.write_docker(src)
    manifest_one = json.load(open(os.path.join(src, "manifest.json")))
    two.write_docker(src)
    manifest_two = json.load(open(os.path.join(src, "manifest.json")))
    with open(os.path.join(src, "manifest.json"), "w") as f:
        json.dump(manifest_one + manifest_two, f)
    # The second image's config cannot be written: a directory is there.
    blocker = os.path.join(store, "imagedb", "sha256", two.id + ".json")
    os.makedirs(os.path.join(blocker, "x"))
    _refused(store, src, two.id, "second image's config blocked")
    for layer in one.layers:
        if os.path.exists(os.path.join(store, "layers", "sha256",
                                       layer.diff_id)):
            raise Fail("first image's layer left in the store")
    if os.path.exists(os.path.join(store, "imagedb", "sha256",
                                   one.id + ".json")):
        raise Fail("first image's config left in the store")
