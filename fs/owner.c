/*
 * owner.c - who owns what, as the mount shows it.
 *
 * Rootless engines run containers in a user namespace whose ids are not
 * the ones on disk; instead of chown'ing every layer, they ask the mount
 * to translate (fuse-overlayfs's uidmapping=/gidmapping=, squash_to_*).
 * Where chown is impossible (NFS, a user without subordinate ids),
 * xattr_permissions keeps each object's owner and mode in an xattr
 * instead.  Policy is decided here once at mount; lookup.c, inode.c and
 * dir.c apply it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "layerfs_i.h"

#define OVERFLOW_ID 65534u

/* Append the range (disk, shown, len) to *v (n entries). */
static int add_range(struct lfs_id_range **v, size_t *n,
		     const unsigned long f[3])
{
	struct lfs_id_range *grown;

	if (f[2] == 0 || f[0] + f[2] - 1 > UINT32_MAX ||
	    f[1] + f[2] - 1 > UINT32_MAX)
		return -EINVAL;
	grown = realloc(*v, (*n + 1) * sizeof(**v));
	if (!grown)
		return -ENOMEM;
	*v = grown;
	grown[(*n)++] = (struct lfs_id_range){ (uint32_t)f[0], (uint32_t)f[1],
					       (uint32_t)f[2] };
	return 0;
}

/* Numbers joined by ':', three to a range.  Empty fields are skipped, as
 * fuse-overlayfs does: containers/storage writes a leading ':'. */
int lfs_parse_id_map(const char *spec, struct lfs_id_range **ret,
		     size_t *ret_n)
{
	struct lfs_id_range *v = NULL;
	size_t n = 0, nf = 0;
	unsigned long f[3];
	const char *p = spec;
	int r = 0;

	while (*p && r == 0) {
		char *end;

		if (*p == ':') {
			p++;
			continue;
		}
		errno = 0;
		f[nf] = strtoul(p, &end, 10);
		if (*p < '0' || *p > '9' || errno || f[nf] > UINT32_MAX ||
		    (*end != ':' && *end != '\0')) {
			r = -EINVAL;
			break;
		}
		p = end;
		if (++nf == 3) {
			r = add_range(&v, &n, f);
			nf = 0;
		}
	}
	if (r == 0 && (nf != 0 || n == 0))
		r = -EINVAL;
	if (r < 0) {
		free(v);
		return r;
	}
	*ret = v;
	*ret_n = n;
	return 0;
}

int lfs_owner_policy_init(struct lfs_owner_policy *ret,
			  const struct lfs_options *o, bool *has_any,
			  char err[LFS_ERRLEN])
{
	struct lfs_owner_policy p = { .squash_uid = -1, .squash_gid = -1 };
	int r;

	if (o->uidmapping &&
	    (r = lfs_parse_id_map(o->uidmapping, &p.uids, &p.n_uids)) < 0) {
		snprintf(err, LFS_ERRLEN, "uidmapping=%s: want DISK:SHOWN:LEN "
			 "triples joined by ':'", o->uidmapping);
		return r;
	}
	if (o->gidmapping &&
	    (r = lfs_parse_id_map(o->gidmapping, &p.gids, &p.n_gids)) < 0) {
		snprintf(err, LFS_ERRLEN, "gidmapping=%s: want DISK:SHOWN:LEN "
			 "triples joined by ':'", o->gidmapping);
		free(p.uids);
		return r;
	}
	if (o->squash_to_root)
		p.squash_uid = p.squash_gid = 0;
	if (o->squash_to_uid >= 0)
		p.squash_uid = o->squash_to_uid;
	if (o->squash_to_gid >= 0)
		p.squash_gid = o->squash_to_gid;
	/* The names fuse-overlayfs uses, so that either can mount the
	 * other's upper. */
	if (o->xattr_permissions == 1)
		p.override_xattr = "security.fuseoverlayfs.override_stat";
	else if (o->xattr_permissions == 2)
		p.override_xattr = "user.containers.override_stat";
	*has_any = p.uids || p.gids || p.squash_uid >= 0 ||
		   p.squash_gid >= 0 || p.override_xattr;
	*ret = p;
	return 0;
}

void lfs_owner_policy_free(struct lfs_owner_policy *p)
{
	free(p->uids);
	free(p->gids);
	p->uids = p->gids = NULL;
}

static uint32_t map_id(const struct lfs_id_range *v, size_t n, uint32_t id,
		       bool to_shown, bool *found)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t from = to_shown ? v[i].disk : v[i].shown;
		uint32_t to = to_shown ? v[i].shown : v[i].disk;
		if (id >= from && id - from < v[i].len) {
			*found = true;
			return to + (id - from);
		}
	}
	*found = false;
	return id;
}

void lfs_owner_show(const struct lfs_owner_policy *p, struct stat *st)
{
	bool found;

	if (p->n_uids) {
		st->st_uid = map_id(p->uids, p->n_uids, st->st_uid, true, &found);
		if (!found)
			st->st_uid = OVERFLOW_ID;
	}
	if (p->n_gids) {
		st->st_gid = map_id(p->gids, p->n_gids, st->st_gid, true, &found);
		if (!found)
			st->st_gid = OVERFLOW_ID;
	}
	if (p->squash_uid >= 0)
		st->st_uid = (uid_t)p->squash_uid;
	if (p->squash_gid >= 0)
		st->st_gid = (gid_t)p->squash_gid;
}

int lfs_owner_to_disk(const struct lfs_owner_policy *p, uid_t *uid,
		      gid_t *gid)
{
	bool found;

	if (uid && *uid != (uid_t)-1 && p->n_uids) {
		*uid = map_id(p->uids, p->n_uids, *uid, false, &found);
		if (!found)
			return -EINVAL;    /* as chown to an unmapped id */
	}
	if (gid && *gid != (gid_t)-1 && p->n_gids) {
		*gid = map_id(p->gids, p->n_gids, *gid, false, &found);
		if (!found)
			return -EINVAL;
	}
	return 0;
}

/* "uid:gid:mode" (mode in octal, permission bits and set-id bits), as
 * fuse-overlayfs writes it; a ":type" after it is ignored. */
bool lfs_owner_read_override(const struct lfs_owner_policy *p,
			     const char *path, bool follow, struct stat *st)
{
	char value[64];
	unsigned uid, gid, mode;
	ssize_t len;

	if (!p->override_xattr)
		return false;
	len = follow ? getxattr(path, p->override_xattr, value, sizeof(value) - 1)
		     : lgetxattr(path, p->override_xattr, value,
				 sizeof(value) - 1);
	if (len <= 0)
		return false;
	value[len] = '\0';
	if (sscanf(value, "%u:%u:%o", &uid, &gid, &mode) != 3)
		return false;
	st->st_uid = uid;
	st->st_gid = gid;
	st->st_mode = (st->st_mode & S_IFMT) | (mode & 07777);
	return true;
}

int lfs_owner_write_override(const struct lfs_owner_policy *p,
			     const char *path, bool follow, uid_t uid,
			     gid_t gid, mode_t mode)
{
	char value[64];
	int n = snprintf(value, sizeof(value), "%u:%u:0%o", (unsigned)uid,
			 (unsigned)gid, (unsigned)(mode & 07777));

	if ((follow ? setxattr(path, p->override_xattr, value, (size_t)n, 0)
		    : lsetxattr(path, p->override_xattr, value, (size_t)n, 0)) < 0)
		return -errno;
	return 0;
}
