/*
 * layerctl.h - the image tools' shared pieces: the store (store.c), sha256
 * digests (digest.c) and the verbs (one file each, dispatched by
 * layerctl.c).
 *
 * Errors follow the core's convention: functions return 0 or -errno and
 * explain a failure in an `err` buffer; the verb prints
 * "layerctl: <verb>: <err>" and exits 1.
 */
#ifndef LAYERCTL_H
#define LAYERCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#define ERRLEN 1024
#define HEXLEN 64

/* ---- digest.c ---------------------------------------------------------- */

struct sha256;    /* a running digest */

struct sha256 *sha256_new(void);
void sha256_update(struct sha256 *h, const void *data, size_t len);
/* Finish into 64 hex digits + NUL and free h. */
void sha256_final_hex(struct sha256 *h, char hex[HEXLEN + 1]);
void sha256_hex_of(const void *data, size_t len, char hex[HEXLEN + 1]);
/* sha256 of a whole file. */
int sha256_file(const char *path, char hex[HEXLEN + 1], char err[ERRLEN]);
/* sha256 of a (possibly gzip/zstd/xz compressed) file's decompressed
 * bytes, decompressed by libarchive. */
int sha256_decompressed(const char *path, const char *what,
			char hex[HEXLEN + 1], char err[ERRLEN]);
/* "sha256:<64 hex>" -> hex; false if it is not that. */
bool digest_parse(const char *digest, char hex[HEXLEN + 1]);
bool is_hex64(const char *s);

/* ---- store.c ----------------------------------------------------------- */

struct store {
	char *root;    /* owned */
	unsigned created;   /* skeleton dirs store_open made (bit i: dirs[i]) */
};

int store_open(struct store *s, const char *root, bool create,
	       char err[ERRLEN]);
void store_close(struct store *s);
/* Remove the skeleton directories this store_open made, if still empty:
 * a failed first command leaves no trace. */
void store_undo_skeleton(struct store *s);
/* Serialise the commit phase of writers (an flock on STORE/lock); returns
 * an fd to pass to store_unlock, or -errno. */
int store_lock(const struct store *s, char err[ERRLEN]);
void store_unlock(int fd);
/* A path inside the store (owned by the caller). */
char *store_path(const struct store *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* "dir/rel" (owned), or NULL without memory. */
char *path_join(const char *dir, const char *rel);
/* A fresh staging directory under STORE/tmp (owned path). */
char *store_staging(const struct store *s, char err[ERRLEN]);
bool store_has_layer(const struct store *s, const char *diff_hex);

/* repositories.json: "name:tag" -> "sha256:<id>". */
json_t *store_load_repos(const struct store *s, char err[ERRLEN]);
int store_save_repos(const struct store *s, json_t *repos, char err[ERRLEN]);
/* "name" -> "name:latest"; owned. */
char *normalize_tag(const char *ref);
/* Resolve IMAGE (name[:tag], sha256:<id>, or an id prefix of 12+ hex). */
int store_resolve_image(const struct store *s, const char *ref,
			char id[HEXLEN + 1], char err[ERRLEN]);
/* The image config (owned JSON). */
json_t *store_load_config(const struct store *s, const char *id,
			  char err[ERRLEN]);
/* diff ids of an image, bottom first (owned array of hex strings). */
int config_diff_ids(json_t *config, char (**ret)[HEXLEN + 1], size_t *ret_n,
		    char err[ERRLEN]);
/* Chain ids as Docker defines them, for diff ids bottom first. */
void chain_ids(char (*diff)[HEXLEN + 1], size_t n, char (*chain)[HEXLEN + 1]);

/* Write data to path atomically (temp file + rename). */
int write_file_atomic(const char *path, const void *data, size_t len,
		      char err[ERRLEN]);
/* Read a whole file (owned, NUL-terminated). */
char *read_file(const char *path, size_t *ret_len, char err[ERRLEN]);
/* rm -rf. */
int remove_tree(const char *path);
int make_dirs(const char *path, mode_t mode);

/* ---- tarsplit.c: a layer tar's bytes besides file contents ------------ */

/* Record blob's (any compression) layout into dest; -ENOTSUP (and no
 * file) for a tar it cannot describe. */
int tarsplit_record(const char *blob, const char *dest, char err[ERRLEN]);
/* Write the original tar to out_fd from the record and the extracted
 * layer; hex gets its sha256 (the caller compares with the diff_id). */
int tarsplit_rebuild(const char *skeleton, const char *layer_dir, int out_fd,
		     char hex[HEXLEN + 1], long long *ret_size, char err[ERRLEN]);
/* The same from an open blob (read from its start, the fd's offset left
 * alone). */
int tarsplit_record_fd(int fd, const char *blob, const char *dest,
		       char err[ERRLEN]);

/* Recording while the tar is read once (extract.c): feed every byte of
 * the decompressed stream in order; tell each entry's header position and
 * where its data begins (libarchive's archive_read_header_position and
 * archive_filter_bytes(a, 0) after the header), with the name and size of
 * a regular file's content; then where the end marker is.  finish: 0 (the
 * record is written), -ENOTSUP (sparse entries: no record), -EAGAIN (the
 * stream broke the layout rule: no record, use tarsplit_record_fd), or
 * -errno with err.  Without keep, no record and -ENOTSUP.  NULL w: no-op. */
struct tarsplit_writer;
struct tarsplit_writer *tarsplit_writer_new(const char *dest, char err[ERRLEN]);
void tarsplit_writer_feed(struct tarsplit_writer *w, const void *data,
			  size_t len);
void tarsplit_writer_entry(struct tarsplit_writer *w, long long header_pos,
			   long long data_pos, const char *content_path,
			   long long content_size, bool sparse);
void tarsplit_writer_end(struct tarsplit_writer *w, long long header_pos);
int tarsplit_writer_finish(struct tarsplit_writer *w, bool keep,
			   char err[ERRLEN]);

/* ---- extract.c: a layer blob read once --------------------------------- */

/*
 * Read the blob at fd (from its start; any compression libarchive knows)
 * once: its sha256, its decompressed bytes' sha256, and with dest the tar
 * extracted there (every entry checked: no "..", no absolute names, names
 * within NAME_MAX and PATH_MAX, nothing made through a symbolic link, hard
 * links inside the tree, devices only as root, others skipped with a note
 * in `skipped`) and, with tarsplit, its layout recorded.  The caller must
 * compare the digests before trusting anything extracted.  Failures are
 * kept apart, each with its message: reading or decompressing (read_r),
 * the tar or an entry (extract_r), the record (record_r; -EAGAIN: record
 * it with tarsplit_record_fd).  Returns the first of them that is not 0.
 */
struct layer_pass {
	const char *what;            /* the blob's name, for messages */
	const char *dest;            /* extract into this directory, or NULL */
	const char *tarsplit;        /* with dest: record the layout here */
	bool outer;                  /* an image archive: files and dirs only */
	bool no_blob_digest;         /* nothing checks blob_hex: left "" */
	void (*progress)(long long bytes);   /* data written, or NULL */

	char blob_hex[HEXLEN + 1];   /* sha256 of the blob */
	char diff_hex[HEXLEN + 1];   /* sha256 of its decompressed bytes */
	long long files, size;       /* entries and bytes extracted */
	bool recorded;               /* the tarsplit record was written */
	char *skipped;               /* owned: lines to print if all is well */
	int read_r, extract_r, record_r;
	char read_err[ERRLEN], extract_err[ERRLEN], record_err[ERRLEN];
};
int layer_pass_run(int fd, struct layer_pass *p);

/* ---- extract.c: the name check of import (manifest names, tar entry
 * names, hard link targets): relative, no "..", components within
 * NAME_MAX, the whole within PATH_MAX. */
bool path_is_safe_relative(const char *p);

/* ---- export.c, import.c: pieces commit.c shares ----------------------- */

/* Tar a container's upper directory as an OCI layer (export's canonical
 * form, whiteouts and opaque marks as ".wh." entries, overlay xattrs left
 * out, the data of metadata-only copies from lowers, the image's layer
 * directories top first) into dest; hex gets its sha256 (the new layer's
 * diff_id). */
int tar_upper_layer(const char *upper, char *const *lowers, size_t n_lowers,
		    const char *dest, char hex[HEXLEN + 1], long long *size,
		    char err[ERRLEN]);
/* Enter an image into the store: config bytes (its id is their sha256),
 * whose diff_ids are all in the store but the last, the layer tar
 * new_layer; tag may be NULL.  All or nothing, under the store lock. */
int import_image_with_layer(struct store *s, const char *config_bytes,
			    size_t config_len, const char *new_layer,
			    const char *tag, char id[HEXLEN + 1],
			    char err[ERRLEN]);

/* ---- the verbs ----------------------------------------------------------- */

/* proc.c: running processes.  fn(pid) for each until it returns true;
 * returns 1 if it did, 0 if none did, -errno if /proc cannot be read. */
int proc_each_pid(bool (*fn)(const char *pid, void *arg), void *arg);
/* /proc/<pid>/<file> whole, NUL-terminated (*ret_len: its length), or
 * NULL (gone, empty, out of memory). */
char *proc_read(const char *pid, const char *file, size_t *ret_len);
bool proc_comm_is(const char *pid, const char *name);
/* pid's argv (NUL-separated, *ret_len bytes) if it is layerfs (by argv[0]
 * or comm), else NULL. */
char *proc_layerfs_argv(const char *pid, size_t *ret_len);

int cmd_import(struct store *s, int argc, char **argv);
int cmd_images(struct store *s, int argc, char **argv);
int cmd_inspect(struct store *s, int argc, char **argv);
int cmd_mount(struct store *s, int argc, char **argv);
int cmd_umount(struct store *s, int argc, char **argv);
int cmd_which(struct store *s, int argc, char **argv);     /* which.c */
int cmd_ps(struct store *s, int argc, char **argv);        /* mount.c */
int cmd_export(struct store *s, int argc, char **argv);    /* export.c */
int cmd_rm(struct store *s, int argc, char **argv);        /* maintain.c */
int cmd_gc(struct store *s, int argc, char **argv);        /* maintain.c */
int cmd_verify(struct store *s, int argc, char **argv);    /* maintain.c */
int cmd_commit(struct store *s, int argc, char **argv);    /* commit.c */
int cmd_history(struct store *s, int argc, char **argv);   /* inspect.c */
int cmd_bench(struct store *s, int argc, char **argv);     /* bench.c */

/* Print "layerctl: <verb>: <msg>" to stderr; returns 1 (the exit code). */
int fail_verb(const char *verb, const char *msg);

#endif /* LAYERCTL_H */
