/*
 * stats.c - live counters of a mount (README.md, "Counters").
 *
 * Counting must cost the hot path nothing measurable, so each thread
 * counts into its own block of plain integers, registered once with the
 * filesystem; a reader sums every block.  A reader racing a writer may see
 * a count one step old, never a torn one (aligned 64-bit stores).  Blocks
 * live until the filesystem is freed, so a thread that exits leaves its
 * counts behind.
 *
 * Request latencies (kinds and names are the adapter's: the core has no
 * FUSE) go into log2 histograms of nanoseconds, from which the reader
 * derives p50 and p99 as the upper bound of the bucket holding them.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layerfs_i.h"

/* Four buckets per power of two of nanoseconds (a quantile is off by at
 * most a fifth), up to 2^47 ns: 39 hours, more than any request. */
#define SUB_BITS 2
#define N_BUCKETS (48 << SUB_BITS)

struct lfs_stats_block {
	uint64_t c[LFS_N_COUNTERS];
	uint64_t *per_layer;                       /* n_layers probes */
	uint64_t hist[LFS_MAX_REQUEST_KINDS][N_BUCKETS];
	struct lfs_stats_block *next;
};

static atomic_uint_fast64_t next_generation = 1;
_Thread_local struct lfs_stats_block *lfs_stats_tl_block;
_Thread_local uint64_t lfs_stats_tl_gen;

int lfs_stats_init(struct lfs_stats *s, uint32_t n_layers)
{
	memset(s, 0, sizeof(*s));
	s->n_layers = n_layers;
	s->gen = atomic_fetch_add(&next_generation, 1);
	return -pthread_mutex_init(&s->mu, NULL);
}

void lfs_stats_destroy(struct lfs_stats *s)
{
	struct lfs_stats_block *b = s->blocks, *next;

	for (; b; b = next) {
		next = b->next;
		free(b->per_layer);
		free(b);
	}
	s->blocks = NULL;
	pthread_mutex_destroy(&s->mu);
}

/* A block that swallows counts when memory is short: counting must never
 * fail a request.  Shared, so its counts are meaningless; never read. */
static struct lfs_stats_block sink_block;
static uint64_t sink_layers[1];

struct lfs_stats_block *lfs_stats_block_slow(struct lfs_stats *s)
{
	struct lfs_stats_block *b = calloc(1, sizeof(*b));

	if (b)
		b->per_layer = calloc(s->n_layers ? s->n_layers : 1,
				      sizeof(*b->per_layer));
	if (!b || !b->per_layer) {
		free(b);
		sink_block.per_layer = sink_layers;
		return &sink_block;    /* not cached: try again next time */
	}
	pthread_mutex_lock(&s->mu);
	b->next = s->blocks;
	s->blocks = b;
	pthread_mutex_unlock(&s->mu);
	lfs_stats_tl_block = b;
	lfs_stats_tl_gen = s->gen;
	return b;
}

void lfs_stats_open_file(struct lfs_fs *fs, int delta)
{
	lfs_count(fs, delta > 0 ? LFS_C_OPENS : LFS_C_RELEASES, 1);
}

void lfs_stats_layer(struct lfs_fs *fs, uint32_t layer)
{
	struct lfs_stats_block *b = lfs_stats_block(&fs->stats);

	if (layer < fs->stats.n_layers && b != &sink_block)
		b->per_layer[layer]++;
}

static unsigned bucket_of(uint64_t ns)
{
	const uint64_t subs = 1u << SUB_BITS;

	if (ns < subs)
		return (unsigned)ns;
	unsigned octave = 63 - (unsigned)__builtin_clzll(ns);    /* >= SUB_BITS */
	unsigned sub = (unsigned)(ns >> (octave - SUB_BITS)) & (subs - 1);
	unsigned b = ((octave - SUB_BITS + 1) << SUB_BITS) + sub;

	return b < N_BUCKETS ? b : N_BUCKETS - 1;
}

/* The largest ns that falls into bucket b. */
static uint64_t bucket_top(unsigned b)
{
	const uint64_t subs = 1u << SUB_BITS;

	if (b < subs)
		return b;
	unsigned octave = (b >> SUB_BITS) + SUB_BITS - 1;
	uint64_t sub = b & (subs - 1);
	return ((subs + sub + 1) << (octave - SUB_BITS)) - 1;
}

void lfs_stats_request(struct lfs_fs *fs, unsigned kind, uint64_t ns)
{
	struct lfs_stats_block *b = lfs_stats_block(&fs->stats);

	if (kind < LFS_MAX_REQUEST_KINDS && b != &sink_block)
		b->hist[kind][bucket_of(ns)]++;
}

/* ---- reading ----------------------------------------------------------- */

struct text {
	char *buf;
	size_t len, cap;
	bool failed;
};

static void put(struct text *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;

	for (;;) {
		size_t room = t->cap - t->len;
		va_start(ap, fmt);
		int n = vsnprintf(t->buf ? t->buf + t->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if ((size_t)n < room) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)n;
		char *grown = realloc(t->buf, cap);
		if (!grown) {
			t->failed = true;
			return;
		}
		t->buf = grown;
		t->cap = cap;
	}
}

/* The upper bound, in microseconds, of the bucket holding quantile q. */
static double quantile_us(const uint64_t *hist, uint64_t total, double q)
{
	uint64_t want = (uint64_t)((double)total * q), seen = 0;

	for (unsigned i = 0; i < N_BUCKETS; i++) {
		seen += hist[i];
		if (seen > want || (seen == total && seen))
			return (double)bucket_top(i) / 1000.0;
	}
	return 0;
}

int lfs_stats_json(struct lfs_fs *fs, const char *const *kind_names,
		   unsigned n_kinds, char **ret, size_t *ret_len)
{
	struct lfs_stats *s = &fs->stats;
	uint64_t c[LFS_N_COUNTERS] = { 0 };
	uint64_t *layers = calloc(s->n_layers ? s->n_layers : 1, sizeof(*layers));
	uint64_t (*hist)[N_BUCKETS] = calloc(LFS_MAX_REQUEST_KINDS,
					     sizeof(*hist));
	struct text t = { 0 };

	if (!layers || !hist) {
		free(layers);
		free(hist);
		return -ENOMEM;
	}
	pthread_mutex_lock(&s->mu);
	for (struct lfs_stats_block *b = s->blocks; b; b = b->next) {
		for (unsigned i = 0; i < LFS_N_COUNTERS; i++)
			c[i] += b->c[i];
		for (uint32_t i = 0; i < s->n_layers; i++)
			layers[i] += b->per_layer[i];
		for (unsigned k = 0; k < LFS_MAX_REQUEST_KINDS; k++)
			for (unsigned i = 0; i < N_BUCKETS; i++)
				hist[k][i] += b->hist[k][i];
	}
	pthread_mutex_unlock(&s->mu);

	put(&t, "{\"lookups\":{\"positive\":%" PRIu64 ",\"negative\":%" PRIu64
	    "},", c[LFS_C_LOOKUP_POS], c[LFS_C_LOOKUP_NEG]);
	put(&t, "\"index\":{\"answers\":%" PRIu64 ",\"built\":%" PRIu64
	    ",\"entries\":%" PRIu64 ",\"bytes\":%" PRIu64 "},",
	    c[LFS_C_INDEX_ANSWERS], c[LFS_C_INDEX_BUILT],
	    c[LFS_C_INDEX_ENTRIES], c[LFS_C_INDEX_BYTES]);
	put(&t, "\"probes\":{\"layer_dirs_read\":%" PRIu64
	    ",\"layer_dirs_from_cache\":%" PRIu64 ",\"object_stats\":%" PRIu64
	    ",\"stats_from_cache\":%" PRIu64 ",\"per_layer\":[",
	    c[LFS_C_DIR_READS], c[LFS_C_DIR_CACHE_READS], c[LFS_C_OBJECT_STATS],
	    c[LFS_C_STATS_CACHED]);
	for (uint32_t i = 0; i < s->n_layers; i++)
		put(&t, "%s%" PRIu64, i ? "," : "", layers[i]);
	put(&t, "]},");
	put(&t, "\"copy_up\":{\"count\":%" PRIu64 ",\"bytes\":%" PRIu64
	    ",\"seconds\":%.6f,\"by_method\":{\"reflink\":%" PRIu64
	    ",\"copy_file_range\":%" PRIu64 ",\"read_write\":%" PRIu64
	    ",\"metadata_only\":%" PRIu64 ",\"hard_link\":%" PRIu64 "}},",
	    c[LFS_C_COPYUPS], c[LFS_C_COPYUP_BYTES],
	    (double)c[LFS_C_COPYUP_NS] / 1e9, c[LFS_C_COPYUP_REFLINK],
	    c[LFS_C_COPYUP_RANGE], c[LFS_C_COPYUP_RW], c[LFS_C_COPYUP_META],
	    c[LFS_C_COPYUP_LINK]);
	put(&t, "\"whiteouts_created\":%" PRIu64 ",\"opaque_dirs_created\":%"
	    PRIu64 ",\"open_files\":%" PRId64 ",\"requests\":{",
	    c[LFS_C_WHITEOUTS], c[LFS_C_OPAQUES],
	    (int64_t)(c[LFS_C_OPENS] - c[LFS_C_RELEASES]));
	bool first = true;
	for (unsigned k = 0; k < n_kinds && k < LFS_MAX_REQUEST_KINDS; k++) {
		uint64_t total = 0;
		for (unsigned i = 0; i < N_BUCKETS; i++)
			total += hist[k][i];
		if (!total || !kind_names[k])
			continue;
		put(&t, "%s\"%s\":{\"count\":%" PRIu64 ",\"p50_us\":%.3f,"
		    "\"p99_us\":%.3f}", first ? "" : ",", kind_names[k], total,
		    quantile_us(hist[k], total, 0.50),
		    quantile_us(hist[k], total, 0.99));
		first = false;
	}
	put(&t, "}}\n");
	free(layers);
	free(hist);
	if (t.failed) {
		free(t.buf);
		return -ENOMEM;
	}
	*ret = t.buf;
	*ret_len = t.len;
	return 0;
}
