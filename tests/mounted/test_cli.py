"""Command line: --version, mount lifecycle, read-only mounts, options,
bad input."""

import errno
import os
import re
import subprocess
import time

from checks import verify_stack
from harness import (FUSERMOUNT, MNT, PROGRAM, Fail, check, check_eq,
                     fd_limit, is_descendant, is_mounted, list_pids, mounts, mounts_at,
                     proc_cmdline, run_program, test, wait_exit)
from layers import build
from tree import assert_same, dump_tree, reference_dump

SMALL = r"""
f etc/os-release ID=top
d dir
f dir/file top
--
f etc/os-release ID=low
f etc/passwd root
x etc/passwd user.a 1
d emptydir
"""


@test()
def version_flag_prints_version(ctx):
    rc, out = run_program(["--version"])
    check_eq(rc, 0, "exit status of --version")
    check(re.search(r"\d+\.\d+", out), "no version number in %r" % out)


@test()
def mount_is_live_when_command_returns(ctx):
    """No sleeping: the first access right after the command returns must
    see the merged tree; the daemon is found and exits after unmount."""
    s = build(ctx, SMALL)
    m = ctx.mount(s.paths)
    with m:
        with open(m.path("etc/os-release"), "rb") as f:
            check_eq(f.read(), b"ID=top", "etc/os-release")
        fstypes = [t for _, t, _ in mounts_at(m.mnt)]
        check(fstypes and fstypes[0].startswith("fuse"),
              "mount type %r, want fuse*" % fstypes)
        check(m.daemons, "no daemon process found for %s" % m.mnt)
        sv = os.statvfs(m.mnt)
        check(sv.f_bsize > 0, "statvfs: f_bsize %d" % sv.f_bsize)
    check(not is_mounted(m.mnt), "still mounted after unmount")
    # (Mount.stop has checked that the daemon exited, with status 0)


def _foreground(ctx, flag):
    """Run with -f / -d: stays in the foreground, serves, exits 0 after
    unmount.  Returns its stderr."""
    s = build(ctx, SMALL)
    mnt = os.path.realpath(ctx.newdir("mnt"))
    opts = "lowerdir=" + ":".join(s.paths)
    errname = ctx.newfile("fg.stderr")
    err = open(errname, "wb")
    p = subprocess.Popen([PROGRAM, flag, "-o", opts, mnt],
                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                         preexec_fn=fd_limit())
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            check(p.poll() is None, "%s exited early with %s" % (
                flag, p.returncode))
            check(time.monotonic() < deadline, flag + ": not mounted in 30s")
            time.sleep(0.05)
        with open(os.path.join(mnt, "dir/file"), "rb") as f:
            check_eq(f.read(), b"top", "dir/file")
        check(p.poll() is None, flag + " process exited while mounted")
        r = subprocess.run([FUSERMOUNT, "-u", mnt], capture_output=True)
        check_eq(r.returncode, 0, "fusermount3 -u")
        try:
            rc = p.wait(5)
        except subprocess.TimeoutExpired:
            raise Fail(flag + " process still running 5s after unmount")
        check_eq(rc, 0, "exit status of %s process after unmount" % flag)
    finally:
        if is_mounted(mnt):
            subprocess.run([FUSERMOUNT, "-uz", mnt], capture_output=True)
        if p.poll() is None:
            p.kill()
            p.wait()
        err.close()
    return open(errname, "rb").read()


@test()
def foreground_mode_serves_until_unmounted(ctx):
    _foreground(ctx, "-f")


@test()
def debug_flag_stays_in_foreground_and_logs(ctx):
    err = _foreground(ctx, "-d")
    check(len(err) > 0, "-d wrote nothing to stderr")


@test()
def mount_unmount_cycles(ctx):
    """15 mounts in a row: each is live on return, each daemon exits."""
    s = build(ctx, SMALL)
    for k in range(15):
        with ctx.mount(s.paths) as m:
            with open(m.path("etc/os-release"), "rb") as f:
                check_eq(f.read(), b"ID=top", "cycle %d" % k)
        check(not ctx.errors, "cycle %d: %s" % (k, ctx.errors))


@test()
def mount_command_does_not_hold_caller_pipes(ctx):
    """Container engines read the mount program's output through pipes: the
    command must return and the daemon must not keep those pipes open."""
    s = build(ctx, SMALL)
    mnt = os.path.realpath(ctx.newdir("mnt"))
    before = list_pids()
    p = subprocess.Popen([PROGRAM, "-o", "lowerdir=" + ":".join(s.paths),
                          mnt], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=fd_limit())
    try:
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise Fail("stdout/stderr pipes still open 30s after starting "
                       "(exit status %s)" % p.poll())
        check_eq(p.returncode, 0, "exit status")
        check(is_mounted(mnt), "not mounted")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if is_mounted(mnt):
            subprocess.run([FUSERMOUNT, "-u", mnt], capture_output=True)
        for pid in list_pids() - before:
            if not is_descendant(pid):
                continue
            argv = proc_cmdline(pid) or []
            if any(os.fsencode(mnt) in a for a in argv):
                if not wait_exit(pid, 5)[0]:
                    ctx.error("daemon %d alive 5s after unmount" % pid)


@test()
def two_mounts_of_one_stack_at_once(ctx):
    s = build(ctx, SMALL)
    want = reference_dump(s.paths)
    with ctx.mount(s.paths) as a, ctx.mount(s.paths) as b:
        da, db = dump_tree(a.mnt), dump_tree(b.mnt)
    assert_same(da, want, "first mount")
    assert_same(db, want, "second mount")


@test()
def mountpoint_with_space_and_colon(ctx):
    s = build(ctx, SMALL)
    mnt = os.path.join(ctx.dir, "mount point:x")
    os.mkdir(mnt)
    verify_stack(ctx, s, mnt=mnt)


@test()
def layer_paths_relative_and_through_symlinks(ctx):
    """lowerdir given relative to the command's cwd, through symlinks
    (container stores pass short l/<id> links), with trailing slashes and
    with // and /./ inside."""
    s = build(ctx, SMALL)
    base = os.path.dirname(s.paths[0])
    os.mkdir(os.path.join(base, "l"))
    links = []
    for k, p in enumerate(s.paths):
        link = os.path.join(base, "l", "ID%d" % k)
        os.symlink(os.path.join("..", os.path.basename(p)), link)
        links.append(link)
    want = reference_dump(s.paths)
    for lowers, cwd in (([os.path.basename(p) for p in s.paths], base),
                        (links, None),
                        ([p + "/" for p in s.paths], None),
                        ([os.path.dirname(p) + "//./" + os.path.basename(p)
                          for p in s.paths], None),
                        ([os.path.join("l", os.path.basename(l))
                          for l in links], base)):
        with ctx.mount(lowers, cwd=cwd) as m:
            got = dump_tree(m.mnt)
        assert_same(got, want, "lowerdir=%s (cwd %s)" % (":".join(lowers),
                                                         cwd))


@test()
def read_only_without_upperdir(ctx):
    """Every modifying operation fails with EROFS; layers stay unchanged."""
    s = build(ctx, SMALL)
    before = verify_stack(ctx, s)
    with ctx.mount(s.paths) as m:
        f, d, p = m.path("etc/passwd"), m.path("emptydir"), m.path
        ops = [
            ("open O_WRONLY", lambda: os.open(f, os.O_WRONLY)),
            ("open O_RDWR", lambda: os.open(f, os.O_RDWR)),
            ("open O_APPEND", lambda: os.open(f, os.O_WRONLY | os.O_APPEND)),
            ("create", lambda: os.open(p("new"), os.O_CREAT | os.O_WRONLY,
                                       0o644)),
            ("truncate", lambda: os.truncate(f, 0)),
            ("unlink", lambda: os.unlink(f)),
            ("mkdir", lambda: os.mkdir(p("newdir"))),
            ("rmdir", lambda: os.rmdir(d)),
            ("rename", lambda: os.rename(f, p("etc/renamed"))),
            ("symlink", lambda: os.symlink("x", p("newlink"))),
            ("link", lambda: os.link(f, p("newhard"))),
            ("mkfifo", lambda: os.mkfifo(p("newfifo"))),
            ("chmod", lambda: os.chmod(f, 0o600)),
            ("chown", lambda: os.chown(f, 1, 1)),
            ("utime", lambda: os.utime(f, (1, 1))),
            ("setxattr", lambda: os.setxattr(f, "user.new", b"1")),
            ("removexattr", lambda: os.removexattr(f, "user.a")),
        ]
        fails = []
        for what, fn in ops:
            try:
                fd = fn()
                if isinstance(fd, int):
                    os.close(fd)
                fails.append("%s: succeeded" % what)
            except OSError as e:
                if e.errno != errno.EROFS:
                    fails.append("%s: %s" % (what, errno.errorcode.get(
                        e.errno, e.errno)))
        if os.access(f, os.W_OK):
            fails.append("access(W_OK): allowed")
        if not os.access(f, os.R_OK):
            fails.append("access(R_OK): denied")
        check(not fails, "want EROFS from every write:\n" + "\n".join(fails))
    after = verify_stack(ctx, s)
    check(before.entries == after.entries, "layers changed by the attempts")


@test()
def upperdir_with_workdir_mounts(ctx):
    s = build(ctx, SMALL)
    upper, work = ctx.newdir("upper"), ctx.newdir("work")
    want = reference_dump([upper] + s.paths)
    with ctx.mount(s.paths, upper=upper, work=work) as m:
        got = dump_tree(m.mnt)
    assert_same(got, want)


@test()
def unknown_options_accepted_with_warning(ctx):
    """podman passes context="...:c1,c2" which naive comma splitting cuts
    in two pieces; unknown options must only warn.  volatile and
    xattr_permissions are known (and harmless on a read-only mount)."""
    s = build(ctx, SMALL)
    extra = ['context="system_u:object_r:container_file_t:s0:c1', 'c2"',
             "volatile", "xattr_permissions=2"]
    want = reference_dump(s.paths)
    with ctx.mount(s.paths, extra_opts=extra) as m:
        got = dump_tree(m.mnt)
    assert_same(got, want)
    check("context" in m.stderr, "no warning naming context on stderr "
          "(got %r)" % m.stderr)
    for word in ("volatile", "xattr_permissions"):
        check(word not in m.stderr, "a known option %r warned about: %r" % (
            word, m.stderr))


@test()
def option_order_and_repeated_dash_o(ctx):
    """fuse-overlayfs command lines also come as `MNT -o OPTS` and with
    several -o arguments."""
    s = build(ctx, SMALL)
    want = reference_dump(s.paths)
    low = "lowerdir=" + ":".join(s.paths)
    for argv in (["-o", low, "-o", "timeout=5", MNT],
                 [MNT, "-o", low],
                 [MNT, "-o", low, "-o", "volatile"]):
        with ctx.mount(s.paths, argv=argv) as m:
            got = dump_tree(m.mnt)
        assert_same(got, want, " ".join(m.command())[-200:])


@test()
def timeout_option_accepted(ctx):
    s = build(ctx, SMALL)
    verify_stack(ctx, s, extra_opts=["timeout=2"])


# ---------------------------------------------------------------- bad input

def _bad(ctx, args, must_name, mnt=None, cwd=None):
    """Run the program with bad args: non-zero exit, stderr naming the
    offending thing, no new mount, no process left behind."""
    before_mounts = mounts()
    before_pids = list_pids()
    rc, out = run_program(args, timeout=30, cwd=cwd)
    new = [m for m in mounts() if m not in before_mounts]
    for mp, fstype, _ in new:
        subprocess.run([FUSERMOUNT, "-uz", mp], capture_output=True)
    leftovers = []
    for pid in list_pids() - before_pids:
        if not is_descendant(pid):
            continue
        argv = proc_cmdline(pid) or []
        if argv and os.path.basename(argv[0]) == \
                os.path.basename(os.fsencode(PROGRAM)):
            if not wait_exit(pid, 5)[0]:
                leftovers.append(pid)
    problems = []
    if rc == 0:
        problems.append("exit status 0")
    if new:
        problems.append("a mount appeared: %r" % [m[0] for m in new])
    if leftovers:
        problems.append("processes left running: %r" % leftovers)
    for thing in ([must_name] if isinstance(must_name, str) else must_name):
        if not re.search(thing, out, re.I):
            problems.append("stderr does not name %r" % thing)
    if problems:
        raise Fail("%s\n  args: %r\n  output: %r" % (
            "; ".join(problems), args, out[:800]))


def _lower(ctx):
    return build(ctx, SMALL).paths


@test()
def bad_input_missing_lower(ctx):
    missing = os.path.join(ctx.dir, "no-such-layer")
    _bad(ctx, ["-o", "lowerdir=%s:%s" % (_lower(ctx)[0], missing),
               ctx.newdir("mnt")], re.escape(missing))


@test()
def bad_input_lower_not_a_directory(ctx):
    f = os.path.join(ctx.dir, "a-regular-file")
    open(f, "w").close()
    _bad(ctx, ["-o", "lowerdir=%s:%s" % (f, _lower(ctx)[0]),
               ctx.newdir("mnt")], re.escape(f))


@test()
def bad_input_empty_lowerdir(ctx):
    _bad(ctx, ["-o", "lowerdir=", ctx.newdir("mnt")], "lowerdir")


@test()
def bad_input_empty_lowerdir_element(ctx):
    a, b = _lower(ctx)
    _bad(ctx, ["-o", "lowerdir=%s::%s" % (a, b), ctx.newdir("mnt")],
         "lowerdir")


@test()
def bad_input_missing_mountpoint(ctx):
    mnt = os.path.join(ctx.dir, "no-such-mountpoint")
    _bad(ctx, ["-o", "lowerdir=" + _lower(ctx)[0], mnt], re.escape(mnt))


@test()
def bad_input_busy_mountpoint(ctx):
    mnt = os.path.realpath(ctx.newdir("busy"))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mnt], check=True)
    try:
        n = len(mounts_at(mnt))
        _bad(ctx, ["-o", "lowerdir=" + _lower(ctx)[0], mnt], re.escape(mnt))
        check_eq(len(mounts_at(mnt)), n, "mounts at the busy mount point")
    finally:
        subprocess.run(["umount", mnt])


@test()
def bad_input_timeout_not_a_number(ctx):
    _bad(ctx, ["-o", "lowerdir=%s,timeout=abc" % _lower(ctx)[0],
               ctx.newdir("mnt")], "timeout")


@test()
def bad_input_upperdir_without_workdir(ctx):
    _bad(ctx, ["-o", "lowerdir=%s,upperdir=%s" % (_lower(ctx)[0],
                                                   ctx.newdir("up")),
               ctx.newdir("mnt")], "workdir")


@test()
def bad_input_no_mountpoint(ctx):
    _bad(ctx, ["-o", "lowerdir=" + _lower(ctx)[0]], r"mount ?point")


@test()
def bad_input_dash_o_without_argument(ctx):
    _bad(ctx, [ctx.newdir("mnt"), "-o"], r"(^|\W)-?o\b|'o'|option")


@test()
def device_nodes_and_suid_usable_as_root(ctx):
    """README: as root, layerfs mounts with suid,dev like kernel overlayfs,
    so device nodes in an image work."""
    s = build(ctx, r"""
c dev/zero 1 5
c dev/null 1 3
""")
    with ctx.mount(s.paths) as m:
        opts = open("/proc/self/mountinfo").read()
        line = [l for l in opts.splitlines() if " %s " % m.mnt in l]
        check(line, "mount not in mountinfo")
        flags = line[0].split()[5].split(",")
        check("nodev" not in flags and "nosuid" not in flags,
              "mount flags %r" % flags)
        with open(m.path("dev/zero"), "rb") as f:
            check_eq(f.read(16), bytes(16), "read of dev/zero node")
        with open(m.path("dev/null"), "wb") as f:
            f.write(b"discarded")
