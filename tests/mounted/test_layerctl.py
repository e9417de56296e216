"""layerctl, the image tool: import of `docker save` archives and OCI image
layouts (tar or directory; plain, gzip and zstd layers) into a store, the
store's layout and ids, `images`, `inspect`, `mount`/`umount` through
layerfs, layer reuse, and a corpus of malformed or hostile images that must
be refused without changing the store or writing outside it.

Every test SKIPs while bin/layerctl (or $LAYERCTL) is not built.
Run only these:  tests/mounted/run.py -k layerctl  (once run.py imports
this module), or  python3 tests/mounted/test_layerctl.py [-k NAME]
"""

import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tarfile

from harness import (MNT, REPO, DAEMON_EXIT_GRACE, Fail, Skip, check,
                     check_eq, is_mounted, list_pids, mounts_at, proc_cmdline,
                     proc_state, test, wait_exit)
import images
from images import (CharDev, Dir, Fifo, File, Hardlink, Image, Layer, Opaque,
                    Symlink, Whiteout, diff_fields, expected_fields, sha256,
                    tree_fields)

LAYERCTL = os.environ.get("LAYERCTL") or os.path.join(REPO, "bin", "layerctl")
CMD_TIMEOUT = 120


def need_layerctl():
    if not (os.path.isfile(LAYERCTL) and os.access(LAYERCTL, os.X_OK)):
        raise Skip("%s not built" % LAYERCTL)


def need_zstd():
    if not images.have_zstd():
        raise Skip("no zstd command")


class Result:
    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    def __str__(self):
        return "%s -> exit %s\n  stdout: %r\n  stderr: %r" % (
            " ".join(self.argv[1:])[-300:], self.rc, self.out[-1500:],
            self.err[-1500:])


def lc(store, *args, timeout=CMD_TIMEOUT):
    argv = [LAYERCTL, "--store", store] + [os.fspath(a) for a in args]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail("layerctl %s: still running after %ds" % (
            " ".join(argv[3:])[:200], timeout))
    return Result(argv, r.returncode, r.stdout.decode(errors="replace"),
                  r.stderr.decode(errors="replace"))


def new_store(ctx):
    return os.path.realpath(ctx.newdir("store"))


# ---------------------------------------------------------------- images

def blob(seed, n):
    """n deterministic pseudo-random bytes."""
    out = bytearray()
    h = seed.encode()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


def base_layers():
    """Three layers (bottom first) exercising overrides, whiteouts, opaque
    directories, a directory replaced by a file, a whited-out name re-created
    in the whiteout's own layer, odd modes (setuid, sticky, 0700, 0777,
    0444), owners, an xattr, a device and a FIFO, hard and symbolic links,
    and a symlink (lib -> usr/lib) that a later layer's directory replaces
    (each layer is extracted on its own).  Names are ASCII: other names
    have their own test."""
    l0 = Layer({
        "etc/os-release": "ID=base\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "etc/hostname": "base\n",
        "etc/empty": "",
        "bin/sh": File(b"\x7fELF" + blob("sh", 3000), 0o755),
        "bin/ls": Symlink("sh"),
        "usr/bin/su": File(b"\x7fELF" + blob("su", 700), 0o4755),
        "usr/lib/libfoo.so.1": blob("libfoo1", 5000),
        "usr/lib/libfoo.so": Symlink("libfoo.so.1"),
        "var/cache/apt/a.bin": blob("a", 100),
        "var/cache/apt/b.bin": blob("b", 100),
        "tmp": Dir(0o1777),
        "root": Dir(0o700),
        "opt/app/old.txt": "old\n",
        "opt/app/config/x.conf": "x=1\n",
        "data/inner.txt": "inner\n",
        "srv/www/index.html": "<html></html>\n",
        "home/user": Dir(0o750, uid=1000, gid=1000),
        "home/user/old.txt": File("old home\n", uid=1000, gid=1000),
        "lib": Symlink("usr/lib"),
        "dev/console": CharDev(5, 1),
        "run/initctl": Fifo(),
        "usr/bin/ping": File(b"\x7fELF" + blob("ping", 300), 0o755,
                             xattrs={"user.lc.origin": "base layer"}),
        "hl/orig": File("shared by two names\n", 0o640),
        "hl/link": Hardlink("hl/orig"),
        "etc/alternatives/editor": Symlink("/usr/bin/vi"),
    })
    l1 = Layer({
        "etc/os-release": "ID=mid\n",
        "etc/hostname": Whiteout(),
        "var/cache/apt": Opaque(),
        "var/cache/apt/c.bin": blob("c", 100),
        "opt/app/config": Whiteout(),
        "data": File("data is a file now\n", 0o600),
        "usr/lib/libfoo.so.2": blob("libfoo2", 6000),
        "usr/lib/libfoo.so": Symlink("libfoo.so.2"),
        "newdir/sub/deep.txt": "deep\n",
        "home/.wh.user": "",       # next to a new home/user (same layer)
        "home/user": Dir(0o700, uid=1001, gid=100),
        "home/user/new.txt": File("new home\n", 0o600, uid=1001, gid=100),
        "lib/extra.so": blob("extra", 200),
        "etc/ro.conf": File("read only\n", 0o444),
        "etc/script": File("#!/bin/sh\n", 0o777),
    })
    l2 = Layer({
        "etc/os-release": "ID=top\n",
        "tmp": Dir(0o1777),
        "tmp/scratch": "scratch\n",
        "root": Dir(0o700),
        "root/.profile": "PS1='# '\n",
        "newdir/sub": Whiteout(),
        "var/cache/apt/d.bin": blob("d", 100),
        "bin/ls": Whiteout(),
        "srv": Whiteout(),
        "opt/app/config/y.conf": "y=2\n",
        "big.bin": blob("big", 150000),
    })
    return [l0, l1, l2]


def check_reference_model():
    """The reference flattening of base_layers(), spelled out, so a mistake
    in images.merge() cannot hide a layerctl mistake."""
    got = images.merge(base_layers())
    paths = set(got)
    want = {"etc", "etc/os-release", "etc/passwd", "etc/empty",
            "etc/ro.conf", "etc/script", "etc/alternatives",
            "etc/alternatives/editor", "bin", "bin/sh", "usr", "usr/bin",
            "usr/bin/su", "usr/lib", "usr/lib/libfoo.so.1",
            "usr/lib/libfoo.so.2", "usr/lib/libfoo.so", "var", "var/cache",
            "var/cache/apt", "var/cache/apt/c.bin", "var/cache/apt/d.bin",
            "tmp", "tmp/scratch", "root", "root/.profile", "opt", "opt/app",
            "opt/app/old.txt", "opt/app/config", "opt/app/config/y.conf",
            "data", "home", "home/user", "home/user/new.txt", "hl",
            "hl/orig", "hl/link", "newdir", "big.bin", "lib",
            "lib/extra.so", "dev", "dev/console", "run", "run/initctl",
            "usr/bin/ping"}
    if paths != want:
        raise Fail("reference model of base_layers() is wrong: extra %s, "
                   "missing %s" % (sorted(paths - want), sorted(want - paths)))
    check_eq(got["etc/os-release"].data, b"ID=top\n", "reference os-release")
    check_eq(got["data"].kind, "file", "reference data")
    check_eq(got["usr/lib/libfoo.so"].target, "libfoo.so.2", "reference so")
    check_eq(got["tmp"].mode, 0o1777, "reference /tmp mode")
    check_eq(got["root"].mode, 0o700, "reference /root mode")
    check_eq((got["home/user"].uid, got["home/user"].mode), (1001, 0o700),
             "reference /home/user owner and mode")
    check_eq(got["lib"].kind, "dir", "reference lib")


def small_layer(tag):
    return Layer({"%s/file" % tag: "content of %s\n" % tag,
                  "%s/dir/x" % tag: blob(tag, 64)})


def write_source(ctx, img, fmt, comps="plain", as_tar=False, ref_name=None):
    """Write img as `fmt` ('docker' or 'oci'); returns (path, info)."""
    d = ctx.newdir(fmt)
    if fmt == "docker":
        info = img.write_docker(d)
    else:
        info = img.write_oci(d, comps, ref_name=ref_name)
    if as_tar:
        t = ctx.newfile(fmt + ".tar")
        images.tar_dir(d, t)
        return t, info
    return d, info


# ---------------------------------------------------------------- checks

def check_loaded(r, tag, img_id):
    if r.rc != 0:
        raise Fail("import failed: %s" % r)
    want = "Loaded image: %s (sha256:%s)" % (tag, img_id)
    check(want in r.out.splitlines(),
          "import output lacks the line %r: %s" % (want, r))


def import_ok(store, src, img, tag=None):
    args = ["import", src] + ([tag] if tag else [])
    r = lc(store, *args)
    check_loaded(r, tag or img.tag, img.id)
    return r


def layer_dir(store, diff_id):
    return os.path.join(store, "layers", "sha256", diff_id)


def read_json(path, what):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Fail("%s: %s" % (what, e))
    try:
        return json.loads(data)
    except ValueError as e:
        raise Fail("%s: not JSON (%s): %r" % (what, e, data[:300]))


def check_store(store, img, tags=None):
    """The store layout for img: extracted layers (whiteout files kept),
    imagedb config bytes, repositories.json tags, layerdb chain ids."""
    errs = []
    for i, l in enumerate(img.layers):
        d = layer_dir(store, l.diff_id)
        if not os.path.isdir(d):
            errs.append("layer %d: %s is not a directory" % (i, d))
            continue
        lines = diff_fields(tree_fields(d), expected_fields(l.resolved()))
        errs += ["layer %d (%s): %s" % (i, l.diff_id[:12], x) for x in lines]
    cfg = os.path.join(store, "imagedb", "sha256", img.id + ".json")
    try:
        with open(cfg, "rb") as f:
            if f.read() != img.config:
                errs.append("%s: not the config bytes" % cfg)
    except OSError as e:
        errs.append("imagedb: %s" % e)
    repos = read_json(os.path.join(store, "repositories.json"),
                      "repositories.json")
    for t in tags or [img.tag]:
        got = repos.get(t) if isinstance(repos, dict) else None
        if got != "sha256:" + img.id:
            errs.append("repositories.json[%r] is %r, want %r (file: %s)" % (
                t, got, "sha256:" + img.id, json.dumps(repos)[:400]))
    for i, (chain, l) in enumerate(zip(img.chain_ids, img.layers)):
        p = os.path.join(store, "layerdb", "sha256", chain, "diff")
        try:
            with open(p, "rb") as f:
                got = f.read().decode(errors="replace").rstrip("\n")
        except OSError as e:
            errs.append("layerdb layer %d: %s" % (i, e))
            continue
        if got != "sha256:" + l.diff_id:
            errs.append("%s: %r, want %r" % (p, got, "sha256:" + l.diff_id))
    if errs:
        raise Fail("store layout:\n" + "\n".join(errs[:40]))


def split_ref(ref):
    name, _, tag = ref.rpartition(":")
    if "/" in tag or not name:
        return ref, "latest"
    return name, tag


def check_images(store, expected):
    """`images`: a header line then one line per tag.  expected: list of
    (name:tag, image id)."""
    r = lc(store, "images")
    if r.rc != 0:
        raise Fail("images failed: %s" % r)
    lines = [l for l in r.out.splitlines() if l.strip()]
    check(lines, "images printed nothing: %s" % r)
    rows = [l.split() for l in lines[1:]]
    want = [list(split_ref(t)) + [i[:12]] for t, i in expected]
    check(lines[0].split()[:3] not in want,
          "images: first line %r is an image, want a header" % lines[0])
    got = sorted(row[:3] for row in rows)
    check_eq(got, sorted(want), "images rows (repository, tag, id)")
    for row in rows:
        check(len(row) >= 5, "images row %r lacks created and size" % row)


def inspect(store, ref):
    r = lc(store, "inspect", ref)
    if r.rc != 0:
        raise Fail("inspect %s failed: %s" % (ref, r))
    try:
        v = json.loads(r.out)
    except ValueError as e:
        raise Fail("inspect %s: not JSON (%s): %r" % (ref, e, r.out[:500]))
    check(isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict),
          "inspect %s: want an array of one object, got %r" % (
              ref, r.out[:300]))
    return v[0]


def check_inspect(store, ref, img, tags=None):
    o = inspect(store, ref)
    errs = []

    def eq(key, want):
        if o.get(key) != want:
            errs.append("%s is %r, want %r" % (key, o.get(key), want))
    eq("Id", "sha256:" + img.id)
    if sorted(o.get("RepoTags") or []) != sorted(tags or [img.tag]):
        errs.append("RepoTags is %r, want %r" % (o.get("RepoTags"),
                                                 tags or [img.tag]))
    eq("Created", img.created)
    eq("Architecture", img.arch)
    eq("Os", img.os)
    size = o.get("Size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        errs.append("Size is %r, want a positive int" % (size,))
    eq("RootFS", {"Type": "layers",
                  "Layers": ["sha256:" + l.diff_id for l in img.layers]})
    det = o.get("LayerDetails")
    if not isinstance(det, list) or len(det) != len(img.layers):
        errs.append("LayerDetails is %r, want %d entries" % (
            det, len(img.layers)))
    else:
        for i, (d, l, c) in enumerate(zip(det, img.layers, img.chain_ids)):
            if not isinstance(d, dict):
                errs.append("LayerDetails[%d] is %r" % (i, d))
                continue
            if d.get("DiffID") != "sha256:" + l.diff_id:
                errs.append("LayerDetails[%d].DiffID %r, want %r" % (
                    i, d.get("DiffID"), "sha256:" + l.diff_id))
            if d.get("ChainID") != "sha256:" + c:
                errs.append("LayerDetails[%d].ChainID %r, want %r" % (
                    i, d.get("ChainID"), "sha256:" + c))
            # an empty layer has 0 files; a layer with entries has at
            # least one and at most one per entry (+ the root)
            s, n = d.get("Size"), d.get("Files")
            lo = 1 if l.entries else 0
            hi = len(l.entries) + 1 if l.entries else 0
            if not isinstance(s, int) or isinstance(s, bool) or s < lo:
                errs.append("LayerDetails[%d].Size %r, want an int >= %d" %
                            (i, s, lo))
            if not isinstance(n, int) or isinstance(n, bool) or \
                    not lo <= n <= hi:
                errs.append("LayerDetails[%d].Files %r, want an int in "
                            "%d..%d" % (i, n, lo, hi))
    if errs:
        raise Fail("inspect %s:\n%s" % (ref, "\n".join(errs)))
    return o


def lc_mount(ctx, store, ref, extra=()):
    """A harness Mount running `layerctl mount REF MNT`; on exit it is
    unmounted and its daemon checked like any other mount."""
    return ctx.mount([], program=LAYERCTL,
                     argv=["--store", store, "mount", ref, MNT] + list(extra))


def check_mounted_tree(m, img, what):
    fstypes = [t for _, t, _ in mounts_at(m.mnt)]
    check(fstypes and fstypes[-1].startswith("fuse"),
          "%s: mount type %r, want fuse*" % (what, fstypes))
    lines = diff_fields(tree_fields(m.mnt), expected_fields(img.merged()))
    if lines:
        raise Fail("%s: mounted tree differs from the expected rootfs:\n%s" %
                   (what, "\n".join(lines)))


def store_listing(store):
    """Every path under the store: type, size, symlink target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(store):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, store)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            else:
                out[rel] = ("%o" % stat.S_IFMT(st.st_mode), st.st_size)
    return out


def listing_diff(before, after, limit=20):
    lines = []
    for k in sorted(set(before) | set(after)):
        if before.get(k) != after.get(k):
            lines.append("%s: %r -> %r" % (k, before.get(k), after.get(k)))
    if len(lines) > limit:
        lines = lines[:limit] + ["... and %d more" % (len(lines) - limit)]
    return lines


# ---------------------------------------------------------------- round trips

def _roundtrip(ctx, fmt, comps, as_tar, tag, refs=()):
    need_layerctl()
    if "zstd" in comps:
        need_zstd()
    check_reference_model()
    img = Image(base_layers(), tag)
    src, _ = write_source(ctx, img, fmt, comps, as_tar)
    store = new_store(ctx)
    import_ok(store, src, img)
    check_store(store, img)
    check_images(store, [(tag, img.id)])
    for ref in (tag,) + tuple(refs):
        check_inspect(store, ref, img)
    with lc_mount(ctx, store, tag) as m:
        check_mounted_tree(m, img, "mount %s" % tag)


def _register_roundtrip(name, fmt, comps, as_tar, tag, refs=()):
    def fn(ctx):
        _roundtrip(ctx, fmt, comps, as_tar, tag, refs)
    fn.__name__ = name
    fn.__doc__ = "import %s (%s, %s layers) -> store, images, inspect, " \
        "mount" % (fmt, "tar" if as_tar else "directory", comps)
    test(timeout=120)(fn)


_register_roundtrip("layerctl_import_docker_save_tar", "docker", "plain",
                    True, "lc-docker:latest", refs=("lc-docker",))
_register_roundtrip("layerctl_import_docker_save_dir", "docker", "plain",
                    False, "lc-docker-dir:v1")
_register_roundtrip("layerctl_import_oci_dir_plain", "oci", "plain", False,
                    "lc-oci:plain")
_register_roundtrip("layerctl_import_oci_dir_gzip", "oci", "gzip", False,
                    "lc-oci:gzip")
_register_roundtrip("layerctl_import_oci_dir_zstd", "oci", "zstd", False,
                    "lc-oci:zstd")
_register_roundtrip("layerctl_import_oci_tar_plain", "oci", "plain", True,
                    "lc-oci-tar:plain")
_register_roundtrip("layerctl_import_oci_tar_gzip", "oci", "gzip", True,
                    "lc-oci-tar:gzip")
_register_roundtrip("layerctl_import_oci_tar_zstd", "oci", "zstd", True,
                    "lc-oci-tar:zstd")
_register_roundtrip("layerctl_import_oci_tar_mixed_compression", "oci",
                    ["gzip", "zstd", "plain"], True, "lc-oci-tar:mixed")


def _import_and_mount(ctx, img, fmt="oci", comps="plain"):
    need_layerctl()
    src, _ = write_source(ctx, img, fmt, comps)
    store = new_store(ctx)
    import_ok(store, src, img)
    check_store(store, img)
    with lc_mount(ctx, store, img.tag) as m:
        check_mounted_tree(m, img, "mount %s" % img.tag)


@test(timeout=120)
def layerctl_import_utf8_names(ctx):
    """UTF-8 names, written as PAX path records as Docker writes them
    (Debian's ca-certificates ships such names), whited out and re-added."""
    low = Layer({
        "usr/share/ca-certificates/mozilla/F\u0151tan\u00fas\u00edtv"
        "\u00e1ny.crt": "cert\n",
        "caf\u00e9/\u65e5\u672c\u8a9e.txt": "utf-8\n",
        "caf\u00e9/gone": "gone\n",
    })
    top = Layer({
        "caf\u00e9/.wh.gone": "",
        "caf\u00e9/\u65e5\u672c\u8a9e.txt": Whiteout(),
        "caf\u00e9/na\u00efve": "top\n",
    })
    img = Image([low, top], "lc-utf8:v1")
    check_eq(sorted(images.merge(img.layers)),
             sorted(["usr", "usr/share", "usr/share/ca-certificates",
                     "usr/share/ca-certificates/mozilla",
                     "usr/share/ca-certificates/mozilla/F\u0151tan\u00fas"
                     "\u00edtv\u00e1ny.crt", "caf\u00e9",
                     "caf\u00e9/na\u00efve"]),
             "reference model (test setup)")
    _import_and_mount(ctx, img, "oci", "gzip")


@test(timeout=120)
def layerctl_import_long_and_odd_names(ctx):
    """Spaces, colons, a name of exactly 255 bytes, a path and a symlink
    target over 100 bytes (PAX records), all ASCII."""
    long_dir = "/".join(["segment%02d" % i for i in range(12)])
    low = Layer({
        "sp ace/co:lon": "odd\n",
        "n" * 255: "name of 255 bytes\n",
        "d/" + "m" * 255 + "/f": "under a dir named with 255 bytes\n",
        long_dir + "/file": "deep\n",
        "longlink": Symlink("/" + long_dir + "/file"),
    })
    top = Layer({"sp ace/.wh.co:lon": "", "sp ace/new one": "new\n"})
    img = Image([low, top], "lc-names:v1")
    _import_and_mount(ctx, img, "oci", "gzip")


@test(timeout=120)
def layerctl_import_gnu_ustar_and_dot_slash_layers(ctx):
    """Layer tars as other tools write them: GNU format (long names as
    ././@LongLink records), plain USTAR, and names starting with "./" after
    a "./" root entry (`tar -C dir -cf - .`)."""
    long_dir = "/".join(["directory%02d" % i for i in range(10)])
    gnu = Layer({long_dir + "/file": "gnu long name\n",
                 "gnu/link": Symlink("../" + long_dir + "/file"),
                 "etc/conf": "gnu\n"}, fmt=tarfile.GNU_FORMAT)
    ustar = Layer({"etc/conf": "ustar\n", "ustar/x": File("x\n", 0o600),
                   "gnu": Opaque(), "gnu/y": "y\n"},
                  fmt=tarfile.USTAR_FORMAT)
    dots = Layer({"etc/conf": "dot slash\n", "dots/a": "a\n",
                  "dots/hard": Hardlink("dots/a"), "ustar/x": Whiteout(),
                  "dots/sub": Dir(0o750)}, prefix="./")
    img = Image([gnu, ustar, dots], "lc-formats:v1")
    check_eq(sorted(images.merge(img.layers)),
             sorted(["etc", "etc/conf", "gnu", "gnu/y", "ustar", "dots",
                     "dots/a", "dots/hard", "dots/sub"] +
                    ["/".join(long_dir.split("/")[:i + 1])
                     for i in range(10)] + [long_dir + "/file"]),
             "reference model (test setup)")
    _import_and_mount(ctx, img, "docker")


def empty_layer():
    """A layer without entries (Docker writes such layers for build steps
    that change nothing; one image may hold several)."""
    return Layer(raw=[])


@test(timeout=120)
def layerctl_import_empty_and_repeated_layers(ctx):
    """Empty layers, twice in one image: one layer dir, a chain id per
    position, and the image mounts."""
    need_layerctl()
    base = base_layers()
    img = Image([base[0], empty_layer(), base[1], empty_layer()],
                "lc-empty:v1")
    check_eq(len(set(img.chain_ids)), 4, "distinct chain ids (test setup)")
    src, _ = write_source(ctx, img, "oci", ["gzip", "gzip", "plain",
                                            "plain"])
    store = new_store(ctx)
    import_ok(store, src, img)
    check_store(store, img)
    check_inspect(store, img.tag, img)
    with lc_mount(ctx, store, img.tag) as m:
        check_mounted_tree(m, img, "mount %s" % img.tag)


@test(timeout=120)
def layerctl_import_docker25_save_archive(ctx):
    """`docker save` from Docker 25 on: an OCI layout (uncompressed layer
    blobs) plus a manifest.json whose Config and Layers name blobs under
    blobs/sha256/."""
    need_layerctl()
    img = Image(base_layers(), "lc-docker25:v1")
    d = ctx.newdir("docker25")
    info = img.write_oci(d, "plain")
    manifest = [{"Config": "blobs/sha256/" + info["config"],
                 "RepoTags": [img.tag],
                 "Layers": ["blobs/sha256/" + h for h in info["layers"]]}]
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    t = images.tar_dir(d, ctx.newfile("docker25.tar"))
    store = new_store(ctx)
    import_ok(store, t, img)
    check_store(store, img)
    with lc_mount(ctx, store, img.tag) as m:
        check_mounted_tree(m, img, "mount %s" % img.tag)


@test(timeout=120)
def layerctl_import_moves_an_existing_tag(ctx):
    """A tag names one image: importing another image under the same tag
    points the tag at the new image; the old image stays reachable by id."""
    need_layerctl()
    old = Image([small_layer("old")], "lc-moving:latest")
    new = Image([small_layer("new")], "lc-moving:latest",
                created="2025-01-01T00:00:00Z")
    store = new_store(ctx)
    for img in (old, new):
        src, _ = write_source(ctx, img, "docker")
        import_ok(store, src, img)
    repos = read_json(os.path.join(store, "repositories.json"),
                      "repositories.json")
    check_eq(repos.get("lc-moving:latest"), "sha256:" + new.id,
             "repositories.json[lc-moving:latest]")
    check_eq(inspect(store, "lc-moving").get("Id"), "sha256:" + new.id,
             "inspect lc-moving")
    check_eq(inspect(store, old.id[:12]).get("Id"), "sha256:" + old.id,
             "inspect of the old image by id prefix")
    with lc_mount(ctx, store, "lc-moving") as m:
        check_mounted_tree(m, new, "mount lc-moving")


@test(timeout=60)
def layerctl_images_on_an_empty_store(ctx):
    """`images` on a store without images: exit 0, the header line only."""
    need_layerctl()
    store = new_store(ctx)
    r = lc(store, "images")
    check_eq(r.rc, 0, "exit status of images on an empty store (%s)" % r)
    lines = [l for l in r.out.splitlines() if l.strip()]
    check_eq(len(lines), 1, "lines printed by images on an empty store")


def _fields_of_dump(dump):
    """tree.py's dump entries projected on the fields tree_fields reads."""
    out = {}
    for rel, e in dump.entries.items():
        if not rel:
            continue
        f = {"type": e["type"], "uid": e["uid"], "gid": e["gid"],
             "mtime": e["mtime"] // 1000000000, "xattrs": e["xattrs"]}
        if e["type"] != "symlink":
            f["mode"] = e["mode"]
        for k in ("size", "sha256", "target", "rdev"):
            if k in e and not (k == "size" and e["type"] == "dir"):
                f[k] = e[k]
        out[rel] = f
    return out


@test(timeout=180)
def layerctl_random_images_mount_as_expected(ctx):
    """Seeded random images (4 to 6 layers over a tiny namespace): the mounted
    tree equals the OCI flattening.  On a difference the message also says
    whether layerfs's own reference model, run over the extracted layer
    dirs, agrees with the mount (a layerfs question, not a layerctl one)."""
    import random
    from tree import reference_dump
    need_layerctl()
    store = new_store(ctx)
    for seed in range(16):
        rng = random.Random(seed)
        img = Image(images.random_layers(rng, 4 + seed % 3),
                    "lc-random:s%d" % seed)
        src, _ = write_source(ctx, img, "oci", "gzip", as_tar=seed % 2 == 1)
        import_ok(store, src, img)
        check_store(store, img, tags=[img.tag])
        with lc_mount(ctx, store, img.tag) as m:
            got = tree_fields(m.mnt)
        lines = diff_fields(got, expected_fields(img.merged()))
        if lines:
            dirs = [layer_dir(store, l.diff_id) for l in reversed(img.layers)]
            model = diff_fields(got, _fields_of_dump(reference_dump(dirs)))
            raise Fail("seed %d: mounted tree differs from the OCI "
                       "flattening:\n%s\nlayerfs's reference model over "
                       "the layer dirs vs the mount: %s" % (
                           seed, "\n".join(lines),
                           "\n".join(model) if model else "same"))


@test(timeout=120)
def layerctl_inspect_accepts_every_image_reference(ctx):
    """name:tag, name (= name:latest), sha256:<id>, the full hex id and a
    12-hex prefix all name the same image; mount takes them too."""
    need_layerctl()
    img = Image(base_layers(), "lc-refs:latest")
    src, _ = write_source(ctx, img, "oci", "gzip")
    store = new_store(ctx)
    import_ok(store, src, img)
    for ref in ("lc-refs:latest", "lc-refs", "sha256:" + img.id, img.id,
                img.id[:12], img.id[:20]):
        check_inspect(store, ref, img)
    for ref in ("sha256:" + img.id, img.id[:12]):
        with lc_mount(ctx, store, ref) as m:
            check_mounted_tree(m, img, "mount %s" % ref)


@test(timeout=120)
def layerctl_import_oci_tag_from_command_line_overrides(ctx):
    """NAME:TAG on the command line replaces the index's ref.name; an index
    without the annotation takes the command line's tag."""
    need_layerctl()
    img = Image(base_layers()[:2], "lc-annot:v1")
    src, _ = write_source(ctx, img, "oci", "gzip")
    store = new_store(ctx)
    import_ok(store, src, img, tag="lc-cli:v2")
    repos = read_json(os.path.join(store, "repositories.json"),
                      "repositories.json")
    check("lc-annot:v1" not in repos,
          "the annotation's tag was recorded although the command line "
          "overrode it: %s" % json.dumps(repos))
    check_store(store, img, tags=["lc-cli:v2"])
    check_images(store, [("lc-cli:v2", img.id)])
    check_inspect(store, "lc-cli:v2", img, tags=["lc-cli:v2"])

    img2 = Image(base_layers()[:1] + [small_layer("noann")], "lc-noann:v3")
    src2, _ = write_source(ctx, img2, "oci", "plain", ref_name=False)
    import_ok(store, src2, img2, tag="lc-noann:v3")
    check_store(store, img2, tags=["lc-noann:v3"])
    with lc_mount(ctx, store, "lc-noann:v3") as m:
        check_mounted_tree(m, img2, "mount lc-noann:v3")


# ---------------------------------------------------------------- reuse

def inodes_of_layer(store, layer):
    """Inode of the layer dir and of every entry in it."""
    d = layer_dir(store, layer.diff_id)
    out = {".": os.lstat(d).st_ino}
    for path, _ in layer.entries:
        out[path] = os.lstat(os.path.join(d, path)).st_ino
    return out


@test(timeout=120)
def layerctl_reimport_same_image_reuses_layers(ctx):
    """Importing the same image again (and under a second tag) exits 0 and
    extracts nothing again: layer dirs and their files keep their inodes,
    and the store holds the same files."""
    need_layerctl()
    img = Image(base_layers(), "lc-again:v1")
    src, _ = write_source(ctx, img, "docker", as_tar=True)
    store = new_store(ctx)
    import_ok(store, src, img)
    inos = [inodes_of_layer(store, l) for l in img.layers]
    listing = store_listing(store)
    import_ok(store, src, img)
    check_eq([inodes_of_layer(store, l) for l in img.layers], inos,
             "inodes of the layer dirs and files after re-import")
    lines = listing_diff(listing, store_listing(store))
    check(not lines, "re-import changed the store:\n" + "\n".join(lines))
    # the same image from an OCI layout (gzip) under another tag
    src2, _ = write_source(ctx, img, "oci", "gzip")
    import_ok(store, src2, img, tag="lc-again:v2")
    check_eq([inodes_of_layer(store, l) for l in img.layers], inos,
             "inodes of the layer dirs and files after import as OCI")
    check_store(store, img, tags=["lc-again:v1", "lc-again:v2"])
    check_images(store, [("lc-again:v1", img.id), ("lc-again:v2", img.id)])
    check_inspect(store, "lc-again:v2", img,
                  tags=["lc-again:v1", "lc-again:v2"])
    with lc_mount(ctx, store, "lc-again:v1") as m:
        check_mounted_tree(m, img, "mount after re-import")


@test(timeout=120)
def layerctl_second_image_reuses_shared_base_layer(ctx):
    """Image B shares A's base layer: importing B (as OCI gzip, A came as
    docker-save) keeps the base layer dir as it was, adds B's own layer and
    chain ids, and both images mount correctly."""
    need_layerctl()
    base = base_layers()
    a = Image(base, "lc-a:latest")
    b = Image([base[0], small_layer("bee")], "localhost:5000/lc/b:v2",
              created="2024-05-06T07:08:09Z")
    store = new_store(ctx)
    src_a, _ = write_source(ctx, a, "docker")
    import_ok(store, src_a, a)
    ino_base = inodes_of_layer(store, base[0])
    src_b, _ = write_source(ctx, b, "oci", "gzip")
    import_ok(store, src_b, b)
    check_eq(inodes_of_layer(store, base[0]), ino_base,
             "inodes of the shared base layer after importing B")
    check_store(store, a)
    check_store(store, b)
    check_eq(b.chain_ids[0], a.chain_ids[0], "shared chain id (test setup)")
    check_images(store, [(a.tag, a.id), (b.tag, b.id)])
    check_inspect(store, a.tag, a)
    check_inspect(store, b.tag, b)
    with lc_mount(ctx, store, b.tag) as mb, lc_mount(ctx, store, a.tag) as ma:
        check_mounted_tree(mb, b, "mount B")
        check_mounted_tree(ma, a, "mount A")


@test(timeout=180)
def layerctl_concurrent_imports_keep_every_image(ctx):
    """Four imports at once into one store, sharing their two base layers
    (as parallel pulls or loads do): each exits 0 and at the end every
    tag, config, layer and chain id is in the store.  (Concurrency is not
    in layerctl's written spec; a container store meets it daily.)"""
    need_layerctl()
    base = base_layers()[:2]
    for rnd in range(3):
        store = new_store(ctx)
        imgs = [Image(base + [small_layer("r%dk%d" % (rnd, k))],
                      "lc-par%d:v%d" % (rnd, k)) for k in range(4)]
        srcs = [write_source(ctx, img, "oci", "gzip")[0] for img in imgs]
        procs = [subprocess.Popen([LAYERCTL, "--store", store, "import", s],
                                  stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for s in srcs]
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=CMD_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            results.append(Result(p.args, p.returncode,
                                  out.decode(errors="replace"),
                                  err.decode(errors="replace")))
        for img, r in zip(imgs, results):
            try:
                check_loaded(r, img.tag, img.id)
            except Fail as e:
                raise Fail("round %d, concurrent import of %s: %s" % (
                    rnd, img.tag, e))
        for img in imgs:
            try:
                check_store(store, img)
            except Fail as e:
                raise Fail("round %d, after 4 concurrent imports that all "
                           "exited 0: %s" % (rnd, e))
    check_images(store, [(img.tag, img.id) for img in imgs])


# ---------------------------------------------------------------- mount

def layerfs_daemons_of(mnt):
    """Processes running layerfs whose command line names the mount point."""
    m = os.fsencode(mnt)
    found = []
    for pid in list_pids():
        argv = proc_cmdline(pid)
        if not argv or pid == os.getpid():
            continue
        if b"layerfs" in os.path.basename(argv[0]) and \
                any(m in a for a in argv[1:]):
            if proc_state(pid) not in (None, "Z", "X"):
                found.append(pid)
    return found


@test(timeout=120)
def layerctl_umount_ends_the_daemon(ctx):
    """mount returns once the tree is live; the serving process is layerfs;
    `layerctl umount` returns 0 with the mount gone and the daemon exits
    (status 0) within the grace period."""
    need_layerctl()
    img = Image(base_layers(), "lc-umount:v1")
    src, _ = write_source(ctx, img, "oci", "plain")
    store = new_store(ctx)
    import_ok(store, src, img)
    for extra in ((), ("--name", "c1")):
        m = lc_mount(ctx, store, img.tag, extra)
        with m:
            with open(m.path("etc/os-release"), "rb") as f:
                check_eq(f.read(), b"ID=top\n", "etc/os-release right after "
                         "mount returned")
            pids = layerfs_daemons_of(m.mnt)
            check(pids, "no layerfs process with %s in its command line "
                  "(mount %s)" % (m.mnt, " ".join(extra)))
            check_mounted_tree(m, img, "mount %s" % " ".join(extra))
            r = lc(store, "umount", m.mnt)
            if r.rc != 0:
                raise Fail("umount failed: %s" % r)
            check(not is_mounted(m.mnt),
                  "%s still mounted after layerctl umount returned" % m.mnt)
            for pid in pids:
                exited, status = wait_exit(pid, DAEMON_EXIT_GRACE)
                check(exited, "layerfs pid %d still running %.0fs after "
                      "layerctl umount" % (pid, DAEMON_EXIT_GRACE))
                if status is not None:
                    check(os.WIFEXITED(status) and
                          os.WEXITSTATUS(status) == 0,
                          "layerfs pid %d ended with wait status %#x" % (
                              pid, status))


@test(timeout=120)
def layerctl_two_named_mounts_of_one_image(ctx):
    """One image mounted twice at once (--name c1, --name c2): both trees
    are right, and unmounting one leaves the other serving."""
    need_layerctl()
    img = Image(base_layers(), "lc-twice:v1")
    src, _ = write_source(ctx, img, "docker")
    store = new_store(ctx)
    import_ok(store, src, img)
    with lc_mount(ctx, store, img.tag, ["--name", "c1"]) as m1:
        with lc_mount(ctx, store, img.tag, ["--name", "c2"]) as m2:
            check_mounted_tree(m1, img, "mount c1")
            check_mounted_tree(m2, img, "mount c2")
            r = lc(store, "umount", m2.mnt)
            if r.rc != 0:
                raise Fail("umount c2 failed: %s" % r)
        check(is_mounted(m1.mnt), "c1 unmounted along with c2")
        check_mounted_tree(m1, img, "mount c1 after c2 was unmounted")


def check_error(r, command, names=(), what=""):
    """Exit 1 and one line `layerctl: <command>: ...` naming each of names."""
    errs = []
    if r.rc != 1:
        errs.append("exit status %s, want 1" % r.rc)
    lines = [l for l in r.err.splitlines() if l.strip()]
    if len(lines) != 1:
        errs.append("stderr has %d lines, want 1" % len(lines))
    if not r.err.startswith("layerctl: %s: " % command):
        errs.append("stderr does not start with 'layerctl: %s: '" % command)
    elif len(r.err.strip().split(": ")) < 4:
        errs.append("stderr is not 'layerctl: %s: <what>: <why>'" % command)
    for n in names:
        if n not in r.err:
            errs.append("stderr does not name %r" % n)
    if "Loaded image" in r.out:
        errs.append("stdout says Loaded image")
    if errs:
        raise Fail("%s: %s\n%s" % (what or command, "; ".join(errs), r))


def _store_with_one_image(ctx):
    need_layerctl()
    img = Image([small_layer("known")], "lc-known:v1")
    src, _ = write_source(ctx, img, "docker")
    store = new_store(ctx)
    import_ok(store, src, img)
    return store


@test(timeout=60)
def layerctl_mount_of_unknown_image_fails(ctx):
    """exit 1, one line naming the image, nothing mounted or running."""
    store = _store_with_one_image(ctx)
    mnt = os.path.realpath(ctx.newdir("mnt"))
    r = lc(store, "mount", "lc-unknown:v1", mnt)
    try:
        check_error(r, "mount", ["lc-unknown:v1"], "mount of an unknown image")
        check(not is_mounted(mnt), "something is mounted at %s" % mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
    left = layerfs_daemons_of(mnt)
    check(not left, "layerfs processes left after a failed mount: %s" % left)


@test(timeout=60)
def layerctl_umount_of_a_directory_not_mounted_fails(ctx):
    """exit 1 and one line `layerctl: umount: ...` naming the directory."""
    store = _store_with_one_image(ctx)
    mnt = os.path.realpath(ctx.newdir("mnt"))
    r = lc(store, "umount", mnt)
    check_error(r, "umount", [mnt], "umount of a directory not mounted")


@test(timeout=60)
def layerctl_inspect_of_unknown_image_fails(ctx):
    store = _store_with_one_image(ctx)
    r = lc(store, "inspect", "lc-unknown:v1")
    check_error(r, "inspect", ["lc-unknown:v1"], "inspect of unknown image")
    r = lc(store, "inspect", "sha256:" + "0" * 64)
    check_error(r, "inspect", ["0" * 12], "inspect of an unknown id")


# ---------------------------------------------------------------- refusals

class Hostile:
    """State of one refusal test: a store already holding a good image, a
    directory outside the store that a hostile layer aims at, and a victim
    file for hard links."""

    def __init__(self, ctx):
        need_layerctl()
        self.ctx = ctx
        self.store = new_store(ctx)
        good = Image([small_layer("pre")], "lc-pre:v1")
        src, _ = write_source(ctx, good, "docker")
        import_ok(self.store, src, good)
        self.outside = os.path.realpath(ctx.newdir("outside"))
        self.victim = os.path.join(os.path.realpath(ctx.newdir("victim")),
                                   "victim")
        with open(self.victim, "wb") as f:
            f.write(b"victim\n")
        self.token = "lcx" + secrets.token_hex(6)
        self.passwd_nlink = os.stat("/etc/passwd").st_nlink
        self.listing = store_listing(self.store)

    def image(self, bad_layer, tag="lc-bad:v1", **kw):
        """A new good layer (not in the store) below the bad one, so a
        refusal must also take back the layer it already extracted."""
        return Image([small_layer("fresh"), bad_layer], tag, **kw)

    def refused(self, src, names=(), what="", extra_tokens=()):
        r = lc(self.store, "import", src)
        # what was written first (the worse failure), then the message
        check(r.rc != 0, "%s: import succeeded: %s" % (what, r))
        lines = listing_diff(self.listing, store_listing(self.store))
        check(not lines, "%s: refused import changed the store:\n%s" % (
            what, "\n".join(lines)))
        check(not os.listdir(self.outside),
              "%s: files written outside the store: %s" % (
                  what, os.listdir(self.outside)))
        check_eq(os.stat(self.victim).st_nlink, 1,
                 "%s: link count of a file outside the store" % what)
        check_eq(os.stat("/etc/passwd").st_nlink, self.passwd_nlink,
                 "%s: link count of /etc/passwd" % what)
        for tok in (self.token,) + tuple(extra_tokens):
            hits = find_named(tok, ["/tmp", "/", "/etc"], self.ctx.dir)
            check(not hits, "%s: %s created outside the store" % (what, hits))
        check_error(r, "import", names, what)
        return r


def find_named(token, roots, tree=None):
    """Paths whose name contains token: in each of roots (one level deep)
    and anywhere under tree (not crossing into other file systems)."""
    hits = []
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        hits += [os.path.join(root, n) for n in names if token in n]
    if tree:
        dev = os.lstat(tree).st_dev
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames[:] = [d for d in dirnames if os.lstat(
                os.path.join(dirpath, d)).st_dev == dev]
            hits += [os.path.join(dirpath, n) for n in dirnames + filenames
                     if token in n]
    return sorted(set(hits))


def deep_up(abs_path):
    """A relative path that climbs to / from any directory, then descends
    to abs_path."""
    return "../" * 48 + abs_path.lstrip("/")


@test(timeout=60)
def layerctl_refuses_oci_blob_digest_mismatch(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("bad"))
    src, info = write_source(ctx, img, "oci", "plain")
    bad_hex = info["layers"][1]
    other = small_layer("other").tar
    with open(os.path.join(info["blobs"], bad_hex), "wb") as f:
        f.write(other)
    h.refused(src, [bad_hex, "sha256:" + bad_hex, "sha256:" + sha256(other)],
              "layer blob whose content does not hash to its digest")


@test(timeout=60)
def layerctl_refuses_oci_blob_digest_mismatch_in_tar(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("bad"))
    d = ctx.newdir("oci")
    info = img.write_oci(d, "gzip")
    bad_hex = info["layers"][1]
    other = images.compress(small_layer("other").tar, "gzip")
    with open(os.path.join(info["blobs"], bad_hex), "wb") as f:
        f.write(other)
    t = images.tar_dir(d, ctx.newfile("oci.tar"))
    h.refused(t, [bad_hex, "sha256:" + bad_hex, "sha256:" + sha256(other)],
              "OCI tar with a layer blob not matching its digest")


@test(timeout=60)
def layerctl_refuses_oci_manifest_digest_mismatch(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("man"))
    src, info = write_source(ctx, img, "oci", "plain")
    path = os.path.join(info["blobs"], info["manifest"])
    with open(path, "rb") as f:
        changed = f.read() + b"\n"
    with open(path, "wb") as f:
        f.write(changed)
    h.refused(src, [info["manifest"], "sha256:" + info["manifest"],
                    "sha256:" + sha256(changed)],
              "manifest blob not matching its digest")


@test(timeout=60)
def layerctl_refuses_oci_config_digest_mismatch(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("cfg"))
    src, info = write_source(ctx, img, "oci", "plain")
    changed = img.config.replace(b'"amd64"', b'"arm64"')
    with open(os.path.join(info["blobs"], info["config"]), "wb") as f:
        f.write(changed)
    h.refused(src, [info["config"], "sha256:" + info["config"],
                    "sha256:" + sha256(changed)],
              "config blob not matching its digest")


@test(timeout=60)
def layerctl_refuses_oci_wrong_diff_id(ctx):
    h = Hostile(ctx)
    bad = small_layer("diff")
    wrong = sha256(b"not the layer")
    good = small_layer("fresh")
    img = Image([good, bad], "lc-bad:v1", diff_ids=[good.diff_id, wrong])
    src, info = write_source(ctx, img, "oci", "gzip")
    h.refused(src, [info["layers"][1], "sha256:" + wrong,
                    "sha256:" + bad.diff_id],
              "config diff_id not matching the uncompressed layer")


@test(timeout=60)
def layerctl_refuses_docker_wrong_diff_id(ctx):
    h = Hostile(ctx)
    bad = small_layer("diff")
    wrong = sha256(b"not the layer")
    good = small_layer("fresh")
    img = Image([good, bad], "lc-bad:v1", diff_ids=[good.diff_id, wrong])
    src, info = write_source(ctx, img, "docker")
    h.refused(src, [info["layers"][1], "sha256:" + wrong,
                    "sha256:" + bad.diff_id],
              "docker-save config diff_id not matching layer.tar")


@test(timeout=60)
def layerctl_refuses_truncated_gzip_layer(ctx):
    h = Hostile(ctx)
    img = h.image(Layer({"big.bin": blob("trunc", 60000), "x": "x"}))
    d = ctx.newdir("oci")
    info = img.write_oci(d, "gzip")
    # cut the gzip stream in half and give the blob its honest digest, so
    # only decompression can notice
    path = os.path.join(info["blobs"], info["layers"][1])
    with open(path, "rb") as f:
        data = f.read()
    cut = data[:len(data) // 2]
    cut_hex = sha256(cut)
    os.unlink(path)
    with open(os.path.join(info["blobs"], cut_hex), "wb") as f:
        f.write(cut)
    rewrite_manifest(d, info, lambda man: _swap_layer(man, 1, cut_hex,
                                                      len(cut)))
    h.refused(d, [cut_hex], "truncated gzip layer")


def _swap_layer(man, i, hexd, size):
    man["layers"][i]["digest"] = "sha256:" + hexd
    man["layers"][i]["size"] = size


def rewrite_manifest(d, info, change):
    """Edit the OCI manifest, store it under its new digest and point the
    index at it."""
    blobs = info["blobs"]
    with open(os.path.join(blobs, info["manifest"]), "rb") as f:
        man = json.loads(f.read())
    change(man)
    data = json.dumps(man, sort_keys=True).encode()
    os.unlink(os.path.join(blobs, info["manifest"]))
    info["manifest"] = sha256(data)
    with open(os.path.join(blobs, info["manifest"]), "wb") as f:
        f.write(data)
    ipath = os.path.join(d, "index.json")
    with open(ipath, "rb") as f:
        index = json.loads(f.read())
    index["manifests"][0]["digest"] = "sha256:" + info["manifest"]
    index["manifests"][0]["size"] = len(data)
    with open(ipath, "wb") as f:
        f.write(json.dumps(index, sort_keys=True).encode())


def _refuse_layer(ctx, entries, what, entry_names=(), fmt="oci",
                  extra_tokens=()):
    """Import an image whose second layer is `entries` (raw, in order);
    it must be refused, naming the layer (and the offending entry)."""
    h = Hostile(ctx)

    def subst(text):
        return text.replace("TOKEN", h.token) \
            .replace("OUTSIDE", h.outside.lstrip("/")) \
            .replace("VICTIM", h.victim.lstrip("/"))
    fixed = []
    for p, e in entries:
        if e.target:
            e = images.Entry(e.kind, e.mode, e.data, subst(e.target))
        fixed.append((subst(p), e))
    bad = Layer.from_raw(fixed)
    img = h.image(bad)
    src, info = write_source(ctx, img, fmt, "gzip" if fmt == "oci" else
                             "plain")
    names = [info["layers"][1]] + [subst(n) for n in entry_names]
    return h.refused(src, names, what, extra_tokens)


@test(timeout=60)
def layerctl_refuses_dotdot_entry(ctx):
    _refuse_layer(ctx, [("ok", Dir()), ("ok/file", File("fine")),
                        ("../escape-TOKEN", File("escaped"))],
                  "entry ../escape", ["../escape-TOKEN"])


@test(timeout=60)
def layerctl_refuses_deep_dotdot_entry(ctx):
    """The entry climbs to / and down into a directory outside the store;
    an extractor following it would write there."""
    _refuse_layer(ctx, [("a", Dir()),
                        ("a/" + deep_up("/OUTSIDE/escaped-TOKEN"),
                         File("escaped"))],
                  "entry a/../../..", ["escaped-TOKEN"], fmt="docker")


@test(timeout=60)
def layerctl_refuses_absolute_entry(ctx):
    _refuse_layer(ctx, [("ok", Dir()), ("/OUTSIDE/abs-TOKEN", File("abs")),
                        ("/tmp/abs-TOKEN", File("abs"))],
                  "absolute entry", ["abs-TOKEN"])


@test(timeout=60)
def layerctl_refuses_write_through_absolute_symlink(ctx):
    """`link -> /outside` then `link/file`: extracting link/file would
    write outside the layer."""
    _refuse_layer(ctx, [("link", Symlink("/OUTSIDE")),
                        ("link/file-TOKEN", File("through the link"))],
                  "write through a symlink", ["link/file-TOKEN"])


@test(timeout=60)
def layerctl_refuses_write_through_relative_symlink(ctx):
    _refuse_layer(ctx, [("d", Dir()), ("d/up", Symlink(deep_up("/OUTSIDE"))),
                        ("d/up/file-TOKEN", File("through the link"))],
                  "write through a climbing symlink", ["d/up/file-TOKEN"],
                  fmt="docker")


@test(timeout=60)
def layerctl_refuses_dir_through_symlink(ctx):
    """A directory entry, then a file in it, through a symlink."""
    _refuse_layer(ctx, [("link", Symlink("/OUTSIDE")),
                        ("link/sub-TOKEN", Dir()),
                        ("link/sub-TOKEN/f", File("x"))],
                  "directory through a symlink", ["link/sub-TOKEN"])


@test(timeout=60)
def layerctl_refuses_hardlink_outside(ctx):
    _refuse_layer(ctx, [("ok", File("fine")),
                        ("hardlink", Hardlink("../../etc/passwd"))],
                  "hard link to ../../etc/passwd", ["../../etc/passwd"])


@test(timeout=60)
def layerctl_refuses_hardlink_climbing_to_victim(ctx):
    _refuse_layer(ctx, [("ok", File("fine")),
                        ("hardlink", Hardlink(deep_up("/VICTIM")))],
                  "hard link climbing to a file outside", ["hardlink"],
                  fmt="docker")


@test(timeout=60)
def layerctl_refuses_hardlink_through_symlink(ctx):
    """`vlink -> <dir outside>` then a hard link to `vlink/victim`: linking
    would follow the symlink to a file outside the layer."""
    h = Hostile(ctx)
    bad = Layer.from_raw([("vlink", Symlink(os.path.dirname(h.victim))),
                          ("hardlink", Hardlink("vlink/victim"))])
    img = h.image(bad)
    src, info = write_source(ctx, img, "oci", "plain")
    h.refused(src, [info["layers"][1]], "hard link through a symlink")


@test(timeout=60)
def layerctl_refuses_name_over_255_bytes(ctx):
    _refuse_layer(ctx, [("d", Dir()), ("d/" + "n" * 256, File("long"))],
                  "a name of 256 bytes")


@test(timeout=60)
def layerctl_refuses_missing_blob(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("gone"))
    src, info = write_source(ctx, img, "oci", "gzip")
    os.unlink(os.path.join(info["blobs"], info["layers"][1]))
    h.refused(src, [info["layers"][1]], "missing layer blob")


@test(timeout=60)
def layerctl_refuses_missing_index_json(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("noindex"))
    src, info = write_source(ctx, img, "oci", "plain")
    os.unlink(os.path.join(src, "index.json"))
    h.refused(src, ["index.json"], "OCI layout without index.json")


@test(timeout=60)
def layerctl_refuses_missing_manifest_json(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("nomanifest"))
    d = ctx.newdir("docker")
    img.write_docker(d)
    os.unlink(os.path.join(d, "manifest.json"))
    h.refused(d, ["manifest.json"], "docker-save dir without manifest.json")
    t = images.tar_dir(d, ctx.newfile("docker.tar"))
    h.refused(t, ["manifest.json"], "docker-save tar without manifest.json")


@test(timeout=60)
def layerctl_refuses_bad_json_manifest(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("badjson"))
    d = ctx.newdir("docker")
    img.write_docker(d)
    with open(os.path.join(d, "manifest.json"), "wb") as f:
        f.write(b'[{"Config": "%s.json", "Layers": [' % img.id.encode())
    h.refused(d, ["manifest.json"], "manifest.json that is not JSON")


@test(timeout=60)
def layerctl_refuses_bad_json_oci_manifest_blob(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("badjson"))
    src, info = write_source(ctx, img, "oci", "plain")
    data = b'{"schemaVersion": 2, "layers": [{'
    hexd = sha256(data)
    with open(os.path.join(info["blobs"], hexd), "wb") as f:
        f.write(data)
    ipath = os.path.join(src, "index.json")
    index = json.loads(open(ipath, "rb").read())
    index["manifests"][0]["digest"] = "sha256:" + hexd
    index["manifests"][0]["size"] = len(data)
    with open(ipath, "wb") as f:
        f.write(json.dumps(index).encode())
    h.refused(src, [hexd], "OCI manifest blob that is not JSON")


@test(timeout=60)
def layerctl_refuses_docker_config_not_matching_its_name(ctx):
    h = Hostile(ctx)
    img = h.image(small_layer("cfgname"))
    src, info = write_source(ctx, img, "docker")
    changed = img.config.replace(b'"amd64"', b'"arm64"')
    with open(os.path.join(src, info["config"]), "wb") as f:
        f.write(changed)
    h.refused(src, [info["config"], "sha256:" + img.id,
                    "sha256:" + sha256(changed)],
              "docker-save config not matching its digest name")


@test(timeout=60)
def layerctl_refuses_layer_that_is_not_a_tar(ctx):
    """A layer blob of random bytes whose digests are all honest."""
    h = Hostile(ctx)
    junk = Layer(raw=[])
    junk.tar = blob("junk", 3000)
    junk.diff_id = sha256(junk.tar)
    img = h.image(junk)
    src, info = write_source(ctx, img, "oci", "plain")
    h.refused(src, [info["layers"][1]], "layer that is not a tar")


@test(timeout=60)
def layerctl_refuses_malformed_digest(ctx):
    """A manifest naming a layer by a digest that is not 64 hex digits
    (here a path that climbs out of the layout) is refused."""
    h = Hostile(ctx)
    img = h.image(small_layer("digest"))
    d = ctx.newdir("oci")
    info = img.write_oci(d, "plain")
    # an honest blob put where the bad digest would lead
    evil = os.path.join(h.outside, "evil")
    shutil.copy(os.path.join(info["blobs"], info["layers"][1]), evil)
    bad = "sha256:" + deep_up(evil)
    rewrite_manifest(d, info, lambda man: man["layers"][1].__setitem__(
        "digest", bad))
    os.unlink(evil)
    os.symlink(os.path.join(info["blobs"], info["layers"][1]), evil)
    h.listing = store_listing(h.store)
    r = lc(h.store, "import", d)
    os.unlink(evil)
    check_error(r, "import", ["evil"], "malformed layer digest")
    lines = listing_diff(h.listing, store_listing(h.store))
    check(not lines, "refused import changed the store:\n" +
          "\n".join(lines))


@test(timeout=60)
def layerctl_refuses_docker_paths_outside_the_archive(ctx):
    """A docker-save tar whose manifest.json names a config and layers
    outside the archive (climbing with ..): these are not read."""
    h = Hostile(ctx)
    img = h.image(small_layer("outer"))
    real = ctx.newdir("docker")
    info = img.write_docker(real)
    # put the genuine files outside, and an archive that points at them
    for rel in [info["config"]] + info["layers"]:
        dst = os.path.join(h.outside, rel.replace("/", "_"))
        shutil.copy(os.path.join(real, rel), dst)
    d = ctx.newdir("archive")
    manifest = [{"Config": deep_up(os.path.join(h.outside, info["config"])),
                 "RepoTags": [img.tag],
                 "Layers": [deep_up(os.path.join(h.outside,
                                                 l.replace("/", "_")))
                            for l in info["layers"]]}]
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    t = images.tar_dir(d, ctx.newfile("docker.tar"))
    before = sorted(os.listdir(h.outside))
    r = lc(h.store, "import", t)
    check_error(r, "import", [], "manifest.json naming files outside the "
                "archive")
    check_eq(sorted(os.listdir(h.outside)), before, "outside dir")
    lines = listing_diff(h.listing, store_listing(h.store))
    check(not lines, "refused import changed the store:\n" +
          "\n".join(lines))


def _outer_tar(ctx, h, entries):
    """A docker-save tar built from raw entries (the archive itself is
    hostile, not a layer)."""
    t = ctx.newfile("hostile.tar")
    with open(t, "wb") as f:
        f.write(images.tar_bytes(entries))
    return t


@test(timeout=60)
def layerctl_hostile_outer_archive_writes_nothing_outside(ctx):
    """The image archive itself holds ../ entries, an absolute entry and a
    symlink followed by a file through it.  Whether or not the import is
    refused, nothing may be written outside the store; a refused import
    leaves the store unchanged."""
    h = Hostile(ctx)
    img = h.image(small_layer("outer"))
    d = ctx.newdir("docker")
    img.write_docker(d)
    entries = []
    for dirpath, dirnames, filenames in sorted(os.walk(d)):
        rel = os.path.relpath(dirpath, d)
        if rel != ".":
            entries.append((rel, Dir()))
        for n in sorted(filenames):
            with open(os.path.join(dirpath, n), "rb") as f:
                entries.append((os.path.normpath(os.path.join(rel, n)),
                                File(f.read())))
    tok = h.token
    cases = [
        ("../ entry", [("../outer-" + tok, File("dotdot"))]),
        ("climbing entry", [(deep_up(os.path.join(h.outside, "deep-" + tok)),
                             File("deep"))]),
        ("absolute entry", [(os.path.join(h.outside, "abs-" + tok),
                             File("abs"))]),
        ("symlink then a file through it",
         [("escape", Symlink(h.outside)),
          ("escape/through-" + tok, File("through"))]),
        ("symlink then a directory through it",
         [("escape", Symlink(h.outside)),
          ("escape/dir-" + tok, Dir()),
          ("escape/dir-" + tok + "/f", File("through"))]),
    ]
    variants = []
    for what, bad in cases:
        variants.append((what + ", before the image files", bad + entries))
        variants.append((what + ", after the image files", entries + bad))
    for variant, ents in variants:
        t = _outer_tar(ctx, h, ents)
        r = lc(h.store, "import", t)
        check(not os.listdir(h.outside),
              "%s: written outside the store: %s" % (
                  variant, os.listdir(h.outside)))
        hits = find_named(h.token, ["/tmp", "/"], ctx.dir)
        check(not hits, "%s: created outside the store: %s" % (variant,
                                                                 hits))
        if r.rc != 0:
            check_error(r, "import", [], variant)
            lines = listing_diff(h.listing, store_listing(h.store))
            check(not lines, "%s: refused import changed the store:\n%s" %
                  (variant, "\n".join(lines)))
        else:
            check_store(h.store, img)
            h.listing = store_listing(h.store)


@test(timeout=60)
def layerctl_refused_import_leaves_a_fresh_store_unchanged(ctx):
    """The store is unchanged by a refused import even when it was an
    empty directory before (nothing created in it)."""
    need_layerctl()
    store = new_store(ctx)
    img = Image([small_layer("fresh"), small_layer("bad")], "lc-bad:v1")
    src, info = write_source(ctx, img, "oci", "plain")
    with open(os.path.join(info["blobs"], info["layers"][1]), "wb") as f:
        f.write(small_layer("other").tar)
    r = lc(store, "import", src)
    check_error(r, "import", [info["layers"][1]], "blob digest mismatch")
    check_eq(store_listing(store), {}, "store listing after a refused "
             "import into an empty store")


if __name__ == "__main__":
    # Run just these tests with the suite's runner, even while run.py does
    # not import this module: python3 tests/mounted/test_layerctl.py [-k ..]
    sys.modules.setdefault("test_layerctl", sys.modules["__main__"])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run
    if "-k" not in sys.argv:
        sys.argv += ["-k", "layerctl"]
    sys.exit(run.main())
