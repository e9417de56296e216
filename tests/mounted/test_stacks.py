"""Generated stacks: random stacks of 1..128 layers, 1,000 layers, layer
directory layouts, sparse files, paths near PATH_MAX, inode numbers."""

import os
import random
import subprocess

from checks import verify_stack
from harness import Fail, check, check_eq, test
from layers import ALL_WHITEOUTS, ODD_NAMES, Stack, random_stack
from tree import sha256_of


def _seeded(ctx, seeds, nlayers, mount_opts=(), **kw):
    for seed in seeds:
        rng = random.Random(seed)
        n = nlayers if isinstance(nlayers, int) else rng.randint(*nlayers)
        s = random_stack(ctx, rng, n, **kw)
        try:
            verify_stack(ctx, s, extra_opts=list(mount_opts))
        except Fail as e:
            raise Fail("seed %d (%d layers): %s" % (seed, n, e))


@test()
def single_layer_stack(ctx):
    _seeded(ctx, [1, 2], 1, ops=(20, 40))


@test()
def random_stacks_of_2_to_6_layers(ctx):
    _seeded(ctx, range(10, 50), (2, 6), ops=(2, 20))


@test()
def random_stacks_of_16_layers(ctx):
    _seeded(ctx, range(100, 106), 16)


@test()
def random_stacks_with_timeout_0(ctx):
    """timeout=0: the kernel caches nothing, so every stat and lookup of the
    dump reaches the daemon."""
    _seeded(ctx, range(30, 40), (2, 6), mount_opts=["timeout=0"])


@test()
def random_stacks_with_awkward_names(ctx):
    """Spaces, colons, newlines, non-UTF-8 and 255-byte names colliding
    across layers."""
    _seeded(ctx, range(800, 808), (2, 6), names=ODD_NAMES)


@test(timeout=180)
def random_stack_of_128_layers(ctx):
    _seeded(ctx, [200], 128, ops=(1, 8), names=b"abcdefg")


@test(timeout=300)
def stack_of_1000_layers(ctx):
    """1,000 small layers: an override in every layer, a merged directory
    with an entry per layer, whiteouts of other layers' dirs in every
    format, opaque dirs of every format every 50 layers."""
    n = 1000
    s = Stack(ctx, n)
    for i, L in enumerate(s.layers):
        L.file("shared/cfg", b"from layer %d" % i)
        L.file("per/l%d/f" % i, b"%d" % i)
        L.file("usr/share/common/n%03d" % i, b"n%d" % i)
        if i % 10 == 3:
            L.whiteout("per/l%d" % (i + 5), ALL_WHITEOUTS[(i // 10) % 4])
        if i % 97 == 5:
            L.whiteout("usr/share/common/n%03d" % (i + 2), "chr")
        if i % 50 == 7:
            L.opaque("deep/o", ("t", "u", "oci")[(i // 50) % 3])
            L.file("deep/o/f%d" % i, b"opaque %d" % i)
        elif i % 13 == 0:
            L.file("deep/o/g%d" % i, b"g %d" % i)

    def live(m):
        with open(m.path("shared/cfg"), "rb") as f:
            check_eq(f.read(), b"from layer 0", "shared/cfg")
        common = os.listdir(m.path("usr/share/common"))
        check_eq(len(common), n - len(range(5, n, 97)),
                 "entries in usr/share/common/")
        check_eq(sorted(os.listdir(m.path("deep/o"))),
                 [b"f7", b"g0"], "deep/o (opaque in layer 7)")
    verify_stack(ctx, s, live=live)


@test()
def layer_dirs_named_sha256_slash_diff(ctx):
    s = random_stack(ctx, random.Random(300), 5, naming="sha-diff")
    check(s.paths[0].endswith("/diff") and
          len(os.path.basename(os.path.dirname(s.paths[0]))) == 64,
          "layout: %s" % s.paths[0])
    verify_stack(ctx, s)


@test()
def layer_dirs_named_sha256(ctx):
    s = random_stack(ctx, random.Random(301), 5, naming="sha")
    verify_stack(ctx, s)


@test()
def layer_paths_containing_colons(ctx):
    s = random_stack(ctx, random.Random(302), 6, naming="colon")
    check(":" in s.paths[0], "layer path has no colon")
    verify_stack(ctx, s)


@test()
def sparse_files_read_back(ctx):
    s = Stack(ctx, 2)
    s[0].sparse("holes/start", 1 << 20, [((1 << 20) - 10, b"tail")])
    s[0].sparse("holes/middle", 3 << 20, [(0, b"head"),
                                          (2 << 20, b"x" * 5000)])
    s[0].sparse("holes/only-hole", 2 << 20)
    s[1].sparse("holes/start", 10)
    s[1].sparse("holes/lower", 5 << 20, [(4 << 20, b"y")])
    verify_stack(ctx, s)


def _extents(fd, size):
    """Data extents found with SEEK_DATA / SEEK_HOLE: [(start, end)]."""
    out, off = [], 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        out.append((data, hole))
        off = hole
    return out


@test(timeout=300)
def sparse_file_of_1gib(ctx):
    """A 1 GiB sparse file with three small data extents: same sha256 read
    through the mount (in chunks), and SEEK_DATA/SEEK_HOLE find the data."""
    size = 1 << 30
    s = Stack(ctx, 2)
    s[0].sparse("big", size, [(64 << 20, b"A" * 4096),
                              (700 << 20, os.urandom(1 << 20)),
                              (size - 1, b"Z")])
    s[1].sparse("big", size, [(0, b"lower layer")])
    want_sha, _ = sha256_of(s[0].p("big"))
    fd = os.open(s[0].p("big"), os.O_RDONLY)
    try:
        want_ext = _extents(fd, size)
    finally:
        os.close(fd)
    check(want_ext and want_ext[0][0] > 0,
          "test setup: layer file is not sparse: %r" % want_ext)
    with ctx.mount(s.paths) as m:
        st = os.stat(m.path("big"))
        check_eq(st.st_size, size, "st_size")
        fd = os.open(m.path("big"), os.O_RDONLY)
        try:
            got_ext = _extents(fd, size)
        finally:
            os.close(fd)
        got_sha, n = sha256_of(m.path("big"))
    check_eq(n, size, "bytes read")
    check_eq(got_sha, want_sha, "sha256 of 1 GiB file")
    check_eq(got_ext, want_ext, "SEEK_DATA/SEEK_HOLE extents")


@test()
def reads_beyond_4gib_offsets(ctx):
    """Offsets past 2^32 in a 6 GiB sparse file: pread and SEEK_DATA."""
    size = 6 << 30
    marks = [((4 << 30) + 123, b"past four GiB"), ((11 << 29) + 7, b"5.5")]
    s = Stack(ctx, 1)
    s[0].sparse("huge", size, marks)
    with ctx.mount(s.paths) as m:
        fd = os.open(m.path("huge"), os.O_RDONLY)
        try:
            check_eq(os.fstat(fd).st_size, size, "st_size")
            for off, data in marks:
                check_eq(os.pread(fd, len(data), off), data,
                         "pread at %d" % off)
            check_eq(os.pread(fd, 10, size - 5), bytes(5), "read at EOF")
            got = os.lseek(fd, 4 << 30, os.SEEK_DATA)
            check(got <= marks[0][0] < os.lseek(fd, got, os.SEEK_HOLE),
                  "SEEK_DATA from 4 GiB gave %d" % got)
        finally:
            os.close(fd)


@test()
def paths_near_path_max(ctx):
    """255-byte names and deep nesting, with the merged path (including the
    mount point) just under 4096 bytes.  The layer roots are longer than the
    mount point, so layer-side paths go beyond PATH_MAX."""
    s = Stack(ctx, 3, naming="sha-diff")
    mnt = os.path.realpath(ctx.newdir("m"))
    budget = 4095 - len(mnt)            # max length of "/rel"

    # a chain of 255-byte directory names, leaf name filling the budget
    chain = "/".join("%03d" % k + "n" * 252 for k in range((budget - 60) // 256))
    leaf = "L" * min(255, budget - len(chain) - 2)
    long_file = chain + "/" + leaf
    check(len(mnt) + 1 + len(long_file) in range(4000, 4096),
          "long path length %d" % (len(mnt) + 1 + len(long_file)))
    s[2].file(long_file, b"bottom")
    s[2].file(chain + "/lower-only", b"lower")
    s[2].file(chain + "/gone", b"lower")
    s[1].whiteout(chain + "/gone", "chr")
    s[0].file(long_file, b"top")

    # deep nesting (~500 levels) of 7-byte directory names
    levels = (budget - 10) // 8
    deep = "/".join(["d%06d" % k for k in range(levels)])
    half = "/".join(["d%06d" % k for k in range(levels // 2)])
    s[2].file(deep + "/end", b"bottom-end")
    s[1].opaque(half, "t")
    s[1].file(deep + "/mid", b"mid")
    s[0].file(deep + "/end", b"top-end")
    s[2].file(half + "/hidden-by-opaque")

    def live(m):
        for rel, want in ((long_file, b"top"), (deep + "/end", b"top-end")):
            full = m.path(rel)
            check(len(full) < 4096, "path too long: %d" % len(full))
            with open(full, "rb") as f:
                check_eq(f.read(), want, "read %d-byte path" % len(full))
    check(len(s.paths[0]) > len(mnt) + 40, "layer paths not long enough")
    verify_stack(ctx, s, mnt=mnt, live=live)


def _tmpfs(ctx):
    d = ctx.newdir("tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", d],
                   check=True, stdin=subprocess.DEVNULL)
    ctx.on_cleanup(lambda: subprocess.run(["umount", d], check=True))
    return d


@test()
def inode_numbers_unique_across_layer_filesystems(ctx):
    """Layers on two tmpfs instances (whose inode numbers collide: both
    count from 1) and on the test fs: merged st_ino must stay distinct and
    hard links must still group correctly."""
    bases = [_tmpfs(ctx), _tmpfs(ctx), None]
    stacks = []
    for k, base in enumerate(bases):
        st = Stack(ctx, 1, base=os.path.join(base, "L") if base else None)
        L = st[0]
        for j in range(6):
            L.file("d%d/f%d" % (j, k), b"layer %d file %d" % (k, j))
            L.file("top%d-%d" % (k, j), b"x%d" % j)
        L.hardlink("d0/link%d" % k, "d0/f%d" % k)
        stacks.append(st)
    lowers = [st.paths[0] for st in stacks]
    ino = [os.lstat(os.path.join(lowers[0], "d0/f0")).st_ino,
           os.lstat(os.path.join(lowers[1], "d0/f1")).st_ino]
    check(ino[0] == ino[1], "test setup: tmpfs inode numbers do not collide")
    verify_stack(ctx, stacks[0], lowers=lowers)
