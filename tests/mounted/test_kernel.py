"""Comparison with the kernel's overlayfs on kernel-compatible stacks
(char 0/0 whiteouts, trusted.overlay.opaque=y, xattr whiteouts in dirs
marked opaque=x; no OCI names, which the kernel shows as plain files).

The kernel takes at most 500 lower layers and one page of mount data, so
deep stacks are mounted from the layers' parent dir with short relative
names."""

import os
import random

from harness import Fail, test
from layers import (KERNEL_OPAQUES, KERNEL_WHITEOUTS, ODD_NAMES, Stack,
                    build, make_kernel_compatible, random_stack)
from tree import assert_same, dump_tree, reference_dump


def kernel_dump(ctx, stack, relative=False):
    if relative:
        lowers = [os.path.relpath(p, stack.base) for p in stack.paths]
        kw = {"cwd": stack.base}
    else:
        lowers, kw = stack.paths, {}
    with ctx.mount(lowers, kernel=True, **kw) as k:
        return dump_tree(k.mnt)


def compare_with_kernel(ctx, stack, relative=False):
    kd = kernel_dump(ctx, stack, relative)
    if kd.problems:
        raise Fail("kernel overlay itself shows inode problems (test bug?):"
                   "\n" + "\n".join(kd.problems[:10]))
    with ctx.mount(stack.paths) as m:
        ld = dump_tree(m.mnt)
    assert_same(ld, kd, "layerfs vs kernel overlayfs")


def kernel_random(ctx, seed, n, **kw):
    s = random_stack(ctx, random.Random(seed), n, whiteouts=KERNEL_WHITEOUTS,
                     opaques=KERNEL_OPAQUES, **kw)
    make_kernel_compatible(s)
    return s


@test(kernel=True)
def reference_model_matches_kernel(ctx):
    """Validates the test oracle: the reference flattening equals what the
    kernel shows, on random kernel-compatible stacks."""
    for seed in range(700, 740):
        s = kernel_random(ctx, seed, random.Random(seed).randint(2, 7))
        try:
            assert_same(kernel_dump(ctx, s), reference_dump(s.paths),
                        "kernel vs reference")
        except Fail as e:
            raise Fail("seed %d: %s" % (seed, e))


@test(kernel=True)
def kernel_compare_handcrafted(ctx):
    s = build(ctx, r"""
f etc/os-release ID=top
wh etc/motd
wh.xt etc/issue
opq var/cache
f var/cache/new top
f odd\x20name\nwith:colon\xff top
l links/rel ../etc/os-release
l links/abs /etc/passwd
l links/dangling nope
l links/loop loop
x etc/os-release user.note hello
x etc/os-release trusted.overlay.xyz hidden
--
f etc/os-release ID=mid
f etc/hostname mid
d srv
f srv/file mid
f var/cache/mid-hidden mid
f var/lib/hard a
h var/lib/hard2 var/lib/hard
c dev/null 1 3
b dev/loop0 7 0
p run/fifo
s run/sock
--
f etc/os-release ID=base
f etc/motd base
f etc/issue base
f srv base-file-below-dir
f var/cache/base-hidden base
d var/cache/sub
f odd\x20name\nwith:colon\xff base
f shared-inode base
c notwh 0 1
""")
    os.chmod(s[0].p(""), 0o750)
    s[0].xattr("", "user.root", "top")
    # one inode hard-linked into two layers (deduplicating stores do this)
    os.link(s[2].p("shared-inode"), s[1].p("var/lib/same-inode"))
    from test_rules import CAP_NET_RAW_XATTR
    s[0].file("bin/ping", b"ELF", 0o4755)
    s[0].xattr("bin/ping", "security.capability", CAP_NET_RAW_XATTR)
    s[1].sparse("sparse", 10 << 20, [(5 << 20, b"data")])
    s[0].file("etc/xw-nonempty", b"data")
    s[0].xattr("etc/xw-nonempty", "trusted.overlay.whiteout", "y")
    compare_with_kernel(ctx, s)


@test(kernel=True)
def kernel_compare_random_stacks(ctx):
    for seed in range(600, 630):
        s = kernel_random(ctx, seed, random.Random(seed).randint(2, 8))
        try:
            compare_with_kernel(ctx, s)
        except Fail as e:
            raise Fail("seed %d: %s" % (seed, e))


@test(kernel=True)
def kernel_compare_awkward_names(ctx):
    for seed in range(620, 626):
        s = kernel_random(ctx, seed, random.Random(seed).randint(2, 6),
                          names=ODD_NAMES)
        try:
            compare_with_kernel(ctx, s)
        except Fail as e:
            raise Fail("seed %d: %s" % (seed, e))


@test(kernel=True, timeout=180)
def kernel_compare_128_layers(ctx):
    s = Stack(ctx, 128, naming="short")
    kernel_random(ctx, 650, 128, ops=(1, 8), names=b"abcdefg", stack=s)
    compare_with_kernel(ctx, s, relative=True)


@test(kernel=True, timeout=300)
def kernel_compare_500_layers(ctx):
    n = 500
    s = Stack(ctx, n, naming="short")
    for i, L in enumerate(s.layers):
        L.file("shared/cfg", b"from layer %d" % i)
        L.file("per/l%d/f" % i, b"%d" % i)
        L.file("common/n%03d" % i, b"n%d" % i)
        if i % 10 == 3:
            L.whiteout("per/l%d" % (i + 5), ("chr", "xt")[(i // 10) % 2])
        if i % 50 == 7:
            L.opaque("deep/o", "t")
            L.file("deep/o/f%d" % i, b"opaque %d" % i)
        elif i % 13 == 0:
            L.file("deep/o/g%d" % i, b"g %d" % i)
    make_kernel_compatible(s)
    compare_with_kernel(ctx, s, relative=True)
