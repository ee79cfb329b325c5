/*
 * cat_event: Events on events.v1.
 */
#include "cat_event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "cat_codec.h"
#include "cat_time.h"
#include "catalyst/v1/commands.pb-c.h"

/* A name-based UUID (version 8 layout, SHA-256 of the parts). */
static void uuid_from(const char *const *parts, size_t n_parts, char *buf, size_t buf_size)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;

	for (size_t i = 0; ok && i < n_parts; i++) /* the NUL separates the parts */
		ok = EVP_DigestUpdate(ctx, parts[i] ? parts[i] : "", strlen(parts[i] ? parts[i] : "") + 1) == 1;
	ok = ok && EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len >= 16;
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		cat_codec_uuid(buf, buf_size);
		return;
	}
	md[6] = (unsigned char)((md[6] & 0x0f) | 0x80); /* version 8: custom */
	md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	snprintf(buf, buf_size, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", md[0],
		 md[1], md[2], md[3], md[4], md[5], md[6], md[7], md[8], md[9], md[10], md[11], md[12], md[13],
		 md[14], md[15]);
}

void cat_event_id(const char *worker, const cat_event_t *event, char *buf, size_t buf_size)
{
	const char *parts[] = { worker, event->kind, event->subject, event->command_id };

	if (!event->command_id || !*event->command_id)
		cat_codec_uuid(buf, buf_size);
	else
		uuid_from(parts, sizeof(parts) / sizeof(parts[0]), buf, buf_size);
}

cat_err_t cat_event_publish(cat_producer_t *producer, const char *topic, const char *worker,
			    const cat_event_t *event, int timeout_ms, char *errstr, size_t errstr_size)
{
	Catalyst__V1__Event msg = CATALYST__V1__EVENT__INIT;
	Catalyst__V1__Event__AttributesEntry *attrs = NULL, **attr_ptrs = NULL;
	Catalyst__V1__Event__CountersEntry *counters = NULL, **counter_ptrs = NULL;
	char event_id[40];
	uint8_t *packed = NULL;
	uint64_t failed_before = cat_producer_failed(producer);
	cat_err_t err = CAT_OK;
	size_t len;

	cat_event_id(worker, event, event_id, sizeof(event_id));
	msg.event_id = event_id;
	msg.has_occurred_at_us = 1;
	msg.occurred_at_us = cat_time_now_us();
	msg.worker = (char *)worker;
	msg.kind = (char *)event->kind;
	msg.subject = (char *)event->subject;
	msg.command_id = (char *)event->command_id;
	msg.has_ok = 1;
	msg.ok = event->ok;
	msg.message = (char *)event->message;

	attrs = calloc(event->n_attrs + 1, sizeof(*attrs));
	attr_ptrs = calloc(event->n_attrs + 1, sizeof(*attr_ptrs));
	counters = calloc(event->n_counters + 1, sizeof(*counters));
	counter_ptrs = calloc(event->n_counters + 1, sizeof(*counter_ptrs));
	if (!attrs || !attr_ptrs || !counters || !counter_ptrs) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < event->n_attrs; i++) {
		catalyst__v1__event__attributes_entry__init(&attrs[i]);
		attrs[i].key = (char *)event->attrs[i].key;
		attrs[i].value = (char *)event->attrs[i].value;
		attr_ptrs[i] = &attrs[i];
	}
	for (size_t i = 0; i < event->n_counters; i++) {
		catalyst__v1__event__counters_entry__init(&counters[i]);
		counters[i].key = (char *)event->counters[i].key;
		counters[i].has_value = 1;
		counters[i].value = event->counters[i].value;
		counter_ptrs[i] = &counters[i];
	}
	msg.n_attributes = event->n_attrs;
	msg.attributes = attr_ptrs;
	msg.n_counters = event->n_counters;
	msg.counters = counter_ptrs;

	len = catalyst__v1__event__get_packed_size(&msg);
	if (!(packed = malloc(len ? len : 1))) {
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE, "out of memory");
		goto out;
	}
	catalyst__v1__event__pack(&msg, packed);
	err = cat_producer_send(producer, topic, RD_KAFKA_PARTITION_UA, event->subject,
				event->subject ? strlen(event->subject) : 0, packed, len, NULL, NULL, errstr,
				errstr_size);
	if (err != CAT_OK)
		goto out;
	if ((err = cat_producer_flush(producer, timeout_ms, errstr, errstr_size)) != CAT_OK)
		goto out;
	if (cat_producer_failed(producer) != failed_before)
		err = cat_err_set(errstr, errstr_size, CAT_ERR_RETRIABLE,
				  "could not publish the event %s on %s: not acknowledged", event->kind, topic);
out:
	free(packed);
	free(counter_ptrs);
	free(counters);
	free(attr_ptrs);
	free(attrs);
	return err;
}
