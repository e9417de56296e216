"""Layer stacks for the layerfs benchmarks: generation, caching, and the
merged view every system must show.

A stack looks like a container image: a large bottom layer (the base image,
`bottom_files` files spread over hot directories such as usr/bin and etc,
package directories and a deep tree, plus one big file of real data) and
N-1 thin upper layers, each a "RUN apt-get install" of `layer_ops` changes:
new files, overrides of files below, whiteouts (character device 0/0) and,
every few layers, an opaque directory (trusted.overlay.opaque=y) or a
whiteout of a whole directory.  Every layer carries the hot directories, as
real package layers do, so a lookup in a hot directory must consult every
layer of the stack.

Layer i's content depends only on (seed, i) and on the layers below it, so
the 128-layer stack is the 500-layer stack cut at layer 127, and the bottom
layer is the same in every stack.  Layer directories are named by the
sha256 of a manifest of their content (layerfs identifies layers that way);
`short/<i>` symlinks give the kernel the short names its one-page mount data
needs (i = 0 is the bottom layer).

Two independent views of the result are computed and must agree: the
generator's running model of the merged tree, and `resolve()`, which reads
the layer directories back from disk and applies the overlay rules.  The
workload path lists are taken from the latter.

On disk, under DIR (default /var/tmp/layerfs-bench):
  big/blob-<MiB>M.bin           the big file, random data, made once
  stacks/<key>/layers/<sha256>/ one directory per layer
  stacks/<key>/short/<i>        -> ../layers/<sha256>, i = 0 is the bottom
  stacks/<key>/empty/           an empty layer (kernel overlayfs needs 2)
  stacks/<key>/lists/*.txt      workload paths, relative to the mount root
  stacks/<key>/meta.json        layer order and counts
A stack directory exists only once complete (built beside it, then renamed),
so an interrupted generation is redone and a finished one is reused.
"""

import hashlib
import json
import os
import random
import shutil
import stat as st

GEN_VERSION = 1          # bump when the shape of generated stacks changes
BIG_PATH = "big/blob.bin"
HOT_DIRS = ("etc", "usr/bin", "usr/sbin", "usr/lib", "var/lib/dpkg/info")
EXTS = ("", ".so", ".conf", ".txt", ".h", ".py", ".json")
OPAQUE_XATTR = "trusted.overlay.opaque"


class Shape:
    """What a stack is made of; its key names the cache directory."""

    def __init__(self, layers, bottom_files, layer_ops, big_mib, list_len, seed=1):
        self.layers = layers
        self.bottom_files = bottom_files
        self.layer_ops = layer_ops
        self.big_mib = big_mib
        self.list_len = list_len
        self.seed = seed

    @property
    def key(self):
        return (f"g{GEN_VERSION}-L{self.layers}-b{self.bottom_files}-k{self.layer_ops}"
                f"-big{self.big_mib}M-n{self.list_len}-s{self.seed}")


class Stack:
    """A generated stack on disk, as read back from its meta.json."""

    def __init__(self, path):
        self.path = path
        with open(os.path.join(path, "meta.json")) as f:
            self.meta = json.load(f)
        self.n_layers = len(self.meta["layers"])

    def layer_dirs_top_first(self):
        """Absolute sha256-named layer directories, top layer first."""
        return [os.path.join(self.path, "layers", h) for h in reversed(self.meta["layers"])]

    def short_names_top_first(self):
        """Names relative to short_dir(), top layer first."""
        return [str(i) for i in reversed(range(self.n_layers))]

    def short_dir(self):
        return os.path.join(self.path, "short")

    def list_file(self, name):
        return os.path.join(self.path, "lists", name + ".txt")


# ---------------------------------------------------------------- content

def _content(tag, size):
    """Deterministic file content of SIZE bytes that differs per TAG."""
    line = (tag + "\n").encode()
    return (line * (size // len(line) + 1))[:size]


def _file_size(rng):
    return min(65536, int(rng.lognormvariate(7.5, 1.2)))


def _remove_stale(parent, prefix):
    """Removes what an interrupted earlier generation left in PARENT."""
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        if name.startswith(prefix):
            p = os.path.join(parent, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)


def _make_big(big_dir, mib):
    """The big file: MIB MiB of random bytes, written once and reused."""
    path = os.path.join(big_dir, f"blob-{mib}M.bin")
    if os.path.exists(path):
        return path
    os.makedirs(big_dir, exist_ok=True)
    _remove_stale(big_dir, os.path.basename(path) + ".tmp")
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    return path


class _LayerWriter:
    """Writes one layer under a temporary name and records a manifest."""

    def __init__(self, tmpdir):
        self.root = tmpdir
        self.manifest = []
        self.touched = set()        # paths given an entry in this layer
        os.makedirs(tmpdir)

    def _abs(self, rel):
        return os.path.join(self.root, rel)

    def mkdir(self, rel, opaque=False):
        os.makedirs(self._abs(rel), exist_ok=True)
        if opaque:
            os.setxattr(self._abs(rel), OPAQUE_XATTR, b"y")
            self.manifest.append(f"O {rel}")
            self.touched.add(rel)

    def file(self, rel, data):
        self.mkdir(os.path.dirname(rel))
        with open(self._abs(rel), "wb") as f:
            f.write(data)
        self.manifest.append(f"F {rel} {hashlib.sha256(data).hexdigest()}")
        self.touched.add(rel)

    def symlink(self, rel, target):
        self.mkdir(os.path.dirname(rel))
        os.symlink(target, self._abs(rel))
        self.manifest.append(f"L {rel} {target}")
        self.touched.add(rel)

    def whiteout(self, rel):
        self.mkdir(os.path.dirname(rel))
        os.mknod(self._abs(rel), 0o600 | st.S_IFCHR, os.makedev(0, 0))
        self.manifest.append(f"W {rel}")
        self.touched.add(rel)

    def hardlink(self, rel, src, tag):
        self.mkdir(os.path.dirname(rel))
        try:
            os.link(src, self._abs(rel))
        except OSError:
            shutil.copyfile(src, self._abs(rel))
        self.manifest.append(f"B {rel} {tag}")
        self.touched.add(rel)

    def finish(self, layers_dir):
        """Renames the layer to the sha256 of its manifest; returns the digest."""
        for d in HOT_DIRS:
            os.makedirs(self._abs(d), exist_ok=True)
        self.manifest.sort()
        digest = hashlib.sha256("\n".join(self.manifest).encode()).hexdigest()
        os.rename(self.root, os.path.join(layers_dir, digest))
        return digest


# ---------------------------------------------------------------- generation

class _Model:
    """The generator's running view of the merged tree: path -> 'd'|'f'|'l'."""

    def __init__(self):
        self.kind = {}

    def add(self, rel, kind):
        parts = rel.split("/")
        for i in range(1, len(parts)):
            self.kind["/".join(parts[:i])] = "d"
        self.kind[rel] = kind

    def remove(self, rel):
        kind = self.kind.pop(rel)
        if kind == "d":
            prefix = rel + "/"
            for p in [p for p in self.kind if p.startswith(prefix)]:
                del self.kind[p]

    def sorted_of(self, kinds):
        return sorted(p for p, k in self.kind.items() if k in kinds)


def _bottom_dirs(n_files):
    n_pkgs = max(8, n_files // 60)
    pkg = []
    for p in range(n_pkgs):
        pkg += [f"usr/lib/pkg{p:03d}", f"usr/share/doc/pkg{p:03d}",
                f"usr/include/pkg{p:03d}/sys"]
    deep = [f"opt/app/m{a}/s{b}/k{c}" for a in range(4) for b in range(4) for c in range(3)]
    return pkg, deep


def _write_bottom(w, model, shape, rng, big):
    pkg, deep = _bottom_dirs(shape.bottom_files)
    for d in HOT_DIRS:
        model.add(d, "d")
    for i in range(shape.bottom_files):
        r = rng.random()
        d = rng.choice(HOT_DIRS) if r < 0.40 else rng.choice(pkg) if r < 0.85 else rng.choice(deep)
        rel = f"{d}/f{i:05d}{rng.choice(EXTS)}"
        if rng.random() < 0.05:
            w.symlink(rel, f"f{rng.randrange(shape.bottom_files):05d}")
            model.add(rel, "l")
        else:
            w.file(rel, _content(f"0:{rel}", _file_size(rng)))
            model.add(rel, "f")
    w.hardlink(BIG_PATH, big, f"{shape.big_mib}M")
    model.add(BIG_PATH, "f")


def _is_protected(rel):
    """Paths the upper layers leave alone: the big file and the hot dirs."""
    return rel == BIG_PATH or rel == "big" or any(
        rel == h or h.startswith(rel + "/") for h in HOT_DIRS)


def _write_upper(w, model, shape, rng, i):
    # Directory-level changes first, so file changes below cannot collide.
    all_dirs = model.sorted_of("d")
    parents = {d.rsplit("/", 1)[0] for d in all_dirs}
    dirs = [d for d in all_dirs
            if d not in parents and d.count("/") >= 2 and not _is_protected(d)]
    if dirs and i % 10 == 5:
        d = rng.choice(dirs)
        model.remove(d)
        w.mkdir(d, opaque=True)
        model.add(d, "d")
        for j in range(rng.randint(1, 3)):
            rel = f"{d}/o{i:04d}_{j}.txt"
            w.file(rel, _content(f"{i}:{rel}", _file_size(rng)))
            model.add(rel, "f")
    elif dirs and i % 20 == 10:
        d = rng.choice(dirs)
        model.remove(d)
        w.whiteout(d)

    rel = f"var/lib/dpkg/info/layer{i:04d}.list"
    w.file(rel, _content(f"{i}:{rel}", _file_size(rng)))
    model.add(rel, "f")

    files = [p for p in model.sorted_of("f") if not _is_protected(p)]
    nondirs = [p for p in model.sorted_of("fl") if not _is_protected(p)]
    dirs = [d for d in model.sorted_of("d") if not _is_protected(d) or d in HOT_DIRS]
    for j in range(shape.layer_ops - 1):
        r = rng.random()
        if r < 0.6:
            q = rng.random()
            d = (rng.choice(HOT_DIRS) if q < 0.5 else
                 rng.choice(dirs) if q < 0.85 else f"usr/lib/l{i:04d}")
            rel = f"{d}/n{i:04d}_{j:03d}{rng.choice(EXTS)}"
            w.file(rel, _content(f"{i}:{rel}", _file_size(rng)))
            model.add(rel, "f")
            continue
        pool = files if r < 0.85 else nondirs
        rel = rng.choice(pool) if pool else None
        if rel is None or rel in w.touched or rel not in model.kind:
            continue
        if r < 0.85:
            w.file(rel, _content(f"{i}:{rel}", _file_size(rng)))
        else:
            w.whiteout(rel)
            model.remove(rel)


def generate(root, shape, log=print):
    """Returns the Stack for SHAPE under ROOT, generating it if not cached."""
    path = os.path.join(root, "stacks", shape.key)
    if os.path.exists(os.path.join(path, "meta.json")):
        return Stack(path)
    log(f"generating {shape.layers}-layer stack in {path}")
    big = _make_big(os.path.join(root, "big"), shape.big_mib)
    _remove_stale(os.path.dirname(path), shape.key + ".tmp")
    tmp = path + f".tmp{os.getpid()}"
    layers_dir = os.path.join(tmp, "layers")
    os.makedirs(layers_dir)
    os.makedirs(os.path.join(tmp, "short"))
    os.makedirs(os.path.join(tmp, "empty"))

    model = _Model()
    digests = []
    bottom_files = []
    for i in range(shape.layers):
        rng = random.Random(f"{shape.seed}/{shape.bottom_files}/{shape.layer_ops}/{i}")
        w = _LayerWriter(os.path.join(tmp, f"new{i}"))
        if i == 0:
            _write_bottom(w, model, shape, rng, big)
            bottom_files = [p for p in model.sorted_of("f") if p != BIG_PATH]
        else:
            _write_upper(w, model, shape, rng, i)
        digests.append(w.finish(layers_dir))
        os.symlink(f"../layers/{digests[-1]}", os.path.join(tmp, "short", str(i)))

    layer_paths = [os.path.join(layers_dir, d) for d in reversed(digests)]
    merged, upper_paths = resolve(layer_paths)
    want = {p: k for p, (k, _) in merged.items()}
    if want != model.kind:
        diff = sorted(set(want.items()) ^ set(model.kind.items()))[:10]
        raise RuntimeError(f"generator bug: model and on-disk resolution differ: {diff}")
    counts = _write_lists(tmp, shape, merged, upper_paths, bottom_files)
    meta = {"shape": shape.key, "layers": digests, **counts}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    os.sync()
    os.rename(tmp, path)
    return Stack(path)


# ---------------------------------------------------------------- resolution

def _is_whiteout(s):
    return st.S_ISCHR(s.st_mode) and s.st_rdev == 0


def _is_opaque(path):
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def resolve(layers_top_first):
    """Applies the overlay rules to the layer directories on disk.

    Returns (merged, upper_paths): merged maps each visible path to
    (kind, index of the providing layer, 0 = top); upper_paths is every path
    with any entry (file, dir, whiteout) in a layer above the bottom one.
    """
    merged = {}
    upper_paths = set()
    n = len(layers_top_first)

    def walk(rel, sources):
        # sources: [(layer index, absolute dir)] contributing to REL, top first
        decided = {}    # name -> None (hidden/non-dir, decided) or list of sources
        open_dirs = {}  # name -> True while lower layers may still contribute
        for idx, d in sources:
            for e in os.scandir(d):
                s = e.stat(follow_symlinks=False)
                child = f"{rel}/{e.name}" if rel else e.name
                if idx < n - 1:
                    upper_paths.add(child)
                if e.name in decided:
                    if open_dirs.get(e.name):
                        if st.S_ISDIR(s.st_mode):
                            decided[e.name].append((idx, e.path))
                            if _is_opaque(e.path):
                                open_dirs[e.name] = False
                        else:
                            open_dirs[e.name] = False
                    continue
                if _is_whiteout(s):
                    decided[e.name] = None
                elif st.S_ISDIR(s.st_mode):
                    decided[e.name] = [(idx, e.path)]
                    open_dirs[e.name] = not _is_opaque(e.path)
                    merged[child] = ("d", idx)
                else:
                    decided[e.name] = None
                    merged[child] = ("l" if st.S_ISLNK(s.st_mode) else "f", idx)
        for name, subs in decided.items():
            if subs:
                walk(f"{rel}/{name}" if rel else name, subs)

    walk("", list(enumerate(layers_top_first)))
    return merged, upper_paths


# ---------------------------------------------------------------- path lists

def _tree_order(paths):
    return sorted(paths, key=lambda p: p.split("/"))


def _write_lists(tmp, shape, merged, upper_paths, bottom_files):
    """Writes the workload path lists; returns counts for meta.json.

    The bottom-only list is the same seeded permutation of the bottom
    layer's files in every stack, filtered to those no upper layer touches,
    so stacks of different heights mostly time the same paths.
    """
    n = shape.list_len
    bottom_idx = shape.layers - 1
    regular = sorted(p for p, (k, _) in merged.items() if k == "f" and p != BIG_PATH)
    dirs = sorted(p for p, (k, _) in merged.items() if k == "d")

    order = list(bottom_files)
    random.Random(f"{shape.seed}/bottom").shuffle(order)
    bottom_only = [p for p in order
                   if p in merged and merged[p][1] == bottom_idx and p not in upper_paths]

    rng = random.Random(f"{shape.seed}/negative")
    negative = []
    for i in range(n):
        d = rng.choice(HOT_DIRS) if i % 2 == 0 else rng.choice(dirs)
        negative.append(f"{d}/nx-{i:05d}.absent")

    lists = {
        "all": _tree_order(merged),
        "bottom": bottom_only[:n],
        "negative": negative,
        "small": random.Random(f"{shape.seed}/small").sample(regular, min(n, len(regular))),
    }
    os.makedirs(os.path.join(tmp, "lists"))
    for name, paths in lists.items():
        with open(os.path.join(tmp, "lists", name + ".txt"), "w") as f:
            f.write("".join(p + "\n" for p in paths))
    return {
        "entries": len(merged),
        "dirs": len(dirs),
        "regular_files": len(regular) + 1,
        "bottom_only_files": len(bottom_only),
        "big_path": BIG_PATH,
        "list_sizes": {k: len(v) for k, v in lists.items()},
    }
