"""The writable upper layer under random and hostile use:

* write_random_vs_kernel: the same seeded random sequence of changes
  (create, write, append, truncate, mkdir, rmdir, unlink, rename of files
  and directories, symlink, hard link, chmod, user xattrs) applied to
  layerfs and to kernel overlayfs (redirect_dir=on, index=on) over
  identical copies of a random kernel-compatible lower stack; every
  outcome (ok or errno) and the whole merged tree after every step must
  agree, and every tenth step the kernel drops its inode caches and
  every st_ino layerfs reported must stay the same;
* write_upper_mounts_under_kernel: the upper layer layerfs leaves behind is
  read by kernel overlayfs as the tree layerfs showed;
* write_sigkill_during_copyup: a daemon killed in the middle of copying up
  a 1 GiB file leaves no partial copy in the upper layer, and the next
  mount cleans the work directory and shows the file intact;
* write_concurrent_same_dir: two processes changing the same directories
  at once (while the kernel drops its caches) leave a consistent tree
  that survives a remount unchanged.

What the kernel comparison leaves out, and why, is said where it is done:
times set by a change ("now") are compared as "new" (timed), st_blocks
up to one ext4 xattr block (reconcile_blocks), inode numbers only for
stability and link groups, and two kernel inconsistencies are not
followed (kernel_quirk, and the mtime a failed rename leaves).

No operation ever follows a symlink inside the mounts (the random lower
stacks hold symlinks to /etc/passwd and to ../): the final component is
never followed, and an operation whose path passes through a symlink is
recorded as skipped, on both mounts alike.
"""

import ast
import contextlib
import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time

from harness import (FUSERMOUNT, Fail, check, check_eq, is_mounted, test,
                     wait_exit)
from layers import (KERNEL_OPAQUES, KERNEL_WHITEOUTS, Stack,
                    make_kernel_compatible, random_stack)
from tree import Dump, assert_same, dump_tree, esc

# Names the operations use: those of the random lower stacks (a..e), so
# that changes collide with lower files, directories and whiteouts, and a
# few that no lower layer has.
OP_NAMES = (b"a", b"b", b"c", b"d", b"e", b"n1", b"n2")
SYMLINK_TARGETS = (b"a", b"../b", b"nowhere", b"/nonexistent/lfs-target",
                   b"d/e")


def errname(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def kernel_stack(ctx, seed):
    """A random kernel-compatible lower stack (no device nodes, FIFOs or
    sockets: the operations write to what they find, and a random device
    number could be a real device)."""
    rng = random.Random(seed)
    s = random_stack(ctx, rng, rng.randint(2, 4), whiteouts=KERNEL_WHITEOUTS,
                     opaques=KERNEL_OPAQUES, specials=False)
    make_kernel_compatible(s)
    return s


def copy_layers(ctx, paths):
    """An identical copy of each layer (cp -a: modes, owners, times in ns,
    xattrs including trusted.*, hard links, 0/0 whiteout devices)."""
    base = ctx.newdir("copy")
    out = []
    for i, p in enumerate(paths):
        dst = os.path.join(base, "L%d" % i)
        r = subprocess.run(["cp", "-a", "--", p, dst], capture_output=True,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise Fail("cp -a %s: %s" % (p, r.stderr.decode(errors="replace")))
        out.append(dst)
    return out


# ---------------------------------------------------------------- operations

class OpGen:
    """Seeded random operations, chosen from the current merged tree (a
    dump's entries) so that most of them touch existing names."""

    WEIGHTS = (("create", 6), ("write", 5), ("truncate", 3), ("mkdir", 4),
               ("rmdir", 3), ("unlink", 4), ("rename", 7), ("symlink", 2),
               ("link", 3), ("chmod", 2), ("setxattr", 2),
               ("removexattr", 1))

    def __init__(self, rng):
        self.rng = rng
        self.ops = [op for op, w in self.WEIGHTS for _ in range(w)]

    def next(self, entries):
        rng = self.rng
        dirs = sorted(r for r, e in entries.items() if e["type"] == "dir")
        subdirs = [d for d in dirs if d]
        files = sorted(r for r, e in entries.items() if e["type"] == "file")
        nondirs = sorted(r for r, e in entries.items()
                         if e["type"] != "dir")
        everything = sorted(r for r in entries if r)

        def new_path():
            return rng.choice(dirs) + b"/" + rng.choice(OP_NAMES)

        def pick(cands, p_existing=0.85):
            if cands and rng.random() < p_existing:
                return rng.choice(cands)
            return new_path()

        op = rng.choice(self.ops)
        if op == "create":
            return (op, pick(everything, 0.1), rng.choice((0o644, 0o600,
                                                           0o755)),
                    rng.choice((0, 1, 100, 5000, 70000)), rng.randrange(256))
        if op == "write":
            return (op, pick(files, 0.9),
                    rng.choice(("start", "middle", "end", "append",
                                "past-end")),
                    rng.choice((1, 10, 4096, 10000)), rng.randrange(256))
        if op == "truncate":
            return (op, pick(files, 0.9), rng.choice(("path", "fd")),
                    rng.choice((0, 1, 50, 4096, 100000)))
        if op == "mkdir":
            return (op, pick(everything, 0.1),
                    rng.choice((0o755, 0o700, 0o1777)))
        if op == "rmdir":
            return (op, pick(subdirs if rng.random() < 0.8 else everything))
        if op == "unlink":
            return (op, pick(nondirs if rng.random() < 0.8 else everything))
        if op == "rename":
            if subdirs and rng.random() < 0.4:
                src = rng.choice(subdirs)
            else:
                src = pick(nondirs)
            # over an existing name (replace, or an error) or to a new one
            dst = pick(everything, 0.35)
            return (op, src, dst)
        if op == "symlink":
            return (op, rng.choice(SYMLINK_TARGETS), pick(everything, 0.1))
        if op == "link":
            return (op, pick(nondirs if rng.random() < 0.9 else everything),
                    pick(everything, 0.1))
        if op == "chmod":
            return (op, pick(everything), rng.choice((0o600, 0o755, 0o4755,
                                                      0o1777, 0o000)))
        if op == "setxattr":
            return (op, pick(everything), b"v%d" % rng.randrange(1000))
        if op == "removexattr":
            return (op, pick(everything))
        raise AssertionError(op)


def fmt_op(op):
    """A line of Python (paths relative to the mount root) doing `op`."""
    name = op[0]
    a = op[1:]
    if name == "create":
        return "fd=os.open(%r, O_WRONLY|O_CREAT|O_EXCL, 0o%o); " \
               "os.write(fd, bytes([%d])*%d)" % (a[0][1:], a[1], a[3], a[2])
    if name == "write":
        return "write %r at %s: bytes([%d])*%d" % (a[0][1:], a[1], a[3], a[2])
    if name == "truncate":
        return "truncate(%r, %d) [by %s]" % (a[0][1:], a[2], a[1])
    if name in ("mkdir", "chmod"):
        return "os.%s(%r, 0o%o)" % (name, a[0][1:], a[1])
    if name in ("rmdir", "unlink"):
        return "os.%s(%r)" % (name, a[0][1:])
    if name == "rename":
        return "os.rename(%r, %r)" % (a[0][1:], a[1][1:])
    if name == "symlink":
        return "os.symlink(%r, %r)" % (a[0], a[1][1:])
    if name == "link":
        return "os.link(%r, %r)" % (a[0][1:], a[1][1:])
    if name == "setxattr":
        return "os.setxattr(%r, 'user.x', %r, follow_symlinks=False)" % (
            a[0][1:], a[1])
    if name == "removexattr":
        return "os.removexattr(%r, 'user.x', follow_symlinks=False)" % (
            a[0][1:],)
    return repr(op)


def _through_symlink(root, rel):
    """True if a directory component of rel (not the last) is a symlink
    on this mount."""
    parts = rel.strip(b"/").split(b"/")
    cur = root
    for p in parts[:-1]:
        cur = cur + b"/" + p
        try:
            st = os.lstat(cur)
        except OSError:
            return False        # the operation itself reports the error
        if stat.S_ISLNK(st.st_mode):
            return True
    return False


def _lstat_type(path):
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except OSError:
        return None


def run_op(root, op):
    """Apply op under the mount root (bytes); returns 'ok...', an errno
    name, or 'skip:...'."""
    try:
        return _run_op(root, op)
    except OSError as e:
        return errname(e)


def _run_op(root, op):
    name = op[0]
    if name in ("rename", "link"):
        paths = [op[1], op[2]]
    else:
        paths = [op[2] if name == "symlink" else op[1]]
    if any(_through_symlink(root, p) for p in paths):
        return "skip:path-through-symlink"
    P = root + (op[2] if name == "symlink" else op[1])
    if name in ("write", "truncate", "chmod"):
        t = _lstat_type(P)
        if t == stat.S_IFLNK:
            return "skip:symlink"
        if t not in (None, stat.S_IFREG, stat.S_IFDIR):
            return "skip:special"
    if name == "create":
        _, _, mode, n, byte = op
        fd = os.open(P, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                     os.O_CLOEXEC, mode)
        try:
            w = os.write(fd, bytes([byte]) * n) if n else 0
        finally:
            os.close(fd)
        return "ok:%d" % w
    if name == "write":
        _, _, where, n, byte = op
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if where == "append":
            flags |= os.O_APPEND
        fd = os.open(P, flags)
        try:
            size = os.fstat(fd).st_size
            data = bytes([byte]) * n
            if where == "append":
                w = os.write(fd, data)
            else:
                off = {"start": 0, "middle": size // 2, "end": size,
                       "past-end": size + 3000}[where]
                w = os.pwrite(fd, data, off)
        finally:
            os.close(fd)
        return "ok:%d" % w
    if name == "truncate":
        _, _, how, length = op
        if how == "path":
            os.truncate(P, length)
        else:
            fd = os.open(P, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
        return "ok"
    if name == "mkdir":
        os.mkdir(P, op[2])
        return "ok"
    if name == "rmdir":
        os.rmdir(P)
        return "ok"
    if name == "unlink":
        os.unlink(P)
        return "ok"
    if name == "rename":
        os.rename(P, root + op[2])
        return "ok"
    if name == "symlink":
        os.symlink(op[1], P)
        return "ok"
    if name == "link":
        os.link(P, root + op[2], follow_symlinks=False)
        return "ok"
    if name == "chmod":
        os.chmod(P, op[2])
        return "ok"
    if name == "setxattr":
        os.setxattr(P, b"user.x", op[2], follow_symlinks=False)
        return "ok"
    if name == "removexattr":
        os.removexattr(P, b"user.x", follow_symlinks=False)
        return "ok"
    raise AssertionError(name)


# ---------------------------------------------------------------- comparing

def timed(dump, t0):
    """The dump with each mtime reduced to what both mounts can agree on.
    The two mounts are changed a few microseconds apart, so a time set by
    a change ("now") differs between them; a time kept from a lower layer
    (copy-up keeps it, an untouched name shows it) must be equal to the
    nanosecond.  So: an mtime from before the sequence started is kept,
    one from after it is "new" (the sequence starts >= 20 ms after the
    lower layers were built, and the coarse filesystem clock lags
    time.time_ns() by at most a tick)."""
    entries = {}
    for rel, e in dump.entries.items():
        e = dict(e)
        e["mtime"] = "new" if e["mtime"] >= t0 else e["mtime"]
        entries[rel] = e
    return Dump(entries, dump.inos, dump.problems)


XATTR_BLOCK = 8     # st_blocks of one 4 KiB block


def reconcile_blocks(ld, kd):
    """The kernel keeps private xattrs (origin, and nlink with index=on)
    on its upper files, and ext4 stores xattrs that do not fit in the
    inode in one separate 4 KiB block, which st_blocks counts; layerfs
    keeps fewer xattrs on its upper files.  So a file's st_blocks may
    differ by exactly that one block: take the kernel's figure then.  Any
    other difference (a hole one filled, more than one block) still
    shows, and the content is compared by sha256 regardless."""
    for rel, e in ld.entries.items():
        k = kd.entries.get(rel)
        if k and "blocks" in e and "blocks" in k and \
                abs(e["blocks"] - k["blocks"]) == XATTR_BLOCK:
            e["blocks"] = k["blocks"]
    return ld


def kernel_quirk(kroot, op, outcome):
    """True when the kernel's outcome is one layerfs need not share, so
    the operation is not run on layerfs and the trees stay comparable:

    * EXDEV from a rename: kernel overlayfs without redirect_dir=on (when
      it refuses that option) will not rename a lower or merged
      directory, and mv falls back to copying; layerfs renames it.
    * ENOTEMPTY for a directory the kernel lists as empty: kernel
      overlayfs (6.18 here) counts an xattr
    whiteout (a file with trusted.overlay.whiteout in a lower directory
    marked trusted.overlay.opaque=x) as an entry when it checks that a
    merged directory is empty, though it never lists it:

        lower0/b/a/          (plain directory)
        lower1/b/a/          trusted.overlay.opaque=x
        lower1/b/a/d         empty file, trusted.overlay.whiteout=y
        ls -A MNT/b/a        -> nothing
        rmdir MNT/b/a        -> ENOTEMPTY   (with a char 0/0 whiteout: ok)

      That is the kernel's inconsistency, not a rule to follow."""
    if outcome == "EXDEV" and op[0] == "rename":
        return True
    if outcome != "ENOTEMPTY" or op[0] not in ("rmdir", "rename"):
        return False
    target = kroot + (op[1] if op[0] == "rmdir" else op[2])
    try:
        return os.listdir(target) == []
    except OSError:
        return False


def note_long(ctx, text, limit=2900):
    """ctx.note in pieces: the runner prints 3000 characters of a note."""
    piece = []
    for line in text.split("\n"):
        if piece and sum(len(x) + 1 for x in piece) + len(line) > limit:
            ctx.note("\n".join(piece))
            piece = ["  (continued)"]
        piece.append(line)
    if piece:
        ctx.note("\n".join(piece))


def history(log, upto=None):
    lines = []
    for i, (op, lo, ko) in enumerate(log[:upto]):
        if lo is None:
            mark = "   (kernel quirk: not run on layerfs)"
        elif lo != ko:
            mark = "   <-- layerfs %s, kernel %s" % (lo, ko)
        else:
            mark = ""
        lines.append("  %2d. %s -> %s%s" % (i, fmt_op(op), ko, mark))
    return "\n".join(lines)


# ---------------------------------------------------------------- 1. vs kernel

# 18 seeds in a row, and two that reach what random sequences seldom do:
# a rename onto another name of a lower hard link (4243 replaces one
# with an unrelated file, 4789 renames one onto its own link).
VS_KERNEL_SEEDS = list(range(3100, 3118)) + [4243, 4789]
VS_KERNEL_STEPS = 60
DROP_EVERY = 10     # steps between two kernel cache drops


def drop_caches():
    """The kernel forgets unused dentries and inodes: layerfs is asked
    to look up again what it had answered before."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


def new_upper(ctx, prefix):
    """A fresh upper directory.  Its mtime is the merged root's, so both
    mounts' uppers get the same one (they are made at different times)."""
    d = ctx.newdir(prefix)
    os.utime(d, ns=(UPPER_ROOT_TIME, UPPER_ROOT_TIME))
    return d


UPPER_ROOT_TIME = 1500000000123456789


def _mount_kernel_rw(ctx, lowers):
    """Kernel overlayfs as layerfs's writable layer is meant to behave:
    * redirect_dir=on: it renames lower and merged directories (without
      it the kernel answers EXDEV, and mv falls back to copying);
    * index=on: a copy-up of one name of a lower hard link keeps the link
      (every name shows the copy; st_ino and st_nlink stay those of the
      link group), which is what layerfs does (fs/copyup.c, "Hard links";
      with index=off the kernel breaks the link instead)."""
    for opts in (["redirect_dir=on", "index=on"], ["redirect_dir=on"], []):
        m = ctx.mount(lowers, upper=new_upper(ctx, "kupper"),
                      work=ctx.newdir("kwork"), kernel=True, extra_opts=opts)
        try:
            m.start()
        except Fail as e:
            m.stop()
            ctx.note("kernel refused %s (%s)" % (",".join(opts),
                                                 str(e).splitlines()[0]))
            continue
        if opts != ["redirect_dir=on", "index=on"]:
            ctx.note("kernel overlayfs mounted with only %r: hard links "
                     "may differ%s" % (opts, "" if opts else
                                      "; its EXDEV renames are not run "
                                      "on layerfs"))
        return m
    raise Fail("kernel overlayfs does not mount writable here")


@test(kernel=True, timeout=240)
def write_random_vs_kernel(ctx):
    """Every seed runs (a failing one stops at its first difference); the
    failure lists each failing seed's first difference and its history."""
    failures = []
    for seed in VS_KERNEL_SEEDS:
        s = kernel_stack(ctx, seed)
        k = _mount_kernel_rw(ctx, copy_layers(ctx, s.paths))
        try:
            with ctx.mount(copy_layers(ctx, s.paths),
                           upper=new_upper(ctx, "upper"),
                           work=ctx.newdir("work")) as m:
                _vs_kernel_sequence(ctx, seed, m, k)
        except Fail as e:
            # the difference in the failure, the history in a note (the
            # runner prints 6000 characters of a failure, 3000 of a note)
            what, _, hist = str(e).partition("\noperations")
            failures.append(what if len(what) < 1000 else
                            what[:1000] + "\n  ...")
            note_long(ctx, "operations" + hist)
        finally:
            k.stop()
    if failures:
        raise Fail("%d of %d seeds differ from kernel overlayfs (the "
                   "operations of each follow, in order):\n%s" % (
                       len(failures), len(VS_KERNEL_SEEDS),
                       "\n".join(failures)))


def _vs_kernel_sequence(ctx, seed, m, k):
    gen = OpGen(random.Random(seed * 7919))
    lroot, kroot = m.path(), k.path()
    log = []

    def fail(step, msg):
        raise Fail("seed %d, step %d: %s\noperations of seed %d "
                   "(kernel outcome):\n%s" % (seed, step, msg, seed,
                                             history(log)))

    kd = dump_tree(kroot, check_inodes=False)
    ld = dump_tree(lroot)
    t0 = time.time_ns()
    time.sleep(0.02)
    try:
        assert_same(ld, kd, "layerfs vs kernel before any change")
    except Fail as e:
        fail(-1, str(e))
    excused = set()     # see below
    for step in range(VS_KERNEL_STEPS):
        op = gen.next(kd.entries)
        ko = run_op(kroot, op)
        if kernel_quirk(kroot, op, ko):
            log.append((op, None, ko))
        else:
            lo = run_op(lroot, op)
            log.append((op, lo, ko))
            if lo != ko:
                fail(step, "outcome of %s: layerfs %s, kernel %s" % (
                    fmt_op(op), lo, ko))
        # the kernel's own inode numbering is not under test (with
        # redirects and index it can report a d_ino that is not st_ino)
        kd = dump_tree(kroot, check_inodes=False)
        try:
            ld = dump_tree(lroot)
        except OSError as e:
            fail(step, "walking the layerfs mount: %r" % e)
        kt = timed(kd, t0)
        lt = reconcile_blocks(timed(ld, t0), kt)
        if not ko.startswith("ok"):
            # A failed operation changes nothing, but kernel overlayfs may
            # already have touched the upper copy of a directory by then
            # (a rename of a merged directory onto a non-empty one fails
            # with ENOTEMPTY and leaves the source's parent with a new
            # mtime).  Such a directory's mtime is not compared from then
            # on; every other field still is.
            for rel, e in kt.entries.items():
                le = lt.entries.get(rel)
                if le and e["type"] == "dir" and e["mtime"] == "new" and \
                        le["mtime"] != "new" and rel not in excused:
                    excused.add(rel)
                    ctx.note("seed %d step %d: %s failed (%s) but changed "
                             "the mtime of %s in kernel overlayfs: not "
                             "compared from now on" % (seed, step,
                                                       fmt_op(op), ko,
                                                       esc(rel)))
        for rel in excused:
            for t in (kt, lt):
                if rel in t.entries:
                    t.entries[rel]["mtime"] = "not compared"
        try:
            assert_same(lt, kt, "layerfs vs kernel after %s" % fmt_op(op))
        except Fail as e:
            fail(step, str(e))
        if step % DROP_EVERY == DROP_EVERY - 1:
            # st_ino stays the same for the life of the mount (README,
            # rule 8), also once the kernel has forgotten the inodes and
            # looks them up again; kernel overlayfs keeps it across
            # copy-up (the origin's number)
            drop_caches()
            changed = []
            for rel, ino in sorted(ld.inos.items()):
                try:
                    again = os.lstat(lroot + rel).st_ino
                except OSError as e:
                    changed.append("%s: lstat fails: %s" % (esc(rel),
                                                            errname(e)))
                    continue
                if again != ino:
                    changed.append("%s: %d -> %d" % (esc(rel), ino, again))
            if changed:
                kchanged = [rel for rel, ino in kd.inos.items()
                            if os.lstat(kroot + rel).st_ino != ino]
                fail(step, "layerfs st_ino changed after drop_caches "
                     "(kernel overlayfs: %d of %d changed):\n%s" % (
                         len(kchanged), len(kd.inos), "\n".join(changed[:10])))


# ---------------------------------------------------------------- 2. upper

UPPER_SEEDS = range(3200, 3216)
UPPER_STEPS = 60


def unreachable_names(root):
    """Names a readdir under root lists but lstat cannot find."""
    out = []
    stack = [os.fsencode(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            names = [os.fsencode(e.name) for e in it]
        for n in names:
            p = d + b"/" + n
            try:
                st = os.lstat(p)
            except OSError as e:
                out.append("%s (%s)" % (esc(p[len(os.fsencode(root)):]),
                                        errname(e)))
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(p)
    return sorted(out)


@test(kernel=True, timeout=180)
def write_upper_mounts_under_kernel(ctx):
    """layerfs writes its upper layer in kernel overlayfs's format, so
    the kernel shows the same tree from it (with a fresh workdir, as
    after moving a container).  Every seed runs; each failing one is
    listed with its operations."""
    failures = []
    for seed in UPPER_SEEDS:
        try:
            _upper_under_kernel(ctx, seed)
        except Fail as e:
            what, _, hist = str(e).partition("\noperations")
            failures.append(what if len(what) < 1200 else
                            what[:1200] + "\n  ...")
            note_long(ctx, "operations" + hist)
    if failures:
        raise Fail("%d of %d seeds: kernel overlayfs shows layerfs's upper "
                   "differently (the operations of each follow, in "
                   "order):\n%s" % (len(failures), len(UPPER_SEEDS),
                                     "\n".join(failures)))


def _upper_under_kernel(ctx, seed):
    s = kernel_stack(ctx, seed)
    upper, work = ctx.newdir("upper"), ctx.newdir("work")
    gen = OpGen(random.Random(seed * 104729))
    log = []
    with ctx.mount(s.paths, upper=upper, work=work) as m:
        d = dump_tree(m.mnt)
        for _ in range(UPPER_STEPS):
            op = gen.next(d.entries)
            log.append((op, run_op(m.path(), op)))
            d = dump_tree(m.mnt)
        before = d
    ops = "\n".join("  %2d. %s -> %s" % (i, fmt_op(op), o)
                    for i, (op, o) in enumerate(log))
    if before.problems:
        raise Fail("seed %d: layerfs inode problems before unmount:\n%s"
                   "\noperations of seed %d on layerfs:\n%s" % (
                       seed, "\n".join(before.problems[:10]), seed, ops))
    with ctx.mount(s.paths, upper=upper, work=ctx.newdir("kwork"),
                   kernel=True) as k:
        bad = unreachable_names(k.mnt)
        if bad:
            raise Fail("seed %d: kernel overlayfs on layerfs's upper lists "
                       "names it cannot look up (layerfs did not list "
                       "them): %s\noperations of seed %d on layerfs:\n%s" % (
                           seed, ", ".join(bad[:10]), seed, ops))
        after = dump_tree(k.mnt)
    try:
        # only the entries: inode problems of the kernel's view are not
        # layerfs's to answer for
        assert_same(Dump(after.entries, None, []), before,
                    "seed %d: kernel overlayfs on layerfs's upper vs "
                    "layerfs before unmount" % seed)
    except Fail as e:
        raise Fail("%s\noperations of seed %d on layerfs:\n%s" % (
            e, seed, ops))


# ---------------------------------------------------------------- 3. SIGKILL

BIG = 1 << 30
BIG_CHUNK = 16 << 20


def _regular_files(top):
    """(relpath, st) of every non-directory below top."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for n in filenames + [d for d in dirnames
                              if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            out.append((os.path.relpath(p, top), os.lstat(p)))
    return out


def _sha_file(path):
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(BIG_CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


@test(timeout=180)
def write_sigkill_during_copyup(ctx):
    s = Stack(ctx, 1)
    s[0].file("big/other", b"small neighbour")
    chunk = os.urandom(BIG_CHUNK)
    h = hashlib.sha256()
    rel = "big/data.bin"
    fd = os.open(s[0].p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for i in range(BIG // BIG_CHUNK):
            # every chunk differs, so a copy that repeats or skips one shows
            c = i.to_bytes(8, "little") + chunk[8:]
            os.write(fd, c)
            h.update(c)
        os.fsync(fd)
    finally:
        os.close(fd)
    want_sha = h.hexdigest()
    upper, work = ctx.newdir("upper"), ctx.newdir("work")
    workwork = os.path.join(work, "work")

    m = ctx.mount(s.paths, upper=upper, work=work)
    m.start()
    check(m.daemons, "no layerfs daemon found for the mount")
    target = os.fsdecode(m.path(rel))
    opener = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys\n"
         "try:\n"
         "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
         "    print('opened')\n"
         "except OSError as e:\n"
         "    print('error', e.errno)\n", target],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    # kill while a partial copy exists (in work/, or -- the bug this test
    # is for -- anywhere in the upper layer); at the latest after 5 s
    t_start = time.monotonic()
    seen_partial = None
    while time.monotonic() - t_start < 5 and opener.poll() is None:
        for top in (workwork, upper):
            for p, st in _regular_files(top):
                if stat.S_ISREG(st.st_mode) and 0 < st.st_size < BIG or \
                        stat.S_ISREG(st.st_mode) and st.st_size == BIG and \
                        st.st_blocks * 512 < BIG:
                    seen_partial = (top, p, st.st_size)
        if seen_partial:
            break
        time.sleep(0.002)
    for pid in m.daemons:
        os.kill(pid, signal.SIGKILL)
    for pid in m.daemons:
        exited, _ = wait_exit(pid, 10)
        check(exited, "daemon %d did not die from SIGKILL" % pid)
    m.daemons = []          # killed on purpose: not a crash to report
    try:
        out, _ = opener.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        opener.kill()
        opener.communicate()
        raise Fail("the opener hung after the daemon was killed")
    subprocess.run([FUSERMOUNT, "-uz", m.mnt], stdin=subprocess.DEVNULL,
                   capture_output=True)
    if is_mounted(m.mnt):
        subprocess.run(["umount", "-l", m.mnt], stdin=subprocess.DEVNULL,
                       capture_output=True)
    m.stop()
    ctx.note("killed %.2f s after the open started; partial copy seen: %r; "
             "opener said: %s" % (time.monotonic() - t_start, seen_partial,
                                  out.decode(errors="replace").strip()))

    # the upper layer: big/ at most, and data.bin only complete
    ctx.note("work/ after the kill (may hold leftovers): %r" %
             sorted(os.listdir(workwork))[:10])
    for p, st in _regular_files(upper):
        if p != rel:
            raise Fail("upper layer holds %s (%d bytes) after the kill; only "
                       "%s may be there" % (p, st.st_size, rel))
        check_eq(st.st_size, BIG, "size of the copy-up left in the upper "
                 "layer after SIGKILL (a partial copy is visible)")
        got_sha, _ = _sha_file(os.path.join(upper, p))
        check_eq(got_sha, want_sha, "content of the copy-up left in the upper "
                 "layer after SIGKILL")

    with ctx.mount(s.paths, upper=upper, work=work) as m2:
        check_eq(sorted(os.listdir(workwork)), [],
                 "work/ after mounting again (a killed copy-up's leftovers "
                 "must be removed)")
        got_sha, n = _sha_file(m2.path(rel))
        check_eq(n, BIG, "size read of %s after the remount" % rel)
        check_eq(got_sha, want_sha, "content of %s after the remount" % rel)
        with open(m2.path("big/other"), "rb") as f:
            check_eq(f.read(), b"small neighbour", "big/other")
        # a copy-up after the crash works and appends where it should
        fd = os.open(m2.path(rel), os.O_WRONLY | os.O_APPEND)
        try:
            check_eq(os.write(fd, b"TAIL"), 4, "append after remount")
        finally:
            os.close(fd)
        check_eq(os.lstat(m2.path(rel)).st_size, BIG + 4,
                 "size after the append")
        with open(m2.path(rel), "rb") as f:
            f.seek(BIG - 4)
            check_eq(f.read(), chunk[-4:] + b"TAIL", "end of file after "
                     "the append")
    st = os.lstat(os.path.join(upper, rel))
    check_eq(st.st_size, BIG + 4, "size of the upper copy")
    check_eq(sorted(os.listdir(workwork)), [],
             "work/ after a clean unmount")


# ---------------------------------------------------------------- 4. races

CONCURRENT_SECONDS = 4

WORKER = r'''
import errno, os, random, sys, time
root, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(seed)
dirs = ["shared", "shared/sub", "other", "lowdir", ""]
names = ["f%d" % i for i in range(8)] + ["d0", "d1", "low0", "low1"]
expected = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR,
            errno.EISDIR, errno.EINVAL, errno.EBUSY}
# link(2) of a directory; a name the other process turned into a symlink
# between our islink() and open(O_NOFOLLOW)/chmod (a symlink "f0" may point
# at itself: ELOOP is the kernel's answer there too)
expected_for = {"link": {errno.EPERM}, "write": {errno.ELOOP},
                "chmod": {errno.ELOOP}}
unexpected = {}
counts = {}
def P(*parts):
    return os.path.join(root, *[p for p in parts if p])
def rnd():
    return P(rng.choice(dirs), rng.choice(names))
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    op = rng.choice(["create", "create", "write", "rename", "rename",
                     "rename", "unlink", "unlink", "mkdir", "rmdir",
                     "dirrename", "symlink", "link", "chmod", "readdir"])
    try:
        if op == "create":
            fd = os.open(rnd(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"x" * rng.choice((0, 10, 5000)))
            os.close(fd)
        elif op == "write":
            p = rnd()
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            os.write(fd, b"more")
            os.close(fd)
        elif op == "rename":
            os.rename(rnd(), rnd())
        elif op == "unlink":
            os.unlink(rnd())
        elif op == "mkdir":
            os.mkdir(rnd())
        elif op == "rmdir":
            os.rmdir(rnd())
        elif op == "dirrename":
            os.rename(P(rng.choice(dirs[:-1]), rng.choice(["d0", "d1"])),
                      rnd())
        elif op == "symlink":
            os.symlink("f0", rnd())
        elif op == "link":
            os.link(rnd(), rnd(), follow_symlinks=False)
        elif op == "chmod":
            p = rnd()
            if os.path.islink(p):
                continue
            os.chmod(p, rng.choice((0o600, 0o644)))
        elif op == "readdir":
            d = P(rng.choice(dirs))
            for n in os.listdir(d):
                try:
                    os.lstat(os.path.join(d, n))
                except FileNotFoundError:
                    pass        # the other process may have removed it
        counts[op] = counts.get(op, 0) + 1
    except OSError as e:
        if e.errno not in expected | expected_for.get(op, set()):
            k = "%s %s" % (op, errno.errorcode.get(e.errno, e.errno))
            unexpected[k] = unexpected.get(k, 0) + 1
print(repr((counts, unexpected)))
'''


@contextlib.contextmanager
def dropping_caches(interval):
    """Drop the kernel's caches every interval seconds meanwhile."""
    stop = threading.Event()

    def drop_loop():
        while not stop.wait(interval):
            drop_caches()
    dropper = threading.Thread(target=drop_loop)
    dropper.start()
    try:
        yield
    finally:
        stop.set()
        dropper.join()


def _wait_workers(workers):
    results = []
    for w in workers:
        try:
            out, err = w.communicate(timeout=CONCURRENT_SECONDS + 40)
        except subprocess.TimeoutExpired:
            for x in workers:
                x.kill()
                x.communicate()
            raise Fail("a worker hung (still running 40 s after its %d s)" %
                       CONCURRENT_SECONDS)
        if w.returncode != 0:
            raise Fail("worker failed: %s" % err.decode(errors="replace"))
        results.append(ast.literal_eval(out.decode()))
    return results


@test(timeout=120)
def write_concurrent_same_dir(ctx):
    s = Stack(ctx, 2)
    for i in range(8):
        s[1].file("shared/f%d" % i, b"lower %d" % i)
    for i in range(2):
        s[1].file("lowdir/low%d" % i, b"low")
    s[1].dir("shared/sub")
    s[1].file("shared/sub/low0", b"deep")
    s[1].dir("shared/d0")
    s[1].file("shared/d0/f0", b"in a lower dir")
    s[0].file("shared/f1", b"top")
    s[0].whiteout("shared/f2", "chr")
    s[0].dir("other/d1")
    s[0].file("other/d1/f3", b"top dir")
    upper, work = ctx.newdir("upper"), ctx.newdir("work")
    with ctx.mount(s.paths, upper=upper, work=work) as m:
        root = os.fsdecode(m.path())
        workers = [subprocess.Popen(
            [sys.executable, "-c", WORKER, root, str(seed),
             str(CONCURRENT_SECONDS)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for seed in (1, 2)]
        # the kernel forgets inodes while names change under them
        with dropping_caches(0.25):
            results = _wait_workers(workers)
        ctx.note("operations done (successes, unexpected errors): %r" %
                 results)
        unexpected = [u for _, u in results if u]
        check(not unexpected, "unexpected errors during the concurrent "
              "changes: %r" % unexpected)
        check(all(sum(c.values()) > 50 for c, _ in results),
              "the workers got little done: %r" % results)
        try:
            before = dump_tree(m.mnt)
        except OSError as e:
            raise Fail("walking the mount after the concurrent changes: a "
                       "listed name cannot be looked up: %r" % e)
        if before.problems:
            raise Fail("inode problems after the concurrent changes:\n" +
                       "\n".join(before.problems[:15]))
        # every name readdir lists can be stat'ed by its full path too
        for rel in before.entries:
            try:
                os.stat(m.path(rel), follow_symlinks=False)
            except OSError as e:
                raise Fail("%s: listed but stat fails: %s" % (esc(rel),
                                                              errname(e)))
        check_eq(sorted(os.listdir(os.path.join(work, "work"))), [],
                 "work/ once every change has returned (leftovers)")
    with ctx.mount(s.paths, upper=upper, work=work) as m:
        after = dump_tree(m.mnt)
    assert_same(after, before, "after remount vs before unmount")


# Readers and writers of the same lower files at once: files are opened
# without OPEN (the kernel skips it), so reads go through each node's
# cached fd, which a copy-up points at the upper copy while reads are
# under way (fs/file.c).  A reader must see, byte for byte, the old or
# the new content, never an error and never bytes of neither (a half-made
# copy would show zeros).
RW_FILES, RW_SIZE = 24, 192 * 1024

READER = r'''
import os, random, sys, time
root, seed, seconds, n, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def old(i): return bytes((i + k) % 251 for k in range(251))
def new(i): return bytes((i + k) % 251 ^ 0x5a for k in range(251))
rnd = random.Random(seed)
bad, reads = [], 0
held = [os.open(os.path.join(root, "rw/f%d" % i), os.O_RDONLY) for i in range(n)]
until = time.monotonic() + seconds
while time.monotonic() < until and len(bad) < 5:
    i = rnd.randrange(n)
    off = rnd.randrange(size - 4096)
    try:
        # half the reads through an fd opened before any copy-up
        if rnd.random() < 0.5:
            data = os.pread(held[i], 4096, off)
        else:
            with open(os.path.join(root, "rw/f%d" % i), "rb") as f:
                f.seek(off)
                data = f.read(4096)
    except OSError as e:
        bad.append("f%d: %s" % (i, e))
        continue
    reads += 1
    o, w = old(i), new(i)
    for k, b in enumerate(data):
        if b != o[(off + k) % 251] and b != w[(off + k) % 251]:
            bad.append("f%d@%d: byte %d is neither old nor new" % (i, off + k, b))
            break
print(repr((reads, bad)))
'''


@test(timeout=120)
def write_readers_during_copy_up(ctx):
    """Two readers keep reading 24 lower files (through fds opened before
    and after) while a writer rewrites each in place (copy-up on the first
    write) and the page cache is dropped every 0.1 s, so reads reach the
    daemon while cached fds move to the upper copies: every byte read is
    the old or the new one, no read fails, and the end state is new."""
    def old(i):
        return bytes((i + k) % 251 for k in range(251))

    def new(i):
        return bytes((i + k) % 251 ^ 0x5a for k in range(251))

    def content(pattern):
        return (pattern * (RW_SIZE // 251 + 1))[:RW_SIZE]

    s = Stack(ctx, 1)
    for i in range(RW_FILES):
        s[0].file("rw/f%d" % i, content(old(i)))
    upper, work = ctx.newdir("upper"), ctx.newdir("work")
    with ctx.mount(s.paths, upper=upper, work=work) as m:
        root = os.fsdecode(m.path())
        readers = [subprocess.Popen(
            [sys.executable, "-c", READER, root, str(seed), "3",
             str(RW_FILES), str(RW_SIZE)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for seed in (1, 2)]
        with dropping_caches(0.1):
            time.sleep(0.3)
            for i in range(RW_FILES):
                fd = os.open(m.path("rw/f%d" % i), os.O_WRONLY)
                try:
                    data = content(new(i))
                    # in pieces, so readers meet a file part-written too
                    for off in range(0, RW_SIZE, 65536):
                        os.pwrite(fd, data[off:off + 65536], off)
                finally:
                    os.close(fd)
                time.sleep(0.05)
            results = _wait_workers(readers)
        ctx.note("reads per reader, problems: %r" % results)
        check(all(reads > 0 for reads, _ in results), "a reader read nothing")
        problems = [p for _, bad in results for p in bad]
        check(not problems, "readers saw: %r" % problems[:5])
        for i in range(RW_FILES):
            with open(m.path("rw/f%d" % i), "rb") as f:
                check(f.read() == content(new(i)), "rw/f%d not new" % i)
