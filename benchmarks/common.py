"""Run helpers shared by the benchmark scripts (benchmarks/run,
writebench.py, podmanbench.py and, for what fits it, importbench.py):
progress lines, which layerfs to measure and a fixed copy of it, the median
of samples, the run's lock, argument lists and the JSON file.

The report's text is table.py's; the systems under test are systems.py's.
"""

import datetime
import fcntl
import hashlib
import json
import os
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
# Seconds after a big deletion before files are created again: ext4
# without a journal (this machine's root filesystem) makes creating files
# cost several times more while inodes freed in the last minute are about.
INODE_REUSE_WAIT = 61


def log(msg):
    """A progress line on stderr, after the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def layerfs_program():
    """The layerfs to measure: $LAYERFS, else this checkout's build."""
    return os.environ.get("LAYERFS") or os.path.join(REPO, "bin", "layerfs")


def fingerprint(prog):
    """sha256 prefix and mtime of the program file, to tell builds apart;
    None when PROG is not found."""
    path = shutil.which(prog)
    if not path:
        return None
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    mtime = datetime.datetime.fromtimestamp(os.stat(path).st_mtime)
    return f"sha256 {digest}, built {mtime.isoformat(timespec='seconds')}"


def snapshot(prog, root, stale_prefix="layerfs-"):
    """A copy of the layerfs program PROG as ROOT/bin/layerfs-<sha256>, so
    that a rebuild during the run cannot mix two builds.  PROG's own path
    when it is not an ELF file (a wrapper script, say); None when it is not
    found.  The other files in ROOT/bin named STALE_PREFIX... are earlier
    builds' copies and are deleted ('' where ROOT/bin holds nothing else)."""
    path = shutil.which(prog)
    if not path:
        return None
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\x7fELF"):
        return path
    bindir = os.path.join(root, "bin")
    name = "layerfs-" + hashlib.sha256(data).hexdigest()[:12]
    os.makedirs(bindir, exist_ok=True)
    for old in os.listdir(bindir):
        if old.startswith(stale_prefix) and old != name:
            os.unlink(os.path.join(bindir, old))
    copy = os.path.join(bindir, name)
    if not os.path.exists(copy):
        write_executable(copy, data)
    return copy


def write_executable(path, data):
    """DATA (bytes) as the executable PATH, renamed into place once
    complete so that no one runs a half-written program."""
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.chmod(path + ".tmp", 0o755)
    os.rename(path + ".tmp", path)


class Result:
    """One figure: the median VALUE of SAMPLES; BAD counts the
    measurements that gave wrong results."""

    def __init__(self, samples, bad=0):
        self.samples = samples
        self.value = statistics.median(samples)
        self.bad = bad


def lock_dir(path, who):
    """Creates PATH and locks PATH/.lock for as long as the returned file
    is kept: two runs sharing a directory would spoil each other's files
    and figures.  Exits, naming WHO, when another run holds the lock."""
    os.makedirs(path, exist_ok=True)
    lock = open(os.path.join(path, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"{who}: another run is using {path}")
    return lock


def comma_names(ap, text, choices, what):
    """The comma-separated names in TEXT; an error from the argument
    parser AP, calling a name a WHAT, when one is not in CHOICES."""
    out = [s.strip() for s in text.split(",") if s.strip()]
    for s in out:
        if s not in choices:
            ap.error(f"unknown {what} {s!r}; choose from {', '.join(choices)}")
    return out


def write_json(path, data):
    """DATA as JSON in PATH, indented, ending with a newline."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def wait_out_inode_reuse(stamp, log=log):
    """Sleeps until the deletion whose time the file STAMP holds is
    INODE_REUSE_WAIT seconds old, saying so through LOG; at once when
    there is no such file."""
    try:
        with open(stamp) as f:
            age = time.time() - float(f.read())
    except (OSError, ValueError):
        return
    if 0 <= age < INODE_REUSE_WAIT:
        log(f"waiting {INODE_REUSE_WAIT - age:.0f} s: inodes freed less than a minute ago "
            "slow file creation on ext4 without a journal")
        time.sleep(INODE_REUSE_WAIT - age)
