/*
 * whiteout.c - the on-disk encodings of whiteouts and opaque directories.
 *
 * This is the only file that knows them (README.md, "On-disk formats"):
 *   whiteout: a char device 0/0 (kernel overlayfs), an OCI ".wh.<name>"
 *             file, or a zero-size regular file with the xattr
 *             {trusted,user}.overlay.whiteout inside a directory marked
 *             {trusted,user}.overlay.opaque=x (as kernel overlayfs >= 6.7
 *             reads them: the mark spares a syscall per regular file);
 *   opaque:   {trusted,user}.overlay.opaque=y, or an OCI ".wh..wh..opq"
 *             (and user.fuseoverlayfs.opaque=y, which older rootless
 *             fuse-overlayfs wrote into upper directories).
 * Deciding what to do with a whiteout is dirindex.c's business, not ours.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "layerfs_i.h"

#define OCI_WHITEOUT_PREFIX ".wh."
#define OCI_META_PREFIX ".wh..wh."
#define OCI_OPAQUE_NAME ".wh..wh..opq"

static const char *const opaque_xattrs[] = {
	"trusted.overlay.opaque",
	"user.overlay.opaque",
	"user.fuseoverlayfs.opaque",   /* older rootless fuse-overlayfs */
};
static const char *const whiteout_xattrs[] = {
	"trusted.overlay.whiteout",
	"user.overlay.whiteout",
};

bool lfs_whiteout_is_reserved_name(const char *name)
{
	return strncmp(name, OCI_WHITEOUT_PREFIX,
		       sizeof(OCI_WHITEOUT_PREFIX) - 1) == 0;
}

int lfs_whiteout_read_dir_marks(int dir_fd, struct lfs_dir_marks *ret)
{
	struct lfs_dir_marks marks = { 0 };

	for (size_t i = 0; i < sizeof(opaque_xattrs) / sizeof(*opaque_xattrs);
	     i++) {
		char value[8];
		ssize_t len = fgetxattr(dir_fd, opaque_xattrs[i], value,
					sizeof(value));
		if (len < 0) {
			/* No xattr, no xattr support, or a namespace we may
			 * not read: the directory carries no mark there. */
			if (errno == ENODATA || errno == ENOTSUP ||
			    errno == EPERM || errno == EACCES ||
			    errno == ERANGE)
				continue;
			return -errno;
		}
		if (len == 1 && value[0] == 'y')
			marks.opaque = true;
		else if (len == 1 && value[0] == 'x')
			marks.has_xwhiteouts = true;
	}
	*ret = marks;
	return 0;
}

static bool has_whiteout_xattr(int dir_fd, const char *name)
{
	char path[PATH_MAX];

	if (lfs_proc_path(path, dir_fd, name) < 0)
		return false;
	for (size_t i = 0;
	     i < sizeof(whiteout_xattrs) / sizeof(*whiteout_xattrs); i++)
		if (lgetxattr(path, whiteout_xattrs[i], NULL, 0) >= 0)
			return true;
	return false;
}

static unsigned char dtype_of_mode(mode_t mode)
{
	return (unsigned char)IFTODT(mode);
}

int lfs_whiteout_classify(int dir_fd, const struct lfs_dir_marks *marks,
			  const char *name, unsigned char type,
			  struct lfs_classified *ret)
{
	struct lfs_classified c = {
		.kind = LFS_ENTRY_OBJECT, .name = name, .type = type,
	};

	if (lfs_whiteout_is_reserved_name(name)) {
		if (strcmp(name, OCI_OPAQUE_NAME) == 0)
			c.kind = LFS_ENTRY_OPAQUE_MARK;
		else if (strncmp(name, OCI_META_PREFIX,
				 sizeof(OCI_META_PREFIX) - 1) == 0 ||
			 name[sizeof(OCI_WHITEOUT_PREFIX) - 1] == '\0')
			c.kind = LFS_ENTRY_IGNORED;
		else {
			c.kind = LFS_ENTRY_WHITEOUT;
			c.name = name + sizeof(OCI_WHITEOUT_PREFIX) - 1;
		}
		*ret = c;
		return 0;
	}

	bool maybe_xwhiteout = marks->has_xwhiteouts && type == DT_REG;
	if (type == DT_CHR || type == DT_UNKNOWN || maybe_xwhiteout) {
		struct stat st;
		if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		c.type = dtype_of_mode(st.st_mode);
		if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0))
			c.kind = LFS_ENTRY_WHITEOUT;
		else if (marks->has_xwhiteouts && S_ISREG(st.st_mode) &&
			 st.st_size == 0 && has_whiteout_xattr(dir_fd, name))
			c.kind = LFS_ENTRY_WHITEOUT;
	}
	*ret = c;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Writing into the upper layer                                        */

static int oci_name(char buf[NAME_MAX + 1], const char *name)
{
	int n = snprintf(buf, NAME_MAX + 1, OCI_WHITEOUT_PREFIX "%s", name);

	return n < 0 || n > NAME_MAX ? -ENAMETOOLONG : 0;
}

int lfs_whiteout_write(const struct lfs_upper *u, int dir_fd,
		       const char *name)
{
	char oci[NAME_MAX + 1];
	int fd, r;

	if (u->whiteout_chardev)
		return mknodat(dir_fd, name, S_IFCHR | 0, makedev(0, 0)) < 0
			       ? -errno : 0;
	r = oci_name(oci, name);
	if (r < 0)
		return r;
	fd = openat(dir_fd, oci, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW,
		    0);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

int lfs_whiteout_write_tmp(const struct lfs_upper *u, const char *tmp)
{
	if (!u->whiteout_chardev)
		return -ENOTSUP;
	return mknodat(u->work_fd, tmp, S_IFCHR | 0, makedev(0, 0)) < 0
		       ? -errno : 0;
}

int lfs_whiteout_remove_oci(int dir_fd, const char *name)
{
	char oci[NAME_MAX + 1];

	if (oci_name(oci, name) < 0)
		return 0;    /* such a whiteout cannot exist */
	if (unlinkat(dir_fd, oci, 0) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int lfs_whiteout_mark_opaque(const struct lfs_upper *u, int dir_fd)
{
	char path[PATH_MAX];
	int fd, r;

	if (u->opaque_xattr) {
		r = lfs_proc_path(path, dir_fd, "");
		if (r < 0)
			return r;
		/* Not lsetxattr: that would act on the /proc link itself. */
		return setxattr(path, u->opaque_xattr, "y", 1, 0) < 0 ? -errno
								       : 0;
	}
	fd = openat(dir_fd, OCI_OPAQUE_NAME,
		    O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}
