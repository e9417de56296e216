/*
 * digest.c - sha256 with OpenSSL's libcrypto, for blobs, decompressed
 * layers and configs.  Every OpenSSL result is checked: a digest we could
 * not compute must never pass for one that matched.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <archive.h>
#include <openssl/evp.h>

#include "layerctl.h"

struct sha256 {
	EVP_MD_CTX *ctx;
	bool failed;
};

struct sha256 *sha256_new(void)
{
	struct sha256 *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		h->failed = true;
	return h;
}

void sha256_update(struct sha256 *h, const void *data, size_t len)
{
	if (!h->failed && EVP_DigestUpdate(h->ctx, data, len) != 1)
		h->failed = true;
}

void sha256_final_hex(struct sha256 *h, char hex[HEXLEN + 1])
{
	unsigned char md[32];
	unsigned int len = 0;

	/* A failure yields a string no real digest equals. */
	strcpy(hex, "digest-failed");
	if (!h->failed && EVP_DigestFinal_ex(h->ctx, md, &len) == 1 &&
	    len == 32)
		for (int i = 0; i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", md[i]);
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void sha256_hex_of(const void *data, size_t len, char hex[HEXLEN + 1])
{
	struct sha256 *h = sha256_new();

	if (!h) {
		strcpy(hex, "digest-failed");
		return;
	}
	sha256_update(h, data, len);
	sha256_final_hex(h, hex);
}

int sha256_file(const char *path, char hex[HEXLEN + 1], char err[ERRLEN])
{
	char buf[1 << 16];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct sha256 *h;
	ssize_t n;

	if (fd < 0) {
		snprintf(err, ERRLEN, "%s: %s", path, strerror(errno));
		return -errno;
	}
	if (!(h = sha256_new())) {
		close(fd);
		snprintf(err, ERRLEN, "out of memory");
		return -ENOMEM;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		sha256_update(h, buf, (size_t)n);
	int e = n < 0 ? errno : 0;
	close(fd);
	sha256_final_hex(h, hex);
	if (e) {
		snprintf(err, ERRLEN, "%s: %s", path, strerror(e));
		return -e;
	}
	return 0;
}

int sha256_decompressed(const char *path, const char *what,
			char hex[HEXLEN + 1], char err[ERRLEN])
{
	struct archive *a = archive_read_new();
	struct archive_entry *entry;
	struct sha256 *h = sha256_new();
	char buf[1 << 16];
	int r = 0;

	if (!a || !h) {
		snprintf(err, ERRLEN, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	/* "raw" format: the decompressed stream itself, whatever it holds. */
	archive_read_support_filter_all(a);
	archive_read_support_format_raw(a);
	if (archive_read_open_filename(a, path, sizeof(buf)) != ARCHIVE_OK ||
	    archive_read_next_header(a, &entry) != ARCHIVE_OK) {
		snprintf(err, ERRLEN, "%s: %s", what, archive_error_string(a));
		r = -EIO;
		goto out;
	}
	for (;;) {
		la_ssize_t n = archive_read_data(a, buf, sizeof(buf));
		if (n == 0)
			break;
		if (n < 0) {
			snprintf(err, ERRLEN, "%s: %s", what,
				 archive_error_string(a));
			r = -EIO;
			goto out;
		}
		sha256_update(h, buf, (size_t)n);
	}
out:
	if (h)
		sha256_final_hex(h, hex);
	if (a)
		archive_read_free(a);
	return r;
}

bool is_hex64(const char *s)
{
	size_t i;

	for (i = 0; i < HEXLEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[i] == '\0';
}

bool digest_parse(const char *digest, char hex[HEXLEN + 1])
{
	if (!digest || strncmp(digest, "sha256:", 7) != 0 ||
	    !is_hex64(digest + 7))
		return false;
	memcpy(hex, digest + 7, HEXLEN + 1);
	return true;
}
