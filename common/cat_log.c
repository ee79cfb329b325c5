#include "cat_log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cat_time.h"

static const char *log_program = "catalyst";
static cat_log_level_t log_min_level = CAT_LOG_LEVEL_INFO;
static FILE *log_stream;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void cat_log_init(const char *program, cat_log_level_t min_level)
{
	log_program = program;
	log_min_level = min_level;
}

int cat_log_level_parse(const char *name)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (name && strcmp(name, level_names[i]) == 0)
			return (int)i;
	return -1;
}

void cat_log_set_stream(FILE *stream)
{
	log_stream = stream;
}

static void log_vwrite(cat_log_level_t level, const char *fac, const json_t *fields,
		       const char *fmt, va_list ap) CAT_PRINTF(4, 0);

static void log_vwrite(cat_log_level_t level, const char *fac, const json_t *fields,
		       const char *fmt, va_list ap)
{
	char msg[2048];
	char ts[40];
	json_t *line;
	json_t *msg_json;
	char *text;
	FILE *out = log_stream ? log_stream : stderr;

	if (level < log_min_level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	cat_time_format_rfc3339(cat_time_now_us(), ts, sizeof(ts));

	line = json_object();
	if (!line)
		return;
	json_object_set_new(line, "ts", json_string(ts));
	json_object_set_new(line, "level", json_string(level_names[level]));
	json_object_set_new(line, "program", json_string(log_program));
	json_object_set_new(line, "fac", json_string(fac ? fac : "MAIN"));
	msg_json = json_string(msg); /* NULL when msg is not valid UTF-8 */
	json_object_set_new(line, "msg", msg_json ? msg_json : json_string("(message not valid utf-8)"));
	if (fields)
		json_object_update(line, (json_t *)fields);
	text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (text) {
		fprintf(out, "%s\n", text);
		fflush(out);
		free(text);
	}
	json_decref(line);
}

void cat_log_write(cat_log_level_t level, const char *fac, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(level, fac, NULL, fmt, ap);
	va_end(ap);
}

void cat_log_kv(cat_log_level_t level, const char *fac, const void *fields, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(level, fac, fields, fmt, ap);
	va_end(ap);
}
