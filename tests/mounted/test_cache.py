"""layerfs's index cache of digest-named layers (`-o index_cache=DIR`, see
layerfs --help): later mounts reuse what an earlier mount recorded about a
layer.  Whatever comes from the cache, the merged view must stay exactly
the reference, inode checks included."""

import os
import random
import shutil
import subprocess
import time

from harness import Fail, test
from layers import Stack, random_stack
from test_dirs import drop_caches
from tree import assert_same, dump_tree, reference_dump


def _cache_dir(ctx):
    d = ctx.newdir("index-cache")
    return d, ["index_cache=" + d]


def _wait_for_cache(m, cache, n, timeout=15):
    """While mounted, wait until n .idx files exist (they are written in
    the background)."""
    deadline = time.monotonic() + timeout
    while True:
        got = [f for f in os.listdir(cache) if f.endswith(".idx")]
        if len(got) >= n:
            return
        if time.monotonic() > deadline:
            raise Fail("%d of %d layer index files in %s after %ds" % (
                len(got), n, cache, timeout))
        time.sleep(0.1)


def _dump_twice(m):
    """A dump, then another after the kernel dropped its caches (so merged
    directories are looked up and listed again)."""
    first = dump_tree(m.mnt)
    drop_caches()
    return first, dump_tree(m.mnt)


@test()
def index_cache_remounts_match_reference(ctx):
    s = random_stack(ctx, random.Random(900), 8, ops=(10, 30),
                     naming="sha-diff")
    cache, opts = _cache_dir(ctx)
    want = reference_dump(s.paths)
    for k in range(3):
        with ctx.mount(s.paths, extra_opts=opts) as m:
            if k == 0:
                _wait_for_cache(m, cache, len(s))
            for d in _dump_twice(m):
                assert_same(d, want, "mount %d" % k)


@test()
def index_cache_of_a_shared_base_layer_serves_another_stack(ctx):
    """Two images share their base layers: the cache written while the
    first is mounted serves the second, whose top layer differs."""
    s = Stack(ctx, 4, naming="sha-diff")
    rng = random.Random(901)
    random_stack(ctx, rng, 4, ops=(10, 30), stack=s)
    a = [s.paths[0], s.paths[2], s.paths[3]]
    b = [s.paths[1], s.paths[2], s.paths[3]]
    cache, opts = _cache_dir(ctx)
    with ctx.mount(a, extra_opts=opts) as m:
        _wait_for_cache(m, cache, 3)
        for d in _dump_twice(m):
            assert_same(d, reference_dump(a), "first image")
    want = reference_dump(b)
    with ctx.mount(b, extra_opts=opts) as m:
        for d in _dump_twice(m):
            assert_same(d, want, "second image, base layers from the cache")


@test()
def index_cache_of_a_reextracted_layer(ctx):
    """A store may extract a layer again (same content, same digest, new
    inodes).  The next mount must still show correct inode numbers."""
    s = random_stack(ctx, random.Random(902), 4, ops=(10, 30),
                     naming="sha-diff")
    cache, opts = _cache_dir(ctx)
    with ctx.mount(s.paths, extra_opts=opts) as m:
        _wait_for_cache(m, cache, len(s))
    for p in s.paths[1:3]:
        tmp = p + ".new"
        subprocess.run(["cp", "-a", p, tmp], check=True)
        shutil.rmtree(p)
        os.rename(tmp, p)
    want = reference_dump(s.paths)
    with ctx.mount(s.paths, extra_opts=opts) as m:
        for d in _dump_twice(m):
            assert_same(d, want, "after re-extraction")
