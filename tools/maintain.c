/*
 * maintain.c - store upkeep: `layerctl rm IMAGE...`, `layerctl gc` and
 * `layerctl verify IMAGE...`.
 *
 * rm drops tags (all of an image's tags when it is named by id) and, once
 * no tag refers to an image, its config; layers stay for gc.  gc deletes
 * every layer and layerdb chain no image config references, except layers
 * a running layerfs process names on its command line; each goes by a
 * rename into tmp/ first, so a layer is either whole or gone.  verify
 * recomputes a digest of each layer's tree (the "tree digest" below) and
 * compares it with the one it recorded in layerdb/sha256/<chain>/tree on
 * its first run.
 *
 * The tree digest is a sha256 over a canonical listing: one line per entry
 * (the layer root is "."), sorted by escaped path (strcmp), each
 *   PATH TYPE MODE UID GID SIZE CONTENT RDEV TARGET
 * with TYPE one of f d l c b p s, MODE in octal (permission bits and
 * setuid/setgid/sticky), SIZE the byte count of a regular file or symlink
 * target (0 otherwise), CONTENT the sha256 of a regular file's bytes ("-"
 * otherwise), RDEV "major,minor" of a device ("-" otherwise), TARGET a
 * symlink's target ("-" otherwise).  PATH and TARGET escape bytes below
 * 0x21, 0x7f and '\' as \xHH.  Times, inode numbers, link counts and
 * xattrs are not part of it.  The tree file holds "sha256:<digest>\n"
 * followed by the listing, so a later run can name the first path that
 * differs.
 */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "layerctl.h"

/* ---- small helpers ------------------------------------------------------ */

struct hexset {
	char (*v)[HEXLEN + 1];
	size_t n, cap;
};

static bool hexset_has(const struct hexset *set, const char *hex)
{
	for (size_t i = 0; i < set->n; i++)
		if (strcmp(set->v[i], hex) == 0)
			return true;
	return false;
}

static int hexset_add(struct hexset *set, const char *hex)
{
	if (hexset_has(set, hex))
		return 0;
	if (set->n == set->cap) {
		size_t cap = set->cap ? 2 * set->cap : 16;
		void *v = realloc(set->v, cap * sizeof(*set->v));
		if (!v)
			return -ENOMEM;
		set->v = v;
		set->cap = cap;
	}
	memcpy(set->v[set->n++], hex, HEXLEN + 1);
	return 0;
}

static void hexset_free(struct hexset *set)
{
	free(set->v);
	set->v = NULL;
	set->n = set->cap = 0;
}

/* ---- rm ----------------------------------------------------------------- */

static bool id_is_tagged(json_t *repos, const char *id)
{
	const char *key;
	json_t *value;
	char hex[HEXLEN + 1];

	json_object_foreach(repos, key, value)
		if (digest_parse(json_string_value(value), hex) &&
		    strcmp(hex, id) == 0)
			return true;
	return false;
}

/* store_resolve_image, with an unknown image named as the user spelt it
 * (store.c names a "sha256:" id by its hex alone). */
static int resolve(const struct store *s, const char *ref,
		   char id[HEXLEN + 1], char err[ERRLEN])
{
	int r = store_resolve_image(s, ref, id, err);

	if (r == -ENOENT)
		snprintf(err, ERRLEN, "%.900s: no such image", ref);
	return r;
}

/* Remove one IMAGE's tag(s) from repos; note the image id in touched. */
static int rm_one(const struct store *s, json_t *repos, const char *ref,
		  struct hexset *touched, char err[ERRLEN])
{
	char id[HEXLEN + 1];
	char *tag = normalize_tag(ref);
	const char *value = tag ? json_string_value(json_object_get(repos, tag))
				: NULL;
	int r = 0;

	if (!tag) {
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	if (value && strncmp(ref, "sha256:", 7) != 0) {
		/* A tag (a tag wins over an id prefix, as in resolving). */
		if (!digest_parse(value, id)) {
			snprintf(err, ERRLEN, "%s: repositories.json maps it to "
				 "%s, not an image id", ref, value);
			r = -EINVAL;
		} else {
			json_object_del(repos, tag);
			printf("Untagged: %s\n", tag);
			r = hexset_add(touched, id);
		}
		free(tag);
		return r;
	}
	free(tag);
	if ((r = resolve(s, ref, id, err)) < 0)
		return r;
	/* An id: every tag of that image. */
	void *iter = json_object_iter(repos);
	while (iter) {
		const char *key = json_object_iter_key(iter);
		json_t *v = json_object_iter_value(iter);
		char hex[HEXLEN + 1];
		iter = json_object_iter_next(repos, iter);
		if (digest_parse(json_string_value(v), hex) &&
		    strcmp(hex, id) == 0) {
			printf("Untagged: %s\n", key);
			json_object_del(repos, key);
		}
	}
	return hexset_add(touched, id);
}

int cmd_rm(struct store *s, int argc, char **argv)
{
	struct hexset touched = { 0 };
	char err[ERRLEN] = "";
	json_t *repos = NULL;
	int status = 0, lock;

	if (argc < 2)
		return fail_verb("rm", "usage: layerctl rm IMAGE...");
	if ((lock = store_lock(s, err)) < 0)
		return fail_verb("rm", err);
	if (!(repos = store_load_repos(s, err))) {
		store_unlock(lock);
		return fail_verb("rm", err);
	}
	size_t tags_before = json_object_size(repos);
	for (int i = 1; i < argc; i++) {
		int r = rm_one(s, repos, argv[i], &touched, err);
		if (r == -ENOMEM) {
			status = fail_verb("rm", err);
			goto out;
		}
		if (r < 0)
			status = fail_verb("rm", err);
	}
	fflush(stdout);
	/* Tags first: a config without tags is harmless, a tag without a
	 * config is not. */
	if (json_object_size(repos) != tags_before &&
	    store_save_repos(s, repos, err) < 0) {
		status = fail_verb("rm", err);
		goto out;
	}
	for (size_t i = 0; i < touched.n; i++) {
		if (id_is_tagged(repos, touched.v[i]))
			continue;
		char *p = store_path(s, "imagedb/sha256/%s.json", touched.v[i]);
		if (!p || (unlink(p) < 0 && errno != ENOENT)) {
			snprintf(err, ERRLEN, "%s: %s", p ? p : "image config",
				 p ? strerror(errno) : "out of memory");
			status = fail_verb("rm", err);
		} else {
			printf("Deleted: sha256:%s\n", touched.v[i]);
		}
		free(p);
	}
out:
	store_unlock(lock);
	json_decref(repos);
	hexset_free(&touched);
	return status;
}

/* ---- gc ----------------------------------------------------------------- */

/* Every diff id and chain id that an image config in imagedb names. */
static int referenced(const struct store *s, struct hexset *diffs,
		      struct hexset *chains, char err[ERRLEN])
{
	char *dir_path = store_path(s, "imagedb/sha256");
	DIR *dir = dir_path ? opendir(dir_path) : NULL;
	struct dirent *de;
	int r = 0;

	if (!dir) {
		r = errno == ENOENT ? 0 : -errno;
		if (r < 0)
			snprintf(err, ERRLEN, "%s: %s", dir_path ? dir_path : "",
				 strerror(errno));
		free(dir_path);
		return r;
	}
	while (r == 0 && (de = readdir(dir))) {
		size_t len = strlen(de->d_name);
		char id[HEXLEN + 1], (*diff)[HEXLEN + 1] = NULL;
		char (*chain)[HEXLEN + 1] = NULL;
		size_t n = 0;
		if (len != HEXLEN + 5 || strcmp(de->d_name + HEXLEN, ".json"))
			continue;
		memcpy(id, de->d_name, HEXLEN);
		id[HEXLEN] = '\0';
		json_t *config = store_load_config(s, id, err);
		/* An image we cannot read might need any layer: stop. */
		if (!config || config_diff_ids(config, &diff, &n, err) < 0) {
			char why[ERRLEN];
			snprintf(why, sizeof(why), "%s", err);
			snprintf(err, ERRLEN, "image sha256:%.12s: %.900s; nothing "
				 "deleted", id, why);
			json_decref(config);
			r = -EINVAL;
			break;
		}
		json_decref(config);
		chain = calloc(n, sizeof(*chain));
		if (!chain)
			r = -ENOMEM;
		else
			chain_ids(diff, n, chain);
		for (size_t i = 0; i < n && r == 0; i++) {
			r = hexset_add(diffs, diff[i]);
			if (r == 0)
				r = hexset_add(chains, chain[i]);
		}
		if (r == -ENOMEM)
			snprintf(err, ERRLEN, "out of memory");
		free(diff);
		free(chain);
	}
	closedir(dir);
	free(dir_path);
	return r;
}

/* "<diff>.tarsplit" (tools/tarsplit.c) whose layer is gone and that no
 * image names: left by an import that stopped between the two renames. */
static void remove_orphan_record(const struct store *s, const char *name,
				 const struct hexset *diffs)
{
	char hex[HEXLEN + 1];
	size_t len = strlen(name);

	if (len != HEXLEN + 9 || strcmp(name + HEXLEN, ".tarsplit") != 0)
		return;
	memcpy(hex, name, HEXLEN);
	hex[HEXLEN] = '\0';
	if (!is_hex64(hex) || hexset_has(diffs, hex) || store_has_layer(s, hex))
		return;
	char *p = store_path(s, "layers/sha256/%s", name);
	if (p && unlink(p) == 0)
		printf("Deleted orphan record: %s\n", name);
	free(p);
}

struct cmdlines {
	char **v;                       /* NULL-ended */
	size_t n;
};

/* Add pid's command line (NULs turned to spaces) if it is layerfs. */
static bool add_layerfs_cmdline(const char *pid, void *arg)
{
	struct cmdlines *c = arg;
	size_t len;
	char *cmd = proc_layerfs_argv(pid, &len);

	if (!cmd)
		return false;
	for (size_t i = 0; i < len; i++)
		if (cmd[i] == '\0')
			cmd[i] = ' ';
	char **more = realloc(c->v, (c->n + 2) * sizeof(*more));
	if (!more) {
		free(cmd);
		return true;
	}
	c->v = more;
	c->v[c->n++] = cmd;
	c->v[c->n] = NULL;
	return false;
}

/* Command lines of every running layerfs process (a NULL-ended array). */
static char **layerfs_processes(void)
{
	struct cmdlines c = { .v = calloc(1, sizeof(char *)) };

	if (c.v)
		proc_each_pid(add_layerfs_cmdline, &c);
	return c.v;
}

/* Does a layerfs command line name layers/sha256/<diff>?  The store part
 * of the path is left out: the mount may spell the store relative, through
 * a symlink or with ':' escaped, and keeping a layer too many is safe. */
static bool layer_in_use(char **procs, const char *diff)
{
	char needle[HEXLEN + 32];

	snprintf(needle, sizeof(needle), "layers/sha256/%.64s", diff);
	for (size_t i = 0; procs && procs[i]; i++)
		if (strstr(procs[i], needle))
			return true;
	return false;
}

static long long walk_bytes;

static int add_bytes(const char *path, const struct stat *st, int flag,
		     struct FTW *ftw)
{
	(void)path, (void)flag, (void)ftw;
	if (S_ISREG(st->st_mode))
		walk_bytes += st->st_size;
	return 0;
}

/* Rename path into tmp/gc.XXXXXX, then remove it.  Adds its bytes to
 * *bytes.  0 or -errno (err says why). */
static int delete_atomically(const struct store *s, const char *path,
			     long long *bytes, char err[ERRLEN])
{
	char *grave = store_path(s, "tmp/gc.XXXXXX");

	if (!grave || !mkdtemp(grave)) {
		snprintf(err, ERRLEN, "%s/tmp: %s", s->root, strerror(errno));
		free(grave);
		return -EIO;
	}
	/* An empty directory is replaced by rename(2). */
	if (rename(path, grave) < 0) {
		int e = errno;
		snprintf(err, ERRLEN, "%s: %s", path, strerror(e));
		rmdir(grave);
		free(grave);
		return -e;
	}
	walk_bytes = 0;
	nftw(grave, add_bytes, 64, FTW_PHYS);
	*bytes += walk_bytes;
	int r = remove_tree(grave);
	if (r < 0)
		snprintf(err, ERRLEN, "%s (was %s): %s", grave, path,
			 strerror(-r));
	free(grave);
	return r;
}

static bool is_other_layerctl(const char *pid, void *arg)
{
	return strcmp(pid, arg) != 0 && proc_comm_is(pid, "layerctl");
}

/* Any layerctl process other than this one (its staging lives in tmp/). */
static bool other_layerctl_running(void)
{
	char self[32];

	/* /proc unreadable: assume one runs, and keep its staging. */
	snprintf(self, sizeof(self), "%d", (int)getpid());
	return proc_each_pid(is_other_layerctl, self) != 0;
}

/* Empty tmp/: gc.* leftovers always; staging of other commands only when
 * no other layerctl runs (an import stages before it takes the lock). */
static int clean_tmp(const struct store *s, int *removed)
{
	char *tmp = store_path(s, "tmp");
	DIR *dir = tmp ? opendir(tmp) : NULL;
	struct dirent *de;
	bool all = !other_layerctl_running();
	int failed = 0;

	while (dir && (de = readdir(dir))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (!all && strncmp(de->d_name, "gc.", 3) != 0)
			continue;
		char *p = store_path(s, "tmp/%s", de->d_name);
		if (p && remove_tree(p) == 0)
			(*removed)++;
		else
			failed++;
		free(p);
	}
	if (dir)
		closedir(dir);
	free(tmp);
	return failed;
}

int cmd_gc(struct store *s, int argc, char **argv)
{
	struct hexset diffs = { 0 }, chains = { 0 }, busy = { 0 };
	char err[ERRLEN] = "", **procs = NULL;
	int status = 0, lock, n_layers = 0, n_chains = 0, n_kept = 0,
	    n_tmp = 0;
	long long bytes = 0;

	(void)argv;
	if (argc != 1)
		return fail_verb("gc", "usage: layerctl gc");
	if ((lock = store_lock(s, err)) < 0)
		return fail_verb("gc", err);
	if (referenced(s, &diffs, &chains, err) < 0) {
		status = fail_verb("gc", err);
		goto out;
	}
	procs = layerfs_processes();

	char *layers = store_path(s, "layers/sha256");
	DIR *dir = layers ? opendir(layers) : NULL;
	struct dirent *de;
	while (dir && (de = readdir(dir))) {
		if (!is_hex64(de->d_name)) {
			remove_orphan_record(s, de->d_name, &diffs);
			continue;
		}
		if (hexset_has(&diffs, de->d_name))
			continue;
		if (layer_in_use(procs, de->d_name)) {
			printf("Kept (in use): sha256:%s\n", de->d_name);
			n_kept++;
			if (hexset_add(&busy, de->d_name) < 0) {
				status = fail_verb("gc", "out of memory");
				break;
			}
			continue;
		}
		char *p = store_path(s, "layers/sha256/%s", de->d_name);
		if (p && delete_atomically(s, p, &bytes, err) == 0) {
			printf("Deleted layer: sha256:%s\n", de->d_name);
			n_layers++;
			/* and its tar layout record (tarsplit.c), if any */
			char *split = store_path(s, "layers/sha256/%s.tarsplit",
						 de->d_name);
			if (split)
				unlink(split);
			free(split);
		} else {
			status = fail_verb("gc", p ? err : "out of memory");
		}
		free(p);
	}
	if (dir)
		closedir(dir);
	free(layers);

	/* Chains no image names, unless their layer is kept in use. */
	char *db = store_path(s, "layerdb/sha256");
	dir = db ? opendir(db) : NULL;
	while (dir && (de = readdir(dir))) {
		if (!is_hex64(de->d_name) || hexset_has(&chains, de->d_name))
			continue;
		char *p = store_path(s, "layerdb/sha256/%s", de->d_name);
		char *dp = store_path(s, "layerdb/sha256/%s/diff", de->d_name);
		char *text = dp ? read_file(dp, NULL, err) : NULL, hex[HEXLEN + 1];
		if (text)
			text[strcspn(text, "\n")] = '\0';
		bool keep = text && digest_parse(text, hex) &&
			    hexset_has(&busy, hex);
		free(text);
		free(dp);
		if (!keep) {
			if (p && delete_atomically(s, p, &bytes, err) == 0)
				n_chains++;
			else
				status = fail_verb("gc", p ? err : "out of memory");
		}
		free(p);
	}
	if (dir)
		closedir(dir);
	free(db);

	if (clean_tmp(s, &n_tmp) > 0)
		status = fail_verb("gc", "could not empty tmp/ entirely");
	printf("Total: %d layer%s and %d layerdb entr%s deleted, %lld bytes "
	       "reclaimed; %d layer%s kept in use; %d tmp leftover%s removed\n",
	       n_layers, n_layers == 1 ? "" : "s", n_chains,
	       n_chains == 1 ? "y" : "ies", bytes, n_kept,
	       n_kept == 1 ? "" : "s", n_tmp, n_tmp == 1 ? "" : "s");
out:
	store_unlock(lock);
	for (size_t i = 0; procs && procs[i]; i++)
		free(procs[i]);
	free(procs);
	hexset_free(&diffs);
	hexset_free(&chains);
	hexset_free(&busy);
	return status;
}

/* ---- verify ------------------------------------------------------------- */

struct entry {
	char *path;    /* escaped */
	char *line;    /* the whole listing line, newline included */
};

/* nftw has no user pointer (layerctl is single-threaded). */
static struct {
	struct entry *v;
	size_t n, cap;
	size_t root_len;
	int error;
	char *err;
} walk;

static char *escaped(const char *s, size_t len)
{
	char *out = malloc(4 * len + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c == 0x7f || c == '\\')
			o += sprintf(o, "\\x%02x", c);
		else
			*o++ = (char)c;
	}
	*o = '\0';
	return out;
}

static char type_of(mode_t m)
{
	return S_ISREG(m) ? 'f' : S_ISDIR(m) ? 'd' : S_ISLNK(m) ? 'l' :
	       S_ISCHR(m) ? 'c' : S_ISBLK(m) ? 'b' : S_ISFIFO(m) ? 'p' :
	       S_ISSOCK(m) ? 's' : '?';
}

static int list_one(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	char content[HEXLEN + 1] = "-", rdev[48] = "-", *target = NULL;
	char *rel, *line = NULL;
	long long size = 0;

	(void)ftw;
	if (flag == FTW_NS || flag == FTW_DNR) {
		snprintf(walk.err, ERRLEN, "%s: %s", path, strerror(errno));
		walk.error = -EIO;
		return 1;
	}
	rel = path[walk.root_len] ? escaped(path + walk.root_len + 1,
					    strlen(path + walk.root_len + 1))
				  : strdup(".");
	if (S_ISREG(st->st_mode)) {
		size = st->st_size;
		if (sha256_file(path, content, walk.err) < 0) {
			walk.error = -EIO;
			free(rel);
			return 1;
		}
	} else if (S_ISLNK(st->st_mode)) {
		char buf[4096];
		ssize_t n = readlink(path, buf, sizeof(buf));
		if (n < 0) {
			snprintf(walk.err, ERRLEN, "%s: %s", path, strerror(errno));
			walk.error = -EIO;
			free(rel);
			return 1;
		}
		size = n;
		target = escaped(buf, (size_t)n);
	} else if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
		snprintf(rdev, sizeof(rdev), "%u,%u", major(st->st_rdev),
			 minor(st->st_rdev));
	}
	if (!rel || (S_ISLNK(st->st_mode) && !target) ||
	    asprintf(&line, "%s %c %04o %u %u %lld %s %s %s\n", rel,
		     type_of(st->st_mode), (unsigned)(st->st_mode & 07777),
		     (unsigned)st->st_uid, (unsigned)st->st_gid, size, content,
		     rdev, target ? target : "-") < 0)
		line = NULL;
	free(target);
	if (line && walk.n == walk.cap) {
		size_t cap = walk.cap ? 2 * walk.cap : 256;
		void *v = realloc(walk.v, cap * sizeof(*walk.v));
		if (v) {
			walk.v = v;
			walk.cap = cap;
		} else {
			free(line);
			line = NULL;
		}
	}
	if (!line) {
		free(rel);
		snprintf(walk.err, ERRLEN, "out of memory");
		walk.error = -ENOMEM;
		return 1;
	}
	walk.v[walk.n].path = rel;
	walk.v[walk.n++].line = line;
	return 0;
}

static int by_path(const void *a, const void *b)
{
	return strcmp(((const struct entry *)a)->path,
		      ((const struct entry *)b)->path);
}

static void walk_free(void)
{
	for (size_t i = 0; i < walk.n; i++) {
		free(walk.v[i].path);
		free(walk.v[i].line);
	}
	free(walk.v);
	memset(&walk, 0, sizeof(walk));
}

/* The canonical listing of dir (owned) and its sha256. */
static char *tree_listing(const char *dir, char digest[HEXLEN + 1],
			  char err[ERRLEN])
{
	char *out = NULL;
	size_t len = 0;

	memset(&walk, 0, sizeof(walk));
	walk.root_len = strlen(dir);
	walk.err = err;
	if (nftw(dir, list_one, 32, FTW_PHYS) != 0 && !walk.error) {
		snprintf(err, ERRLEN, "%s: %s", dir, strerror(errno));
		walk.error = -EIO;
	}
	if (walk.error) {
		walk_free();
		return NULL;
	}
	qsort(walk.v, walk.n, sizeof(*walk.v), by_path);
	for (size_t i = 0; i < walk.n; i++)
		len += strlen(walk.v[i].line);
	out = malloc(len + 1);
	if (!out) {
		snprintf(err, ERRLEN, "out of memory");
		walk_free();
		return NULL;
	}
	char *o = out;
	for (size_t i = 0; i < walk.n; i++)
		o = stpcpy(o, walk.v[i].line);
	*o = '\0';
	walk_free();
	sha256_hex_of(out, len, digest);
	return out;
}

/* The path (first field) of the listing line at *p, into buf. */
static const char *next_line(const char **p, char *buf, size_t cap,
			     size_t *line_len)
{
	const char *s = *p, *nl = strchr(s, '\n');
	size_t n = strcspn(s, " \n");

	if (!*s)
		return NULL;
	*line_len = nl ? (size_t)(nl - s) + 1 : strlen(s);
	snprintf(buf, cap, "%.*s", (int)n, s);
	*p = s + *line_len;
	return buf;
}

/* The first path at which two sorted listings differ (into out). */
static void first_difference(const char *a, const char *b, char *out,
			     size_t cap)
{
	char pa[8192], pb[8192];
	size_t la = 0, lb = 0;
	const char *na = next_line(&a, pa, sizeof(pa), &la);
	const char *nb = next_line(&b, pb, sizeof(pb), &lb);

	while (na || nb) {
		if (!na || !nb) {
			snprintf(out, cap, "%s", na ? na : nb);
			return;
		}
		int c = strcmp(na, nb);
		if (c != 0) {
			snprintf(out, cap, "%s", c < 0 ? na : nb);
			return;
		}
		if (la != lb || memcmp(a - la, b - lb, la) != 0) {
			snprintf(out, cap, "%s", na);
			return;
		}
		na = next_line(&a, pa, sizeof(pa), &la);
		nb = next_line(&b, pb, sizeof(pb), &lb);
	}
	snprintf(out, cap, "(the recorded digest does not match its listing)");
}

/* One layer: prints its line; 0 if ok or recorded, 1 otherwise. */
static int verify_layer(const struct store *s, const char *diff,
			const char *chain)
{
	char *dir = store_path(s, "layers/sha256/%s", diff);
	char *tree = store_path(s, "layerdb/sha256/%s/tree", chain);
	char err[ERRLEN] = "", digest[HEXLEN + 1], *listing = NULL;
	struct stat st;
	int bad = 1;

	if (!dir || !tree) {
		printf("sha256:%s error: out of memory\n", diff);
		goto out;
	}
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		printf("sha256:%s MISSING\n", diff);
		goto out;
	}
	if (!(listing = tree_listing(dir, digest, err))) {
		printf("sha256:%s error: %s\n", diff, err);
		goto out;
	}
	if (access(tree, F_OK) < 0) {
		size_t len = strlen(listing);
		char *text = malloc(len + HEXLEN + 9);
		int lock = text ? store_lock(s, err) : -ENOMEM;
		int r = lock;
		if (lock >= 0) {
			sprintf(text, "sha256:%s\n%s", digest, listing);
			/* Another verify may have recorded it meanwhile: the
			 * same content, as long as the layer is unchanged. */
			r = write_file_atomic(tree, text, strlen(text), err);
			store_unlock(lock);
		} else if (!text) {
			snprintf(err, ERRLEN, "out of memory");
		}
		free(text);
		if (r < 0)
			printf("sha256:%s error: cannot record the tree digest: "
			       "%s\n", diff, err);
		else
			printf("sha256:%s recorded\n", diff);
		bad = r < 0;
		goto out;
	}
	char *recorded = read_file(tree, NULL, err), want[HEXLEN + 1];
	const char *nl = recorded ? strchr(recorded, '\n') : NULL;
	char first[HEXLEN + 8];
	if (!nl || (size_t)(nl - recorded) >= sizeof(first)) {
		printf("sha256:%s error: %s: %s\n", diff, tree,
		       recorded ? "not a tree record" : err);
		free(recorded);
		goto out;
	}
	snprintf(first, sizeof(first), "%.*s", (int)(nl - recorded), recorded);
	if (!digest_parse(first, want)) {
		printf("sha256:%s error: %s: not a tree record\n", diff, tree);
	} else if (strcmp(want, digest) == 0) {
		printf("sha256:%s ok\n", diff);
		bad = 0;
	} else {
		char where[8192];
		first_difference(nl + 1, listing, where, sizeof(where));
		printf("sha256:%s CHANGED: %s\n", diff, where);
	}
	free(recorded);
out:
	free(listing);
	free(dir);
	free(tree);
	return bad;
}

int cmd_verify(struct store *s, int argc, char **argv)
{
	int status = 0;

	if (argc < 2)
		return fail_verb("verify", "usage: layerctl verify IMAGE...");
	for (int a = 1; a < argc; a++) {
		char err[ERRLEN] = "", id[HEXLEN + 1];
		char (*diff)[HEXLEN + 1] = NULL, (*chain)[HEXLEN + 1] = NULL;
		size_t n = 0;
		json_t *config = NULL;
		if (resolve(s, argv[a], id, err) < 0 ||
		    !(config = store_load_config(s, id, err)) ||
		    config_diff_ids(config, &diff, &n, err) < 0) {
			json_decref(config);
			fflush(stdout);
			status = fail_verb("verify", err);
			continue;
		}
		json_decref(config);
		if (!(chain = calloc(n, sizeof(*chain)))) {
			free(diff);
			return fail_verb("verify", "out of memory");
		}
		chain_ids(diff, n, chain);
		for (size_t i = 0; i < n; i++)
			if (verify_layer(s, diff[i], chain[i]))
				status = 1;
		fflush(stdout);
		free(diff);
		free(chain);
	}
	return status;
}
