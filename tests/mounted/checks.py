"""Shared assertions for the mounted tests."""

import hashlib
import os

from harness import Fail
from tree import assert_same, dump_tree, esc, reference_dump


def _b(s):
    return os.fsencode(s) if isinstance(s, str) else s


def expect_tree(dump, expected):
    """Explicit expectation for a handcrafted stack, independent of the
    reference model.  `expected` maps paths to "dir", "file:CONTENT",
    "symlink:TARGET" or a bare type name; it must list every visible path."""
    got = set(dump.entries) - {b""}
    want = {b"/" + _b(k).strip(b"/") for k in expected}
    errs = ["missing: " + esc(p) for p in sorted(want - got)]
    errs += ["unexpected: " + esc(p) for p in sorted(got - want)]
    for k, v in expected.items():
        rel = b"/" + _b(k).strip(b"/")
        e = dump.entries.get(rel)
        if e is None:
            continue
        t, _, arg = _b(v).partition(b":")
        t = t.decode()
        if e["type"] != t:
            errs.append("%s: type %s, want %s" % (esc(rel), e["type"], t))
        elif t == "file" and b":" in _b(v) and \
                e["sha256"] != hashlib.sha256(arg).hexdigest():
            errs.append("%s: content differs from %r" % (esc(rel), arg))
        elif t == "symlink" and b":" in _b(v) and e["target"] != arg:
            errs.append("%s: target %r, want %r" % (esc(rel), e["target"],
                                                    arg))
    if errs:
        raise Fail("explicit expectation:\n" + "\n".join(errs[:30]))


def verify_stack(ctx, stack, expected=None, live=None, **mount_kw):
    """Mount the stack, dump it, run `live(mount)` while mounted, then
    compare the dump with the reference flattening (and with `expected`)."""
    layers = mount_kw.pop("lowers", None) or stack.paths
    want = reference_dump(layers)
    with ctx.mount(layers, **mount_kw) as m:
        got = dump_tree(m.mnt)
        if live:
            live(m)
    msgs = []
    for fn in ((lambda: expect_tree(got, expected)) if expected else None,
               lambda: assert_same(got, want)):
        if fn is None:
            continue
        try:
            fn()
        except Fail as e:
            msgs.append(str(e))
    if msgs:
        raise Fail("\n".join(msgs))
    return got


def lstat_enoent(m, rel):
    """lstat of rel through the mount must fail with ENOENT."""
    try:
        os.lstat(m.path(rel))
    except FileNotFoundError:
        return
    except OSError as e:
        raise Fail("lstat %s: %s, want ENOENT" % (esc(rel), e))
    raise Fail("lstat %s succeeded, want ENOENT" % esc(rel))
