/*
 * fuse_main.c - the layerfs mount program.
 *
 * Order of events, so that a failure never leaves a mount behind and a
 * success is reported only once the mount is live:
 *   1. parse and check options, open and check every layer (errors go to
 *      the caller's stderr, exit 1, nothing mounted);
 *   2. unless -f: fork; the parent waits on a pipe for the child's verdict
 *      and exits 0 only when the child says the mount is up;
 *   3. the child mounts, detaches from the caller's stdio, reports, and
 *      serves requests on several threads until unmounted.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuse_i.h"

#define PROG "layerfs"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: " PROG " [-f] [-d] [--version] -o lowerdir=TOP:...:BOTTOM"
		"[,upperdir=U,workdir=W][,timeout=S][,OPTS] MOUNTPOINT\n"
		"  lowerdir   layers, top-most first; \\: escapes a colon\n"
		"  upperdir   writable layer (with workdir on the same filesystem)\n"
		"  whiteout=chardev|oci|auto  how removals are written\n"
		"  fsync=0    do not sync copied-up data before publishing it\n"
		"  metacopy=on  chmod/chown/utimes/xattrs copy no data\n"
		"  copyup_on_open  an open for writing copies the file up at\n"
		"             once, as kernel overlayfs does (default: at the\n"
		"             first change; opens of files and directories\n"
		"             then cost no request)\n"
		"  timeout    seconds the kernel may cache names and attributes\n"
		"  index_cache=DIR|off  where digest-named layers' directory\n"
		"             indexes are kept between mounts\n"
		"  -f         stay in the foreground;  -d  log every request\n"
		"  -s         serve requests on one thread\n");
}

/* 1,000 layers need 1,000 open layer roots and then some.  Returns the
 * limit now in force. */
static rlim_t raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur;
}

/* Half of what the layer roots and a margin for directory reads and
 * one-off opens leave over may be cached read fds (see fs/file.c). */
static unsigned data_fd_budget(rlim_t limit, size_t n_layers)
{
	rlim_t reserved = n_layers + 256;

	if (limit == RLIM_INFINITY || limit > 1u << 20)
		limit = 1u << 20;
	return limit > reserved ? (unsigned)((limit - reserved) / 2) : 0;
}

/* Undo the octal escapes of /proc/self/mountinfo ("\040" is a space). */
static void mountinfo_unescape(char *s)
{
	char *o = s;

	for (char *i = s; *i; i++, o++) {
		if (i[0] == '\\' && i[1] >= '0' && i[1] <= '3' && i[2] && i[3]) {
			*o = (char)((i[1] - '0') * 64 + (i[2] - '0') * 8 +
				    (i[3] - '0'));
			i += 3;
		} else {
			*o = *i;
		}
	}
	*o = '\0';
}

static bool is_mount_point(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;

	if (!f)
		return false;
	while (!found && getline(&line, &cap, f) > 0) {
		/* id parent major:minor root MOUNTPOINT ... */
		char *save = NULL, *field = strtok_r(line, " ", &save);
		for (int i = 0; field && i < 4; i++)
			field = strtok_r(NULL, " ", &save);
		if (field) {
			mountinfo_unescape(field);
			found = strcmp(field, path) == 0;
		}
	}
	free(line);
	fclose(f);
	return found;
}

static int check_mountpoint(const char *mnt, char err[LFS_ERRLEN])
{
	char real[PATH_MAX];
	struct stat st;

	if (stat(mnt, &st) < 0) {
		snprintf(err, LFS_ERRLEN, "mount point %s: %s", mnt,
			 strerror(errno));
		return -errno;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, LFS_ERRLEN, "mount point %s: not a directory", mnt);
		return -ENOTDIR;
	}
	if (realpath(mnt, real) && is_mount_point(real)) {
		snprintf(err, LFS_ERRLEN,
			 "mount point %s: busy (something is mounted there)",
			 mnt);
		return -EBUSY;
	}
	return 0;
}

/* Make *path absolute: the daemon moves to "/", and libfuse unmounts by
 * the path it was given.  dir need not exist yet. */
static int make_absolute(char **path, char err[LFS_ERRLEN])
{
	char cwd[PATH_MAX], *abs;

	if ((*path)[0] == '/')
		return 0;
	if (!getcwd(cwd, sizeof(cwd)) ||
	    asprintf(&abs, "%s/%s", cwd, *path) < 0) {
		snprintf(err, LFS_ERRLEN, "%s: cannot make the path absolute",
			 *path);
		return -ENOMEM;
	}
	free(*path);
	*path = abs;
	return 0;
}

static int check_dir(const char *what, const char *path, char err[LFS_ERRLEN])
{
	struct stat st;

	if (stat(path, &st) < 0) {
		snprintf(err, LFS_ERRLEN, "%s %s: %s", what, path,
			 strerror(errno));
		return -errno;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, LFS_ERRLEN, "%s %s: not a directory", what, path);
		return -ENOTDIR;
	}
	return 0;
}

/* The layers, top-most first: the upper one (writable) is layer 0. */
static int open_stack(const struct lfs_options *o, struct lfs_stack **ret,
		      char err[LFS_ERRLEN])
{
	size_t n = o->n_lowerdirs + (o->upperdir ? 1 : 0), i = 0;
	char **paths = calloc(n, sizeof(*paths));
	int r;

	if (!paths) {
		snprintf(err, LFS_ERRLEN, "out of memory");
		return -ENOMEM;
	}
	if (o->upperdir)
		paths[i++] = o->upperdir;
	for (size_t j = 0; j < o->n_lowerdirs; j++)
		paths[i++] = o->lowerdirs[j];
	r = lfs_stack_open(ret, paths, n, err);
	free(paths);
	return r;
}

/* The mount options handed to libfuse, as one "-o" string. */
static char *fuse_mount_options(const struct lfs_options *o, bool read_only)
{
	size_t len = 256;
	char *s;

	for (size_t i = 0; i < o->n_fuse_opts; i++)
		len += strlen(o->fuse_opts[i]) + 1;
	s = malloc(len);
	if (!s)
		return NULL;
	/* Image content holds setuid binaries and device nodes; honour them
	 * when root mounts, as the kernel's overlay does. */
	snprintf(s, len, "fsname=layerfs,subtype=layerfs,default_permissions%s",
		 getuid() == 0 ? ",allow_other,suid,dev" : "");
	for (size_t i = 0; i < o->n_fuse_opts; i++) {
		strcat(s, ",");
		strcat(s, o->fuse_opts[i]);
	}
	/* Last, so that a user's "rw" cannot undo it. */
	if (read_only)
		strcat(s, ",ro");
	return s;
}

/*
 * Where layer index caches live (fs/layercache.c): index_cache=DIR, or
 * by default the system cache for root and the user's cache otherwise.
 * Returns NULL for "off" or when no place is known; *ret_owned is freed
 * by the caller.
 */
static const char *index_cache_dir(const struct lfs_options *o,
				   char **ret_owned)
{
	const char *base;

	*ret_owned = NULL;
	if (o->index_cache)
		return strcmp(o->index_cache, "off") == 0 ? NULL : o->index_cache;
	if (getuid() == 0)
		return "/var/cache/layerfs/index";
	if ((base = getenv("XDG_CACHE_HOME")) && base[0] == '/')
		return asprintf(ret_owned, "%s/layerfs/index", base) < 0
			       ? NULL : *ret_owned;
	if ((base = getenv("HOME")) && base[0] == '/')
		return asprintf(ret_owned, "%s/.cache/layerfs/index", base) < 0
			       ? NULL : *ret_owned;
	return NULL;
}

static enum lfs_whiteout_format whiteout_format(const struct lfs_options *o)
{
	if (!o->whiteout)
		return LFS_WHITEOUT_AUTO;
	return strcmp(o->whiteout, "oci") == 0 ? LFS_WHITEOUT_OCI
					       : LFS_WHITEOUT_CHARDEV;
}

/* Tell the waiting parent how it went: "" for success, else a message. */
static void report(int fd, const char *msg)
{
	if (fd < 0)
		return;
	if (write(fd, msg, strlen(msg) + 1) < 0) {
		/* The parent is gone; nobody is left to tell. */
	}
	close(fd);
}

static void detach_stdio(void)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (null < 0)
		return;
	dup2(null, STDIN_FILENO);
	dup2(null, STDOUT_FILENO);
	dup2(null, STDERR_FILENO);
	if (null > STDERR_FILENO)
		close(null);
}

static int serve(const struct lfs_options *o, struct lfs_fuse *ctx,
		 int report_fd)
{
	char *mopts = fuse_mount_options(o, ctx->read_only);
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	struct fuse_loop_config *loop = NULL;
	char msg[LFS_ERRLEN];
	int r = 1;

	if (!mopts) {
		report(report_fd, "out of memory");
		return 1;
	}
	if (fuse_opt_add_arg(&args, PROG) != 0 ||
	    fuse_opt_add_arg(&args, "-o") != 0 ||
	    fuse_opt_add_arg(&args, mopts) != 0 ||
	    (o->debug && fuse_opt_add_arg(&args, "-d") != 0)) {
		report(report_fd, "out of memory");
		goto out;
	}
	se = fuse_session_new(&args, &lfs_fuse_ops, sizeof(lfs_fuse_ops), ctx);
	if (!se) {
		report(report_fd, "cannot start the FUSE session");
		goto out;
	}
	if (fuse_set_signal_handlers(se) != 0) {
		report(report_fd, "cannot install signal handlers");
		goto out;
	}
	if (fuse_session_mount(se, o->mountpoint) != 0) {
		snprintf(msg, sizeof(msg), "mount point %s: mount failed",
			 o->mountpoint);
		report(report_fd, msg);
		goto out_signals;
	}
	if (report_fd >= 0) {
		if (chdir("/") < 0) {
			/* Only keeps the caller's cwd busy; harmless. */
		}
		detach_stdio();
		report(report_fd, "");
	}
	/* After the fork: threads do not survive one. */
	lfs_fs_start_background(ctx->fs);
	/* One thread: no hand-over between threads per request (sequential
	 * small requests go faster), but one slow request (a cold read, a
	 * big copy-up) holds up all the others. */
	if (o->single_threaded || !o->threaded) {
		r = fuse_session_loop(se) != 0;
		fuse_session_unmount(se);
		goto out_signals;
	}
	loop = fuse_loop_cfg_create();
	if (!loop) {
		r = 1;
	} else {
		fuse_loop_cfg_set_max_threads(loop, 64);
		fuse_loop_cfg_set_idle_threads(loop, 8);
		r = fuse_session_loop_mt(se, loop) != 0;
		fuse_loop_cfg_destroy(loop);
	}
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out:
	if (se)
		fuse_session_destroy(se);
	fuse_opt_free_args(&args);
	free(mopts);
	return r;
}

/* Fork; return in the child with the write end of the verdict pipe, or
 * exit in the parent with the child's verdict. */
static int daemonize(void)
{
	int pipefd[2];
	pid_t pid;

	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		perror(PROG ": pipe");
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		perror(PROG ": fork");
		exit(1);
	}
	if (pid == 0) {
		close(pipefd[0]);
		setsid();
		return pipefd[1];
	}
	close(pipefd[1]);
	char msg[LFS_ERRLEN + 1];
	size_t got = 0;
	ssize_t n;
	while (got < sizeof(msg) - 1 &&
	       (n = read(pipefd[0], msg + got, sizeof(msg) - 1 - got)) > 0)
		got += (size_t)n;
	msg[got] = '\0';
	if (got > 0 && msg[0] == '\0')
		exit(0);
	fprintf(stderr, PROG ": %s\n",
		got ? msg : "the mount daemon died before mounting");
	exit(1);
}

static void warn_unknown(const struct lfs_options *o)
{
	if (o->n_unknown_opts == 0)
		return;
	fprintf(stderr, PROG ": warning: ignoring unknown options:");
	for (size_t i = 0; i < o->n_unknown_opts; i++)
		fprintf(stderr, "%s %s", i ? "," : "", o->unknown_opts[i]);
	fputc('\n', stderr);
}

int main(int argc, char *argv[])
{
	struct lfs_options opts;
	struct lfs_stack *stack = NULL;
	struct lfs_fuse ctx = { 0 };
	char err[LFS_ERRLEN] = "";
	int r;

	if (lfs_options_parse(argc, argv, &opts, err) < 0) {
		fprintf(stderr, PROG ": %s\n(see " PROG " --help)\n", err);
		return 1;
	}
	if (opts.show_version || opts.show_help) {
		if (opts.show_help)
			usage(stdout);
		else
			printf(PROG " version %s\nFUSE library version %s\n",
			       LAYERFS_VERSION, fuse_pkgversion());
		lfs_options_free(&opts);
		return 0;
	}
	warn_unknown(&opts);
	rlim_t fd_limit = raise_fd_limit();

	r = check_mountpoint(opts.mountpoint, err);
	if (r == 0)
		r = make_absolute(&opts.mountpoint, err);
	if (r == 0 && opts.index_cache && strcmp(opts.index_cache, "off") != 0)
		r = make_absolute(&opts.index_cache, err);
	if (r == 0 && opts.upperdir)
		r = check_dir("upperdir", opts.upperdir, err);
	if (r == 0 && opts.workdir)
		r = check_dir("workdir", opts.workdir, err);
	if (r == 0)
		r = open_stack(&opts, &stack, err);
	/* The upper layer changes: it is never known by a digest. */
	if (r == 0 && opts.upperdir)
		stack->layers[0].digest[0] = '\0';
	char *cache_dir_owned = NULL;
	struct lfs_owner_policy owner = { .squash_uid = -1, .squash_gid = -1 };
	bool has_owner = false;
	if (r == 0)
		r = lfs_owner_policy_init(&owner, &opts, &has_owner, err);
	if (r < 0 && stack) {
		lfs_stack_free(stack);
		stack = NULL;
	}
	if (r == 0) {
		struct lfs_fs_config config = {
			.read_only = !opts.upperdir,
			.workdir = opts.workdir,
			.whiteout = whiteout_format(&opts),
			.no_fsync = !opts.fsync || opts.volatile_upper,
			.metacopy = opts.metacopy,
			.owner = has_owner ? &owner : NULL,
			.static_nlink = opts.static_nlink,
			.noxattrs = opts.noxattrs,
			.noacl = opts.noacl,
			.volatile_upper = opts.volatile_upper,
			.max_data_fds = data_fd_budget(fd_limit, stack->n_layers),
			.index_cache_dir = index_cache_dir(&opts,
							   &cache_dir_owned),
		};
		r = lfs_fs_new(&ctx.fs, stack, &config, err);
		free(cache_dir_owned);
		if (r < 0)
			lfs_stack_free(stack);
	}
	if (r < 0) {
		fprintf(stderr, PROG ": %s\n", err);
		lfs_options_free(&opts);
		return 1;
	}
	ctx.timeout = opts.timeout;
	ctx.read_only = !opts.upperdir;
	ctx.writeback = opts.writeback && opts.upperdir;
	ctx.copyup_on_open = opts.copyup_on_open && opts.upperdir;
	ctx.acl = !opts.noacl && !opts.noxattrs;
	/* Objects get exactly the mode the caller asked for (the kernel has
	 * applied the caller's umask already). */
	umask(0);

	int report_fd = opts.foreground ? -1 : daemonize();
	r = serve(&opts, &ctx, report_fd);
	lfs_fs_free(ctx.fs);
	lfs_owner_policy_free(&owner);
	lfs_options_free(&opts);
	return r;
}
