"""Building layer stacks: a Layer builder, a compact text spec for
handcrafted stacks, and a seeded random generator.

Spec format (top-most layer first, layers separated by a line "--").
Tokens are split on whitespace; Python byte escapes work inside tokens
(\\x20 for a space, \\n, \\xff ...).  Parent directories are created as
needed (mode 0755).

    d PATH [MODE]           directory
    f PATH [CONTENT [MODE]] regular file (default content: PATH@<layer no>)
    l PATH TARGET           symlink
    h PATH EXISTING         hard link to EXISTING (same layer)
    c PATH MAJ MIN          char device        b PATH MAJ MIN  block device
    p PATH                  fifo               s PATH          unix socket
    wh PATH                 whiteout: char device 0/0
    wh.oci PATH             whiteout: OCI .wh.<name> file
    wh.xt PATH / wh.xu PATH whiteout: empty file with trusted/user
                            .overlay.whiteout; marks the parent dir
                            {trusted,user}.overlay.opaque=x
    wh.xt.nomark PATH       the same file but the parent is not marked
    wh.xu.nomark PATH       (so it is a plain empty file)
    opq PATH / opq.u PATH   opaque dir via trusted/user.overlay.opaque=y
    opq.oci PATH            opaque dir via a .wh..wh..opq entry
    x PATH NAME VALUE       set an xattr
    o PATH UID GID          chown (no symlink following)
"""

import codecs
import hashlib
import os
import stat


def _b(s):
    return os.fsencode(s) if isinstance(s, str) else s


class Layer:
    """Creates entries inside one layer directory.  All paths go through
    /proc/self/fd/<rootfd> so long layer roots never hit PATH_MAX."""

    def __init__(self, root):
        self.root = _b(root)
        os.makedirs(self.root, exist_ok=True)
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY |
                          os.O_CLOEXEC)
        self.marks = {}     # rel dir -> set of marks ('y:ns', 'x:ns', 'oci')

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def p(self, rel):
        rel = _b(rel).strip(b"/")
        return b"/proc/self/fd/%d/%s" % (self.fd, rel)

    def parents(self, rel):
        rel = _b(rel).strip(b"/")
        parts = rel.split(b"/")[:-1]
        cur = b""
        for part in parts:
            cur = cur + b"/" + part if cur else part
            try:
                os.mkdir(self.p(cur), 0o755)
            except FileExistsError:
                pass
        return rel

    def dir(self, rel, mode=0o755):
        rel = self.parents(rel)
        try:
            os.mkdir(self.p(rel))
        except FileExistsError:
            pass
        os.chmod(self.p(rel), mode)

    def file(self, rel, data=b"", mode=0o644):
        rel = self.parents(rel)
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, _b(data))
        finally:
            os.close(fd)
        os.chmod(self.p(rel), mode)

    def sparse(self, rel, size, extents=(), mode=0o644):
        """A sparse file of `size` bytes with data written at the given
        (offset, bytes) extents; everything else is a hole."""
        rel = self.parents(rel)
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.ftruncate(fd, size)
            for off, data in extents:
                os.pwrite(fd, data, off)
        finally:
            os.close(fd)

    def symlink(self, rel, target):
        rel = self.parents(rel)
        os.symlink(_b(target), self.p(rel))

    def hardlink(self, rel, existing):
        rel = self.parents(rel)
        os.link(self.p(existing), self.p(rel), follow_symlinks=False)

    def node(self, rel, kind, major=0, minor=0, mode=0o644):
        rel = self.parents(rel)
        fmt = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO,
               "s": stat.S_IFSOCK}[kind]
        os.mknod(self.p(rel), fmt | mode, os.makedev(major, minor))

    def xattr(self, rel, name, value):
        os.setxattr(self.p(rel), _b(name), _b(value), follow_symlinks=False)

    def chown(self, rel, uid, gid):
        os.chown(self.p(rel), uid, gid, follow_symlinks=False)

    @staticmethod
    def _conflicts(marks, mark):
        """A dir is either opaque (y marks, OCI marker) or holds xattr
        whiteouts (one x mark) or holds unmarked whiteout-xattr files
        ("nox"); mixing would make cases the contract does not define."""
        def group(m):
            return "x" if m.startswith("x:") else "nox" if m == "nox" else "y"
        for m in marks:
            if group(m) == "x" and group(mark) == "x" and m != mark:
                return True
            if {group(m), group(mark)} in ({"x", "y"}, {"x", "nox"}):
                return True
        return False

    def _mark(self, rel, mark):
        rel = _b(rel).strip(b"/")
        marks = self.marks.setdefault(rel, set())
        if self._conflicts(marks, mark):
            raise ValueError("conflicting opaque marks on %r" % rel)
        marks.add(mark)

    def can_mark(self, rel, mark):
        return not self._conflicts(self.marks.get(_b(rel).strip(b"/"), set()),
                                   mark)

    def whiteout(self, rel, fmt="chr", mark=True):
        rel = self.parents(rel)
        parent, _, name = rel.rpartition(b"/")
        if fmt == "chr":
            os.mknod(self.p(rel), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        elif fmt == "oci":
            self.file((parent + b"/" if parent else b"") + b".wh." + name)
        elif fmt in ("xt", "xu"):
            ns = b"trusted" if fmt == "xt" else b"user"
            if mark:
                self._mark(parent, "x:" + ns.decode())
            else:
                self._mark(parent, "nox")
            self.file(rel)
            self.xattr(rel, ns + b".overlay.whiteout", b"y")
            if mark:
                os.setxattr(self.p(parent), ns + b".overlay.opaque", b"x")
        else:
            raise ValueError(fmt)

    def opaque(self, rel, fmt="t"):
        self.dir(rel)
        rel = _b(rel).strip(b"/")
        if fmt in ("t", "u"):
            ns = b"trusted" if fmt == "t" else b"user"
            self._mark(rel, "y:" + ns.decode())
            self.xattr(rel, ns + b".overlay.opaque", b"y")
        elif fmt == "oci":
            self._mark(rel, "oci")
            self.file(rel + b"/.wh..wh..opq")
        else:
            raise ValueError(fmt)


class Stack:
    """An ordered list of layers (top-most first).

    Digest-named layers ("sha": <digest>, "sha-diff": <digest>/diff) are
    built under a temporary name and renamed when their paths are first
    asked for: the digest is the sha256 of the layer's canonical dump
    (names, types, modes, owners, contents, xattrs, links; not times) and
    its position, so a digest never stands for two different contents and
    a seeded stack gets the same digests in every run, as in a real store
    (layerfs keys its index cache by digest)."""

    def __init__(self, ctx, n, naming="plain", base=None):
        self.base = base or ctx.newdir("layers")
        self.naming = naming
        self.sealed = naming not in ("sha", "sha-diff")
        self.layers = []
        for i in range(n):
            self.layers.append(Layer(self._name(i, naming)))
        ctx.on_cleanup(self.close)

    def seal(self):
        """Rename digest-named layers to the digest of their content."""
        from tree import dump_tree
        if self.sealed:
            return
        self.sealed = True
        for i, layer in enumerate(self.layers):
            top = os.path.join(self.base, "pending-%04d" % i)
            d = dump_tree(layer.root, check_inodes=False)
            content = sorted((rel, sorted((k, v) for k, v in e.items()
                                          if k not in ("mtime", "blocks")))
                             for rel, e in d.entries.items())
            digest = hashlib.sha256(b"%d\n%r" % (i, content)).hexdigest()
            os.rename(top, os.path.join(self.base, digest))
            layer.root = os.fsencode(os.path.join(self.base, digest)) + (
                b"/diff" if self.naming == "sha-diff" else b"")

    def _name(self, i, naming):
        if naming in ("sha", "sha-diff"):
            # renamed to <digest> by seal()
            name = "pending-%04d" % i + ("/diff" if naming == "sha-diff"
                                          else "")
        elif naming == "plain":
            name = "L%04d" % i
        elif naming == "short":         # kernel mounts with relative names
            name = "%d" % i
        elif naming == "colon":      # colons inside, leading, trailing, doubled
            name = ("layer:%d:x", ":lead%d", "trail%d:", "a::b%d",
                    "sp ace:%d")[i % 5] % i
        else:
            raise ValueError(naming)
        return os.path.join(self.base, name)

    @property
    def paths(self):
        self.seal()
        return [os.fsdecode(l.root) for l in self.layers]

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def close(self):
        for l in self.layers:
            l.close()


def _tok(t):
    return codecs.escape_decode(t.encode())[0]


def apply_spec(layer, lines, index):
    for line in lines:
        toks = line.split()
        if not toks or toks[0].startswith("#"):
            continue
        op, args = toks[0], [_tok(t) for t in toks[1:]]
        if op == "d":
            layer.dir(args[0], int(args[1], 8) if len(args) > 1 else 0o755)
        elif op == "f":
            data = args[1] if len(args) > 1 else args[0] + b"@%d" % index
            layer.file(args[0], data,
                       int(args[2], 8) if len(args) > 2 else 0o644)
        elif op == "l":
            layer.symlink(args[0], args[1])
        elif op == "h":
            layer.hardlink(args[0], args[1])
        elif op in ("c", "b"):
            layer.node(args[0], op, int(args[1]), int(args[2]))
        elif op in ("p", "s"):
            layer.node(args[0], op)
        elif op == "wh":
            layer.whiteout(args[0], "chr")
        elif op == "wh.oci":
            layer.whiteout(args[0], "oci")
        elif op in ("wh.xt", "wh.xu"):
            layer.whiteout(args[0], op[3:])
        elif op in ("wh.xt.nomark", "wh.xu.nomark"):
            layer.whiteout(args[0], op[3:5], mark=False)
        elif op == "opq":
            layer.opaque(args[0], "t")
        elif op == "opq.u":
            layer.opaque(args[0], "u")
        elif op == "opq.oci":
            layer.opaque(args[0], "oci")
        elif op == "x":
            layer.xattr(args[0], args[1], args[2])
        elif op == "o":
            layer.chown(args[0], int(args[1]), int(args[2]))
        else:
            raise ValueError("bad spec op %r" % op)


def build(ctx, spec, naming="plain"):
    """Build a Stack from a spec text (layers separated by '--')."""
    chunks = [[]]
    for line in spec.strip("\n").split("\n"):
        if line.strip() == "--":
            chunks.append([])
        else:
            chunks[-1].append(line)
    stack = Stack(ctx, len(chunks), naming)
    for i, lines in enumerate(chunks):
        apply_spec(stack[i], lines, i)
    return stack


# ---------------------------------------------------------------- random

ALL_WHITEOUTS = ("chr", "oci", "xt", "xu")
ALL_OPAQUES = ("t", "u", "oci")
KERNEL_WHITEOUTS = ("chr", "xt")
KERNEL_OPAQUES = ("t",)
# a namespace of awkward names: spaces, colons, newlines, non-UTF-8, 255 bytes
ODD_NAMES = (b"a", b"b", b"sp ace", b"co:lon", b"new\nline", b"\xff\xfe",
             b"N" * 255, b"-", b"\\")


def random_stack(ctx, rng, nlayers, ops=(2, 14), whiteouts=ALL_WHITEOUTS,
                 opaques=ALL_OPAQUES, names=b"abcde", depth=3,
                 naming="plain", specials=True, stack=None):
    """A random stack over a small namespace, so that names collide across
    layers often (files over dirs, dirs over files, whiteouts, opaques).
    Returns the Stack."""
    stack = stack or Stack(ctx, nlayers, naming)
    for i, layer in enumerate(stack.layers):
        _random_layer(layer, rng, i, rng.randint(*ops), whiteouts, opaques,
                      names, depth, specials)
    return stack


def _random_layer(layer, rng, idx, nops, whiteouts, opaques, names, depth,
                  specials):
    kinds = {}          # rel -> 'dir' | 'file' | 'other' within this layer

    pool = [bytes([c]) for c in names] if isinstance(names, bytes) \
        else list(names)

    def pick_path():
        n = rng.randint(1, depth)
        return b"/".join(rng.choice(pool) for _ in range(n))

    def can_create(rel):
        parts = rel.split(b"/")
        for k in range(1, len(parts)):
            if kinds.get(b"/".join(parts[:k]), "dir") != "dir":
                return False
        return rel not in kinds and \
            not any(p.startswith(rel + b"/") for p in kinds)

    def created(rel, kind):
        parts = rel.split(b"/")
        for k in range(1, len(parts)):
            kinds[b"/".join(parts[:k])] = "dir"
        kinds[rel] = kind

    ops = ["file"] * 6 + ["dir"] * 3 + ["symlink"] * 2 + ["hardlink"] + \
        ["whiteout"] * 4 + ["opaque"] * 2 + ["xattr"] * 2 + ["chown"]
    if specials:
        ops += ["special"]
    if "oci" in whiteouts:
        ops += ["self-whiteout", "reserved"]
    if {"xt", "xu"} & set(whiteouts):
        ops += ["unmarked-xattr"]
    if rng.random() < 0.15:             # opaque layer root: ignored
        fmt = rng.choice(opaques)
        layer.opaque(b"", fmt)
        if fmt == "oci":
            kinds[b".wh..wh..opq"] = "other"
    for _ in range(nops):
        op = rng.choice(ops)
        rel = pick_path()
        if op == "self-whiteout":
            # an OCI whiteout next to an entry of the same name
            cands = [p for p, k in kinds.items() if k in ("file", "dir")
                     and len(p.rpartition(b"/")[2]) <= 251]
            if not cands:
                continue
            p = rng.choice(sorted(cands))
            parent, _, name = p.rpartition(b"/")
            wh = (parent + b"/" if parent else b"") + b".wh." + name
            if wh not in kinds:
                layer.file(wh)
                kinds[wh] = "other"
            continue
        if op == "reserved":
            # .wh. names that are no whiteouts: never shown either
            parent = rel.rpartition(b"/")[0]
            for name in (b".wh..wh.plnk/1234.5678", b".wh."):
                r = (parent + b"/" if parent else b"") + name
                if can_create(r):
                    layer.file(r, b"reserved")
                    created(r, "other")
            continue
        if op == "unmarked-xattr":
            fmt = rng.choice([f for f in whiteouts if f in ("xt", "xu")])
            parent = rel.rpartition(b"/")[0]
            if can_create(rel) and layer.can_mark(parent, "nox"):
                layer.whiteout(rel, fmt, mark=False)
                created(rel, "other")
            continue
        if op in ("xattr", "chown"):
            if not kinds:
                continue
            rel = rng.choice(sorted(kinds))
            if kinds[rel] not in ("dir", "file"):
                continue
            if op == "xattr":
                layer.xattr(rel, b"user.k%d" % rng.randint(0, 2),
                            bytes(rng.randint(0, 255) for _ in range(
                                rng.randint(0, 40))))
            else:
                layer.chown(rel, rng.choice((0, 1000, 65534)),
                            rng.choice((0, 100, 65534)))
            continue
        if not can_create(rel):
            continue
        if op == "file":
            size = rng.choice((0, 1, 100, 4096, 5000, 70000))
            data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * \
                (size // 64 + 1)
            layer.file(rel, data[:size] or b"", rng.choice((0o644, 0o600,
                                                           0o755, 0o4755)))
            created(rel, "file")
        elif op == "dir":
            layer.dir(rel, rng.choice((0o755, 0o700, 0o1777)))
            created(rel, "dir")
        elif op == "symlink":
            layer.symlink(rel, rng.choice((b"a", b"../b/c", b"/etc/passwd",
                                           b"nowhere", rel.split(b"/")[-1])))
            created(rel, "other")
        elif op == "hardlink":
            files = [p for p, k in kinds.items() if k == "file"]
            if not files:
                continue
            layer.hardlink(rel, rng.choice(sorted(files)))
            created(rel, "file")
        elif op == "whiteout":
            fmt = rng.choice(whiteouts)
            parent = rel.rpartition(b"/")[0]
            if fmt == "oci" and len(rel.rpartition(b"/")[2]) > 251:
                continue
            if fmt == "oci":
                wh = (parent + b"/" if parent else b"") + b".wh." + \
                    rel.rpartition(b"/")[2]
                if wh in kinds:
                    continue
                kinds[wh] = "other"
            if fmt in ("xt", "xu") and not layer.can_mark(
                    parent, "x:" + ("trusted" if fmt == "xt" else "user")):
                continue
            layer.whiteout(rel, fmt)
            created(rel, "other")
        elif op == "opaque":
            fmt = rng.choice(opaques)
            layer.opaque(rel, fmt)
            created(rel, "dir")
            if fmt == "oci":
                kinds[rel + b"/.wh..wh..opq"] = "other"
            if rng.random() < 0.7:      # give it content
                layer.file(rel + b"/in%d" % idx, b"opaque content %d" % idx)
                kinds[rel + b"/in%d" % idx] = "file"
        elif op == "special":
            kind = rng.choice("cbps")
            if kind in "cb":
                layer.node(rel, kind, rng.choice((1, 7, 10)),
                           rng.randint(1, 9))
            else:
                layer.node(rel, kind)
            created(rel, "other")


def make_kernel_compatible(stack):
    """Remove entries the kernel shows inconsistently (listed by readdir but
    failing lookup), none of which is needed to hide anything:
    * whiteouts in the bottom layer;
    * whiteouts inside a directory only one layer contributes to (the
      kernel reads such a directory directly and lists the whiteout);
    * zero-size files with trusted.overlay.whiteout in a directory not
      marked opaque=x (kernel lookup treats them as whiteouts anyway)."""
    from tree import Reference
    n = len(stack)
    # unmarked ones first: removing them changes what is visible below
    for layer in stack.layers:
        for rel, kind in _whiteouts_in(layer):
            if kind == "xattr" and not _marked_x(layer,
                                                 rel.rpartition(b"/")[0]):
                os.unlink(layer.p(rel))
    while True:
        doomed = []
        with Reference(stack.paths) as ref:
            for i, layer in enumerate(stack.layers):
                for rel, kind in _whiteouts_in(layer):
                    parent = rel.rpartition(b"/")[0]
                    prov = ref.resolve(b"/" + parent if parent else b"")
                    contrib = [j for j, _ in prov]
                    if i == n - 1 or (i in contrib and len(contrib) == 1):
                        doomed.append((layer, rel))
        if not doomed:
            return
        for layer, rel in doomed:
            os.unlink(layer.p(rel))


def _marked_x(layer, rel):
    try:
        return os.getxattr(layer.p(rel), b"trusted.overlay.opaque",
                           follow_symlinks=False) == b"x"
    except OSError:
        return False


def _whiteouts_in(layer):
    """(rel, "chr" | "xattr") for each whiteout-like entry in a layer: a
    char device 0/0, or a zero-size regular file carrying
    trusted.overlay.whiteout."""
    out = []
    stack = [b""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(layer.p(rel)):
            crel = rel + b"/" + name if rel else name
            st = os.lstat(layer.p(crel))
            if stat.S_ISDIR(st.st_mode):
                stack.append(crel)
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out.append((crel, "chr"))
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0 and \
                    b"trusted.overlay.whiteout" in (
                        os.fsencode(x) for x in os.listxattr(layer.p(crel))):
                out.append((crel, "xattr"))
    return out
