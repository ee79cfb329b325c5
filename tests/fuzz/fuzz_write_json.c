/*
 * fuzz_write_json: arbitrary text into the JSON write-line reader of
 * catalyst-publish.
 *
 * Properties, each an abort() when broken:
 *   - the reader answers CAT_OK or CAT_ERR_PERMANENT with a reason;
 *   - what it accepts, packed, is accepted by the write.v1 decoder (what
 *     publish sends, persist takes) and decodes to the same bytes;
 *   - its JSON form reads back as the same command.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_write_json: %s: %s\n", what, detail ? detail : "");
	abort();
}

static uint8_t *pack(const Catalyst__V1__WriteCommand *cmd, size_t *len)
{
	uint8_t *buf;

	*len = catalyst__v1__write_command__get_packed_size(cmd);
	buf = malloc(*len ? *len : 1);
	if (!buf)
		fail("out of memory", NULL);
	if (catalyst__v1__write_command__pack(cmd, buf) != *len)
		fail("packed size changed", NULL);
	return buf;
}

static int same_bytes(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
	return a_len == b_len && memcmp(a, b, a_len) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Catalyst__V1__WriteCommand *cmd = NULL, *decoded = NULL, *again = NULL;
	char errstr[512] = "";
	uint8_t *buf, *buf2;
	size_t len, len2;
	char *json;
	cat_err_t err;

	err = cat_codec_write_from_json((const char *)data, size, "fuzz", &cmd, errstr, sizeof(errstr));
	if (err != CAT_OK) {
		if (err != CAT_ERR_PERMANENT || cmd != NULL || errstr[0] == '\0')
			fail("rejection not permanent, or without a reason", errstr);
		return 0;
	}

	/* through the wire */
	buf = pack(cmd, &len);
	if (cat_codec_write_decode(buf, len, &decoded, errstr, sizeof(errstr)) != CAT_OK)
		fail("accepted line does not decode", errstr);
	buf2 = pack(decoded, &len2);
	if (!same_bytes(buf, len, buf2, len2))
		fail("command changed through the wire", NULL);
	free(buf2);

	/* through JSON */
	json = cat_codec_write_to_json(decoded);
	if (!json)
		fail("accepted line has no JSON form", NULL);
	if (cat_codec_write_from_json(json, strlen(json), "fuzz", &again, errstr, sizeof(errstr)) != CAT_OK)
		fail(errstr, json);
	buf2 = pack(again, &len2);
	if (!same_bytes(buf, len, buf2, len2))
		fail("command changed through JSON", json);

	free(buf);
	free(buf2);
	free(json);
	catalyst__v1__write_command__free_unpacked(again, NULL);
	catalyst__v1__write_command__free_unpacked(decoded, NULL);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	return 0;
}
