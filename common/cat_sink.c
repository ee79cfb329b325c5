#define _GNU_SOURCE /* asprintf */
#include "cat_sink.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP_MARK ".part-"

struct cat_sink {
	const cat_sink_ops_t *ops;
	cat_s3_t *s3; /* s3 backend */
	char *dir;    /* dir backend */
	pthread_mutex_t lock; /* guards last_error: writers run on several threads */
	char last_error[512];
};

struct cat_sink_writer {
	cat_sink_t *sink;
	void *handle;
	bool done; /* finished or aborted */
};

static cat_err_t keep(cat_sink_t *sink, cat_err_t err, const char *errstr)
{
	if (err != CAT_OK) {
		pthread_mutex_lock(&sink->lock);
		snprintf(sink->last_error, sizeof(sink->last_error), "%s", errstr);
		pthread_mutex_unlock(&sink->lock);
	}
	return err;
}

bool cat_sink_key_valid(const char *key)
{
	size_t seg_len = 0;
	const char *seg = key;

	if (!key || !*key)
		return false;
	for (const char *p = key;; p++) {
		if (*p == '/' || *p == '\0') {
			seg_len = (size_t)(p - seg);
			/* no empty, "." or ".." segment (so no leading or doubled '/') */
			if (seg_len == 0 || (seg_len == 1 && seg[0] == '.') ||
			    (seg_len == 2 && seg[0] == '.' && seg[1] == '.'))
				return false;
			if (*p == '\0')
				return true;
			seg = p + 1;
		} else if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
			     *p == '.' || *p == '_' || *p == '-')) {
			return false;
		}
	}
}

/* --- S3 backend ------------------------------------------------------------------------------- */

static cat_err_t s3_open(cat_sink_t *sink, const char *key, const char *content_type, void **handle,
			 char *errstr, size_t errstr_size)
{
	return cat_s3_upload_begin(sink->s3, key, content_type, (cat_s3_upload_t **)handle, errstr, errstr_size);
}

static cat_err_t s3_write(void *handle, const void *data, size_t len, char *errstr, size_t errstr_size)
{
	return cat_s3_upload_write(handle, data, len, errstr, errstr_size);
}

static cat_err_t s3_finish(void *handle, char *errstr, size_t errstr_size)
{
	return cat_s3_upload_finish(handle, errstr, errstr_size);
}

static void s3_abort(void *handle)
{
	cat_s3_upload_abort(handle);
}

static void s3_close(void *handle)
{
	cat_s3_upload_free(handle);
}

static cat_err_t s3_put(cat_sink_t *sink, const char *key, const void *data, size_t len, const char *content_type,
			char *errstr, size_t errstr_size)
{
	return cat_s3_put(sink->s3, key, data, len, content_type, errstr, errstr_size);
}

static cat_err_t s3_get(cat_sink_t *sink, const char *key, cat_sink_read_fn fn, void *opaque, bool *not_found,
			char *errstr, size_t errstr_size)
{
	return cat_s3_get(sink->s3, key, fn, opaque, not_found, errstr, errstr_size);
}

static cat_err_t s3_remove(cat_sink_t *sink, const char *key, char *errstr, size_t errstr_size)
{
	return cat_s3_delete(sink->s3, key, errstr, errstr_size);
}

static cat_err_t s3_list(cat_sink_t *sink, const char *prefix, cat_sink_list_fn fn, void *opaque, char *errstr,
			 size_t errstr_size)
{
	return cat_s3_list(sink->s3, prefix, fn, opaque, errstr, errstr_size);
}

typedef struct upload_ref {
	char *key, *id;
} upload_ref_t;

typedef struct upload_refs {
	upload_ref_t *v;
	size_t n, cap;
	bool oom;
} upload_refs_t;

static int collect_upload(const char *key, const char *upload_id, void *opaque)
{
	upload_refs_t *refs = opaque;

	if (refs->n == refs->cap) {
		size_t cap = refs->cap ? refs->cap * 2 : 16;
		upload_ref_t *grown = realloc(refs->v, cap * sizeof(*grown));

		if (!grown) {
			refs->oom = true;
			return 1;
		}
		refs->v = grown;
		refs->cap = cap;
	}
	refs->v[refs->n].key = strdup(key);
	refs->v[refs->n].id = strdup(upload_id);
	refs->n++;
	return 0;
}

static cat_err_t s3_cleanup(cat_sink_t *sink, const char *prefix, int *removed, char *errstr,
			    size_t errstr_size)
{
	upload_refs_t refs = {0};
	cat_err_t err = cat_s3_list_uploads(sink->s3, prefix, collect_upload, &refs, errstr, errstr_size);

	if (err == CAT_OK && refs.oom)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	for (size_t i = 0; i < refs.n; i++) {
		if (err == CAT_OK && refs.v[i].key && refs.v[i].id) {
			err = cat_s3_abort_upload(sink->s3, refs.v[i].key, refs.v[i].id, errstr, errstr_size);
			if (err == CAT_OK && removed)
				(*removed)++;
		}
		free(refs.v[i].key);
		free(refs.v[i].id);
	}
	free(refs.v);
	return err;
}

static cat_err_t s3_check(cat_sink_t *sink, char *errstr, size_t errstr_size)
{
	return cat_s3_check(sink->s3, errstr, errstr_size);
}

static void s3_free(cat_sink_t *sink)
{
	cat_s3_destroy(sink->s3);
}

static const cat_sink_ops_t s3_ops = {
	"s3", s3_open, s3_write, s3_finish, s3_abort, s3_close, s3_put, s3_get, s3_remove, s3_list, s3_cleanup,
	s3_check, s3_free,
};

/* --- directory backend ------------------------------------------------------------------------ */

typedef struct dir_file {
	int fd;
	char *path, *tmp;
	bool done;
} dir_file_t;

static unsigned tmp_counter;

static char *dir_path(const cat_sink_t *sink, const char *key)
{
	char *path;

	return asprintf(&path, "%s/%s", sink->dir, key) < 0 ? NULL : path;
}

/* mkdir -p of path's parent directories */
static int make_parents(char *path)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		int rc = mkdir(path, 0700);
		*p = '/';
		if (rc != 0 && errno != EEXIST)
			return -1;
	}
	return 0;
}

static cat_err_t dir_open(cat_sink_t *sink, const char *key, const char *content_type, void **handle,
			  char *errstr, size_t errstr_size)
{
	dir_file_t *f = calloc(1, sizeof(*f));

	*handle = NULL;
	if (!f || !(f->path = dir_path(sink, key)) ||
	    asprintf(&f->tmp, "%s" TMP_MARK "%d-%u", f->path, (int)getpid(), __atomic_add_fetch(&tmp_counter, 1, __ATOMIC_SEQ_CST)) < 0) {
		if (f)
			free(f->path);
		free(f);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	if (make_parents(f->tmp) != 0 || (f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
		cat_err_t err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not create %s: %s", f->tmp,
					    strerror(errno));
		free(f->path);
		free(f->tmp);
		free(f);
		return err;
	}
	*handle = f;
	return CAT_OK;
}

static cat_err_t dir_write(void *handle, const void *data, size_t len, char *errstr, size_t errstr_size)
{
	dir_file_t *f = handle;
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(f->fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return cat_err_set(errstr, errstr_size, errno == ENOSPC ? CAT_ERR_RETRIABLE : CAT_ERR_FATAL,
					   "could not write %s: %s", f->tmp, strerror(errno));
		p += n;
		len -= (size_t)n;
	}
	return CAT_OK;
}

static cat_err_t dir_finish(void *handle, char *errstr, size_t errstr_size)
{
	dir_file_t *f = handle;

	if (fsync(f->fd) != 0 || close(f->fd) != 0) {
		f->fd = -1;
		return cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not write %s: %s", f->tmp,
				   strerror(errno));
	}
	f->fd = -1;
	if (rename(f->tmp, f->path) != 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not rename %s: %s", f->tmp,
				   strerror(errno));
	f->done = true;
	return CAT_OK;
}

static void dir_abort(void *handle)
{
	dir_file_t *f = handle;

	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	if (!f->done)
		unlink(f->tmp);
	f->done = true;
}

static void dir_close(void *handle)
{
	dir_file_t *f = handle;

	if (!f)
		return;
	dir_abort(f);
	free(f->path);
	free(f->tmp);
	free(f);
}

static cat_err_t dir_put(cat_sink_t *sink, const char *key, const void *data, size_t len, const char *content_type,
			 char *errstr, size_t errstr_size)
{
	void *h;
	cat_err_t err = dir_open(sink, key, content_type, &h, errstr, errstr_size);

	if (err == CAT_OK && (err = dir_write(h, data, len, errstr, errstr_size)) == CAT_OK)
		err = dir_finish(h, errstr, errstr_size);
	if (h)
		dir_close(h);
	return err;
}

static cat_err_t dir_get(cat_sink_t *sink, const char *key, cat_sink_read_fn fn, void *opaque, bool *not_found,
			 char *errstr, size_t errstr_size)
{
	char *path = dir_path(sink, key), buf[65536];
	cat_err_t err = CAT_OK;
	int fd;

	if (not_found)
		*not_found = false;
	if (!path)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		if (not_found)
			*not_found = errno == ENOENT;
		err = cat_err_set(errstr, errstr_size, errno == ENOENT ? CAT_ERR_PERMANENT : CAT_ERR_FATAL,
				  "could not open %s: %s", path, strerror(errno));
		free(path);
		return err;
	}
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "could not read %s: %s", path,
					  strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if (fn(buf, (size_t)n, opaque) != 0) {
			err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "could not read %s: stopped by the reader",
					  path);
			break;
		}
	}
	close(fd);
	free(path);
	return err;
}

static cat_err_t dir_remove(cat_sink_t *sink, const char *key, char *errstr, size_t errstr_size)
{
	char *path = dir_path(sink, key);
	cat_err_t err = CAT_OK;

	if (!path)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if (unlink(path) != 0 && errno != ENOENT)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "could not remove %s: %s", path, strerror(errno));
	free(path);
	return err;
}

typedef struct walk_entry {
	char *key;
	uint64_t size;
} walk_entry_t;

typedef struct walk {
	walk_entry_t *v;
	size_t n, cap;
	bool oom;
	bool tmp; /* collect temp files instead of objects */
} walk_t;

static void walk_dir(const char *root, const char *rel, walk_t *w)
{
	char *path;
	DIR *d;
	struct dirent *de;

	if (asprintf(&path, "%s%s%s", root, *rel ? "/" : "", rel) < 0)
		return;
	d = opendir(path);
	free(path);
	if (!d)
		return;
	while ((de = readdir(d)) && !w->oom) {
		char *sub, *full;
		struct stat st;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (asprintf(&sub, "%s%s%s", rel, *rel ? "/" : "", de->d_name) < 0)
			break;
		if (asprintf(&full, "%s/%s", root, sub) < 0) {
			free(sub);
			break;
		}
		if (stat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
			walk_dir(root, sub, w);
			free(sub);
		} else if ((strstr(de->d_name, TMP_MARK) != NULL) == w->tmp) {
			if (w->n == w->cap) {
				size_t cap = w->cap ? w->cap * 2 : 64;
				walk_entry_t *grown = realloc(w->v, cap * sizeof(*grown));

				if (!grown) {
					w->oom = true;
					free(sub);
					free(full);
					break;
				}
				w->v = grown;
				w->cap = cap;
			}
			w->v[w->n].key = sub;
			w->v[w->n].size = (uint64_t)st.st_size;
			w->n++;
		} else {
			free(sub);
		}
		free(full);
	}
	closedir(d);
}

static int walk_cmp(const void *a, const void *b)
{
	return strcmp(((const walk_entry_t *)a)->key, ((const walk_entry_t *)b)->key);
}

static cat_err_t dir_walk(cat_sink_t *sink, bool tmp, walk_t *w, char *errstr, size_t errstr_size)
{
	*w = (walk_t){.tmp = tmp};
	walk_dir(sink->dir, "", w);
	if (w->oom)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if (w->n > 1)
		qsort(w->v, w->n, sizeof(*w->v), walk_cmp);
	return CAT_OK;
}

static void walk_free(walk_t *w)
{
	for (size_t i = 0; i < w->n; i++)
		free(w->v[i].key);
	free(w->v);
}

static cat_err_t dir_list(cat_sink_t *sink, const char *prefix, cat_sink_list_fn fn, void *opaque, char *errstr,
			  size_t errstr_size)
{
	walk_t w;
	cat_err_t err = dir_walk(sink, false, &w, errstr, errstr_size);

	for (size_t i = 0; err == CAT_OK && i < w.n; i++)
		if (strncmp(w.v[i].key, prefix, strlen(prefix)) == 0 && fn(w.v[i].key, w.v[i].size, opaque) != 0)
			break;
	walk_free(&w);
	return err;
}

static cat_err_t dir_cleanup(cat_sink_t *sink, const char *prefix, int *removed, char *errstr, size_t errstr_size)
{
	walk_t w;
	cat_err_t err = dir_walk(sink, true, &w, errstr, errstr_size);

	for (size_t i = 0; err == CAT_OK && i < w.n; i++)
		if (strncmp(w.v[i].key, prefix, strlen(prefix)) == 0) {
			err = dir_remove(sink, w.v[i].key, errstr, errstr_size);
			if (err == CAT_OK && removed)
				(*removed)++;
		}
	walk_free(&w);
	return err;
}

static cat_err_t dir_check(cat_sink_t *sink, char *errstr, size_t errstr_size)
{
	if (access(sink->dir, W_OK | X_OK) != 0)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "backup directory %s: %s", sink->dir,
				   strerror(errno));
	return CAT_OK;
}

static void dir_free(cat_sink_t *sink)
{
	free(sink->dir);
}

static const cat_sink_ops_t dir_ops = {
	"dir", dir_open, dir_write, dir_finish, dir_abort, dir_close, dir_put, dir_get, dir_remove, dir_list,
	dir_cleanup, dir_check, dir_free,
};

/* --- the interface ------------------------------------------------------------------------------ */

cat_err_t cat_sink_new_s3(cat_sink_t **out, cat_s3_t *s3, char *errstr, size_t errstr_size)
{
	cat_sink_t *sink = calloc(1, sizeof(*sink));

	*out = NULL;
	if (!sink) {
		cat_s3_destroy(s3);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	pthread_mutex_init(&sink->lock, NULL);
	sink->ops = &s3_ops;
	sink->s3 = s3;
	*out = sink;
	return CAT_OK;
}

cat_err_t cat_sink_new_dir(cat_sink_t **out, const char *dir, char *errstr, size_t errstr_size)
{
	cat_sink_t *sink;
	char *probe;

	*out = NULL;
	if (!dir || !*dir)
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "backup directory: empty path");
	if (!(sink = calloc(1, sizeof(*sink))) || !(sink->dir = strdup(dir)) ||
	    asprintf(&probe, "%s/x", dir) < 0) {
		if (sink)
			free(sink->dir);
		free(sink);
		return cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	}
	make_parents(probe);
	free(probe);
	pthread_mutex_init(&sink->lock, NULL);
	sink->ops = &dir_ops;
	*out = sink;
	return CAT_OK;
}

void cat_sink_free(cat_sink_t *sink)
{
	if (!sink)
		return;
	sink->ops->free(sink);
	pthread_mutex_destroy(&sink->lock);
	free(sink);
}

const char *cat_sink_name(const cat_sink_t *sink)
{
	return sink->ops->name;
}

const char *cat_sink_last_error(cat_sink_t *sink, char *buf, size_t buf_size)
{
	pthread_mutex_lock(&sink->lock);
	snprintf(buf, buf_size, "%s", sink->last_error);
	pthread_mutex_unlock(&sink->lock);
	return buf;
}

static cat_err_t bad_key(cat_sink_t *sink, const char *key, char *errstr, size_t errstr_size)
{
	return keep(sink, cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "invalid object key \"%s\"", key),
		    errstr);
}

cat_err_t cat_sink_check(cat_sink_t *sink, char *errstr, size_t errstr_size)
{
	return keep(sink, sink->ops->check(sink, errstr, errstr_size), errstr);
}

cat_err_t cat_sink_open(cat_sink_t *sink, const char *key, const char *content_type, cat_sink_writer_t **out,
			char *errstr, size_t errstr_size)
{
	cat_sink_writer_t *w;
	cat_err_t err;

	*out = NULL;
	if (!cat_sink_key_valid(key))
		return bad_key(sink, key, errstr, errstr_size);
	if (!(w = calloc(1, sizeof(*w))))
		return keep(sink, cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory"), errstr);
	w->sink = sink;
	if ((err = sink->ops->open(sink, key, content_type, &w->handle, errstr, errstr_size)) != CAT_OK) {
		free(w);
		return keep(sink, err, errstr);
	}
	*out = w;
	return CAT_OK;
}

cat_err_t cat_sink_write(cat_sink_writer_t *writer, const void *data, size_t len, char *errstr,
			 size_t errstr_size)
{
	return keep(writer->sink, writer->sink->ops->write(writer->handle, data, len, errstr, errstr_size), errstr);
}

cat_err_t cat_sink_finish(cat_sink_writer_t *writer, char *errstr, size_t errstr_size)
{
	cat_err_t err = writer->sink->ops->finish(writer->handle, errstr, errstr_size);

	if (err == CAT_OK)
		writer->done = true;
	return keep(writer->sink, err, errstr);
}

void cat_sink_abort(cat_sink_writer_t *writer)
{
	if (!writer || writer->done)
		return;
	writer->sink->ops->abort(writer->handle);
	writer->done = true;
}

void cat_sink_writer_free(cat_sink_writer_t *writer)
{
	if (!writer)
		return;
	cat_sink_abort(writer);
	writer->sink->ops->close(writer->handle);
	free(writer);
}

cat_err_t cat_sink_put(cat_sink_t *sink, const char *key, const void *data, size_t len, const char *content_type,
		       char *errstr, size_t errstr_size)
{
	if (!cat_sink_key_valid(key))
		return bad_key(sink, key, errstr, errstr_size);
	return keep(sink, sink->ops->put(sink, key, data, len, content_type, errstr, errstr_size), errstr);
}

cat_err_t cat_sink_get(cat_sink_t *sink, const char *key, cat_sink_read_fn fn, void *opaque, bool *not_found,
		       char *errstr, size_t errstr_size)
{
	if (not_found)
		*not_found = false;
	if (!cat_sink_key_valid(key))
		return bad_key(sink, key, errstr, errstr_size);
	return keep(sink, sink->ops->get(sink, key, fn, opaque, not_found, errstr, errstr_size), errstr);
}

typedef struct small_buf {
	char *data;
	size_t len, max;
	bool too_big, oom;
} small_buf_t;

static int small_append(const void *data, size_t len, void *opaque)
{
	small_buf_t *b = opaque;
	char *grown;

	if (b->len + len > b->max) {
		b->too_big = true;
		return 1;
	}
	if (!(grown = realloc(b->data, b->len + len + 1))) {
		b->oom = true;
		return 1;
	}
	b->data = grown;
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
	return 0;
}

cat_err_t cat_sink_get_small(cat_sink_t *sink, const char *key, size_t max, char **out, size_t *out_len,
			     bool *not_found, char *errstr, size_t errstr_size)
{
	small_buf_t b = {.max = max};
	cat_err_t err = cat_sink_get(sink, key, small_append, &b, not_found, errstr, errstr_size);

	*out = NULL;
	if (b.too_big)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_PERMANENT, "object %s is larger than %zu bytes", key,
				  max);
	else if (b.oom)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory");
	if (err != CAT_OK) {
		free(b.data);
		return keep(sink, err, errstr);
	}
	if (!b.data && !(b.data = calloc(1, 1)))
		return keep(sink, cat_err_set(errstr, errstr_size, CAT_ERR_FATAL, "out of memory"), errstr);
	*out = b.data;
	if (out_len)
		*out_len = b.len;
	return CAT_OK;
}

cat_err_t cat_sink_delete(cat_sink_t *sink, const char *key, char *errstr, size_t errstr_size)
{
	if (!cat_sink_key_valid(key))
		return bad_key(sink, key, errstr, errstr_size);
	return keep(sink, sink->ops->remove(sink, key, errstr, errstr_size), errstr);
}

cat_err_t cat_sink_list(cat_sink_t *sink, const char *prefix, cat_sink_list_fn fn, void *opaque, char *errstr,
			size_t errstr_size)
{
	return keep(sink, sink->ops->list(sink, prefix ? prefix : "", fn, opaque, errstr, errstr_size), errstr);
}

cat_err_t cat_sink_cleanup(cat_sink_t *sink, const char *prefix, int *removed, char *errstr, size_t errstr_size)
{
	if (removed)
		*removed = 0;
	return keep(sink, sink->ops->cleanup(sink, prefix ? prefix : "", removed, errstr, errstr_size), errstr);
}
