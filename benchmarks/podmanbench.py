#!/usr/bin/env python3
"""podman benchmark: the same podman sessions with layerfs as the overlay
driver's mount_program, with fuse-overlayfs as it, and with podman's
native kernel overlay driver (no mount_program).

Each system gets its own podman storage (storage.conf, graphroot and
runroot under STORAGE/<system>) into which one generated, Debian-like
image is loaded (busybox plus copies of real trees from this host's
/usr/share and /usr/include, in layers, with whiteouts and an opaque
directory on top).  The sessions, timed from the podman command's start to
its exit: `podman run` listing and checksumming every file of the image
(cold: caches dropped just before; warm: the same again at once), and
`podman build` of a small Containerfile.  Prints medians, time ratios to
native and to fuse-overlayfs, and whether layerfs is within 1.5x of
native.  See benchmarks/README.md.  Must run as root.

    benchmarks/podmanbench.py [--quick] [--systems native,layerfs,fuse-overlayfs]
                              [--sessions run_cold,run_warm,build] [--reps N]
                              [--json FILE] [--dir DIR] [--storage DIR]
                              [--timeout S] [--stats] [--clear-index-cache]
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
from common import Result, log, layerfs_program  # noqa: E402
# systems.py's helpers only: here "systems" are podman's storage drivers.
from systems import drop_caches, mount_points  # noqa: E402
import table  # noqa: E402

GEN_VERSION = 1              # bump when the generated image changes
SYSTEMS = ("native", "layerfs", "fuse-overlayfs")   # the default set
# kernel-mp (opt-in, a diagnostic): kernel overlayfs behind a mount_program
# shim.  containers/storage treats it as any mount program (naive diff on
# commit, OCI .wh. whiteouts kept as files, which the kernel does not read,
# so its view of the image differs and its run checksums are not checked):
# podman's cost of having a mount program at all, at kernel speed.
ALL_SYSTEMS = SYSTEMS + ("kernel-mp",)
KERNEL_MP = """#!/bin/sh
# mount_program shim (podmanbench kernel-mp): kernel overlayfs with
# fuse-overlayfs's command line, -o OPTIONS TARGET.
exec mount -t overlay overlay "$@"
"""
BUSYBOX = "/bin/busybox"
TARGET = 1.5                 # layerfs's time at most this many times native's
CMD_TIMEOUT = 600            # seconds for one podman command
FIXED_MTIME = 1_700_000_000
CREATED = "2026-11-28T00:00:00Z"
INDEX_CACHE = "/var/cache/layerfs/index"   # layerfs's default for root
STORAGE = "/var/tmp/lfs-pb"  # podman's storage: ROOT/<system>/{root,runroot,*.conf}
MARKER = ".podmanbench"      # in each system's storage: ours to delete
DELETED_STAMP = ".deleted"   # in STORAGE: when a run last deleted storage
# With podman 4.3.1 and conmon 2.1.6 here, every `podman run` (any driver)
# takes 20 s longer once the directory holding graphroot and runroot is 43
# characters or longer: conmon exits, podman never learns the container's
# exit and waits out its 20 s conmon timer ("Exceeded conmon timeout waiting
# for container ... to exit" with --log-level=debug).  42 is fine.
MAX_STORAGE_PATH = 42

# Files podman puts into every container; left out of the checksum list.
INJECTED = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run/.containerenv")

# The run session: every regular file of the root filesystem listed and
# checksummed (NUL-separated: some names hold spaces); the sums, sorted,
# are summed once more so that the result can be checked in one line.
RUN_SCRIPT = ("find / -xdev -type f -print0 | xargs -0 md5sum | grep -v -E '  ("
              + "|".join(re.escape(p) for p in INJECTED)
              + ")$' | sort | md5sum")

# The build: a COPY and three RUN steps that write to lower files (copy-up),
# delete lower files and directories, and create a few hundred small files.
CONTAINERFILE = """\
FROM {image}
COPY app.conf /etc/app.conf
RUN set -e; echo built >> /etc/os-release; \\
    for f in /usr/share/zoneinfo/Europe/*; do [ -L "$f" ] || echo "# tz" >> "$f"; done; \\
    rm -rf /usr/share/zoneinfo/America /usr/share/i18n/charmaps; rm -f /usr/share/zoneinfo/Asia/T*
RUN set -e; mkdir -p /opt/app/data; i=0; \\
    while [ $i -lt 300 ]; do echo "item $i" > /opt/app/data/f$i; i=$((i+1)); done; \\
    find /usr/share/perl -type f | wc -l > /opt/app/perl-files
RUN set -e; tar -cf /opt/app/i18n.tar -C /usr/share/i18n locales; \\
    rm -rf /opt/app/data/f1?; cat /etc/app.conf /opt/app/perl-files > /opt/app/summary
"""
APP_CONF = "# app.conf, copied by the build\nname = podmanbench\n"
BUILD_CHECK = ("cat /etc/app.conf; tail -n 1 /etc/os-release; ls /opt/app/data | wc -l; "
               "test ! -e /usr/share/zoneinfo/America && echo no-america; "
               "test -e /usr/share/zoneinfo/Asia/Tokyo || echo no-tokyo; "
               "tail -c 5 /usr/share/zoneinfo/Europe/Paris; tar -tf /opt/app/i18n.tar | wc -l")


# ---------------------------------------------------------------- the image
#
# Layers, bottom first, each a list of (host directory, path in the image):
#
#   base   busybox with a symlink per applet in /bin, /etc, and the host's
#          /usr/share/{zoneinfo,i18n,perl,mime} (+ /usr/include when full)
#   docs   /usr/share/icons (+ /usr/share/doc when full)
#   tools  (full only) /usr/share/vim and /usr/share/cmake-*
#   top    /etc/os-release replaced, a directory of zoneinfo and one of
#          icons whited out, another icons directory made opaque with a
#          file of its own, a few new files
#
# Here a --quick image has about 9,000 files and 57 MiB (roughly the file
# count of debian:bookworm); the full one 27,000 files and 320 MiB.  The
# host's trees differ between machines: the header shows what the image holds.

def image_spec(quick):
    share = "/usr/share"
    cmake = sorted(d for d in os.listdir(share) if d.startswith("cmake-")) \
        if os.path.isdir(share) else []
    base = [(f"{share}/{d}", f"usr/share/{d}") for d in ("zoneinfo", "i18n", "perl", "mime")]
    docs = [(f"{share}/icons", "usr/share/icons")]
    layers = [("base", base), ("docs", docs)]
    if not quick:
        base.append(("/usr/include", "usr/include"))
        docs.append((f"{share}/doc", "usr/share/doc"))
        layers.append(("tools", [(f"{share}/vim", "usr/share/vim")]
                       + [(f"{share}/{d}", f"usr/share/{d}") for d in cmake[-1:]]))
    return layers


class LayerWriter:
    """One layer tar on disk, and what it does to the merged tree."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "wb")
        self.tar = tarfile.open(fileobj=self.f, mode="w", format=tarfile.PAX_FORMAT)
        self.files = {}        # image path -> md5 of every regular file added
        self.others = set()    # directories, symlinks
        self.symlinks = set()
        self.whiteouts = []    # paths removed from the layers below
        self.opaque = []       # directories whose lower contents are hidden
        self.n_files = 0
        self.bytes = 0
        self.dirs = set()

    def _parents(self, name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dir(d)

    def dir(self, name, mode=0o755):
        self._parents(name)
        self.dirs.add(name)
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, FIXED_MTIME
        self.tar.addfile(ti)
        self.others.add("/" + name)

    def data(self, name, data, mode=0o644):
        self._parents(name)
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), mode, FIXED_MTIME
        self.tar.addfile(ti, io.BytesIO(data))
        self.files["/" + name] = hashlib.md5(data).hexdigest()
        self.n_files += 1
        self.bytes += len(data)

    def symlink(self, name, target):
        self._parents(name)
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, target, 0o777, FIXED_MTIME
        self.tar.addfile(ti)
        self.others.add("/" + name)
        self.symlinks.add("/" + name)

    def whiteout(self, name):
        d, base = os.path.split(name)
        self._parents(name)
        self.tar.addfile(self._empty(f"{d}/.wh.{base}"))
        self.whiteouts.append("/" + name)

    def make_opaque(self, name):
        if name not in self.dirs:
            self.dir(name)
        self.tar.addfile(self._empty(f"{name}/.wh..wh..opq"))
        self.opaque.append("/" + name)

    @staticmethod
    def _empty(name):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = 0, 0o644, FIXED_MTIME
        return ti

    def tree(self, src, dest):
        """The host directory SRC as DEST (regular files, directories,
        symlinks and hard links; nothing else; owner root)."""
        self._parents(dest + "/x")
        for top, dirs, names in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(top, src)
            arc = dest if rel == "." else f"{dest}/{rel}"
            for n in sorted(names) + dirs:
                if "\n" in n or "\\" in n:
                    continue
                p = os.path.join(top, n)
                try:
                    ti = self.tar.gettarinfo(p, f"{arc}/{n}")
                except OSError:
                    continue
                if ti is None or not (ti.isreg() or ti.issym() or ti.isdir() or ti.islnk()):
                    continue
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = "root"
                if ti.isreg():
                    with open(p, "rb") as f:
                        data = f.read()
                    ti.size = len(data)
                    self.tar.addfile(ti, io.BytesIO(data))
                    self.files["/" + ti.name] = hashlib.md5(data).hexdigest()
                    self.n_files += 1
                    self.bytes += len(data)
                elif ti.islnk():
                    self.tar.addfile(ti)
                    self.files["/" + ti.name] = self.files["/" + ti.linkname]
                    self.n_files += 1
                else:
                    self.tar.addfile(ti)
                    self.others.add("/" + ti.name)
                    if ti.issym():
                        self.symlinks.add("/" + ti.name)
                    if ti.isdir():
                        self.dirs.add(ti.name)
        self.dirs.add(dest)

    def close(self):
        self.tar.close()
        self.f.close()


def apply_layer(merged, nonreg, lw):
    """Overlay rules: MERGED, the {path: md5} of the regular files below,
    and NONREG, the set of their directories and symlinks, become the
    merged tree with layer LW on top."""
    def drop_under(p, itself=True):
        for k in [k for k in merged if k.startswith(p + "/") or (itself and k == p)]:
            del merged[k]
        for k in [k for k in nonreg if k.startswith(p + "/") or (itself and k == p)]:
            nonreg.discard(k)
    for p in lw.whiteouts:
        drop_under(p)
    for p in lw.opaque:
        drop_under(p, itself=False)
    for p in lw.others:
        merged.pop(p, None)
    for p in lw.symlinks:
        if p in nonreg:
            drop_under(p)
    for p in lw.files:
        if p in nonreg:
            drop_under(p)
    merged.update(lw.files)
    nonreg.update(lw.others)


def count_files(path):
    """Regular files under PATH (0 when PATH is no directory)."""
    n = 0
    for top, _, names in os.walk(path):
        n += sum(1 for x in names if os.path.isfile(os.path.join(top, x))
                 and not os.path.islink(os.path.join(top, x)))
    return n


def write_image(dest, quick, tag):
    """Writes DEST/image.tar (a `docker save` archive) and DEST/expected.json."""
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    spec = image_spec(quick)
    layers = []
    merged, nonreg = {}, set()
    for i, (name, trees) in enumerate(spec + [("top", None)]):
        lw = LayerWriter(os.path.join(tmp, f"layer{i}.tar"))
        if name == "base":
            with open(BUSYBOX, "rb") as f:
                lw.data("bin/busybox", f.read(), 0o755)
            applets = subprocess.run([BUSYBOX, "--list"], capture_output=True,
                                     text=True, check=True).stdout.split()
            for a in sorted(set(applets) - {"busybox"}):
                if "/" not in a:
                    lw.symlink(f"bin/{a}", "busybox")
            lw.dir("tmp", 0o1777)
            lw.dir("root", 0o700)
            lw.dir("var/tmp", 0o1777)
            lw.data("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                    b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
            lw.data("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
            lw.data("etc/os-release", b'PRETTY_NAME="podmanbench base"\nID=podmanbench\n')
        if trees:
            for src, arc in trees:
                if os.path.isdir(src):
                    log(f"  layer {i} ({name}): {src}")
                    lw.tree(src, arc)
        if name == "top":
            lw.data("etc/os-release", b'PRETTY_NAME="podmanbench"\nID=podmanbench\n'
                    b'VERSION_ID="1"\n')
            lw.data("etc/debian_version", b"12.0\n")
            zones = sorted(d for d in os.listdir("/usr/share/zoneinfo")
                           if os.path.isdir(os.path.join("/usr/share/zoneinfo", d))
                           and d not in ("America", "Europe", "Asia"))
            if zones:
                lw.whiteout(f"usr/share/zoneinfo/{zones[0]}")
            # the two smallest icon themes that have regular files
            sizes = sorted((count_files(os.path.join("/usr/share/icons", d)), d)
                           for d in os.listdir("/usr/share/icons"))
            icons = [d for n, d in sizes if n > 0]
            if icons:
                lw.whiteout(f"usr/share/icons/{icons[0]}")
            if len(icons) > 1:
                lw.make_opaque(f"usr/share/icons/{icons[1]}")
                lw.data(f"usr/share/icons/{icons[1]}/index.theme", b"[Icon Theme]\nName=bench\n")
            for k in range(20):
                lw.data(f"var/lib/bench/state{k:02d}", f"state {k}\n".encode())
        lw.close()
        apply_layer(merged, nonreg, lw)
        with open(lw.path, "rb") as f:
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)
        layers.append({"name": name, "file": lw.path, "diff_id": h.hexdigest(),
                       "files": lw.n_files, "bytes": lw.bytes})
    cfg = json.dumps({
        "architecture": "amd64", "os": "linux", "created": CREATED,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + l["diff_id"] for l in layers]},
        "history": [{"created": CREATED, "created_by": f"podmanbench layer {l['name']}"}
                    for l in layers],
    }, sort_keys=True, separators=(",", ":")).encode()
    cfg_hex = hashlib.sha256(cfg).hexdigest()
    manifest = json.dumps([{"Config": cfg_hex + ".json", "RepoTags": [tag],
                            "Layers": [f"{l['diff_id']}/layer.tar" for l in layers]}]).encode()
    out = os.path.join(tmp, "image.tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in ((cfg_hex + ".json", cfg), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), FIXED_MTIME, 0o644
            t.addfile(ti, io.BytesIO(data))
        for l in layers:
            ti = t.gettarinfo(l["file"], f"{l['diff_id']}/layer.tar")
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            with open(l["file"], "rb") as f:
                t.addfile(ti, f)
            os.unlink(l["file"])
            del l["file"]
    lines = sorted(f"{md5}  {p}\n".encode() for p, md5 in merged.items())
    with open(os.path.join(tmp, "expected.sums"), "wb") as f:
        f.writelines(lines)
    info = {"generator": GEN_VERSION, "quick": quick, "tag": tag, "layers": layers,
            "files": len(merged), "bytes": sum(l["bytes"] for l in layers),
            "digest": hashlib.md5(b"".join(lines)).hexdigest()}
    info["tar_bytes"] = os.path.getsize(out)
    with open(os.path.join(tmp, "expected.json"), "w") as f:
        json.dump(info, f, indent=1)
    os.sync()
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    return info


def ensure_image(root, quick, tag):
    dest = os.path.join(root, "image", f"v{GEN_VERSION}-{'quick' if quick else 'full'}")
    try:
        with open(os.path.join(dest, "expected.json")) as f:
            info = json.load(f)
        if info.get("generator") == GEN_VERSION and os.path.isfile(os.path.join(dest, "image.tar")):
            return dest, info
    except (OSError, ValueError):
        pass
    log(f"generating the image in {dest} (once; cached)")
    return dest, write_image(dest, quick, tag)


# ---------------------------------------------------------------- podman

class PodmanError(Exception):
    pass


class Podman:
    """podman with storage of its own under ROOT/SYSTEM: graphroot,
    runroot, storage.conf (with the mount_program, if any) and
    containers.conf (runc, cgroupfs, no events log, no default ulimits:
    what works on this machine, as in tests/mounted/test_podman.py)."""

    def __init__(self, root, system, mount_program, timeout):
        self.system = system
        self.mount_program = mount_program
        self.timeout = timeout
        self.dir = os.path.join(root, system)
        self.graphroot = os.path.join(self.dir, "root")
        self.runroot = os.path.join(self.dir, "runroot")
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, MARKER), "w") as f:
            f.write("podman storage of benchmarks/podmanbench.py; deleted by its next run\n")
        storage = os.path.join(self.dir, "storage.conf")
        with open(storage, "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{self.graphroot}"\n'
                    f'runroot = "{self.runroot}"\n')
            if mount_program:
                f.write(f'[storage.options.overlay]\nmount_program = "{mount_program}"\n')
        conf = os.path.join(self.dir, "containers.conf")
        with open(conf, "w") as f:
            f.write('[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                    'events_logger = "none"\n[containers]\ndefault_ulimits = []\n')
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=storage, CONTAINERS_CONF=conf)

    @classmethod
    def existing(cls, root, system, timeout):
        """The storage an earlier run left under ROOT/SYSTEM."""
        p = cls.__new__(cls)
        p.system, p.mount_program, p.timeout = system, None, timeout
        p.dir = os.path.join(root, system)
        p.graphroot = os.path.join(p.dir, "root")
        p.runroot = os.path.join(p.dir, "runroot")
        p.env = dict(os.environ,
                     CONTAINERS_STORAGE_CONF=os.path.join(p.dir, "storage.conf"),
                     CONTAINERS_CONF=os.path.join(p.dir, "containers.conf"))
        return p

    def run(self, *args, check=True, timeout=None):
        """(seconds, stdout) of `podman ARGS`, timed to podman's exit; raises
        PodmanError if it fails.  Output goes to files, not pipes, so that
        the time ends with podman even if something podman started (a mount
        program's daemon, conmon) kept its stdout or stderr open."""
        cmd = ["podman", *args]
        limit = timeout or self.timeout
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=err)
            try:
                rc = p.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise PodmanError(f"{' '.join(cmd)[:300]}: not done after {limit} s")
            secs = time.perf_counter() - t0
            out.seek(0)
            err.seek(0)
            text = out.read().decode(errors="replace")
            errs = err.read().decode(errors="replace").strip().splitlines()
        if check and rc != 0:
            raise PodmanError(f"{' '.join(cmd)[:300]} -> exit {rc}: " + " | ".join(errs[-4:]))
        return secs, text

    def env_line(self):
        """The command prefix that repeats a step by hand."""
        return (f"CONTAINERS_STORAGE_CONF={self.env['CONTAINERS_STORAGE_CONF']} "
                f"CONTAINERS_CONF={self.env['CONTAINERS_CONF']} podman")

    def mounts(self):
        """Mount points under this system's directory."""
        prefix = os.path.realpath(self.dir) + "/"
        return [mp for mp in mount_points() if mp.startswith(prefix)]

    def cleanup(self):
        """Removes every container and image, unmounts what is left, deletes
        the storage.  Problems are returned, not raised."""
        problems = []
        if os.path.isdir(self.dir):
            for args in (("rm", "-af"), ("rmi", "-af")):
                try:
                    self.run(*args, timeout=300)
                except PodmanError as e:
                    problems.append(str(e))
        for mp in sorted(self.mounts(), reverse=True):
            subprocess.run(["umount", "-l", mp], stdin=subprocess.DEVNULL,
                           capture_output=True)
        left = self.mounts()
        if left:
            problems.append(f"still mounted, storage kept: {', '.join(left)}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems


def read_tree(path):
    """Reads every regular file under PATH once (see Bench.run)."""
    n = 0
    for top, _, names in os.walk(path):
        for name in names:
            p = os.path.join(top, name)
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if os.path.isfile(p):
                    while os.read(fd, 1 << 20):
                        pass
                    n += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return n


class StatsWatcher:
    """While a session runs (--stats): the FUSE daemons mounted under a
    system's storage, their command line, CPU time, and for layerfs the
    mount's counters (getxattr layerfs.stats on its root), last values seen
    before each mount went away.  Costs a getxattr per mount every
    INTERVAL, so figures taken with --stats are marked."""

    INTERVAL = 0.1

    def __init__(self, podman, program):
        self.podman = podman
        self.program = os.path.realpath(program) if program else None
        self.mounts = {}      # mount point -> {"stats": {...}, "pid":, "cpu":, "cmdline":}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False

    def _daemons(self):
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and os.fsdecode(argv[0]) == self.program:
                args = [os.fsdecode(a) for a in argv if a]
                out[args[-1]] = (int(pid), args)
        return out

    def _cpu(self, pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def _loop(self):
        while not self.stop.is_set():
            try:
                mps = [mp for mp in self.podman.mounts()]
                daemons = self._daemons() if mps else {}
                for mp in mps:
                    rec = self.mounts.setdefault(mp, {})
                    if mp in daemons:
                        pid, argv = daemons[mp]
                        rec["pid"], rec["cmdline"] = pid, argv
                    if "pid" in rec:
                        cpu = self._cpu(rec["pid"])
                        if cpu is not None:
                            rec["cpu"] = cpu
                    try:
                        rec["stats"] = json.loads(os.getxattr(mp, "layerfs.stats"))
                    except (OSError, ValueError):
                        pass
            except OSError:
                pass
            self.stop.wait(self.INTERVAL)

    def summary(self):
        """Totals over the session's mounts: daemon CPU seconds, requests
        by opcode (count, largest p50 seen), and a few counters."""
        cpu = sum(r.get("cpu", 0) for r in self.mounts.values())
        reqs, other = {}, {}
        for r in self.mounts.values():
            st = r.get("stats") or {}
            for op, v in (st.get("requests") or {}).items():
                if isinstance(v, dict):
                    agg = reqs.setdefault(op, {"count": 0, "p50_us": 0, "p99_us": 0})
                    agg["count"] += v.get("count", 0)
                    agg["p50_us"] = max(agg["p50_us"], v.get("p50_us", 0))
                    agg["p99_us"] = max(agg["p99_us"], v.get("p99_us", 0))
            for k, v in _flatten(st).items():
                if not k.startswith("requests.") and isinstance(v, (int, float)):
                    other[k] = other.get(k, 0) + v
        cmdlines = [r["cmdline"] for r in self.mounts.values() if "cmdline" in r]
        return {"mounts": len(self.mounts), "daemon_cpu_s": round(cpu, 2),
                "requests": reqs, "counters": other,
                "cmdline": cmdlines[0] if cmdlines else None}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------- the bench

class Session:
    def __init__(self, key, title, state, target):
        self.key, self.title, self.state, self.target = key, title, state, target


SESSIONS = [
    Session("load", "podman load (docker-save tar)", "-", False),
    Session("run_cold", "podman run: find + md5sum every file", "cold", True),
    Session("run_warm", "podman run: find + md5sum every file", "warm", True),
    Session("build", "podman build: COPY + 3 RUN", "cold", True),
]


class Bench:
    def __init__(self, args, image_dir, info):
        self.args = args
        self.image_dir = image_dir
        self.info = info
        self.tag = info["tag"]
        self.samples = {}      # (session key, system) -> [seconds]
        self.bad = {}          # (session key, system) -> count of wrong results
        self.notes = []
        self.failed = {}       # system -> why it stopped
        self.podmans = {}
        self.build_ref = None  # native's view of the built image
        self.stats = {}        # (session key, system) -> StatsWatcher.summary()
        self.diagnosed = set()
        self.context = os.path.join(args.dir, "build-context")

    def note(self, msg):
        if msg not in self.notes:
            self.notes.append(msg)
            log("NOTE: " + msg)

    def add(self, key, system, secs, ok=True):
        self.samples.setdefault((key, system), []).append(secs)
        if not ok:
            self.bad[(key, system)] = self.bad.get((key, system), 0) + 1

    def result(self, key, system):
        s = self.samples.get((key, system))
        return Result(s, self.bad.get((key, system), 0)) if s else None

    def program(self, system):
        if system == "kernel-mp":
            path = os.path.join(self.args.dir, "bin", "kernel-mp")
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                common.write_executable(path, KERNEL_MP.encode())
            return path
        return {"native": None, "layerfs": self.args.layerfs,
                "fuse-overlayfs": shutil.which("fuse-overlayfs")}[system]

    def setup(self):
        if "kernel-mp" in self.args.systems:
            self.note("kernel-mp: kernel overlayfs behind a mount_program shim, a diagnostic "
                      "(podman with a mount program at kernel speed); its results are not "
                      "checked: the kernel does not read the .wh. whiteout files "
                      "containers/storage writes for mount programs, so deleted files "
                      "show again")
        os.makedirs(self.context, exist_ok=True)
        with open(os.path.join(self.context, "Containerfile"), "w") as f:
            f.write(CONTAINERFILE.format(image=self.tag))
        with open(os.path.join(self.context, "app.conf"), "w") as f:
            f.write(APP_CONF)
        tar = os.path.join(self.image_dir, "image.tar")
        with open(tar, "rb") as f:      # so that no system loads it from the disk
            while f.read(1 << 20):
                pass
        for s in self.args.systems:
            if s != "native" and not self.program(s):
                self.note(f"{s} skipped: program not found")
                continue
            try:
                p = Podman(self.args.storage, s, self.program(s), self.args.timeout)
            except FileExistsError:
                self.note(f"{s} skipped: {os.path.join(self.args.storage, s)} is left from an "
                          "earlier run and could not be removed (still mounted?)")
                continue
            self.podmans[s] = p
            step = "load"
            try:
                secs, out = p.run("load", "-i", tar)
                if self.tag.split(":")[0] not in out:
                    self.note(f"{s}: podman load names no {self.tag}: {out.strip()[:200]}")
                self.add("load", s, secs)
                log(f"{s}: loaded in {secs:.2f} s")
                # podman's own first-run set-up, and one container mount,
                # outside the figures.
                step = "the first (untimed) podman run"
                p.run("run", "--rm", "--network=none", "--pull=never", self.tag, "true")
            except PodmanError as e:
                self.fail(s, step, e)
        # Read every layer file once: dropping caches empties this kernel's
        # cache, not the VM host's, which would favour whichever system's
        # copy was written last.
        drop_caches()
        for s, p in self.podmans.items():
            n = read_tree(os.path.join(p.graphroot, "overlay"))
            log(f"{s}: read {n} files of its storage once")

    def fail(self, system, key, err):
        msg = str(err)
        self.failed[system] = f"{key}: {msg}"
        p = self.podmans.get(system)
        self.note(f"{system} failed in {key}: {msg}"
                  + (f"  [repeat with: {p.env_line()} ...]" if p else ""))

    def clear_index_cache(self, p):
        for name in os.listdir(os.path.join(p.graphroot, "overlay")):
            try:
                os.unlink(os.path.join(INDEX_CACHE, name + ".idx"))
            except OSError:
                pass

    def timed(self, s, key, fn):
        p = self.podmans[s]
        watcher = (StatsWatcher(p, self.program(s))
                   if self.args.stats and s != "native" else None)
        if watcher:
            with watcher:
                secs, out = fn()
            self.stats[(key, s)] = watcher.summary()
        else:
            secs, out = fn()
        return secs, out

    def run_session(self, s, key):
        p = self.podmans[s]
        if key == "run_cold":
            if self.args.clear_index_cache and s == "layerfs":
                self.clear_index_cache(p)
            drop_caches()
        secs, out = self.timed(s, key, lambda: p.run(
            "run", "--rm", "--network=none", "--pull=never", self.tag, "sh", "-c", RUN_SCRIPT))
        got = out.split()[0] if out.split() else ""
        ok = got == self.info["digest"] or s == "kernel-mp"
        self.add(key, s, secs, ok)
        if not ok:
            self.note(f"{s}, {key}: checksum list {got or '(none)'} differs from the "
                      f"image's {self.info['digest']}")
            self.diagnose(s)
        return secs

    def diagnose(self, s):
        """Once per system: which files the container sees differently."""
        if s in self.diagnosed:
            return
        self.diagnosed.add(s)
        script = RUN_SCRIPT.rsplit("|", 1)[0]
        try:
            _, out = self.podmans[s].run("run", "--rm", "--network=none", "--pull=never",
                                         self.tag, "sh", "-c", script)
        except PodmanError as e:
            self.note(f"{s}: diagnosis run failed: {e}")
            return
        with open(os.path.join(self.image_dir, "expected.sums")) as f:
            want = set(f.read().splitlines())
        have = set(out.splitlines())
        missing, extra = sorted(want - have), sorted(have - want)
        self.note(f"{s}: {len(have)} files checksummed, {len(want)} expected; "
                  f"missing or different: {len(missing)} (e.g. {missing[:3]}), "
                  f"unexpected: {len(extra)} (e.g. {extra[:3]})")

    def build_session(self, s):
        p = self.podmans[s]
        drop_caches()
        built = f"localhost/podmanbench-built:{s}"
        secs, _ = self.timed(s, "build", lambda: p.run(
            "build", "--no-cache", "--pull=never", "--network=none", "-t", built,
            self.context))
        _, out = p.run("run", "--rm", "--network=none", "--pull=never", built,
                       "sh", "-c", BUILD_CHECK)
        p.run("rmi", "-f", built)
        p.run("image", "prune", "-f")
        ok = all(w in out for w in ("podmanbench", "built", "no-america", "no-tokyo"))
        if s == "kernel-mp":
            ok = True       # deletions are .wh. files, which the kernel ignores
        elif s == "native":
            self.build_ref = out
        elif self.build_ref is not None and out != self.build_ref:
            ok = False
        if not ok:
            self.note(f"{s}, build: the built image shows {out!r}"
                      + (f", native's showed {self.build_ref!r}" if self.build_ref else ""))
        self.add("build", s, secs, ok)
        return secs

    def run(self):
        self.setup()
        systems = [s for s in self.args.systems if s in self.podmans]
        for rep in range(self.args.reps):
            k = rep % len(systems) if systems else 0
            for s in systems[k:] + systems[:k]:
                if s in self.failed:
                    continue
                for key in ("run_cold", "run_warm", "build"):
                    if key not in self.args.sessions:
                        continue
                    try:
                        if key == "build":
                            secs = self.build_session(s)
                        else:
                            secs = self.run_session(s, key)
                    except PodmanError as e:
                        self.fail(s, key, e)
                        break
                    log(f"rep {rep + 1}/{self.args.reps} {s:15s} {key:9s} {secs:7.2f} s")

    def cleanup(self):
        deleted = False
        for s, p in self.podmans.items():
            for problem in p.cleanup():
                self.note(f"{s} cleanup: {problem}")
            deleted = True
        # storage of an earlier, interrupted run: its containers and images
        # removed by podman, then what is still mounted, then the files
        root = self.args.storage
        if not os.path.isdir(root):
            return
        for s in os.listdir(root):
            # only what this benchmark made (its marker file inside)
            if s in self.podmans or not os.path.isfile(os.path.join(root, s, MARKER)):
                continue
            if os.path.isfile(os.path.join(root, s, "storage.conf")):
                p = Podman.existing(root, s, self.args.timeout)
                for problem in p.cleanup():
                    self.note(f"earlier run's {s} storage: {problem}")
            prefix = os.path.realpath(os.path.join(root, s)) + "/"
            for mp in sorted((mp for mp in mount_points() if mp.startswith(prefix)),
                             reverse=True):
                subprocess.run(["umount", "-l", mp], capture_output=True)
            if not [mp for mp in mount_points() if mp.startswith(prefix)]:
                shutil.rmtree(os.path.join(root, s), ignore_errors=True)
            deleted = True
        if deleted:
            os.sync()
            with open(os.path.join(root, DELETED_STAMP), "w") as f:
                f.write(f"{time.time()}\n")

    def wait_for_inodes(self):
        """Waits out the minute after an earlier run deleted its storage.

        This machine's root filesystem is ext4 without a journal, where
        creating files within a minute of deleting many costs several times
        more (see "Write path" above): the loads and the builds would pay
        for the last run's cleanup.
        """
        common.wait_out_inode_reuse(os.path.join(self.args.storage, DELETED_STAMP))


# ---------------------------------------------------------------- report

def ratio(bench, key, a, b):
    """a's time / b's time."""
    return table.ratio(bench.result(key, a), bench.result(key, b))


def checks(bench):
    out = []
    for sess in SESSIONS:
        if not sess.target or sess.key not in bench.args.sessions:
            continue
        text = f"layerfs within {TARGET:g}x of native: {sess.title} ({sess.state})"
        x = ratio(bench, sess.key, "layerfs", "native")
        if x is None:
            out.append(table.not_measured(text))
            continue
        bad = bench.result(sess.key, "layerfs").bad or bench.result(sess.key, "native").bad
        fo = ratio(bench, sess.key, "fuse-overlayfs", "native")
        out.append(table.target(x <= TARGET, f"{text}: {x:.2f}x"
                                + (f" (fuse-overlayfs {fo:.2f}x)" if fo else ""), bad))
    return out


def text_report(bench, meta):
    info = bench.info
    lines = [table.run_line("layerfs podman benchmark", meta, f"median of {meta['reps']}"),
             f"{meta['versions']}",
             f"layerfs: {meta['layerfs_program']}" + table.build_tag(meta)
             + ", run from a copy taken at the start",
             table.load_line(meta),
             f"image {info['tag']}: {len(info['layers'])} layers "
             f"({', '.join(l['name'] + ' ' + format(l['files'], ',') for l in info['layers'])} "
             f"files), {info['files']:,} files merged, {info['bytes'] / 2**20:.0f} MiB in the "
             f"layers",
             "every figure: seconds from the podman command's start to its exit (median); "
             "cold = sync + drop_caches=3 just before.",
             "x native = the system's time / native's (the target: layerfs <= "
             f"{TARGET:g}x); vs fuse-ovl = fuse-overlayfs's time / layerfs's (above "
             "1.00x layerfs is faster).  '!' = wrong results (see notes)."
             + ("  --stats: counters read during the sessions." if bench.args.stats else ""),
             ""]
    cols = [x for x in ALL_SYSTEMS if x in bench.args.systems]
    short = {"native": "native", "layerfs": "layerfs", "fuse-overlayfs": "fuse-ovl",
             "kernel-mp": "kernel-mp"}
    rcols = [("layerfs", "native", "layerfs", "x native"),
             ("fuse-overlayfs", "native", "fuse-ovl", "x native"),
             ("fuse-overlayfs", "layerfs", "vs", "fuse-ovl")]
    if "kernel-mp" in cols:
        rcols.append(("kernel-mp", "native", "kernel-mp", "x native"))
    # Two heading lines: a ratio column's name is two words, one above the other.
    tab = table.Table([38, 5] + [9] * (len(cols) + len(rcols)), left=2)
    lines += table.underlined(
        tab.line(["session (s)", "state", *(short[c] for c in cols),
                  *(a for _, _, a, _ in rcols)]),
        tab.line(["", "", *([""] * len(cols)), *(b for _, _, _, b in rcols)]))
    for sess in SESSIONS:
        if sess.key != "load" and sess.key not in bench.args.sessions:
            continue
        figures = [table.figure(bench.result(sess.key, c)) for c in cols]
        ratios = [table.times(ratio(bench, sess.key, a, b)) for a, b, _, _ in rcols]
        lines.append(tab.line([sess.title, sess.state, *figures, *ratios]))
    lines.append("(load: once per system, one sample, the image tar in the page cache; "
                 "no mount program is involved)")
    lines += ["", "Targets:"]
    lines += [table.target_line(st, t) for st, t in checks(bench)]
    if bench.stats:
        lines += ["", "Daemons during the sessions (--stats, last repetition):"]
        for (key, s), st in sorted(bench.stats.items()):
            top = sorted(st["requests"].items(), key=lambda kv: -kv[1]["count"])[:8]
            lines.append(f"  {s} {key}: {st['mounts']} mounts, daemon CPU "
                         f"{st['daemon_cpu_s']:.2f} s"
                         + ("; requests " + ", ".join(
                             f"{op} {v['count']} (p50 {v['p50_us']} us)" for op, v in top)
                            if top else ""))
    lines += table.notes_section(bench.notes)
    return "\n".join(lines)


def json_report(bench, meta):
    results = []
    for sess in SESSIONS:
        for s in ALL_SYSTEMS:
            r = bench.result(sess.key, s)
            if r is None:
                continue
            results.append({
                "session": sess.key, "title": sess.title, "state": sess.state,
                "unit": "s", "system": s, "value": r.value, "samples": r.samples,
                "bad": r.bad, "x_native": ratio(bench, sess.key, s, "native"),
                "fuse_overlayfs_over_layerfs": (ratio(bench, sess.key, "fuse-overlayfs", s)
                                                if s == "layerfs" else None)})
    return {"meta": meta, "image": bench.info,
            "ratio_convention": "x_native = system time / native time (target: layerfs "
                                f"<= {TARGET:g})",
            "results": results,
            "targets": [{"status": st, "target": t} for st, t in checks(bench)],
            "stats": [{"session": k, "system": s, **v} for (k, s), v in bench.stats.items()],
            "failed": bench.failed, "notes": bench.notes}


# ---------------------------------------------------------------- main

def versions():
    out = []
    for cmd, rx in ((["podman", "--version"], r"version (\S+)"),
                    (["runc", "--version"], r"version (\S+)"),
                    (["conmon", "--version"], r"version (\S+)"),
                    (["fuse-overlayfs", "--version"], r"fuse-overlayfs: version (\S+)")):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            m = re.search(rx, p.stdout + p.stderr)
            out.append(f"{cmd[0]} {m.group(1) if m else '?'}")
        except (OSError, subprocess.SubprocessError):
            out.append(f"{cmd[0]} missing")
    return ", ".join(out)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a Debian-sized image (about 9,000 files) and one repetition "
                         "(under 2 minutes)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated subset of " + ",".join(ALL_SYSTEMS)
                         + " (default %(default)s)")
    ap.add_argument("--sessions", default="run_cold,run_warm,build",
                    help="comma-separated subset of run_cold,run_warm,build")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions of every session per system, median reported "
                         "(default 3, 1 with --quick)")
    ap.add_argument("--json", metavar="FILE", help="also write machine-readable results")
    ap.add_argument("--dir", default="/var/tmp/layerfs-podmanbench",
                    help="image cache, podman storage, build context "
                         "(default %(default)s)")
    ap.add_argument("--storage", default=STORAGE,
                    help="podman's storage, a directory per system (default %(default)s; "
                         f"keep it short: see MAX_STORAGE_PATH)")
    ap.add_argument("--timeout", type=int, default=CMD_TIMEOUT,
                    help="seconds one podman command may take (default %(default)s)")
    ap.add_argument("--stats", action="store_true",
                    help="read the FUSE daemons' CPU time and layerfs's counters "
                         "during the sessions (adds a little load)")
    ap.add_argument("--clear-index-cache", action="store_true",
                    help="delete layerfs's index cache files of the image's layers "
                         f"({INDEX_CACHE}) before every cold run: a never-seen image")
    args = ap.parse_args()
    args.systems = common.comma_names(ap, args.systems, ALL_SYSTEMS, "system")
    args.sessions = [s.strip() for s in args.sessions.split(",") if s.strip()]
    for s in args.sessions:
        if s not in ("run_cold", "run_warm", "build"):
            ap.error(f"unknown session {s!r}")
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    args.dir = os.path.abspath(args.dir)
    args.storage = os.path.abspath(args.storage)
    longest = max(len(os.path.join(args.storage, s)) for s in args.systems)
    if longest > MAX_STORAGE_PATH:
        ap.error(f"--storage {args.storage}: a system's directory would be {longest} "
                 f"characters long; podman here waits 20 s after every container when "
                 f"it is longer than {MAX_STORAGE_PATH} (see benchmarks/README.md)")
    return args


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("podmanbench: must run as root (podman storage, drop_caches)")
    for prog in ("podman", "runc"):
        if not shutil.which(prog):
            sys.exit(f"podmanbench: {prog} not found (make deps installs it)")
    if not os.path.isfile(BUSYBOX):
        sys.exit(f"podmanbench: {BUSYBOX} not found (busybox-static)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # One run at a time per image cache and per podman storage.
    locks = [common.lock_dir(d, "podmanbench") for d in (args.dir, args.storage)]  # noqa: F841
    t0 = time.time()
    load0 = os.getloadavg()[0]
    build = common.fingerprint(layerfs_program())
    args.layerfs = (common.snapshot(layerfs_program(), args.dir)
                    if "layerfs" in args.systems else None)
    tag = f"localhost/podmanbench:{'quick' if args.quick else 'full'}"
    image_dir, info = ensure_image(args.dir, args.quick, tag)
    bench = Bench(args, image_dir, info)
    bench.cleanup()          # storage left by an interrupted run
    try:
        bench.wait_for_inodes()
        bench.run()
    finally:
        log("removing containers, images and storage")
        bench.cleanup()
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "reps": args.reps,
        "systems": args.systems,
        "versions": versions(),
        "layerfs_program": layerfs_program(),
        "layerfs_build": build,
        "layerfs_copy": args.layerfs,
        "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "image_dir": image_dir,
        "seconds": round(time.time() - t0, 1),
    }
    print(text_report(bench, meta))
    if args.json:
        common.write_json(args.json, json_report(bench, meta))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
