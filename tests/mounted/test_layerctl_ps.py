"""`layerctl ps`: the containers of a store, the image each was made from,
and where each is mounted now."""

import os

from harness import Fail, test
from test_layerctl import import_ok, lc, lc_mount, need_layerctl, \
    new_store, small_layer, write_source
from images import Image


def _rows(out):
    rows = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        if len(f) != 4:
            raise Fail("ps line %r" % line)
        rows[f[0]] = f[1:]
    return rows


@test(timeout=60)
def layerctl_ps_lists_containers_and_their_mounts(ctx):
    need_layerctl()
    store = new_store(ctx)
    img = Image([small_layer("a")], "ps-image:1")
    src, _ = write_source(ctx, img, "oci")
    import_ok(store, src, img)
    with lc_mount(ctx, store, "ps-image:1", ["--name", "web"]) as m:
        r = lc(store, "ps")
        if r.rc != 0:
            raise Fail("ps: %s" % r)
        rows = _rows(r.out)
        if rows.get("web") != [img.id[:12], "ps-image:1",
                               os.path.realpath(m.mnt)]:
            raise Fail("while mounted: %r\n%s" % (rows, r))
    rows = _rows(lc(store, "ps").out)
    if rows.get("web") != [img.id[:12], "ps-image:1", "-"]:
        raise Fail("after umount: %r" % rows)


@test(timeout=30)
def layerctl_ps_of_an_empty_store_prints_only_the_header(ctx):
    need_layerctl()
    r = lc(new_store(ctx), "ps")
    if r.rc != 0 or len(r.out.splitlines()) != 1:
        raise Fail("ps: %s" % r)
