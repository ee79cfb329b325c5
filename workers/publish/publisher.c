/*
 * The publisher of catalyst-publish's subcommands.
 */
#include <stdio.h>

#include "publish.h"

cat_publish_t *publish_open(const cat_config_t *cfg, const publish_settings_t *settings,
			    cat_publish_report_fn report, void *opaque)
{
	const cat_publish_options_t options = {
		.client_id = "catalyst-publish",
		.producer = settings->producer,
		.delivery_timeout_ms = (int)settings->timeout_ms,
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
