"""Canonical tree dumps: of a mounted tree, and of a reference flattening
computed directly from the layer directories.

A dump maps each relative path (bytes, b"" for the root) to a dict of
fields.  Paths are handled as /proc/self/fd/<fd>/<rel> so that layer roots
longer than the mount point never push a path over PATH_MAX.
"""

import hashlib
import os
import stat

OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
WH_PREFIX = b".wh."
OPQ_MARKER = b".wh..wh..opq"
CHUNK = 1 << 20


def esc(name):
    """Printable form of a bytes path."""
    out = []
    for b in os.fsencode(name):
        if 0x20 <= b < 0x7f and b != 0x5c:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return "".join(out) or "<root>"


def ftype(mode):
    for test, t in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"),
                    (stat.S_ISLNK, "symlink"), (stat.S_ISCHR, "chr"),
                    (stat.S_ISBLK, "blk"), (stat.S_ISFIFO, "fifo"),
                    (stat.S_ISSOCK, "sock")):
        if test(mode):
            return t
    return "?"


def sha256_of(path):
    h = hashlib.sha256()
    n = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while True:
            b = os.read(fd, CHUNK)
            if not b:
                break
            n += len(b)
            h.update(b)
    finally:
        os.close(fd)
    return h.hexdigest(), n


def xattrs_of(path, hide_private):
    names = os.listxattr(path, follow_symlinks=False)
    res = []
    for n in sorted(os.fsencode(x) for x in names):
        if hide_private and n.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        res.append((n, os.getxattr(path, n, follow_symlinks=False)))
    return tuple(res)


def describe(path, st, hide_private):
    """Fields of one entry; `path` is a usable (short) path to it."""
    t = ftype(st.st_mode)
    e = {"type": t, "mode": "%04o" % stat.S_IMODE(st.st_mode),
         "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns}
    if t != "dir":
        e["nlink"] = st.st_nlink
    if t in ("file", "symlink"):
        e["size"] = st.st_size
    if t == "file":
        e["blocks"] = st.st_blocks
        digest, n = sha256_of(path)
        e["sha256"] = digest
        if n != st.st_size:
            e["bytes_read"] = n     # shows up as a difference
    if t == "symlink":
        e["target"] = os.readlink(path)
    if t in ("chr", "blk"):
        e["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    e["xattrs"] = xattrs_of(path, hide_private)
    return e


def _add_link_groups(entries, keys):
    """keys: path -> inode identity (non-dirs).  Each non-dir gets 'links':
    the sorted paths sharing its identity when there is more than one."""
    groups = {}
    for p, k in keys.items():
        groups.setdefault(k, []).append(p)
    for p, k in keys.items():
        g = groups[k]
        entries[p]["links"] = tuple(esc(x) for x in sorted(g)) \
            if len(g) > 1 else ()


# ---------------------------------------------------------------- mount dump

def _dtype_of(entry):
    """The d_type readdir gave, as far as DirEntry reveals it without a
    stat call (DT_UNKNOWN makes it stat, which then agrees trivially)."""
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "other"


def _dtype_of_mode(mode):
    t = ftype(mode)
    return t if t in ("symlink", "dir", "file") else "other"


class Dump:
    def __init__(self, entries, inos, problems):
        self.entries = entries      # rel -> fields
        self.inos = inos            # rel -> st_ino
        self.problems = problems    # inode consistency problems


def dump_tree(root, hide_private=False, check_inodes=True, full_path_recheck=True):
    """Canonical dump of a mounted tree (walks with scandir, never follows
    symlinks).  Also checks inode consistency: readdir d_ino == st_ino, a
    repeated lstat (by full path) returns the same st_ino, and distinct
    directories / non-linked files have distinct st_ino."""
    root_b = os.fsencode(root)
    rfd = os.open(root_b, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    pre = b"/proc/self/fd/%d" % rfd
    entries, inos, keys, problems = {}, {}, {}, []
    try:
        st = os.lstat(pre + b"/")
        entries[b""] = describe(pre + b"/", st, hide_private)
        inos[b""] = st.st_ino
        stack = [b""]
        while stack:
            rel = stack.pop()
            with os.scandir(pre + rel) as it:
                ents = [(os.fsencode(e.name), e.inode(), _dtype_of(e))
                        for e in it]
            for name, d_ino, dtype in ents:
                crel = rel + b"/" + name
                path = pre + crel
                st = os.lstat(path)
                if check_inodes and d_ino != st.st_ino:
                    problems.append("%s: readdir d_ino %d != st_ino %d" % (
                        esc(crel), d_ino, st.st_ino))
                if dtype != _dtype_of_mode(st.st_mode):
                    problems.append("%s: readdir d_type says %s, lstat %s" % (
                        esc(crel), dtype, _dtype_of_mode(st.st_mode)))
                entries[crel] = describe(path, st, hide_private)
                inos[crel] = st.st_ino
                if stat.S_ISDIR(st.st_mode):
                    stack.append(crel)
                else:
                    keys[crel] = st.st_ino
        _add_link_groups(entries, keys)
    finally:
        os.close(rfd)
    if check_inodes:
        problems += _inode_problems(root_b, entries, inos, full_path_recheck)
    return Dump(entries, inos, problems)


def _inode_problems(root_b, entries, inos, full_path_recheck):
    problems = []
    by_ino = {}
    for rel, ino in inos.items():
        by_ino.setdefault(ino, []).append(rel)
    for ino, rels in sorted(by_ino.items()):
        # non-directories may share an inode (hard links: checked against
        # the expected link groups); a directory never does.
        if len(rels) > 1 and any(entries[r]["type"] == "dir" for r in rels):
            problems.append("st_ino %d shared by %s" % (
                ino, ", ".join(esc(r) for r in sorted(rels)[:4])))
    if full_path_recheck:
        for rel, ino in inos.items():
            p = root_b + rel
            try:
                again = os.lstat(p).st_ino
            except OSError as e:
                problems.append("%s: second lstat by full path failed: %s" %
                                (esc(rel), e))
                continue
            if again != ino:
                problems.append("%s: st_ino changed %d -> %d" % (
                    esc(rel), ino, again))
    return problems


# ---------------------------------------------------------------- reference

class Reference:
    """Expected merged tree computed naively from the layer directories
    (top-most first), following the union rules:

    * the top-most layer that has a name provides it;
    * a non-directory hides everything below it;
    * directories merge down to the first opaque one (inclusive);
    * a lower non-directory under a higher directory stops the merge;
    * whiteouts: char 0/0, OCI .wh.<name>, zero-size regular file with
      {trusted,user}.overlay.whiteout when its parent dir in that layer has
      {trusted,user}.overlay.opaque=x; an OCI whiteout applies to lower
      layers only, so a name next to its own .wh.<name> is shown (and
      nothing below it);
    * the opacity of a layer's root directory is ignored (as in the kernel);
    * opaque: {trusted,user}.overlay.opaque=y, or a .wh..wh..opq entry;
    * names starting with .wh. never show; overlay xattrs are hidden.
    """

    def __init__(self, layers):
        self.layers = [os.fsencode(l) for l in layers]
        self.fds = []
        self.listings = {}

    def __enter__(self):
        for l in self.layers:
            self.fds.append(os.open(l, os.O_RDONLY | os.O_DIRECTORY |
                                    os.O_CLOEXEC))
        return self

    def __exit__(self, *a):
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def p(self, i, rel):
        return b"/proc/self/fd/%d%s" % (self.fds[i], rel or b"/")

    def listing(self, i, rel):
        key = (i, rel)
        if key not in self.listings:
            self.listings[key] = set(os.listdir(self.p(i, rel)))
        return self.listings[key]

    def _xattr(self, path, name):
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None

    def _marker(self, path):
        for ns in (b"trusted", b"user"):
            v = self._xattr(path, ns + b".overlay.opaque")
            if v is not None:
                return v
        return None

    def is_opaque(self, i, rel):
        return self._marker(self.p(i, rel)) == b"y" or \
            OPQ_MARKER in self.listing(i, rel)

    def is_whiteout(self, i, parent, name, st):
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        if stat.S_ISREG(st.st_mode) and st.st_size == 0 and \
                self._marker(self.p(i, parent)) == b"x":
            path = self.p(i, parent + b"/" + name)
            return any(self._xattr(path, ns + b".overlay.whiteout") is not None
                       for ns in (b"trusted", b"user"))
        return False

    def lookup(self, contributors, parent, name):
        """Layers providing parent/name: [(i, st), ...].  One entry for a
        non-directory; the merging layers (top first) for a directory."""
        if name.startswith(WH_PREFIX):
            return []
        found = []
        for i in contributors:
            names = self.listing(i, parent)
            # an OCI whiteout hides the name in the layers below; an entry
            # of the same name in the whiteout's own layer still counts
            oci_wh = WH_PREFIX + name in names
            if name not in names:
                if oci_wh:
                    break
                continue
            st = os.lstat(self.p(i, parent + b"/" + name))
            if self.is_whiteout(i, parent, name, st):
                break
            if not stat.S_ISDIR(st.st_mode):
                if not found:
                    found.append((i, st))
                break
            found.append((i, st))
            if oci_wh or self.is_opaque(i, parent + b"/" + name):
                break
        return found

    def resolve(self, rel):
        """Providers of a relative path (b"/a/b"), or [] if not visible."""
        contributors = list(range(len(self.layers)))
        found = [(i, os.lstat(self.p(i, b""))) for i in contributors]
        parent = b""
        for name in [c for c in rel.split(b"/") if c]:
            if not found or not stat.S_ISDIR(found[0][1].st_mode):
                return []
            found = self.lookup(contributors, parent, name)
            contributors = [i for i, _ in found]
            parent += b"/" + name
        return found

    def children(self, contributors, rel):
        names = set()
        for i in contributors:
            names |= self.listing(i, rel)
        return sorted(n for n in names if not n.startswith(WH_PREFIX))

    def dump(self):
        entries, keys = {}, {}
        st = os.lstat(self.p(0, b""))
        entries[b""] = describe(self.p(0, b""), st, True)
        stack = [(b"", list(range(len(self.layers))))]
        while stack:
            rel, contributors = stack.pop()
            for name in self.children(contributors, rel):
                found = self.lookup(contributors, rel, name)
                if not found:
                    continue
                crel = rel + b"/" + name
                i, st = found[0]
                entries[crel] = describe(self.p(i, crel), st, True)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((crel, [j for j, _ in found]))
                else:
                    keys[crel] = (st.st_dev, st.st_ino)
        _add_link_groups(entries, keys)
        return Dump(entries, None, [])


def reference_dump(layers):
    with Reference(layers) as ref:
        return ref.dump()


# ---------------------------------------------------------------- compare

def diff_dumps(got, want, ignore=(), limit=25):
    """Human-readable differences between two dumps (lists of lines)."""
    out = []
    g, w = got.entries, want.entries
    for rel in sorted(set(g) | set(w)):
        if rel not in g:
            out.append("missing: %s (%s)" % (esc(rel), w[rel]["type"]))
        elif rel not in w:
            out.append("unexpected: %s (%s)" % (esc(rel), g[rel]["type"]))
        else:
            for k in sorted(set(g[rel]) | set(w[rel])):
                if k in ignore:
                    continue
                if g[rel].get(k) != w[rel].get(k):
                    out.append("%s: %s is %r, want %r" % (
                        esc(rel), k, g[rel].get(k), w[rel].get(k)))
    if len(out) > limit:
        out = out[:limit] + ["... and %d more differences" % (len(out) - limit)]
    return out


def assert_same(got, want, what="mount vs reference", ignore=()):
    from harness import Fail
    lines = diff_dumps(got, want, ignore)
    problems = list(got.problems)[:15]
    if lines or problems:
        raise Fail("%s: %d entries vs %d\n" % (what, len(got.entries),
                                              len(want.entries)) +
                   "\n".join(lines + ["inode: " + p for p in problems]))
