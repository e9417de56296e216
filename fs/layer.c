/*
 * layer.c - the stack of read-only layer directories.
 *
 * Every layer root is opened once, O_PATH|O_DIRECTORY, and all later access
 * is relative to that fd, so nothing is resolved through a path outside the
 * layer.  A layer named by a sha256 digest (".../<digest>" or Docker's
 * ".../<digest>/diff") is identified by it.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerfs_i.h"

static bool is_sha256_hex(const char *s, size_t len)
{
	if (len != 64)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isxdigit((unsigned char)s[i]) ||
		    isupper((unsigned char)s[i]))
			return false;
	return true;
}

/* The last path component of path[0..end), skipping trailing slashes. */
static void last_component(const char *path, size_t end, size_t *ret_start,
			   size_t *ret_len)
{
	while (end > 1 && path[end - 1] == '/')
		end--;
	size_t start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	*ret_start = start;
	*ret_len = end - start;
}

bool lfs_layer_digest_from_path(const char *path, char digest[65])
{
	size_t start, len;

	last_component(path, strlen(path), &start, &len);
	if (len == 4 && memcmp(path + start, "diff", 4) == 0)
		last_component(path, start, &start, &len);
	if (!is_sha256_hex(path + start, len))
		return false;
	memcpy(digest, path + start, 64);
	digest[64] = '\0';
	return true;
}

static int layer_open(struct lfs_layer *L, const char *path,
		      char err[LFS_ERRLEN])
{
	struct stat st;

	L->root_fd = -1;
	L->path = strdup(path);
	if (!L->path) {
		snprintf(err, LFS_ERRLEN, "out of memory");
		return -ENOMEM;
	}
	L->root_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (L->root_fd < 0) {
		int e = errno;
		if (e == ENOTDIR)
			snprintf(err, LFS_ERRLEN,
				 "lowerdir %s: not a directory", path);
		else
			snprintf(err, LFS_ERRLEN, "lowerdir %s: %s", path,
				 strerror(e));
		return -e;
	}
	if (fstat(L->root_fd, &st) < 0) {
		int e = errno;
		snprintf(err, LFS_ERRLEN, "lowerdir %s: %s", path,
			 strerror(e));
		return -e;
	}
	L->dev = st.st_dev;
	L->root_ino = st.st_ino;
	L->root_ctime = st.st_ctim;
	/* Engines pass short symlinks to layers (containers/storage's
	 * l/<id>): the digest is in the name of what they point to. */
	char *real = NULL;
	if (!lfs_layer_digest_from_path(path, L->digest) &&
	    (!(real = realpath(path, NULL)) ||
	     !lfs_layer_digest_from_path(real, L->digest)))
		L->digest[0] = '\0';
	free(real);
	return 0;
}

/* Number the distinct filesystems, in stack order. */
static void stack_index_filesystems(struct lfs_stack *stack)
{
	stack->n_filesystems = 0;
	for (uint32_t i = 0; i < stack->n_layers; i++) {
		uint32_t j;
		for (j = 0; j < i; j++)
			if (stack->layers[j].dev == stack->layers[i].dev)
				break;
		stack->layers[i].fs_index =
			j < i ? stack->layers[j].fs_index
			      : stack->n_filesystems++;
	}
}

int lfs_stack_open(struct lfs_stack **ret, char *const *paths, size_t n,
		   char err[LFS_ERRLEN])
{
	struct lfs_stack *stack;
	int r = 0;

	if (n == 0) {
		snprintf(err, LFS_ERRLEN, "lowerdir: no layers given");
		return -EINVAL;
	}
	if (n > UINT32_MAX / 2) {
		snprintf(err, LFS_ERRLEN, "lowerdir: too many layers");
		return -E2BIG;
	}
	stack = calloc(1, sizeof(*stack));
	if (!stack || !(stack->layers = calloc(n, sizeof(*stack->layers)))) {
		free(stack);
		snprintf(err, LFS_ERRLEN, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		stack->n_layers = (uint32_t)i + 1;
		r = layer_open(&stack->layers[i], paths[i], err);
		if (r < 0) {
			lfs_stack_free(stack);
			return r;
		}
	}
	stack_index_filesystems(stack);
	*ret = stack;
	return 0;
}

void lfs_stack_free(struct lfs_stack *stack)
{
	if (!stack)
		return;
	for (uint32_t i = 0; i < stack->n_layers; i++) {
		if (stack->layers[i].root_fd >= 0)
			close(stack->layers[i].root_fd);
		free(stack->layers[i].path);
	}
	free(stack->layers);
	free(stack);
}
