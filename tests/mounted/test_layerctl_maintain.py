"""layerctl store upkeep: `rm` (tags, then the config once the last tag
goes; layers stay), `gc` (exactly the layers and layerdb chains no image
names, sparing layers a running layerfs mount uses) and `verify` (a tree
digest recorded on first run, then ok / CHANGED: <path> / MISSING).

Every test SKIPs while bin/layerctl (or $LAYERCTL) is not built.
Run only these:  tests/mounted/run.py -k maintain
"""

import os
import sys

from harness import Fail, check, check_eq, test
from images import Image, Layer
from test_layerctl import (check_error, check_store, import_ok, layer_dir,
                           lc, lc_mount, need_layerctl, new_store,
                           small_layer, write_source)


def config_path(store, img):
    return os.path.join(store, "imagedb", "sha256", img.id + ".json")


def chain_dir(store, chain):
    return os.path.join(store, "layerdb", "sha256", chain)


def ok(r, what):
    if r.rc != 0:
        raise Fail("%s failed: %s" % (what, r))
    return r.out.splitlines()


def two_images(ctx):
    """A store holding A = [base, a] tagged lm-a:v1 and lm-a:v2, and
    B = [base, b] tagged lm-b:v1 (the base layer is shared)."""
    need_layerctl()
    base = Layer({"etc/os-release": "ID=base\n", "bin/tool": "tool\n"})
    a = Image([base, small_layer("alpha")], "lm-a:v1")
    b = Image([base, small_layer("beta")], "lm-b:v1")
    store = new_store(ctx)
    for img in (a, b):
        src, _ = write_source(ctx, img, "docker")
        import_ok(store, src, img)
    src, _ = write_source(ctx, a, "oci")
    import_ok(store, src, a, "lm-a:v2")
    return store, a, b


def layer_dirs(store):
    return sorted(os.listdir(os.path.join(store, "layers", "sha256")))


def chain_dirs(store):
    return sorted(os.listdir(os.path.join(store, "layerdb", "sha256")))


@test(timeout=60)
def layerctl_maintain_rm_untags_then_deletes_the_config(ctx):
    """rm of one tag leaves the image (other tag, config, layers) and the
    other image intact; rm of the last tag deletes the config, not the
    layers; rm by id prefix removes every tag of that image."""
    store, a, b = two_images(ctx)
    layers_before = layer_dirs(store)
    out = ok(lc(store, "rm", "lm-a:v1"), "rm lm-a:v1")
    check_eq(out, ["Untagged: lm-a:v1"], "rm lm-a:v1 output")
    check(os.path.exists(config_path(store, a)),
          "config of A deleted while the tag lm-a:v2 still names it")
    check_store(store, a, ["lm-a:v2"])
    check_store(store, b)
    out = ok(lc(store, "rm", "lm-a:v2"), "rm lm-a:v2")
    check_eq(out, ["Untagged: lm-a:v2", "Deleted: sha256:" + a.id],
             "rm lm-a:v2 output")
    check(not os.path.exists(config_path(store, a)),
          "config of A still there after its last tag was removed")
    check_eq(layer_dirs(store), layers_before, "layers after rm (rm must "
             "leave them to gc)")
    check_store(store, b)
    r = lc(store, "inspect", "lm-a:v2")
    check(r.rc == 1, "inspect of a removed tag: %s" % r)
    # By id prefix: every tag of B goes, and its config.
    ok(lc(store, "import", write_source(ctx, b, "docker")[0], "lm-b:v2"),
       "import B again as lm-b:v2")
    out = ok(lc(store, "rm", b.id[:12]), "rm <id prefix of B>")
    check_eq(sorted(out), sorted(["Untagged: lm-b:v1", "Untagged: lm-b:v2",
                                  "Deleted: sha256:" + b.id]),
             "rm by id prefix output")
    check(not os.path.exists(config_path(store, b)),
          "config of B still there after rm by id")
    check_eq(layer_dirs(store), layers_before, "layers after rm by id")


@test(timeout=60)
def layerctl_maintain_rm_of_unknown_image_fails(ctx):
    """exit 1, one line `layerctl: rm: <image>: <why>`, store unchanged."""
    store, a, b = two_images(ctx)
    repos = open(os.path.join(store, "repositories.json"), "rb").read()
    for ref in ("lm-nope:v1", "sha256:" + "0" * 64, "0123456789ab"):
        r = lc(store, "rm", ref)
        check_error(r, "rm", [ref], "rm of an unknown image")
    check_eq(open(os.path.join(store, "repositories.json"), "rb").read(),
             repos, "repositories.json after refused rms")
    check_store(store, a, ["lm-a:v1", "lm-a:v2"])
    check_store(store, b)


@test(timeout=60)
def layerctl_maintain_gc_deletes_exactly_the_unused_layers(ctx):
    """gc with every image tagged deletes nothing; after A is removed it
    deletes A's own layer and chain, keeps the shared base and B, and
    empties tmp/."""
    store, a, b = two_images(ctx)
    before_layers, before_chains = layer_dirs(store), chain_dirs(store)
    out = ok(lc(store, "gc"), "gc with nothing to collect")
    check(not [l for l in out if l.startswith("Deleted")],
          "gc deleted something every image uses: %r" % out)
    check_eq((layer_dirs(store), chain_dirs(store)),
             (before_layers, before_chains), "store after a no-op gc")
    leftover = os.path.join(store, "tmp", "stage.left")
    os.makedirs(os.path.join(leftover, "sub"))
    ok(lc(store, "rm", "lm-a:v1", "lm-a:v2"), "rm A")
    out = ok(lc(store, "gc"), "gc after rm A")
    gone = a.layers[1].diff_id
    check_eq([l for l in out if l.startswith("Deleted layer")],
             ["Deleted layer: sha256:" + gone], "gc output")
    check(out and out[-1].startswith("Total"), "gc prints no total: %r" % out)
    # A deleted layer's tar layout record (<diff>.tarsplit) goes with it.
    check_eq(layer_dirs(store),
             sorted(set(before_layers) - {gone, gone + ".tarsplit"}),
             "layers after gc")
    check_eq(chain_dirs(store),
             sorted(set(before_chains) - {a.chain_ids[1]}),
             "layerdb chains after gc")
    check_eq(os.listdir(os.path.join(store, "tmp")), [], "tmp/ after gc")
    check_store(store, b)


@test(timeout=90)
def layerctl_maintain_gc_keeps_layers_of_a_running_mount(ctx):
    """A mounted image that is rm'd keeps its layers through gc (Kept (in
    use)) and the mount keeps serving; after umount gc deletes them."""
    need_layerctl()
    img = Image([Layer({"etc/os-release": "ID=solo\n"}), small_layer("solo")],
                "lm-solo:v1")
    src, _ = write_source(ctx, img, "docker")
    store = new_store(ctx)
    import_ok(store, src, img)
    diffs = [l.diff_id for l in img.layers]
    with lc_mount(ctx, store, img.tag, ["--read-only"]) as m:
        ok(lc(store, "rm", img.tag), "rm of the mounted image")
        out = ok(lc(store, "gc"), "gc while mounted")
        check_eq(sorted(l for l in out if l.startswith("Kept")),
                 sorted("Kept (in use): sha256:" + d for d in diffs),
                 "gc output while mounted")
        check(not [l for l in out if l.startswith("Deleted layer")],
              "gc deleted a layer in use: %r" % out)
        for d in diffs:
            check(os.path.isdir(layer_dir(store, d)),
                  "layer %s deleted while mounted" % d[:12])
        with open(m.path("etc/os-release"), "rb") as f:
            check_eq(f.read(), b"ID=solo\n", "mounted file after gc")
        ok(lc(store, "umount", m.mnt), "umount")
    out = ok(lc(store, "gc"), "gc after umount")
    check_eq(sorted(l for l in out if l.startswith("Deleted layer")),
             sorted("Deleted layer: sha256:" + d for d in diffs),
             "gc output after umount")
    check_eq(layer_dirs(store), [], "layers after the last gc")
    check_eq(chain_dirs(store), [], "layerdb after the last gc")


@test(timeout=60)
def layerctl_maintain_verify_records_then_checks(ctx):
    """verify records each layer's tree digest, then says ok; a modified
    file is CHANGED naming its path (exit 1); so is a mode change; a layer
    directory deleted is MISSING (exit 1); a tidy other image stays ok."""
    store, a, b = two_images(ctx)
    diffs = [l.diff_id for l in a.layers]
    out = ok(lc(store, "verify", "lm-a:v1"), "first verify")
    check_eq(out, ["sha256:%s recorded" % d for d in diffs],
             "first verify output")
    for c in a.chain_ids:
        check(os.path.isfile(os.path.join(chain_dir(store, c), "tree")),
              "no tree record in layerdb chain %s" % c[:12])
    out = ok(lc(store, "verify", "lm-a:v1"), "second verify")
    check_eq(out, ["sha256:%s ok" % d for d in diffs], "second verify")
    ok(lc(store, "verify", "lm-b:v1"), "first verify of B")

    # Same size, different bytes: only the content digest can tell.
    victim = os.path.join(layer_dir(store, diffs[1]), "alpha", "file")
    data = open(victim, "rb").read()
    with open(victim, "wb") as f:
        f.write(data.upper())
    r = lc(store, "verify", "lm-a:v1")
    check_eq(r.rc, 1, "verify exit status with a changed file (%s)" % r)
    check_eq(r.out.splitlines(),
             ["sha256:%s ok" % diffs[0],
              "sha256:%s CHANGED: alpha/file" % diffs[1]],
             "verify output with a changed file")
    with open(victim, "wb") as f:
        f.write(data)
    ok(lc(store, "verify", "lm-a:v1"), "verify with the file restored")
    os.chmod(os.path.join(layer_dir(store, diffs[1]), "alpha", "dir"), 0o700)
    r = lc(store, "verify", "lm-a:v1")
    check(r.rc == 1 and "sha256:%s CHANGED: alpha/dir" % diffs[1]
          in r.out.splitlines(), "verify after a chmod: %s" % r)

    os.rename(layer_dir(store, diffs[1]), os.path.join(store, "moved"))
    r = lc(store, "verify", "lm-a:v1")
    check_eq(r.rc, 1, "verify exit status with a layer missing (%s)" % r)
    check("sha256:%s MISSING" % diffs[1] in r.out.splitlines(),
          "verify does not say MISSING: %s" % r)
    out = ok(lc(store, "verify", "lm-b:v1"), "verify of B")
    check_eq(out, ["sha256:%s ok" % l.diff_id for l in b.layers],
             "verify of B (shares the base layer)")
    check_error(lc(store, "verify", "lm-nope:v1"), "verify", ["lm-nope:v1"],
                "verify of an unknown image")


if __name__ == "__main__":
    sys.modules.setdefault("test_layerctl_maintain", sys.modules["__main__"])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run
    if "-k" not in sys.argv:
        sys.argv += ["-k", "maintain"]
    sys.exit(run.main())
