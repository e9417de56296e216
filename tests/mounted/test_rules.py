"""Handcrafted stacks, one per union rule.  Each is checked twice: against
an explicit expected listing and against the reference flattening."""

import errno
import os

from checks import lstat_enoent, verify_stack
from harness import check, check_eq, expect_errno, test
from layers import build


@test()
def override_topmost_layer_wins(ctx):
    s = build(ctx, r"""
f etc/os-release ID=top
l etc/link-over-file target-top
--
f etc/os-release ID=mid
f etc/hostname mid
f etc/link-over-file file-mid
--
f etc/os-release ID=base
f etc/hostname base
f etc/passwd root:x:0:0
f etc/file-over-link file-base
""")
    verify_stack(ctx, s, {
        "etc": "dir", "etc/os-release": "file:ID=top",
        "etc/hostname": "file:mid", "etc/passwd": "file:root:x:0:0",
        "etc/link-over-file": "symlink:target-top",
        "etc/file-over-link": "file:file-base"})


@test()
def nondir_hides_lower_directory(ctx):
    s = build(ctx, r"""
f a top-file
l b somewhere
p c
--
d a
f a/x
d a/sub
f a/sub/y
d b
f b/z
d c
f c/w
""")

    def live(m):
        expect_errno(errno.ENOTDIR, os.lstat, m.path("a/x"),
                     what="lstat a/x under a file")
    verify_stack(ctx, s, {"a": "file:top-file", "b": "symlink:somewhere",
                          "c": "fifo"}, live)


@test()
def dir_over_nondir_stops_merge(ctx):
    s = build(ctx, r"""
f d/top
--
f d/mid
--
f d lower-file-stops-the-merge
--
d d
f d/bottom
""")
    verify_stack(ctx, s, {"d": "dir", "d/top": "file", "d/mid": "file"})


def _whiteout_case(ctx, op, extra_hidden=()):
    s = build(ctx, r"""
%(op)s a/x
%(op)s gone
%(op)s tree
f a/new
--
f a/x lower-x
f a/y lower-y
d gone
f gone/deep
d tree
d tree/sub
f tree/sub/leaf
--
f a/x bottom-x
f tree/bottom
""" % {"op": op})

    def live(m):
        for rel in ("a/x", "gone", "tree", "tree/sub/leaf") + extra_hidden:
            lstat_enoent(m, rel)
    verify_stack(ctx, s, {"a": "dir", "a/y": "file:lower-y",
                          "a/new": "file"}, live)


@test()
def whiteout_char_device(ctx):
    _whiteout_case(ctx, "wh")


@test()
def whiteout_oci_wh_file(ctx):
    _whiteout_case(ctx, "wh.oci", (".wh.gone", "a/.wh.x"))


@test()
def whiteout_xattr_trusted_with_parent_marked_x(ctx):
    _whiteout_case(ctx, "wh.xt")


@test()
def whiteout_xattr_user_with_parent_marked_x(ctx):
    _whiteout_case(ctx, "wh.xu")


@test()
def xattr_whiteout_without_parent_marker_is_a_plain_file(ctx):
    s = build(ctx, r"""
wh.xt.nomark a/x
f a/y
--
f a/x lower-x
""")

    def live(m):
        names = [os.fsencode(n) for n in os.listxattr(m.path("a/x"))]
        check(not [n for n in names if b".overlay." in n],
              "overlay xattr visible on a/x: %r" % names)
    verify_stack(ctx, s, {"a": "dir", "a/x": "file:", "a/y": "file"}, live)


@test()
def whiteout_of_directory_hides_its_tree_in_all_formats(ctx):
    s = build(ctx, r"""
wh d1
wh.oci d2
wh.xt d3
wh.xu sub/d4
--
d d1/a/b
f d1/a/b/c
d d2/a
f d2/a/f
l d3/l x
f sub/d4/f
f keep
""")

    def live(m):
        for d in ("d1", "d2", "d3", "sub/d4", "d1/a/b/c", "d2/a"):
            lstat_enoent(m, d)
    verify_stack(ctx, s, {"keep": "file", "sub": "dir"}, live)


def _opaque_case(ctx, op):
    s = build(ctx, r"""
f a/above
--
%(op)s a
f a/mid
f a/shadow mid-shadow
--
f a/below
f a/shadow below-shadow
d a/sub
f a/sub/deep
""" % {"op": op})

    def live(m):
        lstat_enoent(m, "a/below")
        lstat_enoent(m, "a/sub")
        lstat_enoent(m, "a/.wh..wh..opq")
        xs = [os.fsencode(n) for n in os.listxattr(m.path("a"))]
        check(b"trusted.overlay.opaque" not in xs and
              b"user.overlay.opaque" not in xs,
              "opaque xattr visible on a: %r" % xs)
    verify_stack(ctx, s, {"a": "dir", "a/above": "file", "a/mid": "file",
                          "a/shadow": "file:mid-shadow"}, live)


@test()
def opaque_dir_trusted_xattr(ctx):
    _opaque_case(ctx, "opq")


@test()
def opaque_dir_user_xattr(ctx):
    _opaque_case(ctx, "opq.u")


@test()
def opaque_dir_oci_marker(ctx):
    _opaque_case(ctx, "opq.oci")


@test()
def opaque_value_x_does_not_make_dir_opaque(ctx):
    s = build(ctx, r"""
d a
x a trusted.overlay.opaque x
f a/top
d b
x b user.overlay.opaque x
--
f a/lower
f b/lower
""")
    verify_stack(ctx, s, {"a": "dir", "a/top": "file", "a/lower": "file",
                          "b": "dir", "b/lower": "file"})


@test()
def opaque_dirs_at_several_depths(ctx):
    s = build(ctx, r"""
opq.oci r/a/b/c
f r/a/b/c/top
f r/t0
--
opq r/a
f r/a/l1
d r/a/b
f r/a/b/l1
d r/a/b/c
f r/a/b/c/l1-hidden
--
opq.u r/a/b
f r/a/b/l2-hidden
f r/a/l2-hidden
f r/l2
--
f r/l3
d r/a/b/c
f r/a/b/c/l3-hidden
""")
    verify_stack(ctx, s, {"r": "dir", "r/t0": "file", "r/l2": "file",
                          "r/l3": "file", "r/a": "dir", "r/a/l1": "file",
                          "r/a/b": "dir", "r/a/b/l1": "file",
                          "r/a/b/c": "dir", "r/a/b/c/top": "file"})


@test()
def whiteout_and_marker_names_never_visible(ctx):
    s = build(ctx, r"""
f .wh.nothing-below
f dir/.wh..wh..opq
f dir/top
--
f dir/.wh.stale
f .wh..wh.plain
f dir/low
f visible
""")

    def live(m):
        for rel in (".wh.nothing-below", "dir/.wh..wh..opq", "dir/.wh.stale",
                    ".wh..wh.plain", ".wh.visible"):
            lstat_enoent(m, rel)
        names = set(os.listdir(m.path()))
        check(not any(n.startswith(b".wh.") for n in names),
              "readdir shows .wh. names: %r" % names)
    verify_stack(ctx, s, {"dir": "dir", "dir/top": "file",
                          "visible": "file"}, live)


@test()
def private_overlay_xattrs_hidden(ctx):
    s = build(ctx, r"""
f f top
x f user.visible yes
x f trusted.visible also
x f trusted.overlay.redirect /elsewhere
x f user.overlay.origin zzz
opq d
x d user.dirattr here
wh.xt.nomark e/empty
--
f d/hidden
""")

    def live(m):
        for rel, private, public in (
                ("f", (b"trusted.overlay.redirect", b"user.overlay.origin"),
                 (b"user.visible", b"trusted.visible")),
                ("d", (b"trusted.overlay.opaque",), (b"user.dirattr",)),
                ("e/empty", (b"trusted.overlay.whiteout",), ())):
            names = {os.fsencode(n) for n in os.listxattr(m.path(rel))}
            check(not any(b".overlay." in n for n in names),
                  "%s: listxattr shows %r" % (rel, sorted(names)))
            check(set(public) <= names, "%s: listxattr %r lacks %r" % (
                rel, sorted(names), public))
            for n in private:
                expect_errno(errno.ENODATA, os.getxattr, m.path(rel), n,
                             what="getxattr %s %s" % (rel, n.decode()))
        check_eq(os.getxattr(m.path("f"), b"user.visible"), b"yes",
                 "user.visible")
    verify_stack(ctx, s, {"f": "file:top", "d": "dir", "e": "dir",
                          "e/empty": "file:"}, live)


@test()
def user_xattrs_visible_on_files_and_dirs(ctx):
    s = build(ctx, r"""
f a top
x a user.nul \x00
x a user.bin \x00\xff\x01\n
d dir
x dir user.d dirval
--
f a lower
x a user.lower should-not-show
f b
""")
    big = os.urandom(3000)
    s[0].xattr("a", "user.big", big)
    s[0].xattr("a", "user.empty", b"")
    for k in range(20):
        s[1].xattr("b", "user.many%02d" % k, b"v%d" % k)

    def live(m):
        check_eq(os.getxattr(m.path("a"), "user.big"), big, "user.big")
        check_eq(os.getxattr(m.path("a"), "user.bin"), b"\x00\xff\x01\n",
                 "user.bin")
        expect_errno(errno.ENODATA, os.getxattr, m.path("a"), "user.lower",
                     what="getxattr of a lower layer's xattr")
        check_eq(len(os.listxattr(m.path("b"))), 20, "xattr count on b")
    verify_stack(ctx, s, {"a": "file:top", "b": "file", "dir": "dir"}, live)


# struct vfs_cap_data, revision 2, effective, permitted cap_net_raw (13)
CAP_NET_RAW_XATTR = (0x02000001).to_bytes(4, "little") + \
    (1 << 13).to_bytes(4, "little") + bytes(12)


@test()
def security_capability_xattr_passes_through(ctx):
    """File capabilities in an image (ping's cap_net_raw) survive."""
    s = build(ctx, r"""
f bin/ping ELF 755
--
f bin/ping lower 755
""")
    s[0].xattr("bin/ping", "security.capability", CAP_NET_RAW_XATTR)

    def live(m):
        check_eq(os.getxattr(m.path("bin/ping"), "security.capability"),
                 CAP_NET_RAW_XATTR, "security.capability")
    verify_stack(ctx, s, {"bin": "dir", "bin/ping": "file:ELF"}, live)


@test()
def symlinks_relative_absolute_dangling_looping(ctx):
    s = build(ctx, r"""
f data/target top-content
--
l rel data/target
l abs /etc/hostname
l dangling no/such/thing
l loop1 loop2
l loop2 loop1
l self self
l dirlink data
f data/target lower-content
""")

    long_target = ((b"t" * 200 + b"/") * 21)[:4095]
    s[0].symlink("long-target", long_target)

    def live(m):
        check_eq(os.readlink(m.path("long-target")), long_target,
                 "4095-byte symlink target")
        with open(m.path("rel"), "rb") as f:
            check_eq(f.read(), b"top-content", "read through relative link")
        with open(m.path("dirlink/target"), "rb") as f:
            check_eq(f.read(), b"top-content", "read through dir link")
        check_eq(os.readlink(m.path("abs")), b"/etc/hostname", "readlink abs")
        expect_errno(errno.ENOENT, os.stat, m.path("dangling"),
                     what="stat dangling")
        expect_errno(errno.ELOOP, os.stat, m.path("loop1"), what="stat loop")
        expect_errno(errno.ELOOP, os.stat, m.path("self"), what="stat self")
    verify_stack(ctx, s, {
        "data": "dir", "data/target": "file:top-content",
        "rel": "symlink:data/target", "abs": "symlink:/etc/hostname",
        "dangling": "symlink:no/such/thing", "loop1": "symlink:loop2",
        "loop2": "symlink:loop1", "self": "symlink:self",
        "dirlink": "symlink:data", "long-target": "symlink"}, live)


@test()
def hard_links_share_inode_and_nlink(ctx):
    s = build(ctx, r"""
f other top
wh gone-link
--
f h/a shared-a
h h/a2 h/a
h h/sub/a3 h/a
f b shared-b
h b2 b
h gone-link b
f solo
""")

    def live(m):
        sts = [os.lstat(m.path(p)) for p in ("h/a", "h/a2", "h/sub/a3")]
        check(len({st.st_ino for st in sts}) == 1,
              "h/a, h/a2, h/sub/a3 have st_ino %r" % [st.st_ino for st in sts])
        check(all(st.st_nlink == 3 for st in sts),
              "nlink %r, want 3" % [st.st_nlink for st in sts])
        b, b2, solo = (os.lstat(m.path(p)) for p in ("b", "b2", "solo"))
        check(b.st_ino == b2.st_ino, "b and b2 differ in st_ino")
        check(solo.st_ino not in (b.st_ino, sts[0].st_ino),
              "unrelated file shares st_ino")
    verify_stack(ctx, s, {"other": "file", "h": "dir", "h/a": "file",
                          "h/a2": "file", "h/sub": "dir", "h/sub/a3": "file",
                          "b": "file", "b2": "file", "solo": "file"}, live)


@test()
def special_files_devices_fifos_sockets(ctx):
    s = build(ctx, r"""
c dev/null 1 3
b dev/loop0 7 0
p run/fifo
s run/sock
c over/x 10 200
c notwh/c01 0 1
c notwh/c10 1 0
--
f over/x regular
f notwh/c01 lower
f notwh/c10 lower
c dev/zero 1 5
c dev/null 1 7
""")

    def live(m):
        st = os.lstat(m.path("dev/null"))
        check_eq((os.major(st.st_rdev), os.minor(st.st_rdev)), (1, 3),
                 "dev/null rdev")
    verify_stack(ctx, s, {"dev": "dir", "dev/null": "chr",
                          "dev/loop0": "blk", "dev/zero": "chr", "run": "dir",
                          "run/fifo": "fifo", "run/sock": "sock",
                          "over": "dir", "over/x": "chr", "notwh": "dir",
                          "notwh/c01": "chr", "notwh/c10": "chr"}, live)


@test()
def odd_names_spaces_colons_newlines_non_utf8(ctx):
    s = build(ctx, r"""
f with\x20space top
f co:lon top
f new\nline top
f \xff\xfe-latin1 top
f tab\there top
f back\\slash top
d dir\x20with\x20:colon
f dir\x20with\x20:colon/\xe9t\xe9 top
wh.oci gone\x20name
wh lower\nnl
--
f with\x20space low
f gone\x20name low
f lower\nnl low
f dir\x20with\x20:colon/\xc3\xa9 utf8
f -dash low
""")

    def live(m):
        names = set(os.listdir(m.path()))
        for n in (b"with space", b"co:lon", b"new\nline", b"\xff\xfe-latin1"):
            check(n in names, "readdir lacks %r" % n)
    verify_stack(ctx, s, {
        "with space": "file:top", "co:lon": "file:top",
        "new\nline": "file:top", b"\xff\xfe-latin1": "file:top",
        "tab\there": "file:top", "back\\slash": "file:top",
        "dir with :colon": "dir", b"dir with :colon/\xe9t\xe9": "file:top",
        b"dir with :colon/\xc3\xa9": "file:utf8", "-dash": "file:low"}, live)


@test()
def xattr_whiteout_must_be_an_empty_regular_file(ctx):
    """In a dir marked opaque=x, only zero-size regular files carrying the
    whiteout xattr are whiteouts; a non-empty file or a directory with the
    xattr is an ordinary entry (and hides what is below it)."""
    s = build(ctx, r"""
wh.xt a/real
f a/data top-data
x a/data trusted.overlay.whiteout y
d a/dir
x a/dir trusted.overlay.whiteout y
f a/dir/inside top
--
f a/real lower
f a/data lower-data
d a/dir
f a/dir/lower lower
""")

    def live(m):
        lstat_enoent(m, "a/real")
    verify_stack(ctx, s, {"a": "dir", "a/data": "file:top-data",
                          "a/dir": "dir", "a/dir/inside": "file:top",
                          "a/dir/lower": "file:lower"}, live)


@test()
def root_dir_attributes_from_top_layer(ctx):
    s = build(ctx, r"""
f top
--
f low
""")
    os.chmod(s[0].p(""), 0o750)
    os.chown(s[0].p(""), 1000, 100)
    s[0].xattr("", "user.rootattr", "top")
    s[1].xattr("", "user.lowattr", "low")
    os.chmod(s[1].p(""), 0o711)

    def live(m):
        st = os.stat(m.path())
        check_eq((st.st_mode & 0o7777, st.st_uid, st.st_gid),
                 (0o750, 1000, 100), "root mode/uid/gid")
        check_eq(sorted(os.listxattr(m.path())), ["user.rootattr"],
                 "root xattrs")
    verify_stack(ctx, s, {"top": "file", "low": "file"}, live)


@test()
def name_next_to_its_own_oci_whiteout_is_shown(ctx):
    """OCI: a whiteout applies to lower layers only.  A layer holding both
    `name` and `.wh.name` shows its own `name` and nothing below it."""
    s = build(ctx, r"""
f a/top
--
d a
f a/mid
wh.oci a
f b mid-b
wh.oci b
wh.oci c
d c
f c/mid
opq.oci c
--
f a/bottom
d b
f b/x
f c/bottom
""")

    def live(m):
        lstat_enoent(m, "a/bottom")
        lstat_enoent(m, ".wh.a")
    verify_stack(ctx, s, {"a": "dir", "a/top": "file", "a/mid": "file",
                          "b": "file:mid-b", "c": "dir", "c/mid": "file"},
                 live)


@test()
def opacity_of_a_layer_root_is_ignored(ctx):
    s = build(ctx, r"""
f top
--
opq .
f mid
--
opq.oci .
f low
--
opq.u .
f bottom
""")
    verify_stack(ctx, s, {"top": "file", "mid": "file", "low": "file",
                          "bottom": "file"})
