/*
 * tarsplit.c - keep what a layer tar holds besides file contents, so that
 * export can give back the very bytes that were imported.
 *
 * A layer's diff_id is the sha256 of its uncompressed tar, and the
 * extracted tree does not remember header formats, entry order or padding.
 * So at import every byte of the decompressed stream that is not a regular
 * file's content is kept in STORE/layers/sha256/<diff_id>.tarsplit, with a
 * reference to the extracted file in place of each content; export streams
 * the two back together and checks the result against the diff_id.  (The
 * idea is containers/storage's tar-split; the format is ours.)
 *
 * Where each content lies in the stream comes from libarchive, not from
 * parsing tar here: an entry's content ends where the next header begins,
 * padded to 512 bytes.  Sparse entries break that rule; a tar holding one
 * gets no tarsplit file, and export re-packs it instead.
 *
 * Import records it in the same pass that extracts the layer (extract.c):
 * a tarsplit_writer is fed the decompressed bytes as libarchive's tar
 * reader takes them and told where each entry's header and content lie
 * (libarchive's positions, checked against the rule above at the next
 * header; a stream that breaks it is recorded again in two passes by
 * tarsplit_record_fd, as before).
 *
 * File: "LFSTSPL1", then records, each a kind byte and a little-endian
 * 64-bit length: RAW (that many bytes follow), FILE (that many content
 * bytes, then a 16-bit path length and the path, relative to the layer),
 * END (length 0).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include <archive.h>
#include <archive_entry.h>

#include "layerctl.h"

#define TARSPLIT_MAGIC "LFSTSPL1"
enum { REC_RAW = 1, REC_FILE = 2, REC_END = 3 };

struct content {
	long long start, size;    /* in the decompressed stream */
	char *path;               /* owned, as the tar names it */
};

struct content_list {
	struct content *items;
	size_t n, cap;
};

static void contents_free(struct content_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->items[i].path);
	free(l->items);
}

/* Pass 1: where each regular file's content lies.  -ENOTSUP for a tar
 * this scheme cannot describe (sparse entries). */
static int open_blob(struct archive *a, int fd, size_t block)
{
	/* Our own file description, from the start: the caller's offset
	 * stays where it was. */
	char proc[64];

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	return archive_read_open_filename(a, proc, block);
}

static int find_contents(int fd, const char *blob, struct content_list *out,
			 char err[ERRLEN])
{
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	long long prev_size = -1;   /* content size of the previous entry */
	int r = 0, ar;

	if (!a)
		return -ENOMEM;
	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	if (open_blob(a, fd, 1 << 16) != ARCHIVE_OK) {
		snprintf(err, ERRLEN, "%s: %s", blob, archive_error_string(a));
		archive_read_free(a);
		return -EIO;
	}
	for (;;) {
		ar = archive_read_next_header(a, &e);
		long long pos = archive_read_header_position(a);
		/* The previous content ends, padded, where this header (or the
		 * end marker) begins. */
		if (prev_size > 0)
			out->items[out->n - 1].start = pos - ((prev_size + 511) & ~511LL);
		prev_size = -1;
		if (ar != ARCHIVE_OK)
			break;
		if (archive_entry_sparse_count(e) > 0) {
			r = -ENOTSUP;
			break;
		}
		if (archive_entry_filetype(e) != AE_IFREG ||
		    archive_entry_hardlink(e) || archive_entry_size(e) <= 0)
			continue;
		if (out->n == out->cap) {
			size_t cap = out->cap ? out->cap * 2 : 64;
			struct content *grown = realloc(out->items,
							cap * sizeof(*grown));
			if (!grown) {
				r = -ENOMEM;
				break;
			}
			out->items = grown;
			out->cap = cap;
		}
		struct content *c = &out->items[out->n];
		c->size = archive_entry_size(e);
		c->path = strdup(archive_entry_pathname(e));
		if (!c->path) {
			r = -ENOMEM;
			break;
		}
		out->n++;
		prev_size = c->size;
	}
	if (r == 0 && ar != ARCHIVE_EOF) {
		snprintf(err, ERRLEN, "%s: %s", blob, archive_error_string(a));
		r = -EIO;
	}
	archive_read_free(a);
	return r;
}

static int put_record(FILE *f, int kind, unsigned long long len)
{
	unsigned char hdr[9];

	hdr[0] = (unsigned char)kind;
	for (int i = 0; i < 8; i++)
		hdr[1 + i] = (unsigned char)(len >> (8 * i));
	return fwrite(hdr, 1, sizeof(hdr), f) == sizeof(hdr) ? 0 : -EIO;
}

/* Pass 2: copy the raw stream, contents replaced by references. */
static int write_skeleton(int fd, const char *blob,
			  const struct content_list *l, FILE *f, char err[ERRLEN])
{
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	char buf[1 << 16];
	long long pos = 0;
	size_t next = 0;
	int r = 0;

	if (!a)
		return -ENOMEM;
	archive_read_support_filter_all(a);
	archive_read_support_format_raw(a);
	if (open_blob(a, fd, sizeof(buf)) != ARCHIVE_OK ||
	    archive_read_next_header(a, &e) != ARCHIVE_OK) {
		snprintf(err, ERRLEN, "%s: %s", blob, archive_error_string(a));
		archive_read_free(a);
		return -EIO;
	}
	if (fwrite(TARSPLIT_MAGIC, 1, 8, f) != 8)
		r = -EIO;
	for (;;) {
		la_ssize_t n = r == 0 ? archive_read_data(a, buf, sizeof(buf)) : 0;
		if (n <= 0) {
			if (n < 0) {
				snprintf(err, ERRLEN, "%s: %s", blob,
					 archive_error_string(a));
				r = -EIO;
			}
			break;
		}
		/* Split this chunk at content boundaries. */
		for (long long off = 0; off < n && r == 0;) {
			const struct content *c = next < l->n ? &l->items[next] : NULL;
			long long chunk_end = pos + (n - off);
			if (c && pos >= c->start) {
				/* Inside content c: skip it, once recorded. */
				long long skip = c->start + c->size - pos;
				if (skip > n - off)
					skip = n - off;
				if (pos == c->start) {
					size_t plen = strlen(c->path);
					unsigned char pl[2] = { plen & 0xff, plen >> 8 };
					if (plen > 0xffff ||
					    put_record(f, REC_FILE, (unsigned long long)c->size) ||
					    fwrite(pl, 1, 2, f) != 2 ||
					    fwrite(c->path, 1, plen, f) != plen)
						r = -EIO;
				}
				off += skip;
				pos += skip;
				if (pos == c->start + c->size)
					next++;
				continue;
			}
			long long raw_end = c && c->start < chunk_end ? c->start
								      : chunk_end;
			unsigned long long len = (unsigned long long)(raw_end - pos);
			if (put_record(f, REC_RAW, len) ||
			    fwrite(buf + off, 1, len, f) != len)
				r = -EIO;
			off += (long long)len;
			pos = raw_end;
		}
	}
	if (r == 0 && next != l->n) {
		snprintf(err, ERRLEN, "%s: tar contents out of place", blob);
		r = -EIO;
	}
	if (r == 0 && put_record(f, REC_END, 0))
		r = -EIO;
	archive_read_free(a);
	return r;
}

int tarsplit_record_fd(int fd, const char *blob, const char *dest,
		       char err[ERRLEN])
{
	struct content_list l = { 0 };
	FILE *f = NULL;
	int r = find_contents(fd, blob, &l, err);

	if (r == 0 && !(f = fopen(dest, "wbe")))
		r = -errno;
	if (r == 0)
		r = write_skeleton(fd, blob, &l, f, err);
	if (f && fclose(f) != 0 && r == 0)
		r = -EIO;
	if (r < 0) {
		unlink(dest);
		if (!err[0] || r == -EIO)
			snprintf(err, ERRLEN, "%s: cannot record its tar layout", blob);
	}
	contents_free(&l);
	return r;
}

int tarsplit_record(const char *blob, const char *dest, char err[ERRLEN])
{
	int fd = open(blob, O_RDONLY | O_CLOEXEC);
	int r;

	if (fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", blob, strerror(errno));
		return -errno;
	}
	r = tarsplit_record_fd(fd, blob, dest, err);
	close(fd);
	return r;
}

/* ---- recording in the pass that extracts ------------------------------- */

/*
 * The writer sees every byte of the decompressed stream in order (feed),
 * usually before the tar reader has parsed it, so bytes past the last
 * header parsed wait in `pend` until the next header (or the end) says
 * what they are.  Bytes before `frontier` are known: a regular file's
 * content [cs, ce) is replaced by a FILE record, everything else goes into
 * RAW records (gathered in `raw`, written at most RAW_MAX at a time).
 */
#define RAW_MAX (1 << 20)

struct tarsplit_writer {
	FILE *f;
	char *dest;                  /* owned */
	int state;                   /* 0, or why there will be no record */
	unsigned char *pend;         /* bytes from pos on, not yet classified */
	size_t pend_off, pend_len, pend_cap;
	long long pos;               /* stream offset of pend[pend_off] */
	long long frontier;          /* bytes before it are classified */
	long long cs, ce;            /* the current content, cs == ce: none */
	long long next_header;       /* where the content's padding ends */
	char *cpath;                 /* owned: the content's name */
	unsigned char *raw;
	size_t raw_len;
};

struct tarsplit_writer *tarsplit_writer_new(const char *dest, char err[ERRLEN])
{
	struct tarsplit_writer *w = calloc(1, sizeof(*w));

	if (!w || !(w->raw = malloc(RAW_MAX)) || !(w->dest = strdup(dest))) {
		snprintf(err, ERRLEN, "out of memory");
		goto fail;
	}
	w->next_header = -1;
	if (!(w->f = fopen(dest, "wbe"))) {
		snprintf(err, ERRLEN, "%s: %s", dest, strerror(errno));
		goto fail;
	}
	setvbuf(w->f, NULL, _IOFBF, 1 << 16);
	if (fwrite(TARSPLIT_MAGIC, 1, 8, w->f) != 8)
		w->state = -EIO;
	return w;
fail:
	if (w) {
		free(w->raw);
		free(w->dest);
		free(w);
	}
	return NULL;
}

static void flush_raw(struct tarsplit_writer *w)
{
	if (w->raw_len == 0 || w->state)
		return;
	if (put_record(w->f, REC_RAW, w->raw_len) ||
	    fwrite(w->raw, 1, w->raw_len, w->f) != w->raw_len)
		w->state = -EIO;
	w->raw_len = 0;
}

static void add_raw(struct tarsplit_writer *w, const unsigned char *p,
		    size_t n)
{
	while (n > 0 && !w->state) {
		size_t take = RAW_MAX - w->raw_len < n ? RAW_MAX - w->raw_len : n;
		memcpy(w->raw + w->raw_len, p, take);
		w->raw_len += take;
		p += take;
		n -= take;
		if (w->raw_len == RAW_MAX)
			flush_raw(w);
	}
}

/* Classify what can be from data[0..n) (at w->pos); returns bytes used. */
static size_t classify(struct tarsplit_writer *w, const unsigned char *data,
		       size_t n)
{
	size_t used = 0;

	while (used < n && !w->state) {
		long long p = w->pos;
		size_t avail = n - used, take;
		if (w->cs < w->ce && p >= w->cs && p < w->ce) {
			if (p == w->cs) {
				size_t plen = strlen(w->cpath);
				unsigned char pl[2] = { plen & 0xff, plen >> 8 };
				flush_raw(w);
				if (plen > 0xffff ||
				    put_record(w->f, REC_FILE,
					       (unsigned long long)(w->ce - w->cs)) ||
				    fwrite(pl, 1, 2, w->f) != 2 ||
				    fwrite(w->cpath, 1, plen, w->f) != plen)
					w->state = -EIO;
			}
			take = (unsigned long long)(w->ce - p) < avail
				       ? (size_t)(w->ce - p) : avail;
		} else {
			long long limit = w->frontier;
			if (w->cs < w->ce && w->cs > p && w->cs < limit)
				limit = w->cs;
			if (limit <= p)
				break;
			take = (unsigned long long)(limit - p) < avail
				       ? (size_t)(limit - p) : avail;
			add_raw(w, data + used, take);
		}
		used += take;
		w->pos += (long long)take;
	}
	return used;
}

void tarsplit_writer_feed(struct tarsplit_writer *w, const void *data,
			  size_t len)
{
	const unsigned char *d = data;
	size_t used;

	if (!w || w->state)
		return;
	if (w->pend_len == w->pend_off) {
		/* Nothing waiting: classify in place, keep only the rest. */
		w->pend_off = w->pend_len = 0;
		used = classify(w, d, len);
		d += used;
		len -= used;
	}
	if (len == 0)
		return;
	if (w->pend_off > 0) {
		memmove(w->pend, w->pend + w->pend_off, w->pend_len - w->pend_off);
		w->pend_len -= w->pend_off;
		w->pend_off = 0;
	}
	if (w->pend_len + len > w->pend_cap) {
		size_t cap = w->pend_cap ? w->pend_cap : 1 << 16;
		while (cap < w->pend_len + len)
			cap *= 2;
		unsigned char *grown = realloc(w->pend, cap);
		if (!grown) {
			w->state = -ENOMEM;
			return;
		}
		w->pend = grown;
		w->pend_cap = cap;
	}
	memcpy(w->pend + w->pend_len, d, len);
	w->pend_len += len;
}

static void classify_pending(struct tarsplit_writer *w)
{
	w->pend_off += classify(w, w->pend + w->pend_off,
				w->pend_len - w->pend_off);
}

/* The previous content must end, padded, where this header begins. */
static void check_header(struct tarsplit_writer *w, long long header_pos)
{
	if (w->next_header >= 0 && header_pos != w->next_header && !w->state)
		w->state = -EAGAIN;
	w->next_header = -1;
}

void tarsplit_writer_entry(struct tarsplit_writer *w, long long header_pos,
			   long long data_pos, const char *content_path,
			   long long content_size, bool sparse)
{
	if (!w || w->state)
		return;
	check_header(w, header_pos);
	if (sparse) {
		w->state = -ENOTSUP;
		return;
	}
	if (data_pos < w->frontier || data_pos < header_pos) {
		w->state = -EAGAIN;
		return;
	}
	w->frontier = data_pos;
	if (content_path && content_size > 0) {
		free(w->cpath);
		if (!(w->cpath = strdup(content_path))) {
			w->state = -ENOMEM;
			return;
		}
		w->cs = data_pos;
		w->ce = data_pos + content_size;
		w->frontier = w->ce;
		w->next_header = data_pos + ((content_size + 511) & ~511LL);
	}
	classify_pending(w);
}

void tarsplit_writer_end(struct tarsplit_writer *w, long long header_pos)
{
	if (!w || w->state)
		return;
	check_header(w, header_pos);
	w->frontier = LLONG_MAX;
	classify_pending(w);
}

int tarsplit_writer_finish(struct tarsplit_writer *w, bool keep,
			   char err[ERRLEN])
{
	int r;

	if (!w)
		return -ENOTSUP;
	if (keep && !w->state && w->frontier != LLONG_MAX)
		w->state = -EAGAIN;    /* never told where the tar ends */
	if (keep && !w->state && w->pend_off != w->pend_len)
		w->state = -EAGAIN;
	flush_raw(w);
	if (keep && !w->state && put_record(w->f, REC_END, 0))
		w->state = -EIO;
	r = keep ? w->state : -ENOTSUP;
	if (fclose(w->f) != 0 && r == 0)
		r = -EIO;
	if (r < 0)
		unlink(w->dest);
	if (r == -EIO || r == -ENOMEM)
		snprintf(err, ERRLEN, "%s: cannot record its tar layout: %s",
			 w->dest, strerror(-r));
	free(w->pend);
	free(w->raw);
	free(w->cpath);
	free(w->dest);
	free(w);
	return r;
}

static int get_record(FILE *f, int *kind, unsigned long long *len)
{
	unsigned char hdr[9];

	if (fread(hdr, 1, sizeof(hdr), f) != sizeof(hdr))
		return -EIO;
	*kind = hdr[0];
	*len = 0;
	for (int i = 7; i >= 0; i--)
		*len = (*len << 8) | hdr[1 + i];
	return 0;
}

/* Copy len bytes from in (FILE or fd) to out, hashing them. */
static int copy_out(FILE *in, int in_fd, unsigned long long len, int out_fd,
		    struct sha256 *h)
{
	char buf[1 << 16];

	while (len > 0) {
		size_t want = len < sizeof(buf) ? (size_t)len : sizeof(buf);
		ssize_t got = in ? (ssize_t)fread(buf, 1, want, in)
				 : read(in_fd, buf, want);
		if (got <= 0)
			return -EIO;
		sha256_update(h, buf, (size_t)got);
		for (ssize_t done = 0; done < got;) {
			ssize_t w = write(out_fd, buf + done, (size_t)(got - done));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return w < 0 ? -errno : -EIO;
			done += w;
		}
		len -= (unsigned long long)got;
	}
	return 0;
}

int tarsplit_rebuild(const char *skeleton, const char *layer_dir,
		     int out_fd, char hex[HEXLEN + 1], long long *ret_size,
		     char err[ERRLEN])
{
	FILE *f = fopen(skeleton, "rbe");
	int dir = open(layer_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct sha256 *h = sha256_new();
	char magic[8], path[PATH_MAX];
	long long size = 0;
	int r = 0;

	if (!f || dir < 0 || !h || fread(magic, 1, 8, f) != 8 ||
	    memcmp(magic, TARSPLIT_MAGIC, 8) != 0) {
		snprintf(err, ERRLEN, "%s: not a tar layout record", skeleton);
		r = -EINVAL;
		goto out;
	}
	for (;;) {
		int kind;
		unsigned long long len;
		if (get_record(f, &kind, &len) < 0) {
			r = -EIO;
			break;
		}
		if (kind == REC_END)
			break;
		if (kind == REC_RAW) {
			r = copy_out(f, -1, len, out_fd, h);
		} else if (kind == REC_FILE) {
			unsigned char pl[2];
			size_t plen;
			if (fread(pl, 1, 2, f) != 2 ||
			    (plen = (size_t)(pl[0] | pl[1] << 8)) >= sizeof(path) ||
			    fread(path, 1, plen, f) != plen) {
				r = -EIO;
				break;
			}
			path[plen] = '\0';
			/* Resolved beneath the layer, never through a link, and
			 * never a FIFO or device whatever the record says. */
			struct open_how how = {
				.flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
					 O_CLOEXEC,
				.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
					   RESOLVE_NO_MAGICLINKS,
			};
			int fd = (int)syscall(SYS_openat2, dir, path, &how,
					      sizeof(how));
			if (fd < 0) {
				snprintf(err, ERRLEN, "%s: %.300s: %s", layer_dir, path,
					 strerror(errno));
				r = -errno;
				break;
			}
			struct stat st;
			if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
			    (unsigned long long)st.st_size != len ||
			    fcntl(fd, F_SETFL, 0) < 0) {
				snprintf(err, ERRLEN, "%s: %.300s: changed since "
					 "import", layer_dir, path);
				close(fd);
				r = -ESTALE;
				break;
			}
			r = copy_out(NULL, fd, len, out_fd, h);
			close(fd);
			if (r < 0)
				snprintf(err, ERRLEN, "%s: %.300s: shorter than when "
					 "imported", layer_dir, path);
		} else {
			r = -EIO;
		}
		if (r < 0)
			break;
		size += (long long)len;
	}
	if (r < 0 && !err[0])
		snprintf(err, ERRLEN, "%s: damaged tar layout record", skeleton);
out:
	if (h)
		sha256_final_hex(h, hex);
	if (f)
		fclose(f);
	if (dir >= 0)
		close(dir);
	if (r == 0)
		*ret_size = size;
	return r;
}
