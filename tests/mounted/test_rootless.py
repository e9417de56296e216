"""Rootless mounts: an unprivileged user (nobody) mounts through
fusermount3, changes the tree, and unmounts with `fusermount3 -u`, which
ends the daemon.  Without CAP_MKNOD and CAP_SYS_ADMIN, the mount-time
probes pick OCI ".wh." whiteouts and user.overlay.opaque.

/dev/fuse is 0600 here, so the test runs in its own mount namespace with
a world-usable copy of the device node bound over /dev/fuse.

Run only these:  tests/mounted/run.py -k rootless
"""

import os
import shutil
import stat
import subprocess

from harness import Fail, Skip, check, check_eq, test

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERFS = os.path.realpath(os.path.join(HERE, "..", "..", "bin", "layerfs"))
NOBODY = 65534

SCRIPT = r"""
set -u
mount --bind "$T/fuse" /dev/fuse || exit 90
as() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
as "$LAYERFS" -o "lowerdir=$T/lower,upperdir=$T/upper,workdir=$T/work" \
    "$T/mnt" || { echo "MOUNT FAILED"; exit 1; }
grep -q " $T/mnt " /proc/self/mountinfo && echo MOUNTED
as sh -c '
  cd "$1/mnt" || exit 1
  cat d/a
  echo appended >> d/a && echo WROTE
  rm d/b && echo REMOVED
  rm -r e && mkdir e && echo new > e/n && echo REPLACED
  mkdir -p made/deep && echo deep > made/deep/f && echo MADE
  ls d e | tr "\n" " "; echo
' sh "$T"
as fusermount3 -u "$T/mnt" && echo UNMOUNTED
for i in 1 2 3 4 5 6 7 8 9 10; do
  pgrep -f "upperdir=$T/upper" >/dev/null || { echo DAEMON-GONE; break; }
  sleep 0.5
done
"""


def need_tools():
    for prog in ("unshare", "setpriv", "fusermount3", "pgrep"):
        if not shutil.which(prog):
            raise Skip("no %s" % prog)


def tree(ctx):
    base = ctx.newdir("rootless")
    # nobody must be able to walk to the test's directories.
    for d in (os.path.dirname(ctx.dir), ctx.dir, base):
        os.chmod(d, 0o755)
    for sub in ("lower/d", "lower/e", "upper", "work", "mnt"):
        os.makedirs(os.path.join(base, sub))
    for rel, text in (("d/a", "lower a\n"), ("d/b", "b\n"), ("e/x", "x\n")):
        with open(os.path.join(base, "lower", rel), "w") as f:
            f.write(text)
    for root, dirs, files in os.walk(base):
        for n in dirs + files:
            os.chown(os.path.join(root, n), NOBODY, NOBODY)
    os.mknod(os.path.join(base, "fuse"), 0o666 | 0o020000,
             os.makedev(10, 229))
    os.chmod(os.path.join(base, "fuse"), 0o666)
    return base


@test()
def rootless_mount_change_and_unmount_as_nobody(ctx):
    need_tools()
    base = tree(ctx)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh",
                        "-c", SCRIPT],
                       env=dict(os.environ, T=base, LAYERFS=LAYERFS),
                       capture_output=True, text=True, timeout=60)
    out = r.stdout
    if "MOUNT FAILED" in out or r.returncode == 90:
        raise Fail("rootless mount failed:\n%s\n%s" % (out, r.stderr))
    for mark in ("MOUNTED", "WROTE", "REMOVED", "REPLACED", "MADE",
                 "UNMOUNTED", "DAEMON-GONE"):
        check(mark in out, "no %s in the session:\n%s\n%s" % (
            mark, out, r.stderr))
    check("lower a" in out, "lower file unreadable:\n%s" % out)
    up = os.path.join(base, "upper")
    # Whiteouts: a char 0/0 where the kernel lets anyone make one (Linux
    # 5.8+), else OCI ".wh."; no trusted.* for nobody: user.overlay.opaque.
    wh = os.path.join(up, "d", "b")
    is_chr = os.path.lexists(wh) and stat.S_ISCHR(os.lstat(wh).st_mode) and \
        os.lstat(wh).st_rdev == 0
    check(is_chr or os.path.isfile(os.path.join(up, "d", ".wh.b")),
          "no whiteout for d/b: %r" % os.listdir(os.path.join(up, "d")))
    check_eq(os.getxattr(os.path.join(up, "e"), "user.overlay.opaque"),
             b"y", "opaque mark of e")
    with open(os.path.join(up, "d", "a")) as f:
        check_eq(f.read(), "lower a\nappended\n", "copied-up d/a")
    st = os.lstat(os.path.join(up, "made", "deep", "f"))
    check_eq((st.st_uid, st.st_gid), (NOBODY, NOBODY), "owner of a new file")
    with open(os.path.join(base, "lower", "d", "a")) as f:
        check_eq(f.read(), "lower a\n", "lower d/a")
    # The same upper mounted by root (as the engine does next) agrees.
    with ctx.mount([os.path.join(base, "lower")], upper=up,
                   work=os.path.join(base, "work")) as m:
        check_eq(sorted(os.listdir(m.path("d"))), [b"a"], "d after remount")
        check_eq(sorted(os.listdir(m.path("e"))), [b"n"], "e after remount")
