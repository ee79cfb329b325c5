/*
 * Replays fuzz inputs without libFuzzer: every regular file of each
 * directory (or each file) named on the command line goes once through
 * LLVMFuzzerTestOneInput. A crash or abort() fails the run; no inputs at all
 * (an empty or missing corpus) is fine.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file into a buffer of exactly its size, so that a sanitizer
 * sees any read past the end of the input. */
static int replay_file(const char *path)
{
	FILE *in = fopen(path, "rb");
	uint8_t *data = NULL;
	size_t size = 0, cap = 0, n;
	uint8_t chunk[65536];

	if (!in) {
		fprintf(stderr, "replay: could not open %s: %s\n", path, strerror(errno));
		return -1;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), in)) > 0) {
		if (size + n > cap) {
			uint8_t *grown;

			cap = (size + n) * 2;
			grown = realloc(data, cap);
			if (!grown) {
				fprintf(stderr, "replay: out of memory reading %s\n", path);
				free(data);
				fclose(in);
				return -1;
			}
			data = grown;
		}
		memcpy(data + size, chunk, n);
		size += n;
	}
	if (ferror(in)) {
		fprintf(stderr, "replay: could not read %s\n", path);
		free(data);
		fclose(in);
		return -1;
	}
	fclose(in);

	{
		uint8_t *exact = malloc(size ? size : 1);

		if (!exact) {
			free(data);
			return -1;
		}
		if (size)
			memcpy(exact, data, size);
		free(data);
		LLVMFuzzerTestOneInput(exact, size);
		free(exact);
	}
	return 0;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays the regular files of `dir` in name order; returns how many, or -1. */
static long replay_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *entry;
	char **names = NULL;
	size_t n_names = 0, cap = 0;
	long count = 0;
	int failed = 0;

	if (!d) {
		if (errno == ENOENT) {
			fprintf(stderr, "replay: %s does not exist, nothing to replay\n", dir);
			return 0;
		}
		fprintf(stderr, "replay: could not open %s: %s\n", dir, strerror(errno));
		return -1;
	}
	while ((entry = readdir(d)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		if (n_names == cap) {
			char **grown = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));

			if (!grown) {
				failed = 1;
				break;
			}
			names = grown;
		}
		names[n_names] = strdup(entry->d_name);
		if (names[n_names])
			n_names++;
	}
	closedir(d);
	if (n_names)
		qsort(names, n_names, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n_names; i++) {
		char path[4096];
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
			if (replay_file(path) == 0)
				count++;
			else
				failed = 1; /* keep going: replay the rest */
		}
		free(names[i]);
	}
	free(names);
	return failed ? -1 : count;
}

int main(int argc, char **argv)
{
	long total = 0;
	int failed = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;

		if (argv[i][0] == '-')
			continue; /* libFuzzer-style flags mean nothing here */
		if (stat(argv[i], &st) == 0 && S_ISREG(st.st_mode)) {
			if (replay_file(argv[i]) == 0)
				total++;
			else
				failed = 1;
		} else {
			long n = replay_dir(argv[i]);

			if (n < 0)
				failed = 1;
			else
				total += n;
		}
	}
	printf("replayed %ld inputs\n", total);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
