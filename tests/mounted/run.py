#!/usr/bin/env python3
"""Mounted test suite for layerfs.

    tests/mounted/run.py [-k SUBSTRING]... [--list] [--keep]

Prints one line per test: PASS name / FAIL name (+ indented reason and the
mount command's stderr) / SKIP name (reason).  Environment:
  LAYERFS=<program>        mount program (default bin/layerfs), e.g.
                           LAYERFS=fuse-overlayfs
  LAYERFS_TEST_TIMES=1     print each test's duration
  LAYERFS_SUITE_BUDGET=S   fail the remaining tests unrun after S seconds
                           (default 1200)
Tests need root and /dev/fuse (otherwise every test is a SKIP line); the
kernel comparisons also need `mount -t overlay` (else SKIP).  --keep keeps
the temp dirs (/tmp/layerfs-mt.*) of failed tests.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness                      # noqa: E402
import test_cli                     # noqa: E402,F401  (registers tests)
import test_rules                   # noqa: E402,F401
import test_stacks                  # noqa: E402,F401
import test_dirs                    # noqa: E402,F401
import test_files                   # noqa: E402,F401
import test_cache                   # noqa: E402,F401
import test_layerctl                # noqa: E402,F401
import test_layerctl_export  # noqa: E402,F401
import test_layerctl_maintain  # noqa: E402,F401
import test_layerctl_which          # noqa: E402,F401
import test_layerctl_ps             # noqa: E402,F401
import test_layerctl_input          # noqa: E402,F401
import test_layerctl_umoci          # noqa: E402,F401
import test_layerctl_commit      # noqa: E402,F401
import test_counters              # noqa: E402,F401
import test_write_meta            # noqa: E402,F401
import test_podman                # noqa: E402,F401
import test_owner                 # noqa: E402,F401
import test_rootless              # noqa: E402,F401
import test_podman_rootless       # noqa: E402,F401
import test_kernel                  # noqa: E402,F401
import test_write  # noqa: E402,F401
import test_write_random  # noqa: E402,F401
import test_layerctl_bench  # noqa: E402,F401


def kernel_overlay_works(base):
    """Try a tiny kernel overlay mount (two lower layers, read-only)."""
    d = tempfile.mkdtemp(prefix="kprobe.", dir=base)
    try:
        for n in ("a", "b", "m"):
            os.mkdir(os.path.join(d, n))
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            "lowerdir=a:b", "m"], cwd=d,
                           stdin=subprocess.DEVNULL, capture_output=True)
        if r.returncode != 0:
            return False
        subprocess.run(["umount", os.path.join(d, "m")],
                       stdin=subprocess.DEVNULL, capture_output=True)
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", action="append", default=[],
                    help="run only tests whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep", action="store_true",
                    help="keep temp dirs of failed tests")
    args = ap.parse_args()

    tests = [t for t in harness.TESTS
             if not args.k or any(k in t.name for k in args.k)]
    if args.list:
        for t in tests:
            print(t.name)
        return 0

    why = None
    if os.geteuid() != 0:
        why = "not root"
    elif not os.path.exists("/dev/fuse"):
        why = "no /dev/fuse"
    elif not shutil.which(harness.PROGRAM):
        print("FAIL mount_program_present\n    %s is not an executable" %
              harness.PROGRAM)
        why = "no mount program"
    if why:
        for t in tests:
            print("SKIP %s (%s)" % (t.name, why))
        return 1 if why == "no mount program" else 0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    harness.become_subreaper()
    base = tempfile.mkdtemp(prefix="layerfs-mt.", dir="/tmp")
    kernel_ok = kernel_overlay_works(base)
    try:
        harness.run_tests(tests, base, kernel_ok, keep=args.keep)
    finally:
        if not args.keep:
            harness.remove_tree(base)
        elif not os.listdir(base):
            os.rmdir(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
