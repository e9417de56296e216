#!/usr/bin/env python3
"""Write-path benchmark: layerfs against kernel overlayfs and fuse-overlayfs
with a writable upper layer.

Each system mounts its own copy of the same two generated lower layers with
a fresh, empty upper and work directory, one mount per measurement, and the
benchmark times one write-path operation in it: creating small files,
copy-up on first write (cold and warm), open(O_TRUNC), unlink of lower
files, chown -R of a lower tree.  Prints a table with layerfs's ratio to
both peers and which targets are met.  See benchmarks/README.md.  Must run
as root (mounts, drop_caches, whiteout devices).

    benchmarks/writebench.py [--quick] [--systems layerfs,kernel]
                             [--reps N] [--json FILE] [--dir DIR]
                             [--workloads KEY,KEY] [--timeout S]
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
from common import Result, log, layerfs_program  # noqa: E402
import systems  # noqa: E402
import table  # noqa: E402

GEN_VERSION = 1             # bump when the lower layers' content changes
FIXED_MTIME = 1_700_000_000  # every generated file's mtime, checked afterwards
SMALL_SIZES = (200, 1024, 3000, 6000)   # sizes of the lower small files, in turn
REF_SIZE = 4096             # the small file the constant-time rows compare with
NEW_SIZE = 1024             # each file the create workload writes
OWNER = 1000                # chown -R target uid and gid
STEP_TIMEOUT = 600          # seconds one measurement may take before it is aborted
NO_COPY_SLACK_MS = 10.0     # "no data copy": big <= 2 x small + this


class Shape:
    """Sizes of a full or a --quick run."""

    def __init__(self, quick):
        if quick:
            self.new_files, self.new_dirs = 2000, 20
            self.del_files, self.del_dirs = 500, 5
            self.own_files, self.own_dirs = 1000, 10
            self.mid_mib, self.big_mib = 64, 256
        else:
            self.new_files, self.new_dirs = 10000, 100
            self.del_files, self.del_dirs = 1000, 10
            self.own_files, self.own_dirs = 2000, 20
            self.mid_mib, self.big_mib = 100, 1024

    def key(self):
        return (f"v{GEN_VERSION}-del{self.del_files}x{self.del_dirs}"
                f"-own{self.own_files}x{self.own_dirs}-mid{self.mid_mib}-big{self.big_mib}")

    def as_dict(self):
        return dict(vars(self))


# ---------------------------------------------------------------- lower layers
#
# Two layers, l1 on top of l0.  Every directory is in both layers (so each
# is a merged directory) and the small files alternate between them:
#
#   srv/                  base.txt (l0), top.txt (l1); the create workload
#                         makes srv/new/dNNN/ and its files in the mount
#   data/ref              4 KiB  (l0)   the reference for the constant-time rows
#   data/mid, data/big    100 MiB and 1 GiB of random bytes (l0)
#   data/notes.txt        (l1)
#   del/dNN/fNNNN         the files the bulk unlink removes
#   tree/dNN/fNNNN        the tree chown -R changes

def small_content(rel, size):
    line = (rel + "\n").encode()
    return (line * (size // len(line) + 1))[:size]


def _base_block():
    return random.Random(20261128).randbytes(1 << 20)


def big_chunk(base, tag, i):
    """MiB number I of the big file TAG: random bytes, each MiB distinct."""
    return hashlib.sha256(f"{tag}:{i}".encode()).digest() + base[32:]


def lower_files(shape):
    """(layer, rel, size) of every generated regular file, bigs included."""
    out = [(0, "srv/base.txt", 300), (1, "srv/top.txt", 300),
           (0, "data/ref", REF_SIZE), (1, "data/notes.txt", 100),
           (0, "data/mid", shape.mid_mib << 20), (0, "data/big", shape.big_mib << 20)]
    out += [(i % 2, rel, SMALL_SIZES[i % len(SMALL_SIZES)])
            for i, rel in enumerate(del_paths(shape))]
    out += [(i % 2, rel, SMALL_SIZES[i % len(SMALL_SIZES)])
            for i, rel in enumerate(own_paths(shape))]
    return out


def lower_dirs(shape):
    return (["srv", "data", "del", "tree"]
            + [f"del/d{j:02d}" for j in range(shape.del_dirs)]
            + [f"tree/d{j:02d}" for j in range(shape.own_dirs)])


def del_paths(shape):
    return [f"del/d{i % shape.del_dirs:02d}/f{i:04d}" for i in range(shape.del_files)]


def own_paths(shape):
    return [f"tree/d{i % shape.own_dirs:02d}/f{i:04d}" for i in range(shape.own_files)]


class Layers:
    """One system's copy of the lower layers, in the shape systems.Mount
    takes (layer_dirs_top_first, short_names_top_first, short_dir)."""

    def __init__(self, path, shape):
        self.path = path
        self.shape = shape

    def layer(self, i):
        return os.path.join(self.path, f"l{i}")

    def layer_dirs_top_first(self):
        return [self.layer(1), self.layer(0)]

    def short_names_top_first(self):
        return ["l1", "l0"]

    def short_dir(self):
        return self.path

    def file(self, rel):
        """The lower path of a generated file (in the layer that has it)."""
        if not hasattr(self, "_where"):
            self._where = {r: os.path.join(self.layer(i), r) for i, r, _ in self.files()}
        return self._where[rel]

    def files(self):
        if not hasattr(self, "_files"):
            self._files = lower_files(self.shape)
        return self._files


def _write_layers(dest, shape, log):
    base = _base_block()
    for d in ("l0", "l1"):
        for rel in lower_dirs(shape):
            os.makedirs(os.path.join(dest, d, rel), exist_ok=True)
    for layer, rel, size in lower_files(shape):
        path = os.path.join(dest, f"l{layer}", rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if size >= 1 << 20:
                log(f"  writing {rel} ({size >> 20} MiB)")
                for i in range(size >> 20):
                    os.write(fd, big_chunk(base, rel, i))
            else:
                os.write(fd, small_content(rel, size))
        finally:
            os.close(fd)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def ensure_layers(root, shape, system, log):
    """SYSTEM's copy of the lower layers, generated once (STAMP marks a
    finished copy of this shape and generator version)."""
    path = os.path.join(root, "lowers", shape.key(), system)
    stamp = os.path.join(path, "STAMP")
    want = {"generator": GEN_VERSION, "shape": shape.as_dict()}
    try:
        with open(stamp) as f:
            if json.load(f) == want:
                return Layers(path, shape), False
    except (OSError, ValueError):
        pass
    log(f"generating the lower layers for {system} in {path}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(tmp)
    _write_layers(tmp, shape, log)
    with open(os.path.join(tmp, "STAMP"), "w") as f:
        json.dump(want, f)
    os.sync()
    os.rename(tmp, path)
    return Layers(path, shape), True


def preread(paths):
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass


def check_lower(layers, rels):
    """Problems with the lower copies of RELS: an overlay must never change
    its lower layers."""
    want = {rel: size for _, rel, size in layers.files()}
    out = []
    for rel in rels:
        p = layers.file(rel)
        try:
            st = os.lstat(p)
        except OSError as e:
            out.append(f"lower file {p}: {e.strerror}")
            continue
        if (st.st_size, st.st_uid, st.st_gid, int(st.st_mtime)) != (want[rel], 0, 0, FIXED_MTIME):
            out.append(f"lower file {p} changed: size {st.st_size}, owner "
                       f"{st.st_uid}:{st.st_gid}, mtime {int(st.st_mtime)}")
    return out


# ---------------------------------------------------------------- workloads

class Workload:
    """One measured operation, on a fresh mount with an empty upper layer.

    prepare(mnt) runs untimed first (e.g. a lstat so that a single-file row
    times the operation, not the cold lookup), op(mnt) is timed, verify(mnt)
    returns a list of problems seen in the mount afterwards; touched are the
    lower files checked unchanged after the unmount; warm are lower files
    read into the page cache after the cache drop, before the mount.
    After the unmount the upper and work directories go to the trash,
    emptied at the end of the run (see Bench.empty_trash), unless they
    hold big copied-up files (big_upper).
    """

    def __init__(self, key, title, op, prepare=None, verify=None, touched=(), warm=(),
                 state="cold", big_upper=False):
        self.key = key
        self.big_upper = big_upper  # the upper holds GiBs: delete it at once
        self.title = title
        self.op = op
        self.prepare = prepare or (lambda mnt: None)
        self.verify = verify or (lambda mnt: [])
        self.touched = list(touched)
        self.warm = list(warm)
        self.state = state


def _mib(mib):
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def make_workloads(shape):
    wls = []
    size_of = {rel: size for _, rel, size in lower_files(shape)}

    # 1. create + write + close of many small files in new directories.
    per_dir = -(-shape.new_files // shape.new_dirs)
    new_dirs = [f"srv/new/d{j:03d}" for j in range(shape.new_dirs)]
    new_files = [f"{new_dirs[i // per_dir]}/f{i:05d}" for i in range(shape.new_files)]
    payload = bytes(range(256)) * (NEW_SIZE // 256)

    def create_prepare(mnt):
        os.mkdir(os.path.join(mnt, "srv/new"))
        for d in new_dirs:
            os.mkdir(os.path.join(mnt, d))
        create_prepare.paths = [os.path.join(mnt, f) for f in new_files]

    def create_op(mnt):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for p in create_prepare.paths:
            fd = os.open(p, flags, 0o644)
            os.write(fd, payload)
            os.close(fd)

    def create_verify(mnt):
        n = sum(len(os.listdir(os.path.join(mnt, d))) for d in new_dirs)
        out = [] if n == shape.new_files else [f"{n} files listed, {shape.new_files} created"]
        for rel in (new_files[0], new_files[-1]):
            with open(os.path.join(mnt, rel), "rb") as f:
                if f.read() != payload:
                    out.append(f"{rel} reads back wrong")
        return out

    wls.append(Workload("create_small",
                        f"create+write+close {shape.new_files:,} {NEW_SIZE // 1024} KiB files",
                        create_op, create_prepare, create_verify))

    # 2. Copy-up on first write: open O_WRONLY|O_APPEND, write a byte, close.
    def copyup(rel):
        size = size_of[rel]
        base = _base_block()

        def prepare(mnt):
            os.lstat(os.path.join(mnt, rel))

        def op(mnt):
            fd = os.open(os.path.join(mnt, rel), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            os.write(fd, b"x")
            os.close(fd)

        def verify(mnt):
            p = os.path.join(mnt, rel)
            st = os.lstat(p)
            if st.st_size != size + 1:
                return [f"{rel}: size {st.st_size} after the append, want {size + 1}"]
            out = []
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            try:
                last = size // 2 ** 20 - 1
                for i in (0, last // 2, last):
                    if os.pread(fd, 1 << 20, i << 20) != big_chunk(base, rel, i):
                        out.append(f"{rel}: MiB {i} differs from the lower file after copy-up")
                if os.pread(fd, 2, size) != b"x":
                    out.append(f"{rel}: the appended byte is not at the end")
            finally:
                os.close(fd)
            return out
        return op, prepare, verify

    for rel, mib in (("data/mid", shape.mid_mib), ("data/big", shape.big_mib)):
        op, prep, ver = copyup(rel)
        wls.append(Workload(f"copyup_{rel[5:]}", f"copy-up: append 1 byte, {_mib(mib)} file",
                            op, prep, ver, touched=[rel], big_upper=True))
    for rel, mib in (("data/mid", shape.mid_mib), ("data/big", shape.big_mib)):
        op, prep, ver = copyup(rel)
        wls.append(Workload(f"copyup_{rel[5:]}_warm",
                            f"copy-up: append 1 byte, {_mib(mib)} file",
                            op, prep, ver, touched=[rel], warm=[rel], state="warm",
                            big_upper=True))

    # 3. open(O_TRUNC) of a lower file: the data need not be copied.
    def trunc(rel):
        def prepare(mnt):
            os.lstat(os.path.join(mnt, rel))

        def op(mnt):
            os.close(os.open(os.path.join(mnt, rel), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC))

        def verify(mnt):
            st = os.lstat(os.path.join(mnt, rel))
            return [] if st.st_size == 0 else [f"{rel}: size {st.st_size} after O_TRUNC"]
        return op, prepare, verify

    for rel, what in (("data/ref", "4 KiB"), ("data/big", _mib(shape.big_mib))):
        op, prep, ver = trunc(rel)
        wls.append(Workload(f"trunc_{rel[5:]}", f"open(O_TRUNC), {what} lower file",
                            op, prep, ver, touched=[rel]))

    # 4. unlink of many lower files.
    dels = del_paths(shape)

    def del_prepare(mnt):
        del_prepare.paths = [os.path.join(mnt, r) for r in dels]

    def del_op(mnt):
        for p in del_prepare.paths:
            os.unlink(p)

    def del_verify(mnt):
        out = []
        left = sum(len(os.listdir(os.path.join(mnt, f"del/d{j:02d}")))
                   for j in range(shape.del_dirs))
        if left:
            out.append(f"{left} entries still listed after unlinking them all")
        seen = sum(os.path.lexists(p) for p in del_prepare.paths)
        if seen:
            out.append(f"{seen} unlinked files still found by lookup")
        return out

    wls.append(Workload("delete_many", f"unlink {shape.del_files:,} lower files",
                        del_op, del_prepare, del_verify, touched=dels))

    # 5. chown -R of a lower tree.
    owns = own_paths(shape)

    def chown_op(mnt):
        p = subprocess.run(["chown", "-R", f"{OWNER}:{OWNER}", os.path.join(mnt, "tree")],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"chown -R exit {p.returncode}: {err[0] if err else ''}")

    def chown_verify(mnt):
        wrong = files = 0
        for d, dirs, names in os.walk(os.path.join(mnt, "tree")):
            for n in [*dirs, *names, None]:
                st = os.lstat(os.path.join(d, n) if n else d)
                wrong += (st.st_uid, st.st_gid) != (OWNER, OWNER)
            files += len(names)
        out = []
        if files != shape.own_files:
            out.append(f"{files} files under tree/ after chown -R, want {shape.own_files}")
        if wrong:
            out.append(f"{wrong} entries under tree/ not owned by {OWNER}:{OWNER}")
        return out

    wls.append(Workload("chown_tree",
                        f"chown -R, {shape.own_files:,} lower files in {shape.own_dirs} dirs",
                        chown_op, None, chown_verify, touched=owns))

    # 6. unlink of one lower file: constant in its size.
    def unlink(rel):
        def prepare(mnt):
            os.lstat(os.path.join(mnt, rel))

        def op(mnt):
            os.unlink(os.path.join(mnt, rel))

        def verify(mnt):
            p = os.path.join(mnt, rel)
            out = [f"{rel} still found after unlink"] if os.path.lexists(p) else []
            if os.path.basename(rel) in os.listdir(os.path.dirname(p)):
                out.append(f"{rel} still listed after unlink")
            return out
        return op, prepare, verify

    for rel, what in (("data/ref", "4 KiB"), ("data/big", _mib(shape.big_mib))):
        op, prep, ver = unlink(rel)
        wls.append(Workload(f"delete_{rel[5:]}", f"unlink, {what} lower file",
                            op, prep, ver, touched=[rel]))
    return wls


WORKLOAD_KEYS = [w.key for w in make_workloads(Shape(True))]


# ---------------------------------------------------------------- running

class Watchdog:
    """Ends a FUSE daemon (by its pid) when a measurement takes longer than
    TIMEOUT, so that a hung request fails (ENOTCONN) instead of hanging the
    benchmark; the mount is then unmounted as usual.  Kernel overlayfs has
    no daemon to end."""

    def __init__(self, daemons, timeout):
        self.fired = False
        self.daemons = list(daemons)
        self.timer = threading.Timer(timeout, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self):
        self.fired = True
        for pid in self.daemons:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cancel(self):
        self.timer.cancel()


class Bench:
    def __init__(self, args, shape):
        self.args = args
        self.shape = shape
        self.workloads = [w for w in make_workloads(shape)
                          if not args.workloads or w.key in args.workloads]
        self.results = {}      # (workload key, system) -> Result
        self.notes = []
        self.failed = {}       # system -> why it could not mount
        self.layers = {}       # system -> Layers
        self.run_root = os.path.join(args.dir, "run")
        self.trash = os.path.join(args.dir, "trash")
        self.trash_stamp = os.path.join(args.dir, ".trash-emptied")
        self.discarded = 0

    def note(self, msg):
        if msg not in self.notes:
            self.notes.append(msg)
            log("NOTE: " + msg)

    def paths(self, s):
        base = os.path.join(self.run_root, s.name)
        return (os.path.join(base, "upper"), os.path.join(base, "work"),
                os.path.join(base, "mnt"))

    def clear(self, s, recreate):
        upper, work, _ = self.paths(s)
        for d in (upper, work):
            shutil.rmtree(d, ignore_errors=True)
            if os.path.exists(d):
                raise RuntimeError(f"cannot remove {d}")
            if recreate:
                os.makedirs(d)

    def discard(self, s, wl):
        """Moves a used upper and work directory out of the way."""
        if wl.big_upper:
            self.clear(s, False)
            return
        upper, work, _ = self.paths(s)
        self.discarded += 1
        dest = os.path.join(self.trash, f"{self.discarded:04d}-{s.name}-{wl.key}")
        os.makedirs(dest)
        for d in (upper, work):
            os.rename(d, os.path.join(dest, os.path.basename(d)))

    def empty_trash(self, wait):
        """Deletes the used upper directories, then syncs.

        On ext4 without a journal (this machine's root filesystem) the
        inode allocator passes over every inode freed in the last minute
        (six while its inode table block is dirty), reading each, so
        creating files soon after deleting thousands costs several times
        more and whichever system follows a big deletion pays.  So nothing
        with many inodes is deleted during the run, and with WAIT a run
        that starts within a minute of an earlier run's deletion of 1,000
        entries or more first waits for that minute to pass.
        """
        if os.path.isdir(self.trash):
            n = sum(len(dirs) + len(files) for _, dirs, files in os.walk(self.trash))
            log(f"deleting the used upper directories ({n} entries)")
            shutil.rmtree(self.trash, ignore_errors=True)
            os.sync()
            if n >= 1000:
                with open(self.trash_stamp, "w") as f:
                    f.write(f"{time.time()}\n")
        if wait:
            common.wait_out_inode_reuse(self.trash_stamp)

    def one(self, s, wl):
        """One measurement: (ms, problems seen), ms None when the system failed."""
        lay = self.layers[s.name]
        upper, work, mnt = self.paths(s)
        self.clear(s, True)
        systems.drop_caches()
        preread([lay.file(rel) for rel in wl.warm])
        m = systems.Mount(s, lay, mnt, upper, work)
        problems = []
        ms = None
        try:
            with m:
                wd = Watchdog(m.daemons, self.args.timeout)
                try:
                    wl.prepare(m.mnt)
                    t0 = time.perf_counter_ns()
                    wl.op(m.mnt)
                    ms = (time.perf_counter_ns() - t0) / 1e6
                    problems = wl.verify(m.mnt)
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                    why = (f"not done after {self.args.timeout} s, daemon ended"
                           if wd.fired else str(e))
                    self.note(f"{s.name}, {wl.key} ({wl.state}): failed: {why}")
                    return None, []
                finally:
                    wd.cancel()
        except systems.MountError as e:
            self.failed[s.name] = str(e)
            self.note(f"{s.name} cannot mount: {e}")
            return None, []
        finally:
            for w in m.warnings:
                self.note(f"{s.name}, {wl.key}: {w}")
            if not systems.is_mounted(mnt):
                self.discard(s, wl)
        problems += check_lower(lay, wl.touched)
        return ms, problems

    def run(self):
        sysobjs = systems.available(self.args.systems, self.args.layerfs, self.note)
        for s in sysobjs:
            self.layers[s.name], _ = ensure_layers(self.args.dir, self.shape, s.name, log)
        systems.unmount_leftovers(self.run_root)
        for s in sysobjs:
            self.clear(s, False)
        self.empty_trash(wait=True)
        # Read every lower file the workloads touch once, so that no
        # system's copy is still in the VM host's cache from being written
        # while another's is not (dropping caches empties only this kernel's).
        log("reading the lower files once")
        rels = sorted({rel for wl in self.workloads for rel in wl.touched + wl.warm})
        for s in sysobjs:
            preread([self.layers[s.name].file(rel) for rel in rels])
        reps = self.args.reps
        for w, wl in enumerate(self.workloads):
            samples = {s.name: [] for s in sysobjs}
            bad = {s.name: 0 for s in sysobjs}
            for rep in range(reps):
                k = (w + rep) % len(sysobjs) if sysobjs else 0
                for s in sysobjs[k:] + sysobjs[:k]:
                    if s.name in self.failed:
                        continue
                    ms, problems = self.one(s, wl)
                    if ms is None:
                        continue
                    samples[s.name].append(ms)
                    if problems:
                        bad[s.name] += 1
                        for p in problems[:3]:
                            self.note(f"{s.name}, {wl.key} ({wl.state}): {p}")
            line = []
            for s in sysobjs:
                if samples[s.name]:
                    r = Result(samples[s.name], bad[s.name])
                    self.results[(wl.key, s.name)] = r
                    line.append(f"{s.name} {table.fmt(r.value)}")
            log(f"{wl.key:18s} {wl.state:4s} " + ", ".join(line) + " ms")


# ---------------------------------------------------------------- report

PEERS = (("kernel", "vs kernel"), ("fuse-overlayfs", "vs fuse-ovl"))


def ratio(results, key, peer):
    """How many times as fast layerfs is: the peer's time / layerfs's."""
    return table.ratio(results.get((key, peer)), results.get((key, "layerfs")))


def checks(bench):
    """[(status, text)] for the targets."""
    res = bench.results
    shape = bench.shape
    big = _mib(shape.big_mib)
    out = []

    def get(key, system="layerfs"):
        return res.get((key, system))

    def wrong(*keys):
        return any(get(k) and get(k).bad for k in keys)

    for what, ref_key, big_key in (("deleting a lower file", "delete_ref", "delete_big"),
                                   ("open(O_TRUNC) of a lower file", "trunc_ref", "trunc_big")):
        r, b = get(ref_key), get(big_key)
        text = (f"{what} costs no data copy (the {big} file's time <= 2x the 4 KiB file's "
                f"+ {NO_COPY_SLACK_MS:g} ms)")
        if not r or not b:
            out.append(table.not_measured(text))
            continue
        out.append(table.target(b.value <= 2 * r.value + NO_COPY_SLACK_MS,
                                f"{text}: {table.fmt(b.value)} ms vs {table.fmt(r.value)} ms",
                                wrong(ref_key, big_key)))
    for key, state in (("copyup_big", "cold"), ("copyup_big_warm", "warm")):
        x = ratio(res, key, "kernel")
        text = f"copy-up of a {big} file within 1.5x of kernel overlayfs ({state})"
        if x is None:
            out.append(table.not_measured(text))
            continue
        out.append(table.target(x >= 1 / 1.5,
                                f"{text}: {table.fmt(get(key).value)} ms vs "
                                f"{table.fmt(get(key, 'kernel').value)} ms, {x:.2f}x "
                                "(need >= 0.67x)", wrong(key)))
    x = ratio(res, "create_small", "fuse-overlayfs")
    text = "small-file creation at least 1.5x as fast as fuse-overlayfs"
    if x is None:
        out.append(table.not_measured(text))
    else:
        out.append(table.target(x >= 1.5, f"{text}: {x:.2f}x", wrong("create_small")))
    return out


def text_report(bench, meta):
    lines = [table.run_line("layerfs write benchmark", meta, f"median of {meta['reps']}"),
             f"layerfs column: {meta['layerfs_program']}" + table.build_tag(meta)
             + (", run from a copy taken at the start"
                if meta["layerfs_copy"] != shutil.which(meta["layerfs_program"]) else ""),
             table.load_line(meta) + " (busy machines give noisy figures)",
             f"lower layers: 2 (every directory in both, small files alternating), "
             f"a copy per system under {meta['lower_dir']}",
             "every figure: a fresh mount on an empty upper+work, time of the operation "
             "alone in ms (median).",
             "cold = sync + drop_caches=3 before the mount; warm = the same, then the "
             "lower file read into the page cache.",
             "vs kernel / vs fuse-ovl = the peer's time / layerfs's time: above 1.00x "
             "layerfs is faster.  '!' = wrong results (see notes).",
             ""]
    cols = table.Table([44, 5, 9, 9, 9, 9, 11], left=2)
    lines += table.underlined(cols.line(["workload (ms)", "state", "layerfs", "kernel",
                                         "fuse-ovl", *(head for _, head in PEERS)]))
    for wl in bench.workloads:
        figures = [table.figure(bench.results.get((wl.key, s)), s in meta["systems"])
                   for s in systems.ALL]
        ratios = [table.times(ratio(bench.results, wl.key, p)) for p, _ in PEERS]
        lines.append(cols.line([wl.title, wl.state, *figures, *ratios]))
    lines += ["", "Targets:"]
    lines += [table.target_line(st, t) for st, t in checks(bench)]
    lines += table.notes_section(bench.notes)
    return "\n".join(lines)


def json_report(bench, meta):
    results = []
    for wl in bench.workloads:
        for s in systems.ALL:
            r = bench.results.get((wl.key, s))
            if r is None:
                continue
            results.append({
                "workload": wl.key, "title": wl.title, "state": wl.state, "unit": "ms",
                "system": s, "value": r.value, "samples": r.samples, "bad": r.bad,
                "vs_kernel": ratio(bench.results, wl.key, "kernel") if s == "layerfs" else None,
                "vs_fuse_overlayfs": (ratio(bench.results, wl.key, "fuse-overlayfs")
                                      if s == "layerfs" else None)})
    return {"meta": meta,
            "ratio_convention": "peer time / layerfs time; > 1 means layerfs is faster",
            "results": results,
            "targets": [{"status": st, "target": t} for st, t in checks(bench)],
            "failed_mounts": bench.failed,
            "notes": bench.notes}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2,000 new files, 500 deletes, 1,000-file chown, 64 MiB and 256 MiB "
                         "files instead of 100 MiB and 1 GiB")
    ap.add_argument("--systems", default=",".join(systems.ALL),
                    help="comma-separated subset of " + ",".join(systems.ALL))
    ap.add_argument("--reps", type=int, default=3,
                    help="measurements (fresh mounts) per workload and system, "
                         "median reported (default %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write machine-readable results")
    ap.add_argument("--dir", default="/var/tmp/layerfs-writebench",
                    help="lower layers, upper/work and mount points (default %(default)s)")
    ap.add_argument("--workloads", metavar="KEY,KEY",
                    help="run only these rows: " + ",".join(WORKLOAD_KEYS))
    ap.add_argument("--timeout", type=int, default=STEP_TIMEOUT,
                    help="seconds one measurement may take before its FUSE connection is "
                         "aborted (default %(default)s)")
    args = ap.parse_args()
    args.systems = common.comma_names(ap, args.systems, systems.ALL, "system")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.workloads:
        args.workloads = common.comma_names(ap, args.workloads, WORKLOAD_KEYS, "workload")
    args.dir = os.path.abspath(args.dir)
    return args


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("writebench: must run as root (mounts, drop_caches, whiteouts)")
    # SIGTERM unwinds like ^C, through the finally that unmounts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shape = Shape(args.quick)
    lock = common.lock_dir(args.dir, "writebench")  # noqa: F841 (held until exit)
    systems.become_subreaper()
    t0 = time.time()
    load0 = os.getloadavg()[0]
    program = layerfs_program()
    build = common.fingerprint(program)
    # DIR/bin holds nothing but the copies; a program not found stays its
    # name, which the note skipping layerfs then shows.
    args.layerfs = common.snapshot(program, args.dir, stale_prefix="") or program
    bench = Bench(args, shape)
    try:
        bench.run()
    finally:
        systems.unmount_leftovers(bench.run_root)
        for s in systems.ALL:
            mnt = os.path.join(bench.run_root, s, "mnt")
            if os.path.isdir(mnt) and not systems.is_mounted(mnt):
                for d in ("upper", "work"):
                    shutil.rmtree(os.path.join(bench.run_root, s, d), ignore_errors=True)
        bench.empty_trash(wait=False)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "reps": args.reps,
        "systems": args.systems,
        "layerfs_program": program,
        "layerfs_build": build,
        "layerfs_copy": args.layerfs,
        "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "lower_dir": os.path.join(args.dir, "lowers", shape.key()),
        "shape": shape.as_dict(),
        "seconds": round(time.time() - t0, 1),
    }
    print(text_report(bench, meta))
    if args.json:
        common.write_json(args.json, json_report(bench, meta))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
