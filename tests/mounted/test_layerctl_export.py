"""layerctl export: an image of the store as a `docker save` archive or an
OCI image layout (tar or directory), re-imported into a fresh store with the
same image id and diff ids and mounting the same tree; refusals (unknown
image, a layer changed in the store after import, a layer whose original
tar was not in the canonical form) leave no output behind.

Export re-packs each layer from its extracted directory, so a round trip
only works for layers whose tars were written in export's canonical form
(tools/export.c).  canonical_tar() writes that form with Python's tarfile:
tarfile chooses the entries and padding, CanonicalInfo.tobuf() formats each
header as libarchive's pax-restricted writer does (ustar numeric fields
"%06o \\0", directories named with a trailing '/', no user or group names).
Only what a plain ustar header can say is supported here (ASCII names under
100 bytes, no xattrs).

Nothing here uses podman or skopeo.
Run only these:  tests/mounted/run.py -k export
"""

import io
import json
import os
import subprocess
import tarfile

from harness import check, check_eq, test
import images
from images import (CharDev, Dir, Fifo, File, Hardlink, Image, Layer, Opaque,
                    Symlink, Whiteout, diff_fields, expected_fields, mtime_of,
                    tree_fields)
from test_layerctl import (LAYERCTL, Result, check_error, check_loaded,
                           check_mounted_tree, check_store, import_ok, lc,
                           lc_mount, layer_dir, need_layerctl, new_store,
                           read_json)


# ---------------------------------------------------------------- canonical tars

def _octal(n, width):
    """libarchive's ustar numbers: width-2 octal digits, space, NUL."""
    return ("%0*o" % (width - 2, n)).encode() + b" \0"


def _octal12(n):
    return ("%011o" % n).encode() + b" "


class CanonicalInfo(tarfile.TarInfo):
    """A TarInfo whose header is the one libarchive writes."""

    def tobuf(self, format=None, encoding=None, errors=None):
        name = self.name + ("/" if self.type == tarfile.DIRTYPE else "")
        for s in (name, self.linkname):
            if len(s.encode()) >= 100 or not s.isascii():
                raise ValueError("canonical_tar: %r needs a pax header" % s)
        h = bytearray()
        h += name.encode().ljust(100, b"\0")
        h += _octal(self.mode & 0o7777, 8)
        h += _octal(self.uid, 8)
        h += _octal(self.gid, 8)
        h += _octal12(self.size)
        h += _octal12(self.mtime)
        h += b" " * 8                              # checksum, below
        h += self.type
        h += self.linkname.encode().ljust(100, b"\0")
        h += b"ustar\0" + b"00"
        h += b"\0" * 64                            # uname, gname
        h += _octal(self.devmajor, 8)
        h += _octal(self.devminor, 8)
        h += b"\0" * 155                           # prefix
        h = h.ljust(512, b"\0")
        h[148:156] = ("%06o" % sum(h)).encode() + b"\0 "
        return bytes(h)


def canonical_tar(entries):
    """The tar export writes for a tree holding entries ((path, Entry), in
    the canonical order: depth first, children sorted by name bytes; a hard
    link after its target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT,
                      tarinfo=CanonicalInfo) as tf:
        for path, e in entries:
            ti = CanonicalInfo(path)
            # a hard link's header carries the inode's (the target's) times
            ti.mtime = mtime_of(e.target if e.kind == "hardlink" else path)
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname = ti.gname = ""
            ti.mode = 0o777 if e.kind == "symlink" else e.mode
            check(not e.xattrs, "canonical_tar: no xattrs (pax) here")
            data = images.set_type(ti, e)
            tf.addfile(ti, io.BytesIO(data)
                       if data is not None else None)
    return buf.getvalue()


class CanonicalLayer(Layer):
    """A Layer (same spec language) whose tar is in export's canonical
    form, so that export can reproduce it byte for byte."""

    def __init__(self, spec):
        ents = images.normalize(spec)
        # canonical order: hard links in place, not last
        ents = sorted(ents, key=lambda kv: kv[0].split("/"))
        # a hard link's mode and owner are its target's (one inode)
        byname = dict(ents)
        self.entries = []
        for path, e in ents:
            if e.kind == "hardlink":
                t = byname[e.target]
                e = images.Entry("hardlink", t.mode, target=e.target,
                                 uid=t.uid, gid=t.gid)
            self.entries.append((path, e))
        self.tar = canonical_tar(self.entries)
        self.diff_id = images.sha256(self.tar)


def canonical_layers():
    """Three layers: files, modes, owners, symlinks, a hard link, a FIFO,
    a device, whiteouts, an opaque directory, overrides."""
    l0 = CanonicalLayer({
        "etc/os-release": "ID=base\n",
        "etc/hostname": "base\n",
        "bin/sh": File(b"\x7fELF" + b"s" * 3000, 0o755),
        "bin/ls": Symlink("sh"),
        "usr/bin/su": File(b"\x7fELF su", 0o4755),
        "usr/lib/libx.so.1": b"x" * 5000,
        "usr/lib/libx.so": Symlink("libx.so.1"),
        "var/cache/a.bin": b"a" * 100,
        "tmp": Dir(0o1777),
        "root": Dir(0o700),
        "home/user": Dir(0o750, uid=1000, gid=1000),
        "home/user/notes": File("notes\n", 0o600, uid=1000, gid=1000),
        "hl/a": File("two names\n", 0o640),
        "hl/b": Hardlink("hl/a"),
        "dev/console": CharDev(5, 1),
        "run/initctl": Fifo(),
        "empty": "",
    })
    l1 = CanonicalLayer({
        "etc/os-release": "ID=mid\n",
        "etc/hostname": Whiteout(),
        "var/cache": Opaque(),
        "var/cache/b.bin": b"b" * 100,
        "usr/lib/libx.so.2": b"y" * 6000,
        "usr/lib/libx.so": Symlink("libx.so.2"),
        "newdir/sub/deep.txt": "deep\n",
    })
    l2 = CanonicalLayer({
        "etc/os-release": "ID=top\n",
        "root/.profile": "PS1='# '\n",
        "newdir/sub": Whiteout(),
        "bin/ls": Whiteout(),
        "big.bin": bytes(range(256)) * 600,
    })
    return [l0, l1, l2]


# ---------------------------------------------------------------- helpers

def _store_with(ctx, img):
    """A store holding img, imported from a docker save directory."""
    src = ctx.newdir("src")
    img.write_docker(src)
    store = new_store(ctx)
    import_ok(store, src, img)
    return store


def export(store, ref, target, fmt=None, env=None):
    args = ["export", ref, target] + (["--format", fmt] if fmt else [])
    if env is None:
        return lc(store, *args)
    argv = [LAYERCTL, "--store", store] + args
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       env=env, timeout=120)

    return Result(argv, r.returncode, r.stdout.decode(errors="replace"),
                  r.stderr.decode(errors="replace"))


def _unpack(path, dest):
    """The members of the tar at path (names, without "./") into dest."""
    with tarfile.open(path) as tf:
        names = sorted(m.name for m in tf.getmembers())
        for m in tf.getmembers():
            check(not m.name.startswith("/") and ".." not in m.name.split("/"),
                  "export tar member %r" % m.name)
        tf.extractall(dest)
    return names


def check_docker_layout(d, img):
    man = read_json(os.path.join(d, "manifest.json"), "manifest.json")
    check(isinstance(man, list) and len(man) == 1,
          "manifest.json: want one image, got %r" % man)
    m = man[0]
    check_eq(m.get("Config"), img.id + ".json", "manifest Config")
    check_eq(m.get("RepoTags"), [img.tag], "manifest RepoTags")
    check_eq(m.get("Layers"), [l.diff_id + "/layer.tar" for l in img.layers],
             "manifest Layers")
    with open(os.path.join(d, img.id + ".json"), "rb") as f:
        check(f.read() == img.config, "config bytes differ from the stored")
    for l in img.layers:
        with open(os.path.join(d, l.diff_id, "layer.tar"), "rb") as f:
            check(f.read() == l.tar,
                  "layer %s: tar bytes differ" % l.diff_id[:12])


def check_oci_layout(d, img):
    lay = read_json(os.path.join(d, "oci-layout"), "oci-layout")
    check_eq(lay, {"imageLayoutVersion": "1.0.0"}, "oci-layout")
    index = read_json(os.path.join(d, "index.json"), "index.json")
    mans = index.get("manifests")
    check(isinstance(mans, list) and len(mans) == 1,
          "index.json: want one manifest, got %r" % index)
    desc = mans[0]
    check_eq(desc.get("mediaType"), images.MT_MANIFEST, "manifest mediaType")
    check_eq((desc.get("annotations") or {}).get(images.REF_NAME), img.tag,
             "index ref.name annotation")
    blobs = os.path.join(d, "blobs", "sha256")

    def blob(digest):
        check(digest.startswith("sha256:"), "digest %r" % digest)
        with open(os.path.join(blobs, digest[7:]), "rb") as f:
            data = f.read()
        check_eq(images.sha256(data), digest[7:], "blob digest")
        return data
    man = json.loads(blob(desc["digest"]))
    check_eq(man.get("config", {}).get("digest"), "sha256:" + img.id,
             "manifest config digest")
    check(blob(man["config"]["digest"]) == img.config,
          "config bytes differ from the stored")
    layers = man.get("layers")
    check_eq([(x.get("mediaType"), x.get("digest"), x.get("size"))
              for x in layers],
             [(images.MT_LAYER["plain"], "sha256:" + l.diff_id, len(l.tar))
              for l in img.layers], "manifest layers")
    for l in img.layers:
        check(blob("sha256:" + l.diff_id) == l.tar,
              "layer %s: tar bytes differ" % l.diff_id[:12])


def no_leftovers(parent, base, what):
    """Nothing named base or base.export-tmp.* in parent."""
    left = [n for n in os.listdir(parent)
            if n == base or n.startswith(base + ".")]
    check(not left, "%s: left behind in %s: %s" % (what, parent, left))


# ---------------------------------------------------------------- round trips

def _roundtrip(ctx, fmt, as_tar):
    need_layerctl()
    img = Image(canonical_layers(), "lc-export:%s-%s" % (
        fmt or "default", "tar" if as_tar else "dir"))
    store = _store_with(ctx, img)
    out_parent = ctx.newdir("out")
    target = os.path.join(out_parent, "image.tar" if as_tar else "image/")
    # PATH without podman, skopeo or anything else: export needs none
    env = {"PATH": "/nonexistent", "LC_ALL": "C"}
    r = export(store, img.tag, target, fmt, env=env)
    check(r.rc == 0, "export failed: exit %s, stderr %r" % (r.rc, r.err))
    check_eq([n for n in os.listdir(out_parent)],
             ["image.tar" if as_tar else "image"], "output directory")
    d = target
    if as_tar:
        check(os.path.isfile(target), "%s is not a file" % target)
        d = ctx.newdir("unpacked")
        _unpack(target, d)
    check_docker_layout(d, img) if fmt in (None, "docker") else \
        check_oci_layout(d, img)
    # into a fresh store: same id, diff ids, layers, tree
    store2 = new_store(ctx)
    r = lc(store2, "import", target)
    check_loaded(r, img.tag, img.id)
    check_store(store2, img)
    with lc_mount(ctx, store2, img.tag) as m:
        check_mounted_tree(m, img, "mount of the re-imported %s" % img.tag)


def _register(name, fmt, as_tar):
    def fn(ctx):
        _roundtrip(ctx, fmt, as_tar)
    fn.__name__ = name
    fn.__doc__ = "export %s as %s, re-import: same id, diff ids, tree" % (
        fmt or "(default docker)", "tar" if as_tar else "directory")
    test(timeout=90)(fn)


_register("layerctl_export_docker_tar", None, True)
_register("layerctl_export_docker_dir", "docker", False)
_register("layerctl_export_oci_dir", "oci", False)
_register("layerctl_export_oci_tar", "oci", True)


@test(timeout=60)
def layerctl_export_canonical_tar_matches_libarchive(ctx):
    """The test's canonical writer and export agree on every layer (a
    sanity check of canonical_tar itself, through a docker dir export)."""
    need_layerctl()
    img = Image(canonical_layers(), "lc-export:sanity")
    store = _store_with(ctx, img)
    for l in img.layers:
        got = tree_fields(layer_dir(store, l.diff_id))
        lines = diff_fields(got, expected_fields(l.resolved()))
        check(not lines, "layer %s in the store:\n%s" % (
            l.diff_id[:12], "\n".join(lines)))
    out = os.path.join(ctx.newdir("out"), "d/")
    r = export(store, "lc-export:sanity", out, "docker")
    check(r.rc == 0, "export failed: %s" % r.err)
    check_docker_layout(out, img)


# ---------------------------------------------------------------- refusals

@test(timeout=60)
def layerctl_export_of_unknown_image_fails(ctx):
    need_layerctl()
    img = Image(canonical_layers()[:1], "lc-export:known")
    store = _store_with(ctx, img)
    parent = ctx.newdir("out")
    for fmt in ("docker", "oci"):
        r = export(store, "lc-export:nope", os.path.join(parent, "x.tar"),
                   fmt)
        check_error(r, "export", ["lc-export:nope"], "export of an unknown "
                    "image (%s)" % fmt)
        no_leftovers(parent, "x.tar", "export of an unknown image")
    r = export(store, "lc-export:known", os.path.join(parent, "x.tar"),
               "tarball")
    check_error(r, "export", ["tarball"], "export --format tarball")
    no_leftovers(parent, "x.tar", "export --format tarball")


@test(timeout=60)
def layerctl_export_refuses_layer_changed_in_store(ctx):
    """A file of a layer changed after import: the re-packed tar no longer
    hashes to the diff id; exit 1 naming both digests, no output left."""
    need_layerctl()
    img = Image(canonical_layers(), "lc-export:changed")
    store = _store_with(ctx, img)
    victim = img.layers[1]
    p = os.path.join(layer_dir(store, victim.diff_id), "var", "cache",
                     "b.bin")
    st = os.stat(p)
    with open(p, "ab") as f:
        f.write(b"tampered")
    os.utime(p, (st.st_atime, st.st_mtime))
    parent = ctx.newdir("out")
    for fmt, name in (("docker", "x.tar"), ("oci", "x.tar"),
                      ("oci", "xdir/"), ("docker", "ydir/")):
        r = export(store, img.tag, os.path.join(parent, name), fmt)
        check_error(r, "export", ["sha256:" + victim.diff_id,
                                  "re-packed tar has digest sha256:",
                                  "not the stored diff_id"],
                    "export (%s %s) of a changed layer" % (fmt, name))
        no_leftovers(parent, name.rstrip("/"), "failed export")
    check_eq(os.listdir(parent), [], "output directory after failures")


@test(timeout=60)
def layerctl_export_gives_back_a_non_canonical_layer_byte_for_byte(ctx):
    """A layer imported from a tar in another form (Python tarfile's own
    pax headers) comes back as the very bytes imported: import recorded
    the tar's layout (tools/tarsplit.c)."""
    need_layerctl()
    img = Image([Layer({"a/file": "x\n", "a/big": "y" * 70000,
                        "b/empty": ""})], "lc-export:foreign")
    store = _store_with(ctx, img)
    parent = ctx.newdir("out")
    target = os.path.join(parent, "f")
    r = export(store, img.tag, target + "/")
    check(r.rc == 0, "export of a non-canonical layer failed: %s" % r)
    layer = os.path.join(target, img.layers[0].diff_id, "layer.tar")
    with open(layer, "rb") as f:
        check(f.read() == img.layers[0].tar,
              "exported layer differs from the imported tar")


@test(timeout=60)
def layerctl_export_refuses_non_canonical_layer_without_its_record(ctx):
    """Without the layout record, a non-canonical layer cannot be
    reproduced: refused, as documented."""
    need_layerctl()
    img = Image([Layer({"a/file": "x\n"})], "lc-export:foreign")
    store = _store_with(ctx, img)
    os.unlink(layer_dir(store, img.layers[0].diff_id) + ".tarsplit")
    parent = ctx.newdir("out")
    r = export(store, img.tag, os.path.join(parent, "f.tar"))
    check_error(r, "export", ["sha256:" + img.layers[0].diff_id],
                "export of a non-canonical layer")
    no_leftovers(parent, "f.tar", "failed export")

