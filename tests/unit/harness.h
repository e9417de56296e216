/*
 * harness.h - the unit tests' tiny harness.
 *
 * A test is `TEST(name) { ... }` in any .c file of tests/unit; it registers
 * itself before main() runs.  Each test gets a fresh temporary directory
 * (t_tmp) that is removed afterwards, and may defer clean-ups (t_defer) that
 * run, newest first, however the test ends.
 *
 * The first failed CHECK ends the test (it jumps back to the runner), so a
 * check may sit anywhere, even in a helper, as long as the thread is the
 * test's own: worker threads record errors and let the test check them
 * after joining.
 *
 * Output: one line per test on stdout, "PASS name", "FAIL name: reason" or
 * "SKIP name: reason"; the exit status is 1 when a test failed.
 *
 * Layer stacks are written in a small text language (see t_build):
 *
 *     L0 f etc/os-release "top"      regular file (parents made as needed)
 *     L1 d etc                       directory
 *     L1 wh etc/old                  whiteout: char device 0/0
 *     L1 ociwh etc/old               whiteout: OCI etc/.wh.old
 *     L2 xwh etc/x                   whiteout: empty file with the xattr
 *                                    trusted.overlay.whiteout, parent marked
 *                                    trusted.overlay.opaque=x (uxwh: user.)
 *     L1 opq etc                     opaque: trusted.overlay.opaque=y
 *                                    (uopq: user.overlay.opaque=y)
 *     L1 ociopq etc                  opaque: OCI etc/.wh..wh..opq
 *     L0 l lnk -> target             symbolic link
 *     L0 h a/hardlink = a/file       hard link inside the layer
 *     L0 c dev 1 3                   character device 1/3
 *     L0 p fifo                      FIFO
 *     L0 x file user.k=v             set an xattr on an existing path
 *                                    ("user.k=" sets it empty)
 *
 * "." names the layer root; `#` starts a comment; "..." quotes, with
 * \n \t \\ \" escapes.
 */
#ifndef UNIT_HARNESS_H
#define UNIT_HARNESS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "layerfs.h"

struct t;
typedef void (*t_fn)(struct t *t);

void t_register(const char *name, t_fn fn, const char *file, int line);

#define TEST(name)                                                        \
	static void test_##name(struct t *t);                             \
	__attribute__((constructor)) static void register_##name(void)    \
	{                                                                 \
		t_register(#name, test_##name, __FILE__, __LINE__);       \
	}                                                                 \
	static void test_##name(struct t *t)

/* ---- ending a test ---------------------------------------------------- */

_Noreturn void t_fail_at(struct t *t, const char *file, int line,
			 const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
_Noreturn void t_skip(struct t *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define FAIL(...) t_fail_at(t, __FILE__, __LINE__, __VA_ARGS__)

#define CHECK(cond)                                                       \
	do {                                                              \
		if (!(cond))                                              \
			FAIL("%s", #cond);                                \
	} while (0)

#define CHECKF(cond, ...)                                                 \
	do {                                                              \
		if (!(cond))                                              \
			FAIL(__VA_ARGS__);                                \
	} while (0)

#define CHECK_INT(got, want)                                              \
	do {                                                              \
		long long got_ = (long long)(got);                        \
		long long want_ = (long long)(want);                      \
		if (got_ != want_)                                        \
			FAIL("%s = %lld, want %lld", #got, got_, want_);  \
	} while (0)

#define CHECK_U64(got, want)                                              \
	do {                                                              \
		unsigned long long got_ = (unsigned long long)(got);      \
		unsigned long long want_ = (unsigned long long)(want);    \
		if (got_ != want_)                                        \
			FAIL("%s = %llu, want %llu", #got, got_, want_);  \
	} while (0)

#define CHECK_STR(got, want)                                              \
	do {                                                              \
		const char *got_ = (got);                                 \
		const char *want_ = (want);                               \
		if (!got_ || strcmp(got_, want_) != 0)                    \
			FAIL("%s = \"%s\", want \"%s\"", #got,            \
			     got_ ? got_ : "(null)", want_);              \
	} while (0)

/* expr returns 0 or a count on success, -errno on failure. */
#define CHECK_OK(expr)                                                    \
	do {                                                              \
		long long r_ = (long long)(expr);                         \
		if (r_ < 0)                                               \
			FAIL("%s failed: %s", #expr, t_errname((int)-r_));\
	} while (0)

/* expr must fail with -err. */
#define CHECK_ERR(expr, err)                                              \
	do {                                                              \
		long long r_ = (long long)(expr);                         \
		if (r_ != -(long long)(err))                              \
			FAIL("%s = %s, want -%s", #expr,                  \
			     r_ < 0 ? t_errname((int)-r_) : "success",    \
			     t_errname(err));                             \
	} while (0)

/* "ENOENT" for ENOENT, else the number. */
const char *t_errname(int err);
bool t_contains(const char *haystack, const char *needle);

/* ---- resources -------------------------------------------------------- */

const char *t_tmp(struct t *t);     /* this test's own temporary dir */
/* Run fn(a, b) when the test ends, newest first. */
void t_defer(struct t *t, void (*fn)(void *a, void *b), void *a, void *b);
/* Take p (from malloc) to free when the test ends; NULL fails the test. */
void *t_own(struct t *t, void *p);
/* A string freed when the test ends. */
char *t_printf(struct t *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Another temporary dir under `under` (e.g. on another filesystem),
 * removed when the test ends. */
char *t_mkdtemp(struct t *t, const char *under);

/* ---- layer stacks ----------------------------------------------------- */

/* Make the layers a spec describes under base (base/L0, base/L1, ...);
 * returns the number of layers named (highest index + 1).  A missing
 * privilege (mknod, trusted.* xattrs) skips the test. */
int t_build(struct t *t, const char *base, const char *spec);
/* Path of layer i under base (owned by the test). */
char *t_layer_path(struct t *t, const char *base, int i);
/* Open base/L0..L<n-1> as one read-only fs, freed when the test ends. */
struct lfs_fs *t_open(struct t *t, const char *base, int n_layers);
/* Open these layer paths as one read-only fs, freed when the test ends. */
struct lfs_fs *t_open_paths(struct t *t, char *const *paths, size_t n);
/* Build the spec in t_tmp and open it; t_fs_n adds empty layers so that
 * there are n in all. */
struct lfs_fs *t_fs(struct t *t, const char *spec);
struct lfs_fs *t_fs_n(struct t *t, int n_layers, const char *spec);

/* ---- the merged view, by path ("" or "." is the root) ------------------ */

/* Look path up component by component; 0 with *ret holding one reference
 * (may be NULL: then none is kept), or -errno. */
int t_walk(struct lfs_fs *fs, const char *path, struct lfs_node **ret,
	   struct stat *ret_st);
/* 0 if path is visible, else -errno. */
int t_lookup(struct lfs_fs *fs, const char *path);
/* The node of path (must exist); its reference is dropped at test end. */
struct lfs_node *t_node(struct t *t, struct lfs_fs *fs, const char *path);
struct stat t_stat(struct t *t, struct lfs_fs *fs, const char *path);
uint32_t t_layer(struct t *t, struct lfs_fs *fs, const char *path);
/* A regular file's content, read through lfs_open (owned by the test). */
char *t_cat(struct t *t, struct lfs_fs *fs, const char *path);
/* A symlink's target through lfs_readlink (owned by the test). */
char *t_readlink(struct t *t, struct lfs_fs *fs, const char *path);

struct t_dirent {
	char *name;
	uint64_t ino;
	unsigned char type;
	off_t next_off;
};
/* The whole listing of directory path, ".", ".." and all, in readdir
 * order (owned by the test). */
size_t t_readdir(struct t *t, struct lfs_fs *fs, const char *path,
		 struct t_dirent **ret);
/* The visible names of directory path, sorted, separated by one space;
 * fails the test if the listing does not start with "." and "..", or
 * shows a name twice. */
char *t_ls(struct t *t, struct lfs_fs *fs, const char *path);

/* ---- writable stacks (layer 0 is the upper) ------------------------------ */

/*
 * Build the spec in t_tmp (L0 is the upper layer, an ordinary directory)
 * and open it writable, with the work dir t_workdir(t) (t_tmp/W) on the
 * same filesystem; freed when the test ends.  t_fs_rw writes char device
 * whiteouts (skips the test if mknod is not allowed); t_fs_rw_fmt takes
 * the whiteout format; the _n forms add empty layers so there are n.
 */
struct lfs_fs *t_fs_rw(struct t *t, const char *spec);
struct lfs_fs *t_fs_rw_n(struct t *t, int n_layers, const char *spec);
struct lfs_fs *t_fs_rw_fmt(struct t *t, enum lfs_whiteout_format format,
			   const char *spec);
/* Open base/L0..L<n-1> writable with work dir workdir. */
struct lfs_fs *t_open_rw(struct t *t, const char *base, int n_layers,
			 const char *workdir, enum lfs_whiteout_format format);
/* A second, fresh fs over the layers of the last t_fs_rw*: it reads
 * everything from disk.  Read-only (no work dir is touched), or writable
 * (it empties the work dir, as a new mount does). */
struct lfs_fs *t_reopen_ro(struct t *t);
struct lfs_fs *t_reopen_rw(struct t *t);

/* On-disk paths under t_tmp: the upper layer (rel "" or "." for its
 * root), a lower layer, the work dir given to the fs, and the work dir's
 * "work" subdir where changes are staged. */
char *t_upper(struct t *t, const char *rel);
char *t_lower(struct t *t, int layer, const char *rel);
const char *t_workdir(struct t *t);
char *t_work_subdir(struct t *t);

/* ---- the layers on disk ------------------------------------------------ */

/* lstat(2) that fails the test on error. */
struct stat t_lstat(struct t *t, const char *path);
/* True if path exists (lstat succeeds). */
bool t_exists(const char *path);
/* True if path is a char device 0/0 (an overlay whiteout). */
bool t_is_chardev_whiteout(const char *path);
/* The names in a real directory, sorted, separated by one space ("" for
 * an empty one; "." and ".." left out). */
char *t_disk_ls(struct t *t, const char *dir);
/* A real file's content (owned by the test). */
char *t_disk_cat(struct t *t, const char *path);
/* An xattr's value (not followed through links) as a string, or NULL if
 * the object has none of that name. */
char *t_disk_xattr(struct t *t, const char *path, const char *name);
/* Everything about a real tree, one line per object, sorted by path:
 * type, mode, owner, size, mtime, ctime, rdev, link target, content and
 * every xattr - two equal dumps mean nothing in the tree changed. */
char *t_disk_tree(struct t *t, const char *dir);
/* What the work dir's "work" subdir holds (t_disk_ls): "" when no change
 * left anything behind. */
char *t_work_ls(struct t *t);

/* ---- the merged view, whole ----------------------------------------------- */

/* The whole merged tree, one line per name, sorted by path: type, mode,
 * owner, size, rdev, link target and file content (not st_ino, which may
 * differ between two fs over the same layers). */
char *t_tree(struct t *t, struct lfs_fs *fs);

/* ---- handles ------------------------------------------------------------- */

/* fd >= 0 is closed when the test ends; fd < 0 fails the test (what). */
int t_keep_fd_at(struct t *t, const char *file, int line, int fd,
		 const char *what);
#define t_keep_fd(t, fd) t_keep_fd_at(t, __FILE__, __LINE__, fd, #fd)
/* Drop one reference of node when the test ends; returns node. */
struct lfs_node *t_keep_node(struct t *t, struct lfs_fs *fs,
			     struct lfs_node *node);
/* All of fd's data from offset 0 (owned by the test). */
char *t_pread_all(struct t *t, int fd);
/* Write s at offset 0 of fd, all of it. */
void t_pwrite_str(struct t *t, int fd, const char *s);

#endif /* UNIT_HARNESS_H */
