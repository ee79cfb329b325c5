/*
 * fuzz_write_decode: arbitrary bytes into the write.v1 decoder, the trust
 * boundary of catalyst-persist.
 *
 * Properties, each an abort() when broken:
 *   - the decoder answers CAT_OK or CAT_ERR_PERMANENT, with a reason, and
 *     hands out a command only with CAT_OK;
 *   - an accepted command has a JSON form (what validation lets through can
 *     be logged, cached and replayed);
 *   - that JSON reads back through cat_codec_write_from_json, and when the
 *     command carries its own id and issue time, writes out the same again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_write_decode: %s: %s\n", what, detail ? detail : "");
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Catalyst__V1__WriteCommand *cmd = NULL, *again = NULL;
	char errstr[512] = "";
	char *json, *json_again;
	cat_err_t err;

	err = cat_codec_write_decode(data, size, &cmd, errstr, sizeof(errstr));
	if (err != CAT_OK) {
		if (err != CAT_ERR_PERMANENT || cmd != NULL || errstr[0] == '\0')
			fail("rejection not permanent, or without a reason", errstr);
		return 0;
	}

	json = cat_codec_write_to_json(cmd);
	if (!json)
		fail("accepted command has no JSON form", NULL);
	if (cat_codec_write_from_json(json, strlen(json), NULL, &again, errstr, sizeof(errstr)) != CAT_OK)
		fail(errstr, json);
	if (cmd->meta && cmd->meta->command_id && cmd->meta->has_issued_at_us) {
		json_again = cat_codec_write_to_json(again);
		if (!json_again || strcmp(json, json_again) != 0)
			fail("JSON changed on the way back", json_again);
		free(json_again);
	}
	free(json);
	catalyst__v1__write_command__free_unpacked(again, NULL);
	catalyst__v1__write_command__free_unpacked(cmd, NULL);
	return 0;
}
