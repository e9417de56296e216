/*
 * proc.c - the running processes, as /proc shows them: the one walk over
 * /proc that layerctl ps (which daemon serves a container), gc (which
 * layers running mounts use, whether another layerctl runs) and bench
 * (which daemons it started) each need.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layerctl.h"

int proc_each_pid(bool (*fn)(const char *pid, void *arg), void *arg)
{
	DIR *proc = opendir("/proc");
	struct dirent *de;
	int r = 0;

	if (!proc)
		return -errno;
	while (r == 0 && (de = readdir(proc)))
		if (strspn(de->d_name, "0123456789") == strlen(de->d_name) &&
		    fn(de->d_name, arg))
			r = 1;
	closedir(proc);
	return r;
}

char *proc_read(const char *pid, const char *file, size_t *ret_len)
{
	char path[300];
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%.32s/%s", pid, file);
	f = fopen(path, "re");
	/* /proc files report size 0: read until the end. */
	while (f && buf) {
		size_t got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0)
			break;
		if (len + 1 == cap) {
			char *bigger = realloc(buf, 2 * cap);
			if (!bigger)
				free(buf);
			buf = bigger;
			cap *= 2;
		}
	}
	if (f)
		fclose(f);
	if (!f || !buf || len == 0) {
		free(buf);
		return NULL;
	}
	buf[len] = '\0';
	if (ret_len)
		*ret_len = len;
	return buf;
}

bool proc_comm_is(const char *pid, const char *name)
{
	char *comm = proc_read(pid, "comm", NULL);
	bool is = false;

	if (comm) {
		comm[strcspn(comm, "\n")] = '\0';
		is = strcmp(comm, name) == 0;
	}
	free(comm);
	return is;
}

char *proc_layerfs_argv(const char *pid, size_t *ret_len)
{
	char *argv = proc_read(pid, "cmdline", ret_len);

	if (!argv)
		return NULL;
	const char *base = strrchr(argv, '/');
	if (strcmp(base ? base + 1 : argv, "layerfs") == 0 ||
	    proc_comm_is(pid, "layerfs"))
		return argv;
	free(argv);
	return NULL;
}
