"""Live counters (`getfattr -n layerfs.stats MNT`, README "Counters"):
they move by the expected amounts for a scripted sequence of operations,
and the layer `layerctl which` names is the one whose probe counter moves
when the path is looked up.

Run only these:  tests/mounted/run.py -k counters
"""

import json
import os
import re

from harness import Fail, check, check_eq, test
from images import Dir, File, Image, Layer
from test_layerctl import (import_ok, lc, lc_mount, need_layerctl, new_store,
                           write_source)

MIB = 1 << 20


def stats(mnt):
    raw = os.getxattr(mnt, "layerfs.stats")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise Fail("layerfs.stats is not JSON (%s): %r" % (e, raw[:300]))


def two_layers(ctx, big=0):
    top, bottom = ctx.newdir("top"), ctx.newdir("bottom")
    os.makedirs(os.path.join(bottom, "d"))
    os.makedirs(os.path.join(top, "d"))
    with open(os.path.join(bottom, "d", "low"), "w") as f:
        f.write("low\n")
    with open(os.path.join(top, "d", "high"), "w") as f:
        f.write("high\n")
    if big:
        with open(os.path.join(bottom, "big"), "wb") as f:
            f.write(os.urandom(big))
    return [top, bottom]


@test()
def counters_are_json_with_every_key(ctx):
    with ctx.mount(two_layers(ctx)) as m:
        os.listdir(m.path("d"))
        s = stats(m.mnt)
    for key in ("lookups", "index", "probes", "copy_up", "whiteouts_created",
                "opaque_dirs_created", "open_files", "requests"):
        check(key in s, "no %r in %r" % (key, sorted(s)))
    check_eq(len(s["probes"]["per_layer"]), 2, "per_layer entries")
    check(s["requests"].get("LOOKUP", {}).get("count", 0) >= 1,
          "no LOOKUP request counted: %r" % s["requests"])
    for op, v in s["requests"].items():
        check(0 < v["p50_us"] <= v["p99_us"],
              "%s: p50 %r, p99 %r" % (op, v["p50_us"], v["p99_us"]))


@test()
def counters_negative_lookup_in_an_indexed_dir_probes_no_layer(ctx):
    with ctx.mount(two_layers(ctx)) as m:
        os.listdir(m.path("d"))          # the index of d is built
        before = stats(m.mnt)
        check(not os.path.exists(m.path("d/absent-name")),
              "absent name exists")
        after = stats(m.mnt)
    check_eq(after["lookups"]["negative"] - before["lookups"]["negative"], 1,
             "negative lookups added")
    check_eq(after["probes"]["per_layer"], before["probes"]["per_layer"],
             "layer probes after a negative lookup")
    check_eq(after["index"]["built"], before["index"]["built"],
             "indexes built after a negative lookup")
    check_eq(after["index"]["answers"] - before["index"]["answers"], 1,
             "lookups answered by the index")


@test()
def counters_positive_lookup_probes_only_the_providing_layer(ctx):
    with ctx.mount(two_layers(ctx)) as m:
        # Index d without listing it (a listing would hand the kernel the
        # attributes of every name, and the stat below would not come).
        check(not os.path.exists(m.path("d/absent")), "absent name exists")
        before = stats(m.mnt)
        os.stat(m.path("d/low"))          # bottom layer: 1
        after = stats(m.mnt)
    delta = [a - b for a, b in zip(after["probes"]["per_layer"],
                                   before["probes"]["per_layer"])]
    check_eq(delta, [0, 1], "probes per layer for a name of the bottom layer")
    check_eq(after["lookups"]["positive"] - before["lookups"]["positive"], 1,
             "positive lookups added")


@test()
def counters_copy_up_of_10_mib_adds_10_mib(ctx):
    upper, work = ctx.newdir("upper"), ctx.newdir("work")
    with ctx.mount(two_layers(ctx, big=10 * MIB), upper=upper,
                   work=work) as m:
        before = stats(m.mnt)
        with open(m.path("big"), "ab") as f:
            f.write(b"x")
        with open(m.path("d/new"), "w") as f:
            f.write("n")
        os.unlink(m.path("d/low"))
        after = stats(m.mnt)
    cu_b, cu_a = before["copy_up"], after["copy_up"]
    check_eq(cu_a["bytes"] - cu_b["bytes"], 10 * MIB, "copy-up bytes added")
    # big (data), then d (a directory, for d/new): two copy-ups.
    check_eq(cu_a["count"] - cu_b["count"], 2, "copy-ups added")
    methods = sum(cu_a["by_method"].values()) - sum(cu_b["by_method"].values())
    check_eq(methods, 2, "copy-ups counted by method")
    check(cu_a["seconds"] > cu_b["seconds"], "copy-up time did not grow")
    check_eq(after["whiteouts_created"] - before["whiteouts_created"], 1,
             "whiteouts created (unlink of a lower file)")
    check_eq(after["open_files"], 0, "open files after closing them all")


@test()
def counters_agree_with_layerctl_which(ctx):
    """The layer `which` names is the layer whose probe counter moves when
    the path is looked up in a mount of the image."""
    need_layerctl()
    store = new_store(ctx)
    img = Image([Layer({"etc": Dir(), "etc/os-release": File(b"base\n"),
                        "etc/only-base": File(b"b\n")}),
                 Layer({"etc": Dir(), "etc/os-release": File(b"mid\n")}),
                 Layer({"etc": Dir(), "etc/hostname": File(b"top\n")})],
                "counters:1")
    src, _ = write_source(ctx, img, "oci")
    import_ok(store, src, img)
    for path in ("etc/os-release", "etc/only-base", "etc/hostname"):
        r = lc(store, "which", img.tag, "/" + path)
        m = re.search(r"provided by layer (\d+)", r.out)
        if r.rc != 0 or not m:
            raise Fail("which %s: %s" % (path, r))
        layer = int(m.group(1))
        with lc_mount(ctx, store, img.tag, ["--read-only"]) as mnt:
            os.path.exists(mnt.path("etc/absent"))    # index etc
            before = stats(mnt.mnt)["probes"]["per_layer"]
            os.stat(mnt.path(path))
            after = stats(mnt.mnt)["probes"]["per_layer"]
        moved = [i for i, (a, b) in enumerate(zip(after, before)) if a != b]
        check_eq(moved, [layer], "layers probed for %s (which says %d)" % (
            path, layer))
