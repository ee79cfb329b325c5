/*
 * cat_schema: the compiled-in allow-list of tables and columns.
 *
 * No table or column name ever comes from a message or a file: SQL is built
 * only from these names. Each table maps to one record message of
 * proto/catalyst/v1/records.proto; each column to the field of the same
 * name. Mirrors migrations/ (a test checks both directions).
 */
#ifndef CAT_SCHEMA_H
#define CAT_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

typedef enum cat_col_type {
	CAT_COL_TEXT,      /* string;  SQL text / varchar(max_len) */
	CAT_COL_INT32,     /* int32;   SQL integer */
	CAT_COL_INT64,     /* int64;   SQL bigint */
	CAT_COL_DOUBLE,    /* double;  SQL double precision */
	CAT_COL_BOOL,      /* bool;    SQL boolean */
	CAT_COL_TIMESTAMP, /* int64 µs since epoch; SQL timestamptz; JSON RFC 3339 */
} cat_col_type_t;

typedef struct cat_column {
	const char *name;
	cat_col_type_t type;
	int max_len;        /* CAT_COL_TEXT: longest value in characters; 0: unbounded */
	bool primary_key;
	bool not_null;      /* the record must carry it (primary key, version, ...) */
	int since_version;  /* migration that adds the column */
} cat_column_t;

typedef struct cat_table {
	const char *name;                          /* SQL table = Record oneof field name */
	const ProtobufCMessageDescriptor *descriptor; /* its record message */
	unsigned record_case;                      /* Catalyst__V1__Record__RowCase */
	const cat_column_t *columns;
	size_t n_columns;
	const char *primary_key;                   /* the one primary-key column */
	bool insert_only;                          /* ON CONFLICT DO NOTHING (news_raw) */
	const char *partition_column;              /* Kafka key: this column if set, else the key */
} cat_table_t;

/* Schema version (highest migration) the records need. */
#define CAT_SCHEMA_VERSION 4

extern const cat_table_t cat_schema_tables[];
extern const size_t cat_schema_n_tables;

/* NULL when `name` is not a table of the schema. */
const cat_table_t *cat_schema_table(const char *name);

/* NULL when not a column of `table`. */
const cat_column_t *cat_schema_column(const cat_table_t *table, const char *name);

/* The record field of `column` in `table`'s message descriptor. */
const ProtobufCFieldDescriptor *cat_schema_field(const cat_table_t *table, const cat_column_t *column);

#endif /* CAT_SCHEMA_H */
