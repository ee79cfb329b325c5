/*
 * schema-dump: the compiled-in schema as PostgreSQL describes it, one column
 * per line, so that a test can diff it against a migrated database:
 *
 *   schema-dump                 news_raw symbol character varying(10)
 *   schema-dump --not-null      news_raw symbol
 *   schema-dump --version 1     only the columns migration 1 creates
 *
 * The type is written as format_type() prints it. Order: tables and columns
 * as cat_schema lists them (compare sorted: migrations append columns).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_schema.h"

static const char usage[] = "usage: schema-dump [--version N] [--not-null]\n"
			    "prints \"table column type\" for every column of the compiled-in schema,\n"
			    "the type as PostgreSQL's format_type() writes it\n"
			    "  --version N   only the columns that migrations up to N create\n"
			    "  --not-null    only the NOT NULL columns, as \"table column\"\n";

static const char *sql_type(const cat_column_t *column, char *buf, size_t buf_size)
{
	switch (column->type) {
	case CAT_COL_TEXT:
		if (column->max_len <= 0)
			return "text";
		snprintf(buf, buf_size, "character varying(%d)", column->max_len);
		return buf;
	case CAT_COL_INT32:
		return "integer";
	case CAT_COL_INT64:
		return "bigint";
	case CAT_COL_DOUBLE:
		return "double precision";
	case CAT_COL_BOOL:
		return "boolean";
	case CAT_COL_TIMESTAMP:
		return "timestamp with time zone";
	}
	return "unknown";
}

int main(int argc, char **argv)
{
	int version = CAT_SCHEMA_VERSION;
	bool not_null = false;
	char type[64];

	for (int i = 1; i < argc; i++) {
		char *end;

		if (strcmp(argv[i], "--help") == 0) {
			fputs(usage, stdout);
			return 0;
		} else if (strcmp(argv[i], "--not-null") == 0) {
			not_null = true;
		} else if (strcmp(argv[i], "--version") == 0 && i + 1 < argc) {
			version = (int)strtol(argv[++i], &end, 10);
			if (*argv[i] == '\0' || *end != '\0' || version < 1) {
				fprintf(stderr, "schema-dump: --version: not a migration number: %s\n", argv[i]);
				return 2;
			}
		} else {
			fputs(usage, stderr);
			return 2;
		}
	}
	for (size_t t = 0; t < cat_schema_n_tables; t++) {
		const cat_table_t *table = &cat_schema_tables[t];

		for (size_t i = 0; i < table->n_columns; i++) {
			const cat_column_t *column = &table->columns[i];

			if (column->since_version > version || (not_null && !column->not_null))
				continue;
			if (not_null)
				printf("%s %s\n", table->name, column->name);
			else
				printf("%s %s %s\n", table->name, column->name, sql_type(column, type, sizeof(type)));
		}
	}
	return fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
}
