"""podman with layerfs: layerfs as containers/storage's FUSE mount_program
(what podman and buildah do with fuse-overlayfs), compared with
fuse-overlayfs doing the same; and an image made by `layerctl commit`
loaded and run by podman.

Each test gives podman its own storage.conf and graphroot under the test's
directory, no registry (--pull=never), runc with cgroupfs (this machine's
crun refuses its cgroup setup), no network.  Skipped without podman/runc.

Run only these:  tests/mounted/run.py -k podman
"""

import os
import shutil
import subprocess
import tempfile

from harness import Fail, Skip, check, check_eq, mounts, test
from images import Dir, File, Image, Layer, Symlink
from test_layerctl import (import_ok, lc, lc_mount, need_layerctl, new_store,
                           write_source)

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERFS = os.path.realpath(os.path.join(HERE, "..", "..", "bin", "layerfs"))
BUSYBOX = "/bin/busybox"
TIMEOUT = 180


def need_podman():
    for prog in ("podman", "runc"):
        if not shutil.which(prog):
            raise Skip("no %s" % prog)
    if not os.path.isfile(BUSYBOX):
        raise Skip("no %s (busybox-static)" % BUSYBOX)


def busybox_image(tag="lfsbox:1"):
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    base = Layer({"bin": Dir(), "bin/busybox": File(bb, 0o755),
                  "bin/sh": Symlink("busybox"), "etc": Dir(),
                  "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
                  "data/keep": "keep\n", "data/old": "old\n",
                  "olddir/x": "x\n", "olddir/sub/y": "y\n", "tmp": Dir(0o1777)})
    top = Layer({"etc": Dir(), "etc/os-release": "ID=layerfs-test\n"})
    return Image([base, top], tag)


class Podman:
    """podman with its own storage, optionally through a mount program."""

    def __init__(self, ctx, mount_program=None):
        self.ctx = ctx
        # A short path: podman 4.3's conmon waits 20 s per run when the
        # directory of graphroot and runroot is 43 characters or longer.
        self.dir = tempfile.mkdtemp(prefix="lp", dir="/tmp")
        self.root = os.path.join(self.dir, "root")
        self.run_root = os.path.join(self.dir, "run")
        storage = os.path.join(self.dir, "storage.conf")
        with open(storage, "w") as f:
            f.write('[storage]\ndriver = "overlay"\ngraphroot = "%s"\n'
                    'runroot = "%s"\n' % (self.root, self.run_root))
            if mount_program:
                f.write('[storage.options.overlay]\nmount_program = "%s"\n'
                        % mount_program)
        conf = os.path.join(self.dir, "containers.conf")
        with open(conf, "w") as f:
            f.write('[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                    'events_logger = "none"\n[containers]\n'
                    'default_ulimits = []\n')
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=storage,
                        CONTAINERS_CONF=conf)
        ctx.on_cleanup(self.cleanup)

    def run(self, *args, check_rc=True, input=None):
        try:
            r = subprocess.run(["podman"] + list(args), env=self.env,
                               capture_output=True, timeout=TIMEOUT,
                               input=input, stdin=None if input else
                               subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise Fail("podman %s: still running after %ds" % (
                " ".join(args)[:200], TIMEOUT))
        out = r.stdout.decode(errors="replace")
        if check_rc and r.returncode != 0:
            raise Fail("podman %s -> exit %d\n%s\n%s" % (
                " ".join(args)[:300], r.returncode, out[-1500:],
                r.stderr.decode(errors="replace")[-2500:]))
        return out

    def sh(self, image, script, *extra):
        return self.run("run", "--rm", "--network=none", "--pull=never",
                        *extra, image, "/bin/sh", "-c", script)

    def cleanup(self):
        if not os.path.isdir(self.dir):
            return
        self.run("rm", "-af", check_rc=False)
        self.run("rmi", "-af", check_rc=False)
        # Whatever podman left mounted under its root.
        prefix = os.fsencode(self.dir) + b"/"
        for mnt, _, _ in reversed(mounts()):
            if mnt.startswith(prefix):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def load(p, ctx, img):
    src, _ = write_source(ctx, img, "docker", as_tar=True)
    out = p.run("load", "-i", src)
    check(img.tag in out or img.id[:12] in out,
          "podman load output names neither tag nor id: %r" % out)


SESSION = r"""
set -e
cat /etc/os-release
echo written > /data/new
echo more >> /data/keep
rm /data/old
rm -r /olddir
mkdir -p /made/deep
echo deep > /made/deep/f
ls /data | tr '\n' ' '
echo
cat /data/keep /data/new /made/deep/f
test ! -e /olddir
"""


def session(p, img):
    """A container's life: run a session, commit it, run the commit, diff,
    and a small build on top.  Returns what each step printed."""
    out = {}
    out["run"] = p.sh(img.tag, SESSION, "--name", "c1")
    p.run("rm", "c1", check_rc=False)
    out["run2"] = p.run("run", "--name", "c2", "--network=none",
                        "--pull=never", img.tag, "/bin/sh", "-c",
                        "rm /data/old; echo c2 > /c2file; rm -r /olddir")
    out["diff"] = "\n".join(sorted(p.run("diff", "c2").split("\n")))
    p.run("commit", "c2", "lfs-committed:1")
    out["committed"] = p.sh("lfs-committed:1",
                            "cat /c2file; ls /data; test ! -e /olddir && "
                            "echo olddir-gone")
    ctxdir = p.ctx.newdir("build")
    with open(os.path.join(ctxdir, "Containerfile"), "w") as f:
        f.write("FROM %s\nRUN echo built > /built && rm /data/keep\n"
                "RUN cat /built /etc/os-release\n" % img.tag)
    p.run("build", "--pull=never", "--network=none", "-t", "lfs-built:1",
          ctxdir)
    out["built"] = p.sh("lfs-built:1", "cat /built; ls /data")
    return out


def check_session(lf):
    """What session() must have seen through layerfs (any podman user)."""
    check("written" in lf["run"] and "keep\nmore" in lf["run"] and
          "deep" in lf["run"], "session output: %r" % lf["run"])
    check("c2\n" in lf["committed"] and "olddir-gone" in lf["committed"] and
          "old" not in lf["committed"].split(),
          "committed image shows: %r" % lf["committed"])
    check("built" in lf["built"] and "keep" not in lf["built"],
          "built image shows: %r" % lf["built"])
    for key in ("/c2file", "/data/old", "/olddir"):
        check(key in lf["diff"], "podman diff lacks %s: %r" % (key, lf["diff"]))


@test(timeout=300)
def podman_with_layerfs_mount_program_matches_fuse_overlayfs(ctx):
    need_podman()
    img = busybox_image()
    results = {}
    for name, prog in (("layerfs", LAYERFS),
                       ("fuse-overlayfs", shutil.which("fuse-overlayfs"))):
        if not prog:
            continue
        p = Podman(ctx, mount_program=prog)
        load(p, ctx, img)
        results[name] = session(p, img)
        p.cleanup()
    lf = results["layerfs"]
    check_session(lf)
    if "fuse-overlayfs" in results:
        for step, text in lf.items():
            check_eq(text, results["fuse-overlayfs"][step],
                     "step %s: layerfs vs fuse-overlayfs" % step)


@test(timeout=300)
def layerctl_commit_then_podman_load_and_run(ctx):
    """commit -> export -> podman load -> podman run sees the change."""
    need_podman()
    need_layerctl()
    store = new_store(ctx)
    img = busybox_image("lfsexport:1")
    src, _ = write_source(ctx, img, "docker")
    import_ok(store, src, img)
    with lc_mount(ctx, store, img.tag, ["--name", "box"]) as m:
        with open(m.path("data/from-layerctl"), "w") as f:
            f.write("committed by layerctl\n")
        os.unlink(m.path("data/old"))
    r = lc(store, "commit", "box", "lfsexport:2")
    if r.rc != 0:
        raise Fail("commit: %s" % r)
    tar = ctx.newfile("export.tar")
    r = lc(store, "export", "lfsexport:2", tar)
    if r.rc != 0:
        raise Fail("export: %s" % r)
    p = Podman(ctx)          # podman's own kernel overlay driver
    p.run("load", "-i", tar)
    out = p.sh("lfsexport:2", "cat /data/from-layerctl; ls /data")
    check("committed by layerctl" in out, "podman run shows: %r" % out)
    check("old" not in out.split(), "removed file shows in podman: %r" % out)


@test(timeout=120)
def layerctl_export_oci_is_accepted_by_skopeo(ctx):
    """skopeo verifies every digest of the OCI layout it copies."""
    need_layerctl()
    if not shutil.which("skopeo"):
        raise Skip("no skopeo")
    store = new_store(ctx)
    img = busybox_image("lfsskopeo:1")
    src, _ = write_source(ctx, img, "docker")
    import_ok(store, src, img)
    out = ctx.newdir("oci")
    r = lc(store, "export", img.tag, out + "/", "--format", "oci")
    if r.rc != 0:
        raise Fail("export: %s" % r)
    dest = ctx.newfile("copied.tar")
    p = subprocess.run(["skopeo", "copy", "oci:%s:%s" % (out, img.tag),
                        "docker-archive:%s:%s" % (dest, img.tag)],
                       capture_output=True, text=True, timeout=100)
    check(p.returncode == 0, "skopeo copy: %s" % p.stderr[-1500:])
    check(os.path.getsize(dest) > 1000, "skopeo wrote an empty archive")
