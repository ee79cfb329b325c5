/*
 * The publisher of catalyst-publish's subcommands.
 */
#include <stdio.h>

#include "publish.h"

cat_publish_t *publish_open(const cat_config_t *cfg, cat_publish_report_fn report, void *opaque)
{
	const cat_publish_options_t options = {
		.client_id = "catalyst-publish",
		.producer = cat_config_str(cfg, "CATALYST_PRODUCER"),
		.delivery_timeout_ms = (int)cat_config_int(cfg, "CATALYST_PUBLISH_TIMEOUT_MS"),
		.report = report,
		.opaque = opaque,
	};
	cat_publish_t *publish = NULL;
	char errstr[512];

	if (cat_publish_new(&publish, cfg, &options, errstr, sizeof(errstr)) != CAT_OK) {
		fprintf(stderr, "catalyst-publish: %s\n", errstr);
		return NULL;
	}
	return publish;
}
