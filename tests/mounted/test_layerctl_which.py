"""`layerctl which IMAGE PATH`: the layer that provides a path, the copies
it shadows, and what hides a path that is not in the merged view.  Layer
numbers count from the top-most layer (0), as layerfs's lowerdir does."""

import re

from harness import Fail, test
from images import Dir, File, Image, Layer, Opaque, Whiteout
from test_layerctl import import_ok, lc, need_layerctl, new_store, \
    write_source


def _image():
    # Bottom first, as an image lists its layers.
    base = Layer({"etc": Dir(), "etc/os-release": File(b"base\n"),
                  "etc/keep": File(b"k\n"), "opt": Dir(),
                  "opt/old": File(b"o\n"), "var": Dir(),
                  "var/lib": Dir(), "var/lib/a": File(b"a\n")})
    mid = Layer({"etc": Dir(), "etc/os-release": File(b"mid\n"),
                 "var": Dir(), "var/lib": Opaque(),
                 "var/lib/b": File(b"b\n")})
    top = Layer({"etc": Dir(), "etc/os-release": File(b"top\n"),
                 "opt": Dir(), "opt/old": Whiteout()})
    return Image([base, mid, top], "which:1")


def _which(ctx, path):
    need_layerctl()
    store = new_store(ctx)
    img = _image()
    src, _ = write_source(ctx, img, "oci")
    import_ok(store, src, img)
    return img, lc(store, "which", "which:1", path)


def _rows(r):
    """{layer: (role, rest)} from the per-layer lines."""
    rows = {}
    for line in r.out.splitlines()[1:]:
        m = re.match(r"\s+layer (\d+)\s+sha256:([0-9a-f]{12})\s+(\S+)\s*(.*)",
                     line)
        if not m:
            raise Fail("unexpected line %r in: %s" % (line, r))
        rows[int(m.group(1))] = (m.group(3), m.group(4), m.group(2))
    return rows


def _check(cond, msg):
    if not cond:
        raise Fail(msg)


@test()
def layerctl_which_names_the_provider_and_the_copies_it_shadows(ctx):
    img, r = _which(ctx, "/etc/os-release")
    _check(r.rc == 0, "which failed: %s" % r)
    top_diff = img.layers[-1].diff_id
    _check("provided by layer 0 (sha256:%s)" % top_diff in r.out,
           "provider line wrong: %s" % r)
    rows = _rows(r)
    _check(sorted(rows) == [0, 1, 2], "rows: %r" % rows)
    _check(rows[0][0] == "provides" and rows[1][0] == "shadowed" and
           rows[2][0] == "shadowed", "roles: %r" % rows)
    for layer, (_, _, short) in rows.items():
        want = img.layers[len(img.layers) - 1 - layer].diff_id[:12]
        _check(short == want, "layer %d digest %s, want %s" % (
            layer, short, want))


@test()
def layerctl_which_finds_a_bottom_only_file(ctx):
    img, r = _which(ctx, "etc/keep")
    _check(r.rc == 0 and "provided by layer 2 (sha256:%s)" %
           img.layers[0].diff_id in r.out, "which: %s" % r)
    _check(list(_rows(r)) == [2], "only the bottom layer mentions it: %s" % r)


@test()
def layerctl_which_shows_the_whiteout_that_hides_a_path(ctx):
    img, r = _which(ctx, "/opt/old")
    _check(r.rc == 1 and "not in the merged view" in r.out, "which: %s" % r)
    rows = _rows(r)
    _check(rows.get(0, ("",))[0] == "whiteout", "layer 0: %r" % rows)
    _check("OCI .wh." in rows[0][1], "whiteout format: %r" % rows[0][1])
    _check(rows.get(2, ("",))[0] == "hidden" and
           "regular file" in rows[2][1], "layer 2: %r" % rows)


@test()
def layerctl_which_shows_the_opaque_directory_that_hides_a_path(ctx):
    img, r = _which(ctx, "var/lib/a")
    _check(r.rc == 1 and "not in the merged view" in r.out, "which: %s" % r)
    rows = _rows(r)
    _check("parent directory opaque" in rows.get(1, ("", ""))[1],
           "layer 1 should show the opaque parent: %r" % rows)
    _check(rows.get(2, ("",))[0] == "hidden", "layer 2: %r" % rows)


@test()
def layerctl_which_refuses_an_unknown_image(ctx):
    need_layerctl()
    r = lc(new_store(ctx), "which", "nosuch:1", "/etc")
    _check(r.rc == 1 and r.err.startswith("layerctl: which: ") and
           len(r.err.strip().splitlines()) == 1, "which: %s" % r)
