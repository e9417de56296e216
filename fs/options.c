/*
 * options.c - the command line, spelled as fuse-overlayfs spells it:
 *   layerfs [-f] [-d] [-s] [--version] [-h] -o OPT[,OPT...] [SOURCE] MOUNTPOINT
 * Container engines pass options we do not know (SELinux context= split at
 * its commas, volatile, ...): those are kept in unknown_opts and warned
 * about once, never refused.  Values we do know are checked here, so a bad
 * one stops the mount before anything is mounted.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layerfs.h"

/* Seconds the kernel may cache entries and attributes when the user does
 * not say: layers are immutable, so in effect the life of the mount. */
#define DEFAULT_TIMEOUT 1e9

/* Mount options libfuse applies itself (see mount(8) and fuse(8)). */
static const char *const fuse_mount_opts[] = {
	"allow_other", "allow_root", "auto_unmount", "default_permissions",
	"ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
	"async", "sync", "dirsync", "atime", "noatime", "diratime",
	"nodiratime", "relatime", "norelatime", "strictatime",
	"nostrictatime", "lazytime", "nolazytime",
};
static const char *const fuse_mount_opts_with_value[] = {
	"fsname=", "subtype=", "max_read=", "blksize=",
};

static int fail(char err[LFS_ERRLEN], const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, LFS_ERRLEN, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int push(char ***list, size_t *n, const char *s)
{
	char **grown = realloc(*list, (*n + 1) * sizeof(**list));

	if (!grown)
		return -ENOMEM;
	*list = grown;
	if (!(grown[*n] = strdup(s)))
		return -ENOMEM;
	(*n)++;
	return 0;
}

static bool in_list(const char *opt, const char *const *list, size_t n,
		    bool prefix)
{
	for (size_t i = 0; i < n; i++)
		if (prefix ? strncmp(opt, list[i], strlen(list[i])) == 0
			   : strcmp(opt, list[i]) == 0)
			return true;
	return false;
}

static bool is_fuse_mount_opt(const char *opt)
{
	return in_list(opt, fuse_mount_opts,
		       sizeof(fuse_mount_opts) / sizeof(*fuse_mount_opts),
		       false) ||
	       in_list(opt, fuse_mount_opts_with_value,
		       sizeof(fuse_mount_opts_with_value) /
			       sizeof(*fuse_mount_opts_with_value),
		       true);
}

/* Split spec at unescaped `sep`; "\<sep>" and "\\" lose their backslash
 * only when unescape_all, else only "\<sep>" does (so a later split can
 * see its own escapes). */
static int split_escaped(const char *spec, char sep, bool unescape_all,
			 char ***ret, size_t *ret_n)
{
	size_t len = strlen(spec), n = 0, o = 0;
	char *cur = malloc(len + 1);
	char **list = NULL;
	int r = 0;

	if (!cur)
		return -ENOMEM;
	for (size_t i = 0;; i++) {
		char c = spec[i];
		if (c == '\\' && (spec[i + 1] == sep ||
				  (unescape_all && spec[i + 1] == '\\'))) {
			cur[o++] = spec[++i];
			continue;
		}
		if (c == sep || c == '\0') {
			cur[o] = '\0';
			r = push(&list, &n, cur);
			if (r < 0 || c == '\0')
				break;
			o = 0;
			continue;
		}
		cur[o++] = c;
	}
	free(cur);
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			free(list[i]);
		free(list);
		return r;
	}
	*ret = list;
	*ret_n = n;
	return 0;
}

static void free_list(char **list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

int lfs_split_lowerdir(const char *spec, char ***ret_dirs, size_t *ret_n)
{
	char **dirs;
	size_t n;
	int r = split_escaped(spec, ':', true, &dirs, &n);

	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		if (dirs[i][0] == '\0') {
			free_list(dirs, n);
			return -EINVAL;
		}
	}
	*ret_dirs = dirs;
	*ret_n = n;
	return 0;
}

static int set_string(char **field, const char *value)
{
	char *copy = strdup(value);

	if (!copy)
		return -ENOMEM;
	free(*field);
	*field = copy;
	return 0;
}

static int parse_timeout(struct lfs_options *o, const char *value,
			 char err[LFS_ERRLEN])
{
	char *end;
	double t;

	errno = 0;
	t = strtod(value, &end);
	if (value[0] == '\0' || *end != '\0' || errno || !isfinite(t) || t < 0)
		return fail(err, "option timeout=%s: not a number of seconds",
			    value);
	o->timeout = t;
	return 0;
}

/* One "-o" item. */
static int parse_one(struct lfs_options *o, const char *opt,
		     char err[LFS_ERRLEN])
{
	const char *eq = strchr(opt, '=');
	const char *value = eq ? eq + 1 : NULL;
	size_t keylen = eq ? (size_t)(eq - opt) : strlen(opt);
#define KEY_IS(k) (keylen == sizeof(k) - 1 && strncmp(opt, k, keylen) == 0)

	if (opt[0] == '\0')
		return 0;    /* "a,,b": nothing to do */
	if (KEY_IS("lowerdir")) {
		if (!value || value[0] == '\0')
			return fail(err, "lowerdir is empty");
		char **dirs;
		size_t n;
		int r = lfs_split_lowerdir(value, &dirs, &n);
		if (r == -EINVAL)
			return fail(err, "lowerdir=%s: empty layer path", value);
		if (r < 0)
			return r;
		free_list(o->lowerdirs, o->n_lowerdirs);
		o->lowerdirs = dirs;
		o->n_lowerdirs = n;
		return 0;
	}
	if (KEY_IS("upperdir") || KEY_IS("workdir")) {
		if (!value || value[0] == '\0')
			return fail(err, "option %.*s: empty path", (int)keylen,
				    opt);
		return set_string(KEY_IS("upperdir") ? &o->upperdir
						     : &o->workdir, value);
	}
	if (KEY_IS("index_cache")) {
		if (!value || value[0] == '\0')
			return fail(err, "option index_cache: needs =DIR or =off");
		return set_string(&o->index_cache, value);
	}
	if (KEY_IS("timeout")) {
		if (!value)
			return fail(err, "option timeout: needs =SECONDS");
		return parse_timeout(o, value, err);
	}
	if (KEY_IS("whiteout")) {
		if (!value || (strcmp(value, "chardev") != 0 &&
			       strcmp(value, "oci") != 0 &&
			       strcmp(value, "auto") != 0))
			return fail(err, "option whiteout: needs =chardev, =oci "
				    "or =auto");
		if (strcmp(value, "auto") == 0) {
			free(o->whiteout);
	free(o->uidmapping);
	free(o->gidmapping);
			o->whiteout = NULL;
			return 0;
		}
		return set_string(&o->whiteout, value);
	}
	if (KEY_IS("uidmapping") || KEY_IS("gidmapping")) {
		if (!value || !*value)
			return fail(err, "option %.*s: needs =DISK:SHOWN:LEN",
				    (int)keylen, opt);
		return set_string(KEY_IS("uidmapping") ? &o->uidmapping
						       : &o->gidmapping, value);
	}
	if (KEY_IS("squash_to_uid") || KEY_IS("squash_to_gid")) {
		char *end;
		long v = value ? strtol(value, &end, 10) : -1;
		if (!value || !*value || *end || v < 0 || v > 0xfffffffeL)
			return fail(err, "option %.*s: needs =ID", (int)keylen,
				    opt);
		*(KEY_IS("squash_to_uid") ? &o->squash_to_uid
					  : &o->squash_to_gid) = v;
		return 0;
	}
	if (KEY_IS("xattr_permissions")) {
		if (!value || strlen(value) != 1 || value[0] < '0' ||
		    value[0] > '2')
			return fail(err, "option xattr_permissions: needs =0, =1 "
				    "or =2");
		o->xattr_permissions = value[0] - '0';
		return 0;
	}
	if (KEY_IS("threaded") || KEY_IS("writeback")) {
		bool on = !value || strcmp(value, "0") != 0;
		if (value && strcmp(value, "0") != 0 && strcmp(value, "1") != 0)
			return fail(err, "option %.*s: needs =0 or =1",
				    (int)keylen, opt);
		*(KEY_IS("threaded") ? &o->threaded : &o->writeback) = on;
		return 0;
	}
	static const struct {
		const char *name;
		size_t offset;
	} flags[] = {
		{ "squash_to_root", offsetof(struct lfs_options, squash_to_root) },
		{ "static_nlink", offsetof(struct lfs_options, static_nlink) },
		{ "noacl", offsetof(struct lfs_options, noacl) },
		{ "noxattrs", offsetof(struct lfs_options, noxattrs) },
		{ "volatile", offsetof(struct lfs_options, volatile_upper) },
		{ "copyup_on_open", offsetof(struct lfs_options, copyup_on_open) },
	};
	for (size_t i = 0; i < sizeof(flags) / sizeof(*flags); i++)
		if (!value && keylen == strlen(flags[i].name) &&
		    strncmp(opt, flags[i].name, keylen) == 0) {
			*(bool *)((char *)o + flags[i].offset) = true;
			return 0;
		}
	if (KEY_IS("metacopy")) {
		if (!value || (strcmp(value, "on") != 0 && strcmp(value, "off") != 0))
			return fail(err, "option metacopy: needs =on or =off");
		o->metacopy = value[1] == 'n';
		return 0;
	}
	if (KEY_IS("fsync")) {
		if (!value || (strcmp(value, "0") != 0 && strcmp(value, "1") != 0))
			return fail(err, "option fsync: needs =0 or =1");
		o->fsync = value[0] == '1';
		return 0;
	}
	if (KEY_IS("debug")) {
		o->debug = o->foreground = true;
		return 0;
	}
	if (is_fuse_mount_opt(opt))
		return push(&o->fuse_opts, &o->n_fuse_opts, opt);
	return push(&o->unknown_opts, &o->n_unknown_opts, opt);
#undef KEY_IS
}

static int parse_opt_string(struct lfs_options *o, const char *s,
			    char err[LFS_ERRLEN])
{
	char **items;
	size_t n;
	int r = split_escaped(s, ',', false, &items, &n);

	if (r < 0)
		return r;
	for (size_t i = 0; i < n && r == 0; i++)
		r = parse_one(o, items[i], err);
	free_list(items, n);
	return r;
}

static int check_complete(const struct lfs_options *o, char err[LFS_ERRLEN])
{
	if (o->show_version || o->show_help)
		return 0;
	if (o->n_lowerdirs == 0)
		return fail(err, "no lowerdir given (-o lowerdir=TOP:...:BOTTOM)");
	if (o->upperdir && !o->workdir)
		return fail(err, "upperdir=%s given without workdir", o->upperdir);
	if (o->workdir && !o->upperdir)
		return fail(err, "workdir=%s given without upperdir", o->workdir);
	if (!o->mountpoint)
		return fail(err, "no mount point given");
	return 0;
}

int lfs_options_parse(int argc, char *const argv[], struct lfs_options *ret,
		      char err[LFS_ERRLEN])
{
	struct lfs_options o = { .timeout = DEFAULT_TIMEOUT, .fsync = true,
				 .threaded = true, .squash_to_uid = -1,
				 .squash_to_gid = -1 };
	const char *positional[2];
	int n_positional = 0;
	int r = 0;

	for (int i = 1; i < argc && r == 0; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-o") == 0) {
			if (++i >= argc)
				r = fail(err, "option -o needs an argument");
			else
				r = parse_opt_string(&o, argv[i], err);
		} else if (strncmp(a, "-o", 2) == 0) {
			r = parse_opt_string(&o, a + 2, err);
		} else if (strcmp(a, "-f") == 0) {
			o.foreground = true;
		} else if (strcmp(a, "-d") == 0 || strcmp(a, "--debug") == 0) {
			o.debug = o.foreground = true;
		} else if (strcmp(a, "-s") == 0) {
			o.single_threaded = true;
		} else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
			o.show_version = true;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			o.show_help = true;
		} else if (a[0] == '-' && a[1] != '\0') {
			r = fail(err, "unknown argument %s", a);
		} else if (n_positional < 2) {
			positional[n_positional++] = a;
		} else {
			r = fail(err, "unexpected argument %s", a);
		}
	}
	/* "SOURCE MOUNTPOINT", as mount(8) helpers are called, or just
	 * "MOUNTPOINT". */
	if (r == 0 && n_positional > 0)
		r = set_string(&o.mountpoint, positional[n_positional - 1]);
	if (r == 0)
		r = check_complete(&o, err);
	if (r < 0) {
		if (r == -ENOMEM)
			snprintf(err, LFS_ERRLEN, "out of memory");
		lfs_options_free(&o);
		return r;
	}
	*ret = o;
	return 0;
}

void lfs_options_free(struct lfs_options *o)
{
	free_list(o->lowerdirs, o->n_lowerdirs);
	free_list(o->fuse_opts, o->n_fuse_opts);
	free_list(o->unknown_opts, o->n_unknown_opts);
	free(o->upperdir);
	free(o->workdir);
	free(o->mountpoint);
	free(o->index_cache);
	free(o->whiteout);
	free(o->uidmapping);
	free(o->gidmapping);
	memset(o, 0, sizeof(*o));
}
