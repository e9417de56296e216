/*
 * upper.c - the writable upper layer: its work directory, and what its
 * filesystem allows, probed once at mount.
 *
 * Everything published in the upper layer is first built in
 * <workdir>/work and renamed into place, so a crash leaves either the old
 * or the new object visible, never a partial one.  What a crash left in
 * the work directory is removed at the next mount.  The name "work" is
 * kernel overlayfs's, so either can use the other's workdir.
 *
 * The probes: can we mknod a char 0/0 whiteout (root, or a user namespace
 * on a kernel that allows it)?  Which opaque xattr can we set (trusted.*
 * needs CAP_SYS_ADMIN; user.* needs a filesystem that takes it)?  Does
 * FICLONE work from the lower layers into the upper?  Does
 * copy_file_range?  Hot paths read the answers as flags.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "layerfs_i.h"

#define WORK_SUBDIR "work"
#define INDEX_SUBDIR "index"
#define VOLATILE_MARK "incompat/volatile"

void lfs_upper_tmpname(struct lfs_upper *u, char buf[32])
{
	snprintf(buf, 32, "#lfs.%u", atomic_fetch_add(&u->tmp_seq, 1));
}

/* Remove everything inside the directory name of dir_fd ("." for
 * dir_fd itself); the first error is returned, the rest still tried. */
static int remove_entries(int dir_fd, const char *name)
{
	int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					      O_CLOEXEC);
	DIR *dir;
	struct dirent *de;
	int r = 0;

	if (fd < 0)
		return -errno;
	dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return -ENOMEM;
	}
	while ((de = readdir(dir)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		int rr = lfs_upper_remove_tree(dirfd(dir), de->d_name);
		if (rr < 0 && r == 0)
			r = rr;
	}
	closedir(dir);
	return r;
}

int lfs_upper_remove_tree(int dir_fd, const char *name)
{
	int r;

	if (unlinkat(dir_fd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	r = remove_entries(dir_fd, name);
	if (r == 0 && unlinkat(dir_fd, name, AT_REMOVEDIR) < 0)
		r = -errno;
	return r;
}

int lfs_upper_open_dir(const struct lfs_upper *u, const char *relpath)
{
	int fd = openat(u->root_fd, relpath,
			O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

/* Empty the work directory: anything there is a crash's leftover. */
static int clean_work(struct lfs_upper *u)
{
	return remove_entries(u->work_fd, ".");
}

static bool probe_chardev_whiteout(struct lfs_upper *u)
{
	char tmp[32];

	lfs_upper_tmpname(u, tmp);
	if (mknodat(u->work_fd, tmp, S_IFCHR | 0, makedev(0, 0)) < 0)
		return false;
	unlinkat(u->work_fd, tmp, 0);
	return true;
}

static const char *probe_opaque_xattr(struct lfs_upper *u)
{
	static const char *const candidates[] = {
		"trusted.overlay.opaque", "user.overlay.opaque",
	};
	const char *found = NULL;
	char tmp[32], path[PATH_MAX];

	lfs_upper_tmpname(u, tmp);
	if (mkdirat(u->work_fd, tmp, 0700) < 0)
		return NULL;
	if (lfs_proc_path(path, u->work_fd, tmp) == 0)
		for (size_t i = 0; !found && i < 2; i++)
			if (lsetxattr(path, candidates[i], "y", 1, 0) == 0)
				found = candidates[i];
	unlinkat(u->work_fd, tmp, AT_REMOVEDIR);
	return found;
}

/* FICLONE and copy_file_range from a file of the lower filesystem (or,
 * with no lower file at hand, of the upper's) into the upper's. */
static void probe_copy(struct lfs_upper *u, const struct lfs_layer *lower)
{
	char src_name[32], dst_name[32];
	int src, dst;

	lfs_upper_tmpname(u, src_name);
	lfs_upper_tmpname(u, dst_name);
	src = openat(u->work_fd, src_name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC,
		     0600);
	dst = openat(u->work_fd, dst_name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC,
		     0600);
	if (src >= 0 && dst >= 0 && write(src, "x", 1) == 1) {
		bool same_fs = true;
		struct stat a, b;
		if (lower && fstat(lower->root_fd, &a) == 0 &&
		    fstatat(u->root_fd, "", &b, AT_EMPTY_PATH) == 0)
			same_fs = a.st_dev == b.st_dev;
		/* Across filesystems neither can work. */
		u->can_reflink = same_fs && ioctl(dst, FICLONE, src) == 0;
		loff_t in = 0, out = 0;
		atomic_store(&u->can_copy_range,
			     copy_file_range(src, &in, dst, &out, 1, 0) == 1);
	}
	if (src >= 0)
		close(src);
	if (dst >= 0)
		close(dst);
	unlinkat(u->work_fd, src_name, 0);
	unlinkat(u->work_fd, dst_name, 0);
}

/* <workdir>/index: one hard link per copied-up lower hard link, named by
 * the lower inode, kept across mounts (as kernel overlayfs's index=on).
 * Without it hard links still work, each name copied on its own. */
static void open_index(struct lfs_upper *u, const char *workdir)
{
	int wfd = open(workdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	int fd;
	DIR *dir;
	struct dirent *de;

	if (wfd < 0)
		return;
	if (mkdirat(wfd, INDEX_SUBDIR, 0700) < 0 && errno != EEXIST) {
		close(wfd);
		return;
	}
	u->index_fd = openat(wfd, INDEX_SUBDIR,
			     O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	fd = openat(wfd, INDEX_SUBDIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	close(wfd);
	if (fd < 0 || !(dir = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(dir)) != NULL)
		if (de->d_name[0] != '.') {
			atomic_store(&u->has_index, true);
			break;
		}
	closedir(dir);
}

int lfs_upper_open(struct lfs_upper *u, const struct lfs_layer *upper,
		   const struct lfs_layer *lower, const char *workdir,
		   enum lfs_whiteout_format format, bool volatile_upper,
		   char err[LFS_ERRLEN])
{
	struct stat wst;
	int wfd, r;

	memset(u, 0, sizeof(*u));
	u->root_fd = upper->root_fd;
	u->work_fd = -1;
	u->index_fd = -1;
	u->uid = geteuid();
	u->gid = getegid();
	atomic_init(&u->tmp_seq, 0);
	wfd = open(workdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (wfd < 0) {
		r = -errno;
		snprintf(err, LFS_ERRLEN, "workdir %s: %s", workdir,
			 strerror(-r));
		return r;
	}
	if (fstat(wfd, &wst) < 0 || wst.st_dev != upper->dev) {
		close(wfd);
		snprintf(err, LFS_ERRLEN,
			 "workdir %s and upperdir %s are not on the same "
			 "filesystem", workdir, upper->path);
		return -EXDEV;
	}
	if (mkdirat(wfd, WORK_SUBDIR, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		close(wfd);
		snprintf(err, LFS_ERRLEN, "workdir %s: cannot make %s: %s",
			 workdir, WORK_SUBDIR, strerror(-r));
		return r;
	}
	u->work_fd = openat(wfd, WORK_SUBDIR,
			    O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	r = u->work_fd < 0 ? -errno : 0;
	close(wfd);
	/* A volatile mount marks its upper (kernel overlayfs's mark, so either
	 * refuses the other's dirty upper) until it is unmounted cleanly:
	 * without syncs, a crash may have left the upper half written. */
	struct stat vst;
	if (r == 0 && fstatat(u->work_fd, VOLATILE_MARK, &vst,
			      AT_SYMLINK_NOFOLLOW) == 0) {
		snprintf(err, LFS_ERRLEN, "upperdir %s was mounted volatile and "
			 "not unmounted cleanly: its contents may be incomplete "
			 "(remove %s/%s/%s to use it anyway)", upper->path,
			 workdir, WORK_SUBDIR, VOLATILE_MARK);
		lfs_upper_close(u);
		return -EINVAL;
	}
	if (r == 0)
		r = clean_work(u);
	if (r == 0 && volatile_upper &&
	    ((mkdirat(u->work_fd, "incompat", 0700) < 0 && errno != EEXIST) ||
	     mkdirat(u->work_fd, VOLATILE_MARK, 0700) < 0))
		r = -errno;
	u->volatile_marked = r == 0 && volatile_upper;
	if (r < 0) {
		snprintf(err, LFS_ERRLEN, "workdir %s/%s: %s", workdir,
			 WORK_SUBDIR, strerror(-r));
		lfs_upper_close(u);
		return r;
	}
	bool chardev_ok = probe_chardev_whiteout(u);
	if (format == LFS_WHITEOUT_CHARDEV && !chardev_ok) {
		snprintf(err, LFS_ERRLEN, "whiteout=chardev: cannot make device "
			 "nodes in %s", workdir);
		lfs_upper_close(u);
		return -EPERM;
	}
	u->whiteout_chardev = format == LFS_WHITEOUT_OCI ? false : chardev_ok;
	u->opaque_xattr = probe_opaque_xattr(u);
	bool trusted = u->opaque_xattr &&
		       strncmp(u->opaque_xattr, "trusted.", 8) == 0;
	u->links_xattr = !u->opaque_xattr ? NULL
			 : trusted ? "trusted.overlay.layerfs.lower_links"
				   : "user.overlay.layerfs.lower_links";
	u->origin_xattr = !u->opaque_xattr ? NULL
			  : trusted ? "trusted.overlay.layerfs.origin"
				    : "user.overlay.layerfs.origin";
	u->metacopy_xattr = !u->opaque_xattr ? NULL
			    : trusted ? "trusted.overlay.metacopy"
				      : "user.overlay.metacopy";
	open_index(u, workdir);
	probe_copy(u, lower);
	u->fsync = true;
	return 0;
}

void lfs_upper_close(struct lfs_upper *u)
{
	/* A clean unmount: the volatile mark goes. */
	if (u->volatile_marked && u->work_fd >= 0) {
		unlinkat(u->work_fd, VOLATILE_MARK, AT_REMOVEDIR);
		unlinkat(u->work_fd, "incompat", AT_REMOVEDIR);
	}
	u->volatile_marked = false;
	if (u->work_fd >= 0)
		close(u->work_fd);
	if (u->index_fd >= 0)
		close(u->index_fd);
	u->work_fd = -1;
	u->index_fd = -1;
}
