"""`layerctl bench`: generates a layer stack of a chosen shape (or takes one),
mounts it with layerfs, kernel overlayfs and fuse-overlayfs, times lookup-heavy
workloads cold and warm, and reports figures, ratios to layerfs and layerfs's
counters as a table or JSON, with an SVG plot of lookup time against layer
count.  These tests check that the default run is quick and complete, that
the JSON and the plot are well formed, that bad arguments are refused before
anything is touched, that a given stack can be measured, and that nothing
stays mounted, also after an interrupt.

Run only these:  tests/mounted/run.py -k layerctl_bench
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import time
import xml.etree.ElementTree as ET

from harness import Fail, Skip, check, check_eq, mounts, test
from test_layerctl import LAYERCTL, need_layerctl

WORKLOADS = ("mount", "stat_all", "stat_bottom", "negative", "walk",
             "small_read", "tar")
SMALL = ["--base-files", "300", "--files", "8", "--reps", "1", "--warm", "1"]


def bench(ctx, args, timeout, stdin=subprocess.DEVNULL):
    """Run layerctl bench; returns (rc, stdout, stderr, seconds)."""
    argv = [LAYERCTL, "--store", os.path.join(ctx.dir, "store"), "bench"]
    argv += [os.fspath(a) for a in args]
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, stdin=stdin, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail("layerctl bench %s: still running after %ds" %
                   (" ".join(argv[4:]), timeout))
    return (r.returncode, r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace"), time.monotonic() - t0)


def mounts_under(path):
    prefix = os.fsencode(os.path.realpath(path)) + b"/"
    return [m[0] for m in mounts() if m[0].startswith(prefix)]


def daemons_naming(path):
    """Processes whose command line names path (FUSE daemons of a run)."""
    needle = os.fsencode(os.path.realpath(path))
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in cmd and b"layerctl" not in cmd:
            found.append((int(pid), cmd.replace(b"\0", b" ")[:200]))
    return found


def check_nothing_left(d):
    check(not mounts_under(d), "still mounted under %s: %r" %
          (d, mounts_under(d)))
    deadline = time.monotonic() + 5
    while daemons_naming(d) and time.monotonic() < deadline:
        time.sleep(0.1)
    check(not daemons_naming(d), "daemons still running: %r" %
          daemons_naming(d))


def expected_systems():
    """Systems a root run on this machine measures."""
    out = ["layerfs"]
    if os.geteuid() == 0:
        out.append("kernel")
    if shutil.which("fuse-overlayfs"):
        out.append("fuse-overlayfs")
    return out


def present_systems(report, n_layers):
    """Systems measured on the n_layers stack; a peer may be missing only
    when the report says why."""
    stack = [s for s in report["stacks"] if s["layers"] == n_layers]
    check(len(stack) == 1, "no stack of %d layers in %r" %
          (n_layers, report["stacks"]))
    failed = stack[0]["failed_to_mount"]
    check("layerfs" not in failed, "layerfs could not mount: %r" %
          report["notes"])
    present = []
    for name in expected_systems():
        check(report["systems"][name]["measured"],
              "%s not measured: %r" % (name, report["notes"]))
        if name in failed:
            check(any(name in n for n in report["notes"]),
                  "%s failed without a note" % name)
        else:
            present.append(name)
    return present


def result(report, workload, state, n_layers):
    got = [r for r in report["results"] if r["workload"] == workload
           and r["state"] == state and r["layers"] == n_layers]
    check(len(got) == 1, "%s %s %d layers: %d results" %
          (workload, state, n_layers, len(got)))
    return got[0]


@test(timeout=120)
def layerctl_bench_json_16_layers_is_quick_and_complete(ctx):
    need_layerctl()
    d = ctx.newdir("bench")
    rc, out, err, secs = bench(ctx, ["--layers", "16", "--json", "--dir", d],
                               timeout=60)
    check(rc == 0, "exit %d: %s" % (rc, err[-2000:]))
    check(secs < 60, "took %.1f s" % secs)
    try:
        report = json.loads(out)
    except ValueError as e:
        raise Fail("stdout is not JSON (%s): %r" % (e, out[:500]))
    check(err == "", "stderr not empty off a terminal: %r" % err[-500:])
    check(report["cold"] is (os.geteuid() == 0), "cold: %r" % report["cold"])
    stack = report["stacks"][0]
    check(stack["generated"] and stack["entries"] > 2000 and
          stack["bottom_only_files"] > 0, "stack: %r" % stack)
    present = present_systems(report, 16)
    states = ["cold", "warm"] if report["cold"] else ["warm"]
    for wl in WORKLOADS:
        for state in states:
            if wl == "mount" and state == "warm" and report["cold"]:
                continue
            r = result(report, wl, state, 16)
            for name in present:
                fig = r["systems"].get(name)
                check(fig is not None, "%s %s: no figure for %s" %
                      (wl, state, name))
                check(fig["value"] > 0 and fig["ratio"] > 0,
                      "%s %s %s: %r" % (wl, state, name, fig))
                check_eq(fig["bad"], 0, "%s %s %s wrong answers" %
                         (wl, state, name))
                check(len(fig["samples"]) >= 3, "%s %s %s samples: %r" %
                      (wl, state, name, fig["samples"]))
            lfs = r["systems"]["layerfs"]
            check(abs(lfs["ratio"] - 1) < 1e-9, "layerfs ratio %r" %
                  lfs["ratio"])
            for name in present:
                want = r["systems"][name]["value"] / lfs["value"]
                check(abs(r["systems"][name]["ratio"] - want) < 1e-3 * want,
                      "%s ratio %r, want %r" % (name, r["systems"][name],
                                                want))
    # The counters explain the figures: a negative lookup is answered by
    # an index, and a cold pass reads every layer's copy of the hot
    # directories (here from the layer index cache, recorded before).
    first = "cold" if report["cold"] else "warm"
    if report["cold"]:
        c = result(report, "negative", "cold", 16)["systems"]["layerfs"][
            "counters"]
        check(c["lookups_negative"] >= stack["lists"]["negative"],
              "negative lookups counted: %r" % c)
        check(c["index_answers"] >= c["lookups_negative"],
              "index answers: %r" % c)
        check(c["layers_probed"] == 16 and len(c["probes_per_layer"]) == 16,
              "layers probed: %r" % c)
        check(c["layer_dirs_from_cache"] > 0 and c["layer_dirs_read"] == 0,
              "layer directories not from the index cache: %r" % c)
    check("counters" in result(report, "stat_all", first, 16)["systems"][
        "layerfs"] or first == "warm", "no layerfs counters")
    check_nothing_left(d)


@test(timeout=90)
def layerctl_bench_plot_is_an_svg_of_each_system(ctx):
    need_layerctl()
    d = ctx.newdir("bench")
    plot = os.path.join(ctx.dir, "lookups.svg")
    rc, out, err, _ = bench(ctx, ["--layers", "1,4", "--plot", plot,
                                  "--dir", d] + SMALL, timeout=80)
    check(rc == 0, "exit %d: %s" % (rc, err[-2000:]))
    with open(plot, "rb") as f:
        data = f.read()
    check(data.startswith(b"<?xml") or data.startswith(b"<svg"),
          "not SVG: %r" % data[:80])
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise Fail("the plot is not well-formed XML: %s" % e)
    ns = "{http://www.w3.org/2000/svg}"
    check_eq(root.tag, ns + "svg", "root element")
    check(float(root.get("width")) > 0 and float(root.get("height")) > 0,
          "size: %r" % root.attrib)
    lines = root.findall(".//%spolyline" % ns)
    colours = {p.get("stroke") for p in lines}
    check(len(colours) >= len(expected_systems()) - (os.geteuid() != 0),
          "one colour per system: %r" % colours)
    for p in lines:
        pts = p.get("points").split()
        check(len(pts) == 2, "a line per system over 1 and 4 layers: %r" %
              pts)
    check(not os.path.exists(plot + ".tmp"), "temporary plot left")
    # The table: a row per workload, state and height.
    rows = [l for l in out.splitlines() if l.startswith("stat bottom-layer")]
    check(len(rows) >= 2 and any(" 4 " in r for r in rows),
          "table rows: %r" % out[:3000])
    check("layerfs counters" in out, "no counters table: %r" % out[-3000:])
    check_nothing_left(d)


@test(timeout=60)
def layerctl_bench_refuses_bad_arguments(ctx):
    need_layerctl()
    d = os.path.join(ctx.dir, "never")
    cases = [
        (["--layers", "0"], "--layers"),
        (["--layers", "abc"], "--layers"),
        (["--layers", "1,x"], "--layers"),
        (["--layers", "5000"], "--layers"),
        (["--layers"], "--layers needs a value"),
        (["--files", "-3"], "--files"),
        (["--depth", "0"], "--depth"),
        (["--override", "1.5"], "--override"),
        (["--whiteout", "nan"], "--whiteout"),
        (["--override", "0.7", "--whiteout", "0.5"], "add up"),
        (["--systems", "ext4"], "ext4"),
        (["--plot", os.path.join(ctx.dir, "x.png")], "svg"),
        (["--reps", "0"], "--reps"),
        (["--bogus"], "--bogus"),
        (["16"], "unexpected argument"),
        (["--json=yes"], "--json"),
        (["--lowerdir", "/tmp", "--layers", "4"], "not both"),
        (["--lowerdir", "/tmp", "--image", "x:1"], "give one"),
    ]
    for args, what in cases:
        rc, out, err, _ = bench(ctx, ["--dir", d] + args, timeout=30)
        check(rc == 1, "%r: exit %d, stderr %r" % (args, rc, err))
        check(err.startswith("layerctl: bench: ") and what in err and
              err.count("\n") == 1, "%r: message %r" % (args, err))
        check_eq(out, "", "%r: stdout" % (args,))
    check(not os.path.exists(d), "a refused run created --dir")
    # Refused after the arguments: a layer that does not exist, an image
    # that is not in the store.
    d2 = ctx.newdir("bench")
    for args, what in [(["--lowerdir", os.path.join(ctx.dir, "nope")],
                        "nope"),
                       (["--image", "nosuch:1"], "nosuch")]:
        rc, out, err, _ = bench(ctx, args + ["--dir", d2], timeout=30)
        check(rc == 1 and err.startswith("layerctl: bench: ") and
              what in err, "%r: exit %d, %r" % (args, rc, err))
        check_nothing_left(d2)


@test(timeout=90)
def layerctl_bench_measures_a_given_stack(ctx):
    need_layerctl()
    top, bottom = ctx.newdir("top"), ctx.newdir("bottom")
    for i in range(40):
        os.makedirs(os.path.join(bottom, "usr/lib"), exist_ok=True)
        with open(os.path.join(bottom, "usr/lib/f%02d" % i), "w") as f:
            f.write("bottom %d\n" % i)
    os.makedirs(os.path.join(top, "usr/lib"))
    with open(os.path.join(top, "usr/lib/f00"), "w") as f:
        f.write("top\n")
    # A whiteout every system reads (kernel overlayfs ignores OCI's .wh.).
    os.mknod(os.path.join(top, "usr/lib/f01"), stat.S_IFCHR | 0o600,
             os.makedev(0, 0))
    d = ctx.newdir("bench")
    rc, out, err, _ = bench(ctx, ["--lowerdir", "%s:%s" % (top, bottom),
                                  "--json", "--reps", "1", "--warm", "1",
                                  "--dir", d], timeout=60)
    check(rc == 0, "exit %d: %s" % (rc, err[-2000:]))
    report = json.loads(out)
    stack = report["stacks"][0]
    check(not stack["generated"], "stack: %r" % stack)
    check_eq(stack["layers"], 2, "layers")
    # usr, usr/lib, f00 (from the top), f02..f39 (38 from the bottom).
    check_eq((stack["entries"], stack["bottom_only_files"]), (41, 38),
             "merged entries, bottom-layer files")
    check("shape" not in report, "a taken stack has no shape")
    present = present_systems(report, 2)
    for r in report["results"]:
        for name in present:
            fig = r["systems"].get(name)
            check(fig and fig["bad"] == 0 and fig["value"] > 0,
                  "%s %s %s: %r" % (r["workload"], r["state"], name, fig))
    check_nothing_left(d)


@test(timeout=90)
def layerctl_bench_unmounts_everything_on_sigint(ctx):
    need_layerctl()
    d = ctx.newdir("bench")
    argv = [LAYERCTL, "--store", os.path.join(ctx.dir, "store"), "bench",
            "--layers", "64", "--base-files", "1000", "--reps", "5",
            "--dir", d]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not mounts_under(d) and p.poll() is None:
            if time.monotonic() > deadline:
                raise Fail("nothing mounted under %s after 60 s" % d)
            time.sleep(0.01)
        if p.poll() is not None:
            raise Skip("the run ended before it could be interrupted")
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check_eq(p.returncode, 130, "exit status after SIGINT (stderr %r)" %
             err[-500:])
    check(b"layerctl: bench: interrupted" in err, "stderr: %r" % err[-500:])
    check_eq(out, b"", "no report after an interrupt")
    check_nothing_left(d)
    # The next run finds nothing of the interrupted one in its way.
    rc, out, err, _ = bench(ctx, ["--layers", "2", "--dir", d] + SMALL,
                            timeout=60)
    check(rc == 0, "run after the interrupt: exit %d: %s" % (rc, err))
    check(not any(n.startswith(".tmp-") for n in
                  os.listdir(os.path.join(d, "layers"))), "temporary layers")
    check_nothing_left(d)
