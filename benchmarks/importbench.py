#!/usr/bin/env python3
"""Import and commit throughput of layerctl against umoci and podman, on
one generated image, median of N, each repetition into a fresh
destination.

import:  `layerctl import` of an OCI image layout against `umoci unpack` of
         the same layout (both verify digests and extract every layer), and
         `layerctl import` of the layout as a tar against `podman load` of
         that tar (podman with its own storage under DIR, overlay driver).
commit:  `layerctl commit` of a container whose upper holds a change set
         written through a layerfs mount (`layerctl mount IMAGE MNT --name
         C`), against `umoci repack` of the same change applied to a bundle
         that `umoci unpack` made.  Only the commit and the repack are
         timed.

Nothing is deleted while the run lasts: used destinations go to DIR/trash,
emptied at the end, and a run starting within a minute of an earlier run's
emptying waits for that minute to pass.  umoci unpack deletes thousands of
files itself (each layer's files replace the last's): it goes last in each
repetition, and the next tool's measurement waits until that minute has
passed (see README.md: on ext4 without a journal, creating files in the
minute after deleting thousands costs several times more, so whichever
tool followed a deletion would pay for it).

usage: benchmarks/importbench.py [--mb 256] [--files 4000] [--reps 3]
          [--change-files 2000] [--change-mb 32] [--only import|commit]
          [--no-podman] [--baseline PROGRAM] [--json FILE]
          [--dir /var/tmp/layerfs-importbench]
Run as root (layerctl mount, podman's storage).  LAYERCTL names the
layerctl program (default bin/layerctl); --baseline adds rows for another
build (e.g. the previous commit's) in the same run.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
from common import INODE_REUSE_WAIT  # noqa: E402
import table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERCTL = os.environ.get("LAYERCTL") or os.path.join(REPO, "bin", "layerctl")


def log(msg):
    """A progress line on stderr after the script's name (common.log's
    lines carry the time of day instead)."""
    print("importbench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the image

def layer_tar(seed, n_files, total_bytes):
    """A deterministic layer: n_files files of pseudo-random bytes."""
    b = io.BytesIO()
    per = max(1, total_bytes // n_files)
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(n_files):
            data = (block * (per // len(block) + 1))[:per]
            data = hashlib.sha256(b"%d-%d" % (seed, i)).digest() + data[32:]
            ti = tarfile.TarInfo("d%03d/f%05d" % (i % 100, i))
            ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


def make_image(dest, mb, files):
    if os.path.exists(os.path.join(dest, "index.json")):
        return
    blobs = os.path.join(dest, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        h = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, h), "wb") as f:
            f.write(data)
        return h

    layers = []
    for i in range(4):    # four layers of a quarter each, gzip'd
        raw = layer_tar(i, files // 4, (mb << 20) // 4)
        gz = gzip.compress(raw, compresslevel=1)
        layers.append((hashlib.sha256(raw).hexdigest(), put(gz), len(gz)))
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids":
                                 ["sha256:" + d for d, _, _ in layers]}}
                     ).encode()
    man = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + put(cfg), "size": len(cfg)},
        "layers": [{"mediaType":
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + h, "size": n}
                   for _, h, n in layers]}).encode()
    mh = put(man)
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + mh, "size": len(man),
            "annotations": {"org.opencontainers.image.ref.name": "bench"}}]},
            f)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')


def make_image_tar(image, dest):
    """The layout as one tar (what podman load and `layerctl import
    FILE` read)."""
    if os.path.exists(dest):
        return
    tmp = dest + ".tmp"
    with tarfile.open(tmp, "w") as t:
        for name in sorted(os.listdir(image)):
            t.add(os.path.join(image, name), arcname=name)
    os.rename(tmp, dest)


def preread(root):
    for dirpath, _, files in os.walk(root):
        for n in files:
            with open(os.path.join(dirpath, n), "rb") as f:
                while f.read(1 << 20):
                    pass


# ---------------------------------------------------------------- the run

class Bench:
    def __init__(self, a):
        self.a = a
        self.run_root = os.path.join(a.dir, "run")
        self.trash = os.path.join(a.dir, "trash")
        self.trash_stamp = os.path.join(a.dir, ".trash-emptied")
        self.n_discarded = 0
        self.deleted = None    # (time, label): the last run deleting 1,000+
        self.waited = 0.0

    def note_deletion(self, label):
        """label's run (timed or not) deleted 1,000 files or more.  Synced
        at once: the kernel counts an inode freed in the last minute as
        recent, in the last six while its inode table block is dirty."""
        os.sync()
        self.deleted = (time.time(), label)

    def timed(self, label, argv, env=None, what=None):
        """One measurement of label: after the inodes another tool freed
        are a minute old, and after a sync, so that neither the allocator
        nor the previous run's write-back is paid for here."""
        if self.deleted and self.deleted[1] != label:
            age = time.time() - self.deleted[0]
            if 0 <= age < INODE_REUSE_WAIT:
                time.sleep(INODE_REUSE_WAIT - age)
                self.waited += INODE_REUSE_WAIT - age
        os.sync()
        t = time.perf_counter()
        run(argv, env, what)
        return time.perf_counter() - t

    def discard(self, path):
        """Moves a used destination out of the way (deleted at the end)."""
        if not os.path.lexists(path):
            return
        os.makedirs(self.trash, exist_ok=True)
        self.n_discarded += 1
        os.rename(path, os.path.join(
            self.trash, "%05d-%s" % (self.n_discarded, os.path.basename(path))))

    def empty_trash(self, wait):
        """Deletes the used destinations, then syncs.  On ext4 without a
        journal (this machine's root filesystem) the inode allocator passes
        over every inode freed in the last minute, reading each, so
        creating files soon after deleting thousands costs several times
        more (here: layerctl import 0.25 s into a clean directory, 1.3 s
        right after the previous store's deletion).  So nothing is deleted
        during the run, and with WAIT a run that starts within a minute of
        an earlier run's deletion of 1,000 entries or more waits it out."""
        if os.path.isdir(self.trash):
            unmount_under(self.trash)
            n = sum(len(d) + len(f) for _, d, f in os.walk(self.trash))
            log("deleting the used destinations (%d entries)" % n)
            shutil.rmtree(self.trash, ignore_errors=True)
            os.sync()
            if n >= 1000:
                with open(self.trash_stamp, "w") as f:
                    f.write("%f\n" % time.time())
        if wait:
            common.wait_out_inode_reuse(self.trash_stamp, log)

    def dest(self, name):
        d = os.path.join(self.run_root, name)
        self.discard(d)
        return d


def unmount_under(root):
    prefix = os.path.realpath(root) + "/"
    with open("/proc/self/mountinfo") as f:
        mnts = [l.split()[4] for l in f]
    for m in reversed(mnts):
        if m.startswith(prefix):
            subprocess.run(["umount", "-l", m], capture_output=True)


def run(argv, env=None, what=None):
    r = subprocess.run(argv, capture_output=True, env=env,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        sys.exit("importbench: %s failed (exit %d): %s" % (
            what or " ".join(argv[:3]), r.returncode,
            r.stderr.decode(errors="replace")[-2000:]))
    return r


# ---------------------------------------------------------------- podman

class Podman:
    """podman with its own storage.conf and graphroot under d (overlay
    driver, runc, cgroupfs: what tests/mounted/test_podman.py uses)."""

    def __init__(self, d):
        os.makedirs(d)
        storage = os.path.join(d, "storage.conf")
        with open(storage, "w") as f:
            f.write('[storage]\ndriver = "overlay"\ngraphroot = "%s"\n'
                    'runroot = "%s"\n' % (os.path.join(d, "root"),
                                          os.path.join(d, "run")))
        conf = os.path.join(d, "containers.conf")
        with open(conf, "w") as f:
            f.write('[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                    'events_logger = "none"\n[containers]\n'
                    'default_ulimits = []\n')
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=storage,
                        CONTAINERS_CONF=conf)
        # The storage made before the clock starts.
        run(["podman", "images"], self.env, "podman images")


# ---------------------------------------------------------------- import

def bench_import(b, image, image_tar, have_umoci, have_podman):
    """label -> seconds of each repetition.  The tools take turns going
    first, but umoci, which deletes thousands of files, goes last."""
    a = b.a
    systems = [("layerctl import (OCI dir)", [LAYERCTL, "--store", None,
                                              "import", image])]
    if a.baseline:
        systems.append(("baseline import (OCI dir)",
                        [a.baseline, "--store", None, "import", image]))
    systems.append(("layerctl import (OCI tar)",
                    [LAYERCTL, "--store", None, "import", image_tar]))
    if have_podman:
        systems.append(("podman load (OCI tar)",
                        ["podman", "load", "-i", image_tar]))
    last = [("umoci unpack (OCI dir)", ["umoci", "unpack", "--image",
                                        image + ":bench", None])] \
        if have_umoci else []
    runs = {label: [] for label, _ in systems + last}
    for rep in range(a.reps):
        k = rep % len(systems)
        for i, (label, argv) in enumerate(systems[k:] + systems[:k] + last):
            d = b.dest("import-%d-%d" % (rep, i))
            argv = [d if x is None else x for x in argv]
            env = Podman(d).env if label.startswith("podman") else None
            runs[label].append(b.timed(label, argv, env, label))
            if label.startswith("umoci"):
                b.note_deletion(label)
            b.discard(d)
    return runs


# ---------------------------------------------------------------- commit

def change_data(seed, i, size):
    """Text-like content (hex digits: gzip halves it, as it does code and
    text), deterministic."""
    out = bytearray()
    h = hashlib.sha256(b"change-%d-%d" % (seed, i)).digest()
    while len(out) < size:
        h = hashlib.sha256(h).digest()
        out += h.hex().encode()
    return bytes(out[:size])


def change_set(a, rep):
    """The same change for both tools: (new files, appended lower files,
    chmod'ed lower files, deleted lower files, deleted lower dir)."""
    per = max(1, (a.change_mb << 20) // a.change_files)
    new = [("new/d%02d/f%05d" % (i % 20, i), change_data(rep, i, per))
           for i in range(a.change_files)]
    lower = ["d%03d/f%05d" % (i % 100, i) for i in range(a.files // 4)]
    lower = [p for p in lower if not p.startswith("d099/")]
    appended = lower[0:100]
    chmodded = lower[100:200]
    deleted = lower[200:300]
    return new, appended, chmodded, deleted, "d099"


def apply_changes(root, changes, rep):
    """Writes the change into root (a layerfs mount or umoci's rootfs);
    returns the bytes of the regular files the new layer will hold."""
    new, appended, chmodded, deleted, gone_dir = changes
    total = 0
    for rel, data in new:
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        total += len(data)
    extra = change_data(rep, -1, 4096)
    for rel in appended:
        with open(os.path.join(root, rel), "ab") as f:
            f.write(extra)
        total += os.stat(os.path.join(root, rel)).st_size
    for rel in chmodded:
        os.chmod(os.path.join(root, rel), 0o600)
        total += os.stat(os.path.join(root, rel)).st_size
    for rel in deleted:
        os.unlink(os.path.join(root, rel))
    shutil.rmtree(os.path.join(root, gone_dir))
    return total


def bench_commit(b, image, have_umoci):
    a = b.a
    systems = [("layerctl commit", LAYERCTL)]
    if a.baseline:
        systems.append(("baseline commit", a.baseline))
    last = [("umoci repack", None)] if have_umoci else []
    runs = {label: [] for label, _ in systems + last}
    change_bytes = None
    for rep in range(a.reps):
        changes = change_set(a, rep)
        k = rep % len(systems)
        for i, (label, prog) in enumerate(systems[k:] + systems[:k] + last):
            if prog:
                n, dt = layerctl_commit(b, label, prog, image, changes, rep, i)
            else:
                n, dt = umoci_repack(b, label, image, changes, rep, i)
            if change_bytes not in (None, n):
                sys.exit("importbench: the change set differs between tools "
                         "(%d and %d bytes)" % (change_bytes, n))
            change_bytes = n
            runs[label].append(dt)
    return runs, change_bytes


def layerctl_commit(b, label, prog, image, changes, rep, i):
    """Import (untimed), mount as a container, write the change through
    the mount, unmount (untimed), then the timed commit."""
    store = b.dest("commit-%d-%d" % (rep, i))
    mnt = store + "-mnt"
    b.discard(mnt)
    os.makedirs(mnt)
    run([prog, "--store", store, "import", image])
    name, tag = "c%d" % rep, "bench:commit%d" % rep
    run([prog, "--store", store, "mount", "bench:latest", mnt, "--name", name])
    try:
        n = apply_changes(mnt, changes, rep)
    finally:
        run([prog, "--store", store, "umount", mnt])
    dt = b.timed(label, [prog, "--store", store, "commit", name, tag])
    check_layerctl_commit(store, tag, changes)
    b.discard(mnt)
    b.discard(store)
    return n, dt


def umoci_repack(b, label, image, changes, rep, i):
    """umoci unpack a bundle of a copy of the layout (repack adds to it),
    apply the change to its rootfs (untimed), then the timed repack."""
    layout = b.dest("commit-%d-%d-layout" % (rep, i))
    shutil.copytree(image, layout)
    bundle = b.dest("commit-%d-%d-bundle" % (rep, i))
    run(["umoci", "unpack", "--image", layout + ":bench", bundle])
    b.note_deletion(label)
    n = apply_changes(os.path.join(bundle, "rootfs"), changes, rep)
    dt = b.timed(label, ["umoci", "repack", "--image",
                         layout + ":commit%d" % rep, bundle])
    b.discard(layout)
    b.discard(bundle)
    return n, dt


def check_layerctl_commit(store, tag, changes):
    """The committed layer holds the change: every new file, the appended
    and chmod'ed files, a whiteout for each deletion."""
    new, appended, chmodded, deleted, gone_dir = changes
    with open(os.path.join(store, "repositories.json")) as f:
        image_id = json.load(f)[tag].split(":")[1]
    with open(os.path.join(store, "imagedb", "sha256", image_id + ".json")) as f:
        top = json.load(f)["rootfs"]["diff_ids"][-1].split(":")[1]
    layer = os.path.join(store, "layers", "sha256", top)
    want = [r for r, _ in new] + appended + chmodded + \
        [os.path.join(os.path.dirname(r), ".wh." + os.path.basename(r))
         for r in deleted] + [".wh." + gone_dir]
    missing = [r for r in want if not os.path.lexists(os.path.join(layer, r))]
    if missing:
        sys.exit("importbench: layerctl commit's layer lacks %d of the "
                 "change's %d entries, e.g. %s" % (len(missing), len(want),
                                                   missing[:3]))


# ---------------------------------------------------------------- report

# A tool's line: its median time, throughput and best time.
ROW = "  %-26s %6.2f s  %7.1f MB/s   (best %.2f s)"


def report(title, runs, nbytes, *comparisons):
    """TITLE, a ROW per tool that ran (NBYTES moved per run), then for
    each (REF, OTHERS) in COMPARISONS how many times as fast REF is as
    each of OTHERS, where both ran."""
    med = {k: common.Result(v) for k, v in runs.items() if v}
    lines = [title]
    for k, r in med.items():
        lines.append(ROW % (k, r.value, nbytes / r.value / 1e6,
                            min(r.samples)))
    for ref, others in comparisons:
        for o in others:
            if ref in med and o in med:
                x = table.ratio(med[o], med[ref])
                lines.append(f"  {ref} is {table.times(x)} as fast as {o}")
    return "\n".join(lines)


def import_report(a, runs):
    return report("import of a %d MiB, %d-file, 4-layer gzip OCI image "
                  "(median of %d):" % (a.mb, a.files, a.reps),
                  runs, a.mb << 20,
                  ("layerctl import (OCI dir)",
                   ["umoci unpack (OCI dir)", "baseline import (OCI dir)"]),
                  ("layerctl import (OCI tar)", ["podman load (OCI tar)"]))


def commit_report(a, runs, nbytes):
    return report("commit of a change: %d new files (%d MiB), 100 appended, "
                  "100 chmod'ed, 100 and a directory deleted; %.1f MiB of "
                  "file data in the new layer (median of %d):" % (
                      a.change_files, a.change_mb, nbytes / 2**20, a.reps),
                  runs, nbytes,
                  ("layerctl commit", ["umoci repack", "baseline commit"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--change-files", type=int, default=2000)
    ap.add_argument("--change-mb", type=int, default=32)
    ap.add_argument("--only", choices=("import", "commit"))
    ap.add_argument("--no-podman", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--baseline", metavar="PROGRAM",
                    help="another layerctl build, timed alongside")
    ap.add_argument("--dir", default="/var/tmp/layerfs-importbench")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("importbench: run as root (layerctl mount, podman storage)")
    t0 = time.time()
    load0 = os.getloadavg()[0]
    os.makedirs(a.dir, exist_ok=True)
    image = os.path.join(a.dir, "image-%dm-%d" % (a.mb, a.files))
    make_image(image, a.mb, a.files)
    image_tar = image + ".tar"
    make_image_tar(image, image_tar)
    b = Bench(a)
    # Leftovers of an interrupted run go the same way as used ones.
    if os.path.isdir(b.run_root):
        unmount_under(b.run_root)
        for n in os.listdir(b.run_root):
            b.discard(os.path.join(b.run_root, n))
    for n in os.listdir(a.dir):    # stores and bundles of the old script
        if n in ("store", "bundle"):
            b.discard(os.path.join(a.dir, n))
    b.empty_trash(wait=True)
    os.makedirs(b.run_root, exist_ok=True)
    have_umoci = shutil.which("umoci") is not None
    have_podman = shutil.which("podman") is not None and not a.no_podman
    preread(image)
    preread(image_tar)
    out, js = [], {}
    try:
        if a.only != "commit":
            log("import, %d repetitions" % a.reps)
            runs = bench_import(b, image, image_tar, have_umoci, have_podman)
            out.append(import_report(a, runs))
            js["import"] = {"bytes": a.mb << 20, "samples": runs}
        if a.only != "import":
            log("commit, %d repetitions" % a.reps)
            runs, nbytes = bench_commit(b, image, have_umoci)
            out.append(commit_report(a, runs, nbytes))
            js["commit"] = {"bytes": nbytes, "samples": runs}
    finally:
        unmount_under(b.run_root)
        for n in os.listdir(b.run_root) if os.path.isdir(b.run_root) else []:
            b.discard(os.path.join(b.run_root, n))
        b.empty_trash(wait=False)
    versions = []
    for prog, arg in (("umoci", "--version"), ("podman", "--version")):
        if shutil.which(prog):
            versions.append(subprocess.run([prog, arg], capture_output=True,
                                           text=True).stdout.strip())
    out.append("(%s, kernel %s, %d cpus, load %.2f -> %.2f, %s; %.0f s, "
               "%.0f s of them waiting after umoci's deletions)" % (
                   datetime.date.today().isoformat(), platform.release(),
                   os.cpu_count(), load0, os.getloadavg()[0],
                   ", ".join(versions), time.time() - t0, b.waited))
    print("\n".join(out))
    if a.json:
        common.write_json(a.json, js)


if __name__ == "__main__":
    main()
