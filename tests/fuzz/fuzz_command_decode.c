/*
 * fuzz_command_decode: arbitrary bytes into the decoders of every other
 * message a worker consumes (ChangeBatch, CacheCommand, SyncCommand,
 * BackupCommand), the trust boundary of catalyst-cache, -sync and -backup.
 *
 * Properties, each an abort() when broken:
 *   - each decoder answers CAT_OK or CAT_ERR_PERMANENT, with a reason, and
 *     hands out a message only with CAT_OK;
 *   - an accepted message, packed again, is accepted again (what passed the
 *     boundary stays inside it);
 *   - an accepted backup tag matches [a-z0-9_-]{1,32}.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cat_codec.h"

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_command_decode: %s: %s\n", what, detail ? detail : "");
	abort();
}

static void check_result(cat_err_t err, const void *out, const char *errstr)
{
	if (err == CAT_OK ? out == NULL : err != CAT_ERR_PERMANENT || out != NULL || errstr[0] == '\0')
		fail("rejection not permanent, without a reason, or a message handed out with it", errstr);
}

/* An accepted message packs into bytes the same decoder accepts again. */
#define REPACK_CHECK(type, msg, decode)                                                            \
	do {                                                                                       \
		size_t len_ = protobuf_c_message_get_packed_size(&(msg)->base);                    \
		uint8_t *buf_ = malloc(len_ ? len_ : 1);                                           \
		type *again_ = NULL;                                                               \
		char why_[512] = "";                                                               \
                                                                                                   \
		if (!buf_)                                                                         \
			abort();                                                                   \
		protobuf_c_message_pack(&(msg)->base, buf_);                                       \
		if (decode(buf_, len_, &again_, why_, sizeof(why_)) != CAT_OK)                     \
			fail("accepted message refused after a re-pack", why_);                    \
		protobuf_c_message_free_unpacked(&again_->base, NULL);                             \
		free(buf_);                                                                        \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Catalyst__V1__ChangeBatch *changes = NULL;
	Catalyst__V1__CacheCommand *cache = NULL;
	Catalyst__V1__SyncCommand *sync = NULL;
	Catalyst__V1__BackupCommand *backup = NULL;
	char errstr[512] = "";
	cat_err_t err;

	err = cat_codec_change_batch_decode(data, size, &changes, errstr, sizeof(errstr));
	check_result(err, changes, errstr);
	if (changes) {
		REPACK_CHECK(Catalyst__V1__ChangeBatch, changes, cat_codec_change_batch_decode);
		catalyst__v1__change_batch__free_unpacked(changes, NULL);
	}
	errstr[0] = '\0';
	err = cat_codec_cache_command_decode(data, size, &cache, errstr, sizeof(errstr));
	check_result(err, cache, errstr);
	if (cache) {
		REPACK_CHECK(Catalyst__V1__CacheCommand, cache, cat_codec_cache_command_decode);
		catalyst__v1__cache_command__free_unpacked(cache, NULL);
	}
	errstr[0] = '\0';
	err = cat_codec_sync_command_decode(data, size, &sync, errstr, sizeof(errstr));
	check_result(err, sync, errstr);
	if (sync) {
		REPACK_CHECK(Catalyst__V1__SyncCommand, sync, cat_codec_sync_command_decode);
		catalyst__v1__sync_command__free_unpacked(sync, NULL);
	}
	errstr[0] = '\0';
	err = cat_codec_backup_command_decode(data, size, &backup, errstr, sizeof(errstr));
	check_result(err, backup, errstr);
	if (backup) {
		const char *tag = backup->action_case == CATALYST__V1__BACKUP_COMMAND__ACTION_FULL     ? backup->full->tag
				  : backup->action_case == CATALYST__V1__BACKUP_COMMAND__ACTION_TABLES ? backup->tables->tag
												       : NULL;

		if (tag && !cat_codec_backup_tag_valid(tag))
			fail("a bad backup tag accepted", tag);
		REPACK_CHECK(Catalyst__V1__BackupCommand, backup, cat_codec_backup_command_decode);
		catalyst__v1__backup_command__free_unpacked(backup, NULL);
	}
	return 0;
}
