"""layerctl commit: a container's upper directory becomes a new layer and
image.  The layer tar carries OCI whiteouts and opaque markers; committing
the same upper twice gives the same diff_id; the committed image mounts
(and exports, and imports elsewhere) showing what the container showed.

Run only these:  tests/mounted/run.py -k commit
"""

import io
import os
import subprocess
import tarfile

from harness import Fail, check, check_eq, test
from images import Dir, File, Image, Layer
from test_layerctl import (import_ok, inspect, lc, lc_mount, need_layerctl,
                           new_store, read_json, write_source)
from tree import assert_same, dump_tree


def base_image():
    return Image([
        Layer({"etc/a": "a\n", "etc/b": "b\n", "d/x": "x\n",
               "d/sub/y": "y\n", "keep/k": "k\n"}),
        Layer({"etc/c": "c\n", "etc/b": "b2\n"}),
    ], "commitbase:1")


def changed_container(ctx, store, name="c1"):
    """Import the base image, mount it as container `name`, change it:
    a new file, a removed lower file, a directory replaced (rm -rf then
    mkdir: opaque), a rewritten file.  Returns the tree it showed."""
    need_layerctl()
    img = base_image()
    src, _ = write_source(ctx, img, "docker")
    import_ok(store, src, img)
    with lc_mount(ctx, store, img.tag, ["--name", name]) as m:
        with open(m.path("etc/new"), "wb") as f:
            f.write(b"new\n")
        os.unlink(m.path("etc/a"))
        subprocess.run(["rm", "-rf", m.path("d")], check=True)
        os.mkdir(m.path("d"))
        with open(m.path("d/y2"), "wb") as f:
            f.write(b"y2\n")
        with open(m.path("etc/b"), "ab") as f:
            f.write(b"more\n")
        shown = dump_tree(m.mnt)
    return img, shown


def same_tree(got, want, what):
    """Trees equal but for sub-second mtimes, which a tar does not keep
    (whole seconds, as docker commit), and the mount root's own times,
    which no layer records."""
    def whole_seconds(dump):
        for path, fields in dump.entries.items():
            if "mtime" in fields:
                fields["mtime"] = None if path == b"" else \
                    fields["mtime"] // 10**9
        return dump
    assert_same(whole_seconds(got), whole_seconds(want), what)


def commit(store, name, tag):
    r = lc(store, "commit", name, tag)
    if r.rc != 0:
        raise Fail("commit failed: %s" % r)
    out = r.out.strip()
    check(out.startswith("sha256:") and len(out) == 71,
          "commit printed %r, want sha256:<id>" % out)
    return out[7:]


def top_diff(store, ref):
    layers = inspect(store, ref)["RootFS"]["Layers"]
    return layers[-1][7:]


@test()
def layerctl_commit_mounts_what_the_container_showed(ctx):
    store = new_store(ctx)
    img, shown = changed_container(ctx, store)
    commit(store, "c1", "committed:1")
    layers = inspect(store, "committed:1")["RootFS"]["Layers"]
    check_eq(len(layers), len(img.layers) + 1, "layer count of the commit")
    with lc_mount(ctx, store, "committed:1", ["--read-only"]) as m:
        same_tree(dump_tree(m.mnt), shown, "committed image vs container")


@test()
def layerctl_commit_twice_gives_the_same_diff_id(ctx):
    store = new_store(ctx)
    changed_container(ctx, store)
    commit(store, "c1", "twice:1")
    commit(store, "c1", "twice:2")
    check_eq(top_diff(store, "twice:2"), top_diff(store, "twice:1"),
             "diff_id of the second commit")


def layer_tar_entries(ctx, store, ref):
    """The names and types in the top layer tar of `ref`, as export writes
    it (docker save directory)."""
    out = ctx.newdir("export")
    r = lc(store, "export", ref, out + "/")
    if r.rc != 0:
        raise Fail("export failed: %s" % r)
    manifest = read_json(os.path.join(out, "manifest.json"), "manifest")
    top = manifest[0]["Layers"][-1]
    with tarfile.open(os.path.join(out, top)) as t:
        return [(m.name, m.type, m.pax_headers) for m in t.getmembers()]


@test()
def layerctl_commit_writes_oci_whiteouts(ctx):
    store = new_store(ctx)
    changed_container(ctx, store)
    commit(store, "c1", "oci:1")
    entries = layer_tar_entries(ctx, store, "oci:1")
    names = [n for n, _, _ in entries]
    for want in ("etc/.wh.a", "d/.wh..wh..opq", "etc/new", "d/y2", "etc/b"):
        check(want in names, "commit layer lacks %s: %r" % (want, names))
    check("etc/a" not in names and "d/x" not in names,
          "commit layer holds removed names: %r" % names)
    check(names.index("d") < names.index("d/.wh..wh..opq") <
          names.index("d/y2"), "opaque marker not right after its "
          "directory: %r" % names)
    for n, typ, pax in entries:
        for k in pax:
            check("overlay." not in k,
                  "%s carries the overlay's own xattr %s" % (n, k))
        if os.path.basename(n).startswith(".wh."):
            check_eq(typ, tarfile.REGTYPE, "type of %s" % n)


@test()
def layerctl_commit_round_trips_through_export(ctx):
    store = new_store(ctx)
    _, shown = changed_container(ctx, store)
    new_id = commit(store, "c1", "trip:1")
    out = ctx.newdir("export")
    r = lc(store, "export", "trip:1", out + "/")
    if r.rc != 0:
        raise Fail("export failed: %s" % r)
    other = new_store(ctx)
    r = lc(other, "import", out)
    if r.rc != 0:
        raise Fail("import of the export failed: %s" % r)
    check(new_id in r.out, "import printed %r, want id %s" % (r.out, new_id))
    with lc_mount(ctx, other, "trip:1", ["--read-only"]) as m:
        same_tree(dump_tree(m.mnt), shown, "re-imported commit vs container")


@test()
def layerctl_commit_refuses_unknown_container(ctx):
    need_layerctl()
    store = new_store(ctx)
    img = base_image()
    src, _ = write_source(ctx, img, "docker")
    import_ok(store, src, img)
    before = sorted(os.listdir(os.path.join(store, "imagedb", "sha256")))
    r = lc(store, "commit", "nosuch", "x:1")
    check(r.rc != 0, "commit of an unknown container succeeded: %s" % r)
    check("nosuch" in r.err, "error does not name the container: %s" % r)
    check_eq(sorted(os.listdir(os.path.join(store, "imagedb", "sha256"))),
             before, "image configs after a refused commit")


@test()
def layerctl_history_shows_the_commit_on_top(ctx):
    store = new_store(ctx)
    img, _ = changed_container(ctx, store)
    commit(store, "c1", "hist:1")
    r = lc(store, "history", "hist:1")
    if r.rc != 0:
        raise Fail("history failed: %s" % r)
    rows = r.out.splitlines()[1:]
    check_eq(len(rows), len(img.layers) + 1, "history rows")
    check("layerctl commit" in rows[0], "newest row: %r" % rows[0])
    top = top_diff(store, "hist:1")
    check(rows[0].startswith(top[:12]), "newest row's layer: %r, want %s" % (
        rows[0], top[:12]))
    r = lc(store, "history", "nosuch:1")
    check(r.rc != 0 and "nosuch" in r.err, "history of an unknown image: %s"
          % r)
