"""The three systems under test, and mounting them fairly and cleanly.

Each system mounts the same layer directories, read-only (lower layers
only) or, given an upper and a work directory (writebench.py), writable.
layerfs and fuse-overlayfs get the absolute layer directories; kernel
overlayfs gets the short `short/<i>` symlinks to the same directories, run
from inside short/, because its mount data is limited to one page.  Kernel
overlayfs refuses a single lower layer without an upper one, so its
read-only 1-layer mount adds an empty layer on top (noted in the report).
A stack is any object with layer_dirs_top_first(), short_names_top_first()
and short_dir() (see stackgen.Stack).

Mount time is measured from starting the mount command to the first answered
request: the command has exited (FUSE daemons here daemonize once mounted),
the mount point shows in /proc/self/mountinfo, and stat() of the mount root
has returned.  Counting the first request keeps a daemon that defers work
past its own exit from looking faster than it is.

The harness makes itself a child subreaper, so a FUSE daemon that forks into
the background is reparented to it; after unmounting, it waits for that
exact process to exit, and reports (then ends, by pid) one that does not.
"""

import ctypes
import os
import shutil
import signal
import subprocess
import time

PR_SET_CHILD_SUBREAPER = 36
DAEMON_EXIT_TIMEOUT = 10.0
MOUNT_TIMEOUT = 300.0

ALL = ("layerfs", "kernel", "fuse-overlayfs")


class MountError(Exception):
    pass


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _children():
    """Pids whose parent is this process (daemons reparented to us)."""
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.append(int(pid))
    return out


def mount_points():
    """The mount points in /proc/self/mountinfo, octal escapes decoded."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.append(mp.encode().decode("unicode_escape"))
    return out


def is_mounted(path):
    return os.path.realpath(path) in mount_points()


class System:
    """One system under test: how to mount a stack and unmount it."""

    def __init__(self, name, program=None):
        self.name = name
        self.program = program
        self.unavailable = None   # reason, when the system cannot run here
        if name != "kernel":
            found = shutil.which(program) if program else None
            if not found:
                self.unavailable = f"{program}: not found or not executable"
            else:
                self.program = found

    @property
    def is_fuse(self):
        return self.name != "kernel"

    def command(self, stack, mnt, upper=None, work=None):
        """The mount command and its working directory.  With UPPER (and
        WORK, both absolute paths) the mount is writable."""
        rw = f",upperdir={upper},workdir={work}" if upper else ""
        if self.name == "kernel":
            names = stack.short_names_top_first()
            if len(names) == 1 and not upper:
                names = ["../empty"] + names
            return ["mount", "-t", "overlay", "overlay", "-o",
                    "lowerdir=" + ":".join(names) + rw, mnt], stack.short_dir()
        return [self.program, "-o",
                "lowerdir=" + ":".join(stack.layer_dirs_top_first()) + rw, mnt], None


def available(names, layerfs, note):
    """The Systems NAMES (from ALL) that can run here, layerfs as the
    program LAYERFS; NOTE(text) is told why any other is skipped."""
    out = []
    for name in names:
        # fuse-overlayfs's program is its name; kernel overlayfs has none
        s = System(name, {"layerfs": layerfs, "kernel": None}.get(name, name))
        if s.unavailable:
            note(f"{name} skipped: {s.unavailable}")
        else:
            out.append(s)
    return out


class Mount:
    """A mounted stack; use as a context manager so it is always unmounted.
    UPPER and WORK (optional) make it writable; they must exist."""

    def __init__(self, system, stack, mnt, upper=None, work=None):
        self.system = system
        self.stack = stack
        self.mnt = os.path.realpath(mnt)
        self.upper = os.path.realpath(upper) if upper else None
        self.work = os.path.realpath(work) if work else None
        self.daemons = []
        self._before = set()
        self.seconds = None
        self.warnings = []

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        if is_mounted(self.mnt):
            raise MountError(f"{self.mnt} is already a mount point")
        cmd, cwd = self.system.command(self.stack, self.mnt, self.upper, self.work)
        self._before = set(_children())
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._cleanup_after_failure()
            raise MountError(f"mount command did not finish in {MOUNT_TIMEOUT:.0f} s")
        if p.returncode != 0:
            self._cleanup_after_failure()
            err = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()
            raise MountError(f"exit {p.returncode}: {err[-1] if err else ''}")
        deadline = t0 + MOUNT_TIMEOUT
        while not is_mounted(self.mnt):
            if time.perf_counter() > deadline:
                self._cleanup_after_failure()
                raise MountError("mount command exited but nothing is mounted")
            time.sleep(0.001)
        try:
            os.stat(self.mnt)
        except OSError as e:
            self._cleanup_after_failure()
            raise MountError(f"stat of the mount root: {e}")
        self.seconds = time.perf_counter() - t0
        self.daemons = self._new_children()
        return self

    def __exit__(self, *exc):
        self.unmount()
        return False

    def _new_children(self):
        return [pid for pid in _children() if pid not in self._before]

    def _cleanup_after_failure(self):
        self.daemons = self._new_children()
        if is_mounted(self.mnt):
            self.unmount()
        else:
            self._reap_daemons()

    def unmount(self):
        cmds = ([["fusermount3", "-u", self.mnt], ["umount", self.mnt]]
                if self.system.is_fuse else [["umount", self.mnt]])
        for attempt in range(50):
            if not is_mounted(self.mnt):
                break
            cmd = cmds[attempt % len(cmds)]
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            if is_mounted(self.mnt):
                time.sleep(0.1)
        if is_mounted(self.mnt):
            self.warnings.append("unmount kept failing (busy?); detached it lazily")
            subprocess.run(["umount", "-l", self.mnt], stdin=subprocess.DEVNULL)
        self._reap_daemons()

    def _reap_daemons(self):
        for pid in self.daemons:
            if not _wait_pid(pid, DAEMON_EXIT_TIMEOUT):
                self.warnings.append(
                    f"{self.system.name} daemon pid {pid} still running "
                    f"{DAEMON_EXIT_TIMEOUT:.0f} s after unmount; killed it")
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        break
                    if _wait_pid(pid, 2.0):
                        break
        self.daemons = []


def _wait_pid(pid, timeout):
    """Reaps PID; True once it has exited, False after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if got == pid:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def unmount_leftovers(mnt_root):
    """Detaches mounts left under MNT_ROOT by an earlier, interrupted run."""
    root = os.path.realpath(mnt_root) + "/"
    for mp in sorted(mount_points(), reverse=True):
        if mp.startswith(root):
            subprocess.run(["umount", "-l", mp], stdin=subprocess.DEVNULL)


def drop_caches():
    """Writes back dirty data, then drops the page, dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
