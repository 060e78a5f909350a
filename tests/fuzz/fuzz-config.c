/*
 * fuzz-config.c - libFuzzer target for the config file parser.
 *
 * Each input is applied, as a config file, to freshly loaded defaults.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* "config.h" alone would find autoconf's header in an automake build. */
#include "server/config.h"
#include "log.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char prog[] = "fuzz-config";
	char *argv[] = { prog, NULL };
	struct config c;
	char *text = malloc(size + 1), *cause = NULL;
	enum log_level level;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	CHECK(config_load(&c, 1, argv, &cause) == CONFIG_RUN);
	if (config_apply_file_text(&c, "fuzz", text, &cause) == 0) {
		/* Whatever was accepted is within the table's ranges. */
		CHECK(!cause);
		CHECK(c.port >= 1 && c.port <= 65535);
		CHECK(c.queue_high_water_pct >= 1 && c.queue_high_water_pct <= 100);
		CHECK(c.http_threads >= 1 && c.http_threads <= 256);
		CHECK(c.max_body_bytes >= 1);
		CHECK(log_parse_level(c.log_level, &level) == 0);
		CHECK(c.listen_address && c.state_dir && c.upstream && c.project_id);
		CHECK(!c.check_config && c.config_file && !*c.config_file);
	} else {
		/* Every error names the file (and the line). */
		CHECK(cause && !strncmp(cause, "fuzz:", 5));
	}
	free(cause);
	config_release(&c);
	free(text);
	return 0;
}
