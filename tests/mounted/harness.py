"""Test harness for the mounted suite: registry, per-test temp dirs, mounts.

Every test is a function taking a Ctx.  It fails by raising (Fail or any
other exception), skips by raising Skip, and passes otherwise -- unless the
harness recorded a problem on the side (a daemon that did not exit after
unmount, a daemon that crashed), which turns a pass into a failure.
"""

import ctypes
import errno
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
import traceback

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROGRAM = os.environ.get("LAYERFS") or os.path.join(REPO, "bin", "layerfs")
FUSERMOUNT = shutil.which("fusermount3") or "fusermount3"

DAEMON_EXIT_GRACE = 5.0     # seconds a daemon may take to exit after unmount
# Mount programs start with the usual default soft fd limit (the runner
# raises its own): a daemon that needs more (1,000 layers) must raise it.
DEFAULT_NOFILE_SOFT = 1024
MOUNT_CMD_TIMEOUT = 120.0   # seconds the mount command may take to return


class Fail(AssertionError):
    pass


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def _short(v, n=300):
    r = repr(v)
    return r if len(r) <= n else r[:n] + "...(%d chars)" % len(r)


def check_eq(got, want, what):
    if got != want:
        raise Fail("%s: got %s, want %s" % (what, _short(got), _short(want)))


def expect_errno(err, fn, *args, what=None, **kw):
    """Call fn; it must fail with OSError errno `err`."""
    try:
        fn(*args, **kw)
    except OSError as e:
        if e.errno != err:
            raise Fail("%s: failed with %s, want %s" % (
                what or fn.__name__, errno.errorcode.get(e.errno, e.errno),
                errno.errorcode[err]))
        return
    raise Fail("%s: succeeded, want %s" % (what or fn.__name__,
                                          errno.errorcode[err]))


# ---------------------------------------------------------------- registry

class TestCase:
    def __init__(self, fn, timeout, kernel):
        self.fn = fn
        self.name = fn.__name__
        self.timeout = timeout
        self.kernel = kernel


TESTS = []


def test(timeout=60, kernel=False):
    """Decorator: register a test.  `timeout` is the watchdog limit (s)."""
    def deco(fn):
        TESTS.append(TestCase(fn, timeout, kernel))
        return fn
    return deco


# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """Daemonized mount programs are re-parented to us, so we can reap them
    and see how they exited (pid 1 in a container may never reap them)."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def list_pids():
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def proc_state(pid):
    """Process state letter, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return chr(data[data.rindex(b")") + 2])


def proc_ppid(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[1])


def is_descendant(pid):
    """True if pid is a child, grandchild... of this process.  Only those
    are ever waited for or killed (as a subreaper we also inherit the
    daemons that the mount programs we ran left behind)."""
    me = os.getpid()
    for _ in range(64):
        pid = proc_ppid(pid)
        if pid is None or pid <= 1:
            return False
        if pid == me:
            return True
    return False


def has_fuse_fd(pid):
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "/dev/fuse":
                    return True
            except OSError:
                pass
    except OSError:
        pass
    return False


def reap_zombie_children():
    me = os.getpid()
    for pid in list_pids():
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2:].split()
        if rest[0] == b"Z" and int(rest[1]) == me:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def wait_exit(pid, timeout):
    """Wait until pid has exited.  Returns (exited, wait_status or None)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                return True, status
        except ChildProcessError:
            st = proc_state(pid)
            if st is None or st in "ZX":
                return True, None
        if time.monotonic() >= deadline:
            return False, None
        time.sleep(0.05)


# ---------------------------------------------------------------- mountinfo

def _unescape_mountinfo(field):
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def mounts():
    """List of (mountpoint bytes, fstype str, 'major:minor') from mountinfo."""
    res = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, _, right = line.rstrip(b"\n").partition(b" - ")
            fields = left.split(b" ")
            res.append((_unescape_mountinfo(fields[4]),
                        right.split(b" ")[0].decode(), fields[2].decode()))
    return res


def mounts_at(path):
    p = os.fsencode(path)
    return [m for m in mounts() if m[0] == p]


def is_mounted(path):
    return bool(mounts_at(path))


# ---------------------------------------------------------------- mounts

MNT = object()      # placeholder for the mount point in a Mount's argv


def escape_lower(path):
    return os.fsdecode(os.fsencode(path).replace(b":", b"\\:"))


class Mount:
    """One mount of a layer stack.  Use as a context manager; the mount is
    always taken down on exit (fusermount3 -u, lazy -uz as a fallback) and
    the daemon must be gone DAEMON_EXIT_GRACE seconds later."""

    def __init__(self, ctx, lowers, mnt=None, upper=None, work=None,
                 extra_opts=(), kernel=False, cwd=None, program=None,
                 args=(), nofile=None, argv=None):
        self.ctx = ctx
        self.lowers = [os.fsdecode(l) for l in lowers]
        self.mnt = os.path.realpath(mnt or ctx.newdir("mnt"))
        self.upper, self.work = upper, work
        self.extra_opts = list(extra_opts)
        self.kernel = kernel
        self.cwd = cwd
        self.program = program or PROGRAM
        self.args = list(args)
        self.nofile = nofile
        self.argv = argv        # full argument list, MNT marks the mount point
        self.daemons = []
        self.mounted = False
        self.stderr = ""
        self.stderr_file = None

    def options(self):
        opts = ["lowerdir=" + ":".join(escape_lower(l) for l in self.lowers)]
        if self.upper:
            opts.append("upperdir=" + escape_lower(self.upper))
        if self.work:
            opts.append("workdir=" + escape_lower(self.work))
        return ",".join(opts + self.extra_opts)

    def command(self):
        if self.kernel:
            return ["mount", "-t", "overlay", "overlay", "-o",
                    self.options(), self.mnt]
        if self.argv is not None:
            return [self.program] + [self.mnt if a is MNT else a
                                     for a in self.argv]
        return [self.program] + self.args + ["-o", self.options(), self.mnt]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def path(self, rel=b""):
        rel = os.fsencode(rel).lstrip(b"/")
        base = os.fsencode(self.mnt)
        return base + b"/" + rel if rel else base

    def start(self):
        os.makedirs(self.mnt, exist_ok=True)
        self.stderr_file = self.ctx.newfile("mount.stderr")
        before = list_pids()
        self.ctx.mounts.append(self)
        with open(self.stderr_file, "wb") as err:
            try:
                res = subprocess.run(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=err, stderr=err, cwd=self.cwd,
                                     timeout=MOUNT_CMD_TIMEOUT,
                                     preexec_fn=fd_limit(self.nofile))
                rc = res.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout after %ds" % MOUNT_CMD_TIMEOUT
        self.stderr = open(self.stderr_file, "rb").read().decode(
            errors="replace")
        self.mounted = is_mounted(self.mnt)
        if not self.kernel:
            self.daemons = self._find_daemons(before)
        if rc != 0:
            raise Fail("mount command failed (exit %s): %s\n%s" % (
                rc, " ".join(self.command())[:400], self.stderr))
        if not self.mounted:
            raise Fail("mount command exited 0 but %s is not in "
                       "/proc/self/mountinfo" % self.mnt)
        if self.stderr.strip():
            self.ctx.note("mount stderr: " + self.stderr.strip())

    def _find_daemons(self, before):
        mnt = os.fsencode(self.mnt)
        found = []
        for pid in sorted(list_pids() - before):
            if pid == os.getpid() or not is_descendant(pid):
                continue
            argv = proc_cmdline(pid)
            if argv is None:
                continue
            if any(mnt in a for a in argv) or has_fuse_fd(pid):
                if proc_state(pid) not in (None, "Z", "X"):
                    found.append(pid)
        return found

    def stop(self):
        if self in self.ctx.mounts:
            self.ctx.mounts.remove(self)
        if is_mounted(self.mnt):
            self._unmount()
        self.mounted = False
        for pid in self.daemons:
            exited, status = wait_exit(pid, DAEMON_EXIT_GRACE)
            if not exited:
                self.ctx.error("daemon pid %d still alive %.0fs after "
                               "unmount of %s" % (pid, DAEMON_EXIT_GRACE,
                                                  self.mnt))
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                wait_exit(pid, 5)
            elif status is not None and os.WIFSIGNALED(status):
                self.ctx.error("daemon pid %d died from signal %s" % (
                    pid, signal.Signals(os.WTERMSIG(status)).name))
            elif status is not None and os.WEXITSTATUS(status) != 0:
                self.ctx.error("daemon pid %d exited with status %d after "
                               "unmount" % (pid, os.WEXITSTATUS(status)))
        self.daemons = []

    def _unmount(self):
        if self.kernel:
            cmds = [["umount", self.mnt], ["umount", "-l", self.mnt]]
        else:
            cmds = [[FUSERMOUNT, "-u", self.mnt], [FUSERMOUNT, "-uz", self.mnt]]
        for attempt in range(10):
            r = subprocess.run(cmds[0], stdin=subprocess.DEVNULL,
                               capture_output=True)
            if r.returncode == 0 or not is_mounted(self.mnt):
                return
            time.sleep(0.2)
        self.ctx.note("unmount failed (%s); lazy unmount" %
                      r.stderr.decode(errors="replace").strip())
        subprocess.run(cmds[1], stdin=subprocess.DEVNULL, capture_output=True)
        if is_mounted(self.mnt):
            self.ctx.error("could not unmount %s" % self.mnt)

    def abort(self):
        """Abort the FUSE connection (watchdog): pending requests fail with
        ECONNABORTED so a hung test thread wakes up.  Through fusectl when
        it is mounted, else with umount -f (whose first step is the same
        abort, even when the unmount itself then fails as busy)."""
        for _mp, fstype, dev in mounts_at(self.mnt):
            if not fstype.startswith("fuse"):
                continue
            major, minor = (int(x) for x in dev.split(":"))
            conn = (major << 20) | minor
            try:
                with open("/sys/fs/fuse/connections/%d/abort" % conn,
                          "w") as f:
                    f.write("1")
            except OSError:
                subprocess.run(["umount", "-f", self.mnt],
                               stdin=subprocess.DEVNULL, capture_output=True)


def fd_limit(limits=None):
    """preexec_fn giving a child RLIMIT_NOFILE `limits` (soft, hard), by
    default the usual soft limit of 1024 under the current hard limit."""
    def apply():
        soft, hard = limits or (None, None)
        cur_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard = hard or cur_hard
        soft = soft or min(DEFAULT_NOFILE_SOFT, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


def run_program(args, timeout=60, cwd=None):
    """Run the mount program with args; returns (rc, stdout+stderr text)."""
    try:
        r = subprocess.run([PROGRAM] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout, cwd=cwd,
                           preexec_fn=fd_limit())
    except subprocess.TimeoutExpired as e:
        return "timeout", (e.stdout or b"").decode(errors="replace") + \
            (e.stderr or b"").decode(errors="replace")
    return r.returncode, r.stdout.decode(errors="replace") + \
        r.stderr.decode(errors="replace")


# ---------------------------------------------------------------- context

class Ctx:
    def __init__(self, name, base):
        self.name = name
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir)
        self.mounts = []
        self.notes = []
        self.errors = []
        self.cleanups = []
        self.timed_out = False
        self._n = 0

    def newdir(self, prefix):
        self._n += 1
        p = os.path.join(self.dir, "%s%d" % (prefix, self._n))
        os.makedirs(p)
        return p

    def newfile(self, prefix):
        self._n += 1
        return os.path.join(self.dir, "%s%d" % (prefix, self._n))

    def mount(self, lowers, **kw):
        return Mount(self, lowers, **kw)

    def note(self, msg):
        self.notes.append(msg)

    def error(self, msg):
        self.errors.append(msg)

    def on_cleanup(self, fn):
        self.cleanups.append(fn)

    def cleanup(self):
        for m in list(self.mounts):
            try:
                m.stop()
            except Exception as e:          # keep cleaning up
                self.error("cleanup of %s: %r" % (m.mnt, e))
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:
                self.error("cleanup: %r" % e)
        reap_zombie_children()


def _indent(text, n=4):
    return "\n".join(" " * n + l for l in text.rstrip("\n").split("\n"))


SUITE_BUDGET = float(os.environ.get("LAYERFS_SUITE_BUDGET", "1200"))


def run_tests(tests, base, kernel_ok, keep=False):
    """Run tests sequentially, printing PASS/FAIL/SKIP lines.  Past the
    suite's time budget the remaining tests fail unrun, so a hanging mount
    program cannot hold CI for hours."""
    suite_start = time.monotonic()
    for t in tests:
        if time.monotonic() - suite_start > SUITE_BUDGET:
            print("FAIL %s\n    not run: suite time budget of %ds exceeded" %
                  (t.name, SUITE_BUDGET), flush=True)
            continue
        ctx = Ctx(t.name, base)
        status, reason = "PASS", ""
        watchdog = threading.Timer(t.timeout, _watchdog_fire, (ctx,))
        watchdog.daemon = True
        watchdog.start()
        t0 = time.monotonic()
        try:
            if t.kernel and not kernel_ok:
                raise Skip("kernel overlay mount unavailable")
            t.fn(ctx)
        except Skip as e:
            status, reason = "SKIP", str(e)
        except Fail as e:
            status, reason = "FAIL", str(e)
        except Exception:
            status = "FAIL"
            reason = traceback.format_exc(limit=6)
        finally:
            watchdog.cancel()
            ctx.cleanup()
        if ctx.timed_out:
            status = "FAIL"
            reason = "timed out after %ds (FUSE connection aborted)\n%s" % (
                t.timeout, reason)
        if ctx.errors and status != "SKIP":
            status = "FAIL"
            reason = "\n".join([reason] + ctx.errors).strip()
        dt = time.monotonic() - t0
        line = "%s %s" % (status, t.name)
        if status == "SKIP" and reason:
            line += " (%s)" % reason
        print(line, flush=True)
        if status == "FAIL":
            print(_indent(reason[:6000]), flush=True)
            for n in ctx.notes:
                print(_indent(n[:3000], 6), flush=True)
        if os.environ.get("LAYERFS_TEST_TIMES"):
            print("    [%.1fs]" % dt, flush=True)
        if status != "FAIL" or not keep:
            remove_tree(ctx.dir)


def remove_tree(path):
    """rm -rf that copes with trees deeper than Python's recursion limit and
    never crosses into a file system still mounted below it."""
    subprocess.run(["rm", "-rf", "--one-file-system", path],
                   stdin=subprocess.DEVNULL, capture_output=True)


def _watchdog_fire(ctx):
    ctx.timed_out = True
    for m in list(ctx.mounts):
        m.abort()
