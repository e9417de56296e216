"""Container image builders for the layerctl tests: layer tars made with
tarfile (deterministic: fixed mtimes, owner 0, sorted entries), Docker
`docker save` archives and OCI image layouts (each as a directory or a tar),
plain, gzip or zstd layers, and the expected merged root file system
computed directly from the layer specs.

Every entry has an owner (default 0:0) and an mtime that depends on its
path (mtime_of); files may carry xattrs (PAX SCHILY.xattr records).

A layer spec is a dict path -> entry:
    b"..." / "..."       regular file with that content, mode 0644
    File(data, mode)     regular file
    Dir(mode)            directory
    Symlink(target)      symbolic link
    Hardlink(existing)   hard link to another path of the same layer
    Fifo(), CharDev(major, minor)
    Whiteout()           OCI whiteout: written as <dir>/.wh.<name>
    Opaque()             the path is an opaque directory: written as the
                         directory plus <path>/.wh..wh..opq
Missing parent directories are added (mode 0755).  Layer.raw() takes an
explicit, ordered entry list instead (for malformed layers).
"""

import copy
import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import zlib

MTIME = 1700000000          # every tar entry's mtime
WH = ".wh."
OPQ = ".wh..wh..opq"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "plain": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids):
    """Docker's chain ids (hex) for a list of diff ids (hex), bottom first:
    chain(0) = diff(0);
    chain(n) = sha256("sha256:<chain n-1> sha256:<diff n>")."""
    out = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append(sha256(("sha256:%s sha256:%s" % (out[-1], d)).encode()))
    return out


# ---------------------------------------------------------------- entries

class Entry:
    """One tar entry.  kind: file, dir, symlink, hardlink, whiteout, opaque
    (the last two are regular empty files in the tar), fifo, chr."""

    def __init__(self, kind, mode=0o644, data=b"", target=None, uid=0,
                 gid=0, xattrs=None, dev=(0, 0)):
        self.kind = kind
        self.mode = mode
        self.data = data if isinstance(data, bytes) else data.encode()
        self.target = target
        self.uid, self.gid = uid, gid
        self.xattrs = dict(xattrs or {})
        self.dev = dev


def File(data=b"", mode=0o644, uid=0, gid=0, xattrs=None):
    return Entry("file", mode, data, uid=uid, gid=gid, xattrs=xattrs)


def Dir(mode=0o755, uid=0, gid=0):
    return Entry("dir", mode, uid=uid, gid=gid)


def Fifo(mode=0o600):
    return Entry("fifo", mode)


def CharDev(major, minor, mode=0o620):
    return Entry("chr", mode, dev=(major, minor))


def Symlink(target, uid=0, gid=0):
    return Entry("symlink", 0o777, target=target, uid=uid, gid=gid)


def Hardlink(existing):
    return Entry("hardlink", 0o644, target=existing)


def Whiteout():
    return Entry("whiteout")


def Opaque(mode=0o755):
    return Entry("opaque", mode)


def _sort_key(path):
    return path.split("/")


def normalize(spec):
    """Spec dict -> sorted list of (tar path, Entry), parents added,
    whiteouts and opaque markers turned into their .wh. files."""
    out = {}

    def add_parents(path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in out:
                out[p] = Dir()

    for path, e in spec.items():
        path = path.strip("/")
        if not isinstance(e, Entry):
            e = File(e)
        add_parents(path)
        if e.kind == "whiteout":
            d, name = posixpath.split(path)
            wpath = posixpath.join(d, WH + name)
            out[wpath] = Entry("whiteout", 0o644)
        elif e.kind == "opaque":
            out[path] = Dir(e.mode)
            out[path + "/" + OPQ] = Entry("opaque", 0o644)
        else:
            out[path] = e
    # sorted, parents first; hard links after everything else so that
    # their targets are always extracted first
    items = sorted(out.items(), key=lambda kv: _sort_key(kv[0]))
    return [kv for kv in items if kv[1].kind != "hardlink"] + \
        [kv for kv in items if kv[1].kind == "hardlink"]


def tar_bytes(entries, fmt=tarfile.PAX_FORMAT, prefix=""):
    """A deterministic tar of (path, Entry) in the given order.  fmt: a
    tarfile format (PAX, GNU, USTAR); prefix: put before every name and
    hard link target (e.g. "./", as `tar -C dir -c .` writes them, with
    a "./" entry for the root first)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        if prefix:
            ti = tarfile.TarInfo(prefix)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
            ti.uname = ti.gname = "root"
            tf.addfile(ti)
        for path, e in entries:
            ti = tarfile.TarInfo(prefix + path)
            ti.mtime = mtime_of(path)
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname = ti.gname = "root" if e.uid == 0 else ""
            ti.mode = e.mode
            if e.xattrs:
                ti.pax_headers = {"SCHILY.xattr." + k: v
                                  for k, v in sorted(e.xattrs.items())}
            data = set_type(ti, e, prefix)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def set_type(ti, e, prefix=""):
    """Give TarInfo ti the type (and link, device, size) of Entry e;
    returns the content to add, or None.  prefix goes before a hard
    link's target, as before every name."""
    if e.kind == "fifo":
        ti.type = tarfile.FIFOTYPE
    elif e.kind == "chr":
        ti.type = tarfile.CHRTYPE
        ti.devmajor, ti.devminor = e.dev
    elif e.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif e.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = e.target
    elif e.kind == "hardlink":
        ti.type = tarfile.LNKTYPE
        ti.linkname = prefix + e.target
    else:
        ti.type = tarfile.REGTYPE
        ti.size = len(e.data)
        return e.data
    return None


def mtime_of(path):
    """Each entry's mtime: fixed, but different from path to path so that
    a lost or late-set time shows."""
    return MTIME + zlib.crc32(path.encode()) % 1000000


def have_zstd():
    return shutil.which("zstd") is not None


def compress(data, comp):
    if comp == "plain":
        return data
    if comp == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if comp == "zstd":
        r = subprocess.run(["zstd", "-q", "-c", "-3"], input=data,
                           capture_output=True, check=True)
        return r.stdout
    raise ValueError(comp)


class Layer:
    """One layer: its entries, its tar and its diff id.  fmt and prefix
    only change how the tar is written, never what it holds."""

    def __init__(self, spec=None, raw=None, fmt=tarfile.PAX_FORMAT,
                 prefix=""):
        if raw is not None:
            self.entries = [(p, e if isinstance(e, Entry) else File(e))
                            for p, e in raw]
        else:
            self.entries = normalize(spec)
        self.tar = tar_bytes(self.entries, fmt, prefix)
        self.diff_id = sha256(self.tar)

    @classmethod
    def from_raw(cls, raw):
        return cls(raw=raw)

    def resolved(self):
        """path -> Entry with hard links resolved to their target's data and
        mode (what the extracted layer directory holds).  Whiteout and
        opaque markers are empty regular files."""
        byname = dict(self.entries)
        out = {}
        for path, e in self.entries:
            if e.kind == "hardlink":
                t = byname[e.target]
                r = Entry("file", t.mode, t.data, uid=t.uid, gid=t.gid,
                          xattrs=t.xattrs)
                r.mtime = mtime_of(e.target)
            elif e.kind in ("whiteout", "opaque"):
                r = Entry("file", e.mode, b"")
                r.mtime = mtime_of(path)
            else:
                r = copy.copy(e)
                r.mtime = mtime_of(path)
            out[path] = r
        return out

    def n_regular(self):
        return sum(1 for _, e in self.entries
                   if e.kind in ("file", "hardlink", "whiteout", "opaque"))


# ---------------------------------------------------------------- reference

def _drop(state, path):
    state.pop(path, None)
    pre = path + "/"
    for k in [k for k in state if k.startswith(pre)]:
        del state[k]


def merge(layers):
    """Expected merged rootfs of layers (bottom first), following OCI
    whiteout semantics: <dir>/.wh.<x> removes x (and everything under it)
    from the lower layers; <dir>/.wh..wh..opq removes everything the lower
    layers have under <dir>.  Whiteouts apply to lower layers only, so
    they are applied before the layer's own entries.  A non-directory
    replaces whatever was at its path; a directory over a directory keeps
    the lower content and takes the upper mode.  Returns path -> Entry."""
    state = {}
    for layer in layers:
        ents = layer.resolved()
        for path, e in layer.entries:
            d, name = posixpath.split(path)
            if name == OPQ:
                pre = d + "/"
                for k in [k for k in state if k.startswith(pre)]:
                    del state[k]
            elif name.startswith(WH):
                _drop(state, posixpath.join(d, name[len(WH):]))
        for path, _ in layer.entries:
            e = ents[path]
            if posixpath.basename(path).startswith(WH):
                continue
            old = state.get(path)
            if e.kind == "dir":
                if old is None or old.kind != "dir":
                    _drop(state, path)
            else:
                _drop(state, path)
            state[path] = e
    return state


def expected_fields(entries):
    """path (bytes, b"/a/b") -> comparable fields, from path -> Entry (as
    returned by Layer.resolved() or merge())."""
    out = {}
    for path, e in entries.items():
        rel = b"/" + path.encode()
        f = {"type": e.kind, "uid": e.uid, "gid": e.gid,
             "mtime": e.mtime,
             "xattrs": tuple(sorted((k.encode(), v.encode())
                                    for k, v in e.xattrs.items()))}
        if e.kind == "symlink":
            t = e.target.encode()
            f.update(size=len(t), target=t)
        else:
            f["mode"] = "%04o" % e.mode
        if e.kind == "file":
            f.update(size=len(e.data), sha256=sha256(e.data))
        if e.kind == "chr":
            f["rdev"] = "%d:%d" % e.dev
        out[rel] = f
    return out


PRIVATE_XATTRS = (b"trusted.overlay.", b"user.overlay.", b"security.selinux")


def tree_fields(root):
    """The same fields read from a real tree (a mount or a layer dir),
    walked without following symlinks.  The root itself is left out."""
    out = {}
    root = os.fsencode(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(root + rel if rel else root):
            crel = rel + b"/" + name
            p = root + crel
            st = os.lstat(p)
            f = {"uid": st.st_uid, "gid": st.st_gid,
                 "mtime": int(st.st_mtime)}
            names = sorted(os.fsencode(x) for x in
                           os.listxattr(p, follow_symlinks=False))
            f["xattrs"] = tuple(
                (n, os.getxattr(p, n, follow_symlinks=False)) for n in names
                if not n.startswith(PRIVATE_XATTRS))
            if not stat.S_ISLNK(st.st_mode):
                f["mode"] = "%04o" % stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                f["type"] = "dir"
                stack.append(crel)
            elif stat.S_ISLNK(st.st_mode):
                f.update(type="symlink", size=st.st_size,
                         target=os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    data = fh.read()
                f.update(type="file", size=st.st_size, sha256=sha256(data))
                if len(data) != st.st_size:
                    f["bytes_read"] = len(data)
            elif stat.S_ISFIFO(st.st_mode):
                f["type"] = "fifo"
            elif stat.S_ISCHR(st.st_mode):
                f["type"] = "chr"
                f["rdev"] = "%d:%d" % (os.major(st.st_rdev),
                                       os.minor(st.st_rdev))
            else:
                f["type"] = "other %o" % stat.S_IFMT(st.st_mode)
            out[crel] = f
    return out


def diff_fields(got, want, limit=30):
    lines = []
    for rel in sorted(set(got) | set(want)):
        name = rel.decode(errors="backslashreplace")
        if rel not in got:
            lines.append("missing: %s (%s)" % (name, want[rel]["type"]))
        elif rel not in want:
            lines.append("unexpected: %s (%s)" % (name, got[rel]["type"]))
        elif got[rel] != want[rel]:
            for k in sorted(set(got[rel]) | set(want[rel])):
                if got[rel].get(k) != want[rel].get(k):
                    lines.append("%s: %s is %r, want %r" % (
                        name, k, got[rel].get(k), want[rel].get(k)))
    if len(lines) > limit:
        lines = lines[:limit] + ["... and %d more" % (len(lines) - limit)]
    return lines


# ---------------------------------------------------------------- images

class Image:
    """An image: layers (bottom first) and its config.  `diff_ids` may be
    given to write a config that lies about the layers."""

    def __init__(self, layers, tag, created="2024-03-01T12:00:00Z",
                 arch="amd64", os_name="linux", diff_ids=None):
        self.layers = list(layers)
        self.tag = tag
        self.created = created
        self.arch = arch
        self.os = os_name
        self.diff_ids = list(diff_ids) if diff_ids is not None else \
            [l.diff_id for l in self.layers]
        cfg = {
            "architecture": arch,
            "os": os_name,
            "created": created,
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers",
                       "diff_ids": ["sha256:" + d for d in self.diff_ids]},
            "history": [{"created": created, "created_by": "layer %d" % i}
                        for i in range(len(self.layers))],
        }
        self.config = json.dumps(cfg, sort_keys=True,
                                 separators=(",", ":")).encode()
        self.id = sha256(self.config)

    @property
    def chain_ids(self):
        return chain_ids([l.diff_id for l in self.layers])

    def merged(self):
        return merge(self.layers)

    # ------------------------------------------------ docker save

    def write_docker(self, dest):
        """Write a `docker save` directory.  Returns info: config file name,
        layer file names (relative to dest)."""
        os.makedirs(dest, exist_ok=True)
        cfg_name = self.id + ".json"
        _write(os.path.join(dest, cfg_name), self.config)
        names = []
        parent = ""
        for i, l in enumerate(self.layers):
            v1 = sha256(("v1 %s %d %s" % (parent, i, l.diff_id)).encode())
            d = os.path.join(dest, v1)
            os.makedirs(d, exist_ok=True)
            _write(os.path.join(d, "VERSION"), b"1.0")
            v1json = {"id": v1, "created": self.created}
            if parent:
                v1json["parent"] = parent
            _write(os.path.join(d, "json"),
                   json.dumps(v1json, sort_keys=True).encode())
            _write(os.path.join(d, "layer.tar"), l.tar)
            names.append(v1 + "/layer.tar")
            parent = v1
        manifest = [{"Config": cfg_name, "RepoTags": [self.tag],
                     "Layers": names}]
        _write(os.path.join(dest, "manifest.json"),
               json.dumps(manifest).encode())
        repo, _, tag = self.tag.rpartition(":")
        _write(os.path.join(dest, "repositories"),
               json.dumps({repo: {tag: parent}}).encode())
        return {"config": cfg_name, "layers": names}

    # ------------------------------------------------ OCI layout

    def write_oci(self, dest, comps="plain", ref_name=None):
        """Write an OCI image layout directory.  comps: one compression for
        every layer, or a list (one per layer).  ref_name: the index's
        ref.name annotation (default: the tag; False for none).  Returns
        info: manifest, config and layer blob digests (hex) and paths."""
        if isinstance(comps, str):
            comps = [comps] * len(self.layers)
        blobs = os.path.join(dest, "blobs", "sha256")
        os.makedirs(blobs, exist_ok=True)
        _write(os.path.join(dest, "oci-layout"),
               b'{"imageLayoutVersion":"1.0.0"}')

        def put(data):
            h = sha256(data)
            _write(os.path.join(blobs, h), data)
            return h

        layer_descs, layer_hex = [], []
        for l, c in zip(self.layers, comps):
            blob = compress(l.tar, c)
            h = put(blob)
            layer_hex.append(h)
            layer_descs.append({"mediaType": MT_LAYER[c],
                                "digest": "sha256:" + h, "size": len(blob)})
        cfg_hex = put(self.config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": "sha256:" + cfg_hex,
                       "size": len(self.config)},
            "layers": layer_descs}, sort_keys=True).encode()
        man_hex = put(manifest)
        desc = {"mediaType": MT_MANIFEST, "digest": "sha256:" + man_hex,
                "size": len(manifest),
                "platform": {"architecture": self.arch, "os": self.os}}
        if ref_name is None:
            ref_name = self.tag
        if ref_name:
            desc["annotations"] = {REF_NAME: ref_name}
        index = {"schemaVersion": 2, "mediaType": MT_INDEX,
                 "manifests": [desc]}
        _write(os.path.join(dest, "index.json"),
               json.dumps(index, sort_keys=True).encode())
        return {"manifest": man_hex, "config": cfg_hex, "layers": layer_hex,
                "blobs": blobs}


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def tar_dir(src, dest):
    """A deterministic tar file `dest` of the directory `src` (its content
    at the archive root, sorted, fixed mtimes)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        if rel != ".":
            entries.append((rel, Dir()))
        for n in sorted(filenames):
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                entries.append((os.path.normpath(os.path.join(rel, n)),
                                File(f.read())))
    entries.sort(key=lambda kv: _sort_key(kv[0]))
    _write(dest, tar_bytes(entries))
    return dest


# ---------------------------------------------------------------- random

def random_layers(rng, n, ops=(4, 24), names="abc", depth=3):
    """n random layer specs over a tiny namespace, so that names collide
    across layers: files over directories and back, symlinks, OCI
    whiteouts (also next to a same-named entry of their own layer) and
    opaque directories.  Never an opaque root."""
    layers = []
    for i in range(n):
        spec, kind_at = {}, {}      # kind_at: path -> "dir" / "leaf"
        for _ in range(rng.randint(*ops)):
            parts = [rng.choice(names) for _ in range(rng.randint(1, depth))]
            path = "/".join(parts)
            parents = ["/".join(parts[:k]) for k in range(1, len(parts))]
            if any(kind_at.get(p) == "leaf" for p in parents):
                continue
            has_children = any(k.startswith(path + "/") for k in kind_at)
            op = rng.choice(["file", "file", "dir", "symlink", "whiteout",
                             "opaque"])
            if op == "whiteout":
                d, name = posixpath.split(path)
                spec[posixpath.join(d, WH + name)] = ""
                kind_at[posixpath.join(d, WH + name)] = "leaf"
            elif op in ("dir", "opaque"):
                if kind_at.get(path) == "leaf":
                    continue
                spec[path] = Opaque(0o755) if op == "opaque" else \
                    Dir(rng.choice([0o755, 0o700, 0o775]))
                kind_at[path] = "dir"
            else:
                if path in kind_at or has_children:
                    continue
                if op == "file":
                    spec[path] = File("%s@%d\n" % (path, i),
                                      rng.choice([0o644, 0o600, 0o755]))
                else:
                    spec[path] = Symlink(rng.choice(["a", "../b", "/c/a",
                                                     "x" * 120]))
                kind_at[path] = "leaf"
            for p in parents:
                kind_at.setdefault(p, "dir")
        layers.append(Layer(spec))
    return layers
