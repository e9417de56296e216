/*
 * pathbuf.c - paths for the few calls that have no *at() form.
 *
 * getxattr(2) and friends take a path, not (dirfd, name).  Going through
 * /proc/self/fd/<fd> keeps the resolution beneath the layer root the fd
 * names, so a layer path is never resolved again from "/".
 */
#include <errno.h>
#include <stdio.h>

#include "layerfs_i.h"

int lfs_proc_path(char buf[PATH_MAX], int dir_fd, const char *rel)
{
	int n = snprintf(buf, PATH_MAX, "/proc/self/fd/%d%s%s", dir_fd,
			 rel[0] ? "/" : "", rel);

	if (n < 0 || n >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}
