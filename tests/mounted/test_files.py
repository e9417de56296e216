"""File data and lookups through the mount: reads at random offsets, mmap,
many files open at once, concurrent preads, lookup errors."""

import errno
import json
import mmap
import os
import random
import subprocess
import threading

from harness import Fail, check, check_eq, expect_errno, test
from layers import Stack, build


def _data_stack(ctx, nfiles=10, seed=1):
    """Files of awkward sizes (around page and 128 KiB boundaries) in two
    layers, the top one overriding half of them."""
    rng = random.Random(seed)
    s = Stack(ctx, 2)
    sizes = [0, 1, 4095, 4096, 4097, 131071, 131072, 131073, 1 << 20,
             (3 << 20) + 17]
    want = {}
    for k, size in enumerate(sizes[:nfiles]):
        rel = "data/f%02d" % k
        data = rng.randbytes(size)
        if k % 2:
            s[1].file(rel, b"stale lower version")
            s[0].file(rel, data)
        else:
            s[1].file(rel, data)
        want[rel] = data
    return s, want


@test()
def reads_at_random_offsets_and_mmap(ctx):
    s, want = _data_stack(ctx)
    rng = random.Random(5)
    with ctx.mount(s.paths) as m:
        for rel, data in sorted(want.items()):
            fd = os.open(m.path(rel), os.O_RDONLY)
            try:
                check_eq(os.fstat(fd).st_size, len(data), rel + " size")
                for _ in range(40):
                    off = rng.randint(0, len(data) + 10)
                    n = rng.choice((1, 100, 4096, 65536, 200000))
                    got = os.pread(fd, n, off)
                    if got != data[off:off + n]:
                        raise Fail("%s: pread(%d, off=%d) returned %d bytes "
                                   "that differ" % (rel, n, off, len(got)))
                if data:
                    with mmap.mmap(fd, len(data), prot=mmap.PROT_READ) as mm:
                        check(mm[:] == data, rel + ": mmap content differs")
            finally:
                os.close(fd)


@test()
def many_files_open_at_once(ctx):
    """3,000 files open together, read in interleaved small pieces, by a
    daemon held to 256 file descriptors (soft and hard limit)."""
    s = Stack(ctx, 3)
    want = {}
    for k in range(3000):
        data = (b"%05d:" % k) * (100 + k % 50)
        s[k % 3].file("many/d%02d/f%04d" % (k % 30, k), data)
        want["many/d%02d/f%04d" % (k % 30, k)] = data
    with ctx.mount(s.paths, nofile=(256, 256)) as m:
        fds = {}
        try:
            for rel in sorted(want):
                fds[rel] = os.open(m.path(rel), os.O_RDONLY)
            got = {rel: b"" for rel in fds}
            for piece in range(0, max(map(len, want.values())), 97):
                for rel, fd in fds.items():
                    got[rel] += os.pread(fd, 97, piece)
            bad = [rel for rel in want if got[rel] != want[rel]]
            check(not bad, "%d files read wrong, e.g. %s" % (len(bad), bad[:3]))
        finally:
            for fd in fds.values():
                os.close(fd)


@test()
def concurrent_preads_of_one_file(ctx):
    """8 threads pread one 8 MiB file at random offsets through one shared
    fd and through their own fds."""
    data = random.Random(3).randbytes(8 << 20)
    s = Stack(ctx, 2)
    s[1].file("big", data)
    s[0].file("other", b"x")
    errors = []
    with ctx.mount(s.paths) as m:
        shared = os.open(m.path("big"), os.O_RDONLY)

        def worker(tid):
            rng = random.Random(tid)
            own = os.open(m.path("big"), os.O_RDONLY)
            try:
                for i in range(300):
                    fd = shared if i % 2 else own
                    off = rng.randrange(len(data))
                    n = rng.choice((512, 4096, 100000))
                    if os.pread(fd, n, off) != data[off:off + n]:
                        errors.append("thread %d: pread(%d, %d) differs" %
                                      (tid, n, off))
            except OSError as e:
                errors.append("thread %d: %s" % (tid, e))
            finally:
                os.close(own)
        threads = [threading.Thread(target=worker, args=(t,))
                   for t in range(8)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        finally:
            os.close(shared)
    check(not errors, "\n".join(errors[:10]))


@test()
def lookup_errors(ctx):
    s = build(ctx, r"""
f file top
d dir
--
f dir/inner
""")
    with ctx.mount(s.paths) as m:
        expect_errno(errno.ENOENT, os.lstat, m.path("absent"),
                     what="lstat absent")
        expect_errno(errno.ENOENT, os.lstat, m.path("dir/absent"),
                     what="lstat dir/absent")
        expect_errno(errno.ENOTDIR, os.lstat, m.path("file/x"),
                     what="lstat file/x")
        expect_errno(errno.ENOTDIR, os.open, m.path("file"),
                     os.O_RDONLY | os.O_DIRECTORY, what="open file O_DIRECTORY")
        expect_errno(errno.ENAMETOOLONG, os.lstat, m.path("n" * 256),
                     what="lstat of a 256-byte name")
        expect_errno(errno.ENOENT, os.lstat, m.path("n" * 255),
                     what="lstat of an absent 255-byte name")
        expect_errno(errno.EISDIR, os.open, m.path("dir"), os.O_WRONLY,
                     what="open dir O_WRONLY")
        # a repeated negative lookup stays negative
        expect_errno(errno.ENOENT, os.lstat, m.path("absent"),
                     what="second lstat absent")
        check_eq(os.lstat(m.path("dir/inner")).st_size, len(b"dir/inner@1"),
                 "dir/inner size")


_AS_OTHER_USER = r"""
import errno, json, os, sys
mnt = sys.argv[1]
res = {}
def t(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
t("read secret", lambda: open(mnt + "/secret", "rb").read())
t("read public", lambda: open(mnt + "/public", "rb").read())
t("read own 0600", lambda: open(mnt + "/mine", "rb").read())
t("list private dir", lambda: os.listdir(mnt + "/private"))
t("stat in private dir", lambda: os.stat(mnt + "/private/inner"))
t("list public dir", lambda: os.listdir(mnt + "/pubdir"))
t("exec non-executable", lambda: os.execv(mnt + "/public", ["x"]))
print(json.dumps(res))
"""


@test()
def permissions_enforced_for_other_users(ctx):
    """A non-root user sees the layers' permission bits enforced, as on
    kernel overlayfs (the mount is shared with other users as root)."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        from harness import Skip
        raise Skip("no /usr/bin/python3 for the unprivileged child")
    s = build(ctx, r"""
f secret shadow 600
f public hello 644
d private 700
f private/inner x 644
d pubdir 755
f pubdir/x y
--
f mine mine 600
o mine 65534 65534
f secret lower-readable 644
""")
    for d in (os.path.dirname(ctx.dir), ctx.dir):
        os.chmod(d, 0o711)
    with ctx.mount(s.paths) as m:
        r = subprocess.run([python, "-c", _AS_OTHER_USER, m.mnt],
                           user=65534, group=65534, extra_groups=[],
                           capture_output=True, timeout=60)
    check_eq(r.returncode, 0, "child status (%s)" % r.stderr.decode()[-300:])
    got = json.loads(r.stdout)
    want = {"read secret": "EACCES", "read public": "ok",
            "read own 0600": "ok", "list private dir": "EACCES",
            "stat in private dir": "EACCES", "list public dir": "ok",
            "exec non-executable": "EACCES"}
    check_eq(got, want, "results as uid 65534")
