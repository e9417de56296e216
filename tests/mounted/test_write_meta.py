"""Metadata-only copy-up (`-o metacopy=on`, README "Writing"): a chmod,
chown, utimes or xattr change of a lower file copies no data; the data
follows on the first change that needs it, and everything that reads the
upper (a remount, layerctl commit) finds the data where it is.

Run only these:  tests/mounted/run.py -k metacopy
"""

import hashlib
import json
import os

from harness import Fail, check, check_eq, test
from images import Dir, File, Image, Layer
from test_layerctl import (import_ok, lc, lc_mount, need_layerctl, new_store,
                           write_source)

MIB = 1 << 20
META = "trusted.overlay.metacopy"


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def has_meta(path):
    try:
        os.getxattr(path, META, follow_symlinks=False)
        return True
    except OSError:
        return False


def setup(ctx, size=8 * MIB):
    lower, upper, work = (ctx.newdir(n) for n in ("lower", "upper", "work"))
    os.makedirs(os.path.join(lower, "d"))
    with open(os.path.join(lower, "d", "big"), "wb") as f:
        f.write(os.urandom(size))
    with open(os.path.join(lower, "d", "small"), "w") as f:
        f.write("small\n")
    return lower, upper, work


def mount(ctx, lower, upper, work):
    return ctx.mount([lower], upper=upper, work=work,
                     extra_opts=["metacopy=on"])


@test()
def metacopy_chown_copies_no_data(ctx):
    lower, upper, work = setup(ctx)
    want = sha(os.path.join(lower, "d/big"))
    with mount(ctx, lower, upper, work) as m:
        before = json.loads(os.getxattr(m.mnt, "layerfs.stats"))
        os.chown(m.path("d/big"), 1234, 5678)
        os.chmod(m.path("d/big"), 0o600)
        os.setxattr(m.path("d/big"), "user.k", b"v")
        after = json.loads(os.getxattr(m.mnt, "layerfs.stats"))
        st = os.stat(m.path("d/big"))
        check_eq((st.st_uid, st.st_gid, st.st_mode & 0o7777),
                 (1234, 5678, 0o600), "owner and mode through the mount")
        check_eq(st.st_size, 8 * MIB, "size through the mount")
        check_eq(sha(m.path("d/big")), want, "data through the mount")
        up = os.path.join(upper, "d/big")
        check(has_meta(up), "upper copy lacks %s" % META)
        check(os.lstat(up).st_blocks * 512 < MIB,
              "upper copy holds data: %d blocks" % os.lstat(up).st_blocks)
        check_eq(os.getxattr(up, "user.k"), b"v", "xattr on the upper copy")
    check_eq(after["copy_up"]["bytes"] - before["copy_up"]["bytes"], 0,
             "bytes copied for chown/chmod/setxattr")
    check_eq(after["copy_up"]["by_method"]["metadata_only"] -
             before["copy_up"]["by_method"]["metadata_only"], 2,
             "metadata-only copy-ups (d and d/big)")


@test()
def metacopy_write_fills_the_data(ctx):
    lower, upper, work = setup(ctx)
    with open(os.path.join(lower, "d/big"), "rb") as f:
        data = f.read()
    with mount(ctx, lower, upper, work) as m:
        os.chmod(m.path("d/big"), 0o640)
        with open(m.path("d/big"), "rb") as reader:    # opened before
            with open(m.path("d/big"), "ab") as f:
                f.write(b"tail")
            check_eq(reader.read(), data + b"tail",
                     "a reader opened before the data came up")
        up = os.path.join(upper, "d/big")
        check(not has_meta(up), "upper copy still marked metadata-only")
        with open(up, "rb") as f:
            check(f.read() == data + b"tail", "upper copy's data")
    check_eq(os.stat(os.path.join(lower, "d/big")).st_size, 8 * MIB,
             "lower file size")


@test()
def metacopy_survives_a_remount(ctx):
    lower, upper, work = setup(ctx)
    want = sha(os.path.join(lower, "d/big"))
    with mount(ctx, lower, upper, work) as m:
        os.chmod(m.path("d/big"), 0o604)
        os.utime(m.path("d/small"), (1000000000, 1000000000))
    with mount(ctx, lower, upper, work) as m:
        check_eq(sha(m.path("d/big")), want, "data after a remount")
        check_eq(os.stat(m.path("d/big")).st_mode & 0o777, 0o604,
                 "mode after a remount")
        with open(m.path("d/small")) as f:
            check_eq(f.read(), "small\n", "small file after a remount")
        check_eq(os.stat(m.path("d/small")).st_mtime, 1000000000,
                 "mtime after a remount")
        # A rename needs the data in the upper copy first.
        os.rename(m.path("d/big"), m.path("moved"))
        check(not has_meta(os.path.join(upper, "moved")),
              "a renamed file is still metadata-only")
        check_eq(sha(m.path("moved")), want, "data after the rename")


@test()
def metacopy_truncate_and_o_trunc(ctx):
    lower, upper, work = setup(ctx)
    with mount(ctx, lower, upper, work) as m:
        os.chmod(m.path("d/big"), 0o600)
        os.truncate(m.path("d/big"), 100)
        with open(m.path("d/big"), "rb") as f:
            with open(os.path.join(lower, "d/big"), "rb") as g:
                check(f.read() == g.read(100), "data after truncate(100)")
        os.chmod(m.path("d/small"), 0o600)
        with open(m.path("d/small"), "w") as f:       # O_TRUNC
            f.write("new\n")
        with open(m.path("d/small")) as f:
            check_eq(f.read(), "new\n", "data after open(O_TRUNC)")
        for name in ("d/big", "d/small"):
            check(not has_meta(os.path.join(upper, name)),
                  "%s still metadata-only" % name)


@test()
def metacopy_commit_takes_the_data_from_below(ctx):
    need_layerctl()
    store = new_store(ctx)
    img = Image([Layer({"etc": Dir(), "etc/big": File(os.urandom(MIB)),
                        "etc/conf": File(b"conf\n")})], "metacopy:1")
    src, _ = write_source(ctx, img, "docker")
    import_ok(store, src, img)
    with lc_mount(ctx, store, img.tag,
                  ["--name", "mc", "-o", "metacopy=on"]) as m:
        os.chmod(m.path("etc/big"), 0o600)
        want = sha(m.path("etc/big"))
    r = lc(store, "commit", "mc", "metacopy:2")
    if r.rc != 0:
        raise Fail("commit failed: %s" % r)
    with lc_mount(ctx, store, "metacopy:2", ["--read-only"]) as m:
        check_eq(sha(m.path("etc/big")), want, "committed file's data")
        check_eq(os.stat(m.path("etc/big")).st_mode & 0o777, 0o600,
                 "committed file's mode")
