"""Ownership and engine options as fuse-overlayfs spells them (issue 5):
uidmapping=/gidmapping=, squash_to_root, squash_to_uid/gid, static_nlink,
noxattrs, noacl, xattr_permissions, volatile, threaded=0, writeback=1,
POSIX ACLs, symlinked lowerdir entries (containers/storage's l/<id>).

Run only these:  tests/mounted/run.py -k owner
"""

import os
import signal
import subprocess
import time

from harness import Fail, check, check_eq, expect_errno, test, wait_exit


def layers(ctx):
    lower, upper, work = (ctx.newdir(n) for n in ("lower", "upper", "work"))
    os.makedirs(os.path.join(lower, "d"))
    for name, uid in (("root-file", 0), ("one-file", 1), ("five", 5),
                      ("far", 70000)):
        p = os.path.join(lower, "d", name)
        with open(p, "w") as f:
            f.write(name + "\n")
        os.chown(p, uid, uid)
    return lower, upper, work


def owners(m, *names):
    return {n: (os.lstat(m.path("d/" + n)).st_uid,
                os.lstat(m.path("d/" + n)).st_gid) for n in names}


@test()
def owner_uidmapping_shows_and_stores_through_the_maps(ctx):
    lower, upper, work = layers(ctx)
    maps = "0:0:1:1:100000:65536"
    with ctx.mount([lower], upper=upper, work=work,
                   extra_opts=["uidmapping=" + maps,
                               "gidmapping=" + maps]) as m:
        check_eq(owners(m, "root-file", "one-file", "five", "far"),
                 {"root-file": (0, 0), "one-file": (100000, 100000),
                  "five": (100004, 100004), "far": (65534, 65534)},
                 "owners shown through the maps")
        os.chown(m.path("d/root-file"), 100009, 100009)
        check_eq(owners(m, "root-file")["root-file"], (100009, 100009),
                 "owner after chown")
        expect_errno(22, os.chown, m.path("d/five"), 5000, 5000,
                     what="chown to an id no map covers")
        with open(m.path("d/new"), "w") as f:
            f.write("new\n")
    st = os.lstat(os.path.join(upper, "d", "root-file"))
    check_eq((st.st_uid, st.st_gid), (10, 10), "owner on disk after chown")
    st = os.lstat(os.path.join(upper, "d", "new"))
    check_eq((st.st_uid, st.st_gid), (0, 0), "owner on disk of a new file")


@test()
def owner_squash_and_static_nlink(ctx):
    lower, upper, work = layers(ctx)
    with ctx.mount([lower], upper=upper, work=work,
                   extra_opts=["squash_to_root", "static_nlink"]) as m:
        check_eq(set(owners(m, "one-file", "five", "far").values()),
                 {(0, 0)}, "owners with squash_to_root")
        os.mkdir(m.path("d/sub"))
        check_eq(os.lstat(m.path("d")).st_nlink, 1, "nlink of d")
    with ctx.mount([lower], extra_opts=["squash_to_uid=42",
                                        "squash_to_gid=43"]) as m:
        check_eq(set(owners(m, "one-file", "root-file").values()),
                 {(42, 43)}, "owners with squash_to_uid/gid")


@test()
def owner_noxattrs_and_noacl(ctx):
    lower, upper, work = layers(ctx)
    os.setxattr(os.path.join(lower, "d", "five"), "user.k", b"v")
    with ctx.mount([lower], upper=upper, work=work,
                   extra_opts=["noxattrs"]) as m:
        expect_errno(95, os.getxattr, m.path("d/five"), "user.k",
                     what="getxattr with noxattrs")
        expect_errno(95, os.setxattr, m.path("d/five"), "user.k", b"w",
                     what="setxattr with noxattrs")
    with ctx.mount([lower], upper=upper, work=work,
                   extra_opts=["noacl"]) as m:
        r = subprocess.run(["setfacl", "-m", "u:1234:r", m.path("d/five")],
                           capture_output=True)
        check(r.returncode != 0, "setfacl succeeded with noacl")
        check_eq(os.getxattr(m.path("d/five"), "user.k"), b"v",
                 "user xattr with noacl")


def as_user(uid, cwd, name):
    """Append to cwd/name as uid in a child process; returns 0 or the
    errno."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            with open(name, "a") as f:
                f.write("x")
        except OSError as e:
            code = e.errno
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@test()
def owner_posix_acls_work(ctx):
    lower, upper, work = layers(ctx)
    with ctx.mount([lower], upper=upper, work=work) as m:
        r = subprocess.run(["setfacl", "-m", "u:1234:rw", m.path("d/five")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail("setfacl: %s" % r.stderr)
        out = subprocess.run(["getfacl", "-c", m.path("d/five")],
                             capture_output=True, text=True).stdout
        check("user:1234:rw-" in out, "getfacl shows %r" % out)
        # The kernel enforces it: user 1234 may now write the file, user
        # 1235 may not (from inside the directory: the test's own dirs
        # are not theirs to walk).
        for uid, want in ((1234, 0), (1235, 13)):
            check_eq(as_user(uid, m.path("d"), "five"), want,
                     "errno of user %d appending to the file" % uid)
    out = subprocess.run(["getfacl", "-c", os.path.join(upper, "d/five")],
                         capture_output=True, text=True).stdout
    check("user:1234:rw-" in out, "upper copy's ACL: %r" % out)


@test()
def owner_xattr_permissions_keep_owner_in_an_xattr(ctx):
    lower, upper, work = layers(ctx)
    opts = ["xattr_permissions=2"]
    with ctx.mount([lower], upper=upper, work=work, extra_opts=opts) as m:
        os.chown(m.path("d/five"), 321, 654)
        os.chmod(m.path("d/five"), 0o640)
        st = os.lstat(m.path("d/five"))
        check_eq((st.st_uid, st.st_gid, st.st_mode & 0o7777),
                 (321, 654, 0o640), "owner and mode through the mount")
    st = os.lstat(os.path.join(upper, "d", "five"))
    check_eq((st.st_uid, st.st_gid), (5, 5), "owner on disk (unchanged)")
    v = os.getxattr(os.path.join(upper, "d", "five"),
                    "user.containers.override_stat")
    check(v.startswith(b"321:654:"), "override xattr %r" % v)
    with ctx.mount([lower], upper=upper, work=work, extra_opts=opts) as m:
        st = os.lstat(m.path("d/five"))
        check_eq((st.st_uid, st.st_gid, st.st_mode & 0o7777),
                 (321, 654, 0o640), "owner and mode after a remount")
        check("user.containers.override_stat" not in
              os.listxattr(m.path("d/five")), "override xattr listed")


@test()
def owner_volatile_upper_refused_after_a_crash(ctx):
    lower, upper, work = layers(ctx)
    m = ctx.mount([lower], upper=upper, work=work, extra_opts=["volatile"])
    m.start()
    with open(m.path("d/new"), "w") as f:
        f.write("x")
    for pid in m.daemons:
        os.kill(pid, signal.SIGKILL)
        wait_exit(pid, 10)
    m.daemons = []
    subprocess.run(["umount", "-l", m.mnt], capture_output=True)
    m.mounted = False
    again = ctx.mount([lower], upper=upper, work=work)
    try:
        again.start()
        raise Fail("an upper a volatile mount left dirty was mounted")
    except Fail as e:
        if "volatile" not in str(e) or upper not in str(e):
            raise Fail("refusal does not say why: %s" % e)
    os.rmdir(os.path.join(work, "work", "incompat", "volatile"))
    with ctx.mount([lower], upper=upper, work=work, extra_opts=["volatile"]):
        pass
    with ctx.mount([lower], upper=upper, work=work) as m2:
        check(os.path.exists(m2.path("d/new")), "file of the volatile mount")


@test()
def owner_engine_options_threaded_writeback_symlinked_lowers(ctx):
    lower, upper, work = layers(ctx)
    links = ctx.newdir("l")
    os.symlink(lower, os.path.join(links, "ABCDEF"))
    for extra in (["threaded=0"], ["writeback=1"]):
        with ctx.mount([os.path.join(links, "ABCDEF")], upper=upper,
                       work=work, extra_opts=extra) as m:
            with open(m.path("d/w"), "w") as f:
                f.write("through %s\n" % extra[0])
            with open(m.path("d/w")) as f:
                check_eq(f.read(), "through %s\n" % extra[0],
                         "data with %s" % extra[0])
            with open(m.path("d/five")) as f:
                check_eq(f.read(), "five\n", "lower file via a symlinked "
                         "lowerdir")
            check_eq(m.stderr.strip(), "", "warnings for %s" % extra)
