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

#endif /* UNIT_HARNESS_H */
