"""Directory reading (big dirs, small getdents buffers, seeking, concurrent
readers), inode stability, concurrent access."""

import ctypes
import hashlib
import os
import platform
import random
import stat
import threading

from checks import verify_stack
from harness import check, check_eq, test
from layers import Stack, random_stack
from tree import assert_same, dump_tree, esc, reference_dump

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_getdents64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61,
                  "ppc64le": 202, "s390x": 220}.get(platform.machine())


def getdents(fd, bufsize):
    """One getdents64 call: [(name, d_ino, d_off)], [] at the end."""
    buf = ctypes.create_string_buffer(bufsize)
    n = _libc.syscall(ctypes.c_long(SYS_getdents64), ctypes.c_int(fd), buf,
                      ctypes.c_size_t(bufsize))
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    raw, out, pos = buf.raw[:n], [], 0
    while pos < n:
        ino = int.from_bytes(raw[pos:pos + 8], "little")
        off = int.from_bytes(raw[pos + 8:pos + 16], "little", signed=True)
        reclen = int.from_bytes(raw[pos + 16:pos + 18], "little")
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
        out.append((name, ino, off))
        pos += reclen
    return out


def read_all(fd, bufsize=256):
    res = []
    while True:
        batch = getdents(fd, bufsize)
        if not batch:
            return res
        res += batch


def _big_stack(ctx):
    """A merged directory of exactly 5,000 visible entries from 3 layers,
    with overrides and whiteouts of two formats."""
    s = Stack(ctx, 3)
    for k in range(0, 3000):
        s[2].file("big/e%04d" % k, b"2:%d" % k)
    for k in range(2500, 4500):
        s[1].file("big/e%04d" % k, b"1:%d" % k)
    for k in range(0, 200):
        s[1].whiteout("big/e%04d" % k, "chr")
    for k in range(4000, 5300):
        s[0].file("big/e%04d" % k, b"0:%d" % k)
    for k in range(1000, 1100):
        s[0].whiteout("big/e%04d" % k, "oci")
    want = {b"e%04d" % k for k in range(5300)} - \
        {b"e%04d" % k for k in range(200)} - \
        {b"e%04d" % k for k in range(1000, 1100)}
    assert len(want) == 5000
    return s, want


@test()
def big_directory_of_5000_entries(ctx):
    s, want = _big_stack(ctx)

    def live(m):
        names = os.listdir(m.path("big"))
        check_eq(len(names), len(set(names)), "duplicate names in listing")
        check(set(names) == want, "listing differs: %d missing, %d extra" % (
            len(want - set(names)), len(set(names) - want)))
    verify_stack(ctx, s, live=live)


@test()
def readdir_small_buffer_and_seek(ctx):
    """getdents64 with a 256-byte buffer, then lseek to saved d_off values:
    the listing must resume right after the entry the offset came from."""
    if SYS_getdents64 is None:
        from harness import Skip
        raise Skip("getdents64 number unknown on " + platform.machine())
    s, want = _big_stack(ctx)
    with ctx.mount(s.paths) as m:
        d = m.path("big")
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            first = read_all(fd)
            names = [n for n, _, _ in first if n not in (b".", b"..")]
            check_eq(len(names), len(set(names)), "duplicates in listing")
            check(set(names) == want, "small-buffer listing differs: %d "
                  "missing, %d extra" % (len(want - set(names)),
                                         len(set(names) - want)))
            bad = [(n, ino) for n, ino, _ in first if n not in (b".", b"..")
                   and os.lstat(d + b"/" + n).st_ino != ino]
            check(not bad, "d_ino != st_ino for %d entries, e.g. %r" % (
                len(bad), bad[:3]))
            rng = random.Random(7)
            for k in sorted(rng.sample(range(len(first) - 1), 60)):
                os.lseek(fd, first[k][2], os.SEEK_SET)
                nxt = getdents(fd, 256)
                check(nxt and nxt[0][0] == first[k + 1][0],
                      "after lseek to d_off of entry %d (%s) got %r, want %s"
                      % (k, esc(first[k][0]), nxt[:1] and esc(nxt[0][0]),
                         esc(first[k + 1][0])))
            # half a listing, caches dropped, then the rest
            os.lseek(fd, 0, os.SEEK_SET)
            part = []
            while len(part) < len(first) // 2:
                part += getdents(fd, 256)
            drop_caches()
            part += read_all(fd, 256)
            check_eq([n for n, _, _ in part], [n for n, _, _ in first],
                     "listing interrupted by drop_caches")
            os.lseek(fd, 0, os.SEEK_SET)
            again = read_all(fd, 1024)
            check_eq([n for n, _, _ in again], [n for n, _, _ in first],
                     "listing after rewind")
        finally:
            os.close(fd)


@test()
def readdir_concurrently_from_two_threads(ctx):
    s, want = _big_stack(ctx)
    results, errors = {}, []
    with ctx.mount(s.paths) as m:
        barrier = threading.Barrier(2)

        def reader(tid):
            try:
                for rnd in range(3):
                    fd = os.open(m.path("big"), os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        barrier.wait(30)
                        if SYS_getdents64:
                            got = [n for n, _, _ in read_all(fd, 200 + tid)]
                        else:
                            got = list(os.listdir(fd))
                    finally:
                        os.close(fd)
                    results[(tid, rnd)] = [n for n in got
                                           if n not in (b".", b"..")]
            except Exception as e:          # reported below
                errors.append("thread %d: %r" % (tid, e))
        threads = [threading.Thread(target=reader, args=(t,))
                   for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    check(not errors, "\n".join(errors))
    for key, names in sorted(results.items()):
        check(len(names) == len(set(names)) and set(names) == want,
              "thread %d round %d: %d names, %d distinct, %d missing" % (
                  key[0], key[1], len(names), len(set(names)),
                  len(want - set(names))))
    check_eq(len(results), 6, "completed listings")


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


@test()
def inode_numbers_stable_after_cache_drop(ctx):
    """st_ino of every path stays the same after the kernel drops its
    dentry/inode caches (which makes the fs forget and look up again)."""
    s = random_stack(ctx, random.Random(400), 6, ops=(10, 25))
    with ctx.mount(s.paths) as m:
        first = dump_tree(m.mnt)
        check(not first.problems, "\n".join(first.problems[:10]))
        for _ in range(2):
            drop_caches()
            changed = []
            for rel, ino in first.inos.items():
                again = os.lstat(m.path(rel)).st_ino
                if again != ino:
                    changed.append("%s: %d -> %d" % (esc(rel), ino, again))
            check(not changed, "st_ino changed after drop_caches:\n" +
                  "\n".join(changed[:10]))
        second = dump_tree(m.mnt)
    check_eq(second.inos, first.inos, "inode map of second dump")


def _concurrent(ctx, seed, opts=(), dropper=False):
    s = random_stack(ctx, random.Random(seed), 8, ops=(15, 30))
    want = reference_dump(s.paths)
    children = {}
    for rel in want.entries:
        if rel:
            parent, _, name = rel.rpartition(b"/")
            children.setdefault(parent, set()).add(name)
    paths = sorted(want.entries)
    errors = []
    stop = threading.Event()

    def drop_loop():
        while not stop.wait(0.02):
            drop_caches()
    with ctx.mount(s.paths, extra_opts=list(opts)) as m:
        first = dump_tree(m.mnt)
        assert_same(first, want)
        if dropper:
            dt = threading.Thread(target=drop_loop)
            dt.start()

        def worker(tid):
            rng = random.Random(tid)
            try:
                for _ in range(300):
                    rel = rng.choice(paths)
                    w = want.entries[rel]
                    p = m.path(rel)
                    st = os.lstat(p)
                    if st.st_ino != first.inos[rel]:
                        errors.append("%s: st_ino %d, first dump %d" % (
                            esc(rel), st.st_ino, first.inos[rel]))
                    if "%04o" % stat.S_IMODE(st.st_mode) != w["mode"]:
                        errors.append("%s: mode %o" % (esc(rel), st.st_mode))
                    if w["type"] == "file":
                        with open(p, "rb") as f:
                            h = hashlib.sha256(f.read()).hexdigest()
                        if h != w["sha256"]:
                            errors.append("%s: content differs" % esc(rel))
                    elif w["type"] == "symlink":
                        if os.readlink(p) != w["target"]:
                            errors.append("%s: readlink differs" % esc(rel))
                    elif w["type"] == "dir":
                        if set(os.listdir(p)) != children.get(rel, set()):
                            errors.append("%s: listing differs" % esc(rel))
            except Exception as e:
                errors.append("thread %d: %r" % (tid, e))
        threads = [threading.Thread(target=worker, args=(t,))
                   for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        if dropper:
            dt.join()
        check(not any(t.is_alive() for t in threads), "threads hung")
    check(not errors, "%d errors:\n%s" % (len(errors),
                                          "\n".join(errors[:15])))


@test()
def concurrent_stat_and_read_match_reference(ctx):
    """8 threads lstat/read/readlink/list random paths at once; everything
    must match the reference and the inode numbers of a first dump."""
    _concurrent(ctx, 500)


@test()
def concurrent_access_with_timeout_0_and_cache_drops(ctx):
    """The same with nothing cached by the kernel and its caches dropped
    every 20 ms meanwhile, so lookups and forgets race in the daemon."""
    _concurrent(ctx, 501, opts=["timeout=0"], dropper=True)
