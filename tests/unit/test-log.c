/* test-log.c - log levels, quoting, key masking, the logfmt line and the
 * once-per-interval gate. */
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"
#include "testutil.h"

static void test_log(void)
{
	char buf[64];
	enum log_level level = LOG_INFO;
	struct capture cap;
	char *out;

	is_int(log_parse_level("debug", &level), 0, "parse debug");
	is_int(level, LOG_DEBUG, "debug is LOG_DEBUG");
	is_int(log_parse_level("error", &level), 0, "parse error");
	is_int(level, LOG_ERROR, "error is LOG_ERROR");
	is_int(log_parse_level("warning", &level), -1, "warning is not a level");
	is_int(log_parse_level("INFO", &level), -1, "levels are lower case");
	is_int(log_parse_level(NULL, &level), -1, "NULL is not a level");

	is_str(log_quote("plain", buf, sizeof buf), "plain", "a bare word is unchanged");
	is_str(log_quote("", buf, sizeof buf), "\"\"", "empty is quoted");
	is_str(log_quote("a b", buf, sizeof buf), "\"a b\"", "a space is quoted");
	is_str(log_quote("k=v", buf, sizeof buf), "\"k=v\"", "'=' is quoted");
	is_str(log_quote("say \"hi\"", buf, sizeof buf), "\"say \\\"hi\\\"\"",
	       "quotes are escaped");
	is_str(log_quote("a\\b c", buf, sizeof buf), "\"a\\\\b c\"", "backslash is escaped");
	is_str(log_quote("a\\b", buf, sizeof buf), "a\\b", "backslash alone needs no quotes");
	is_str(log_quote("abcdefghij klm", buf, 8), "\"abcde\"", "cut to fit, still quoted");
	is_str(log_quote("abcd\"fgh ij", buf, 8), "\"abcd\"", "an escape is never split");
	is_str(log_quote("abcdefghij", buf, 5), "abcd", "a bare value is cut to fit");

	is_str(log_key("key123", buf, sizeof buf), "key1...", "a key shows 4 characters");
	is_str(log_key("abcd", buf, sizeof buf), "...", "a 4-character key shows nothing");
	is_str(log_key("", buf, sizeof buf), "...", "an empty key");
	is_str(log_key(NULL, buf, sizeof buf), "...", "a NULL key");
	is_str(log_key("a b=c\"d", buf, sizeof buf), "a?b?...", "odd characters are replaced");

	capture_begin(&cap, STDERR_FILENO);
	log_set_level(LOG_INFO);
	log_info("listening", "addr=%s port=%d", "0.0.0.0", 8443);
	out = capture_end(&cap);
	ok(out && !strncmp(out, "ts=", 3) && strlen(out) > 28 && out[26] == 'Z' &&
	   out[13] == 'T' && out[22] == '.', "ts is an ISO 8601 UTC time with milliseconds");
	is_str(out ? out + 28 : NULL, "level=info event=listening addr=0.0.0.0 port=8443\n",
	       "one logfmt line");
	free(out);

	capture_begin(&cap, STDERR_FILENO);
	log_warn("bad_input", "value=%s", "a\nts=forged\r\x7f\x1b");
	log_error("stopped", NULL);
	log_debug("hidden", "x=%d", 1);
	out = capture_end(&cap);
	ok(out && !strncmp(out + 28, "level=warn event=bad_input value=a?ts=forged???\nts=", 51),
	   "control characters are replaced: still one line");
	ok(out && strstr(out, "level=error event=stopped\n"), "NULL fmt: no trailing space");
	ok(out && !strstr(out, "hidden"), "debug is filtered at info");
	free(out);

	capture_begin(&cap, STDERR_FILENO);
	log_set_level(LOG_ERROR);
	log_warn("dropped", "x=1");
	log_error("kept", "x=2");
	log_set_level(LOG_DEBUG);
	log_debug("shown", "x=3");
	log_set_level(LOG_INFO);
	out = capture_end(&cap);
	ok(out && !strstr(out, "dropped") && strstr(out, "event=kept x=2\n") &&
	   strstr(out, "event=shown x=3\n"), "log_set_level filters");
	free(out);

	{
		char *big = malloc(5000);
		if (big) {
			memset(big, 'v', 4999);
			big[4999] = '\0';
			capture_begin(&cap, STDERR_FILENO);
			log_info("big", "value=%s", big);
			out = capture_end(&cap);
			is_int(out ? strlen(out) : 0, 2048, "a long line is cut to 2048 bytes");
			ok(out && !strcmp(out + 2048 - 4, "...\n"), "and ends in ...");
			ok(out && !strchr(out, '\n')[1], "as one line");
			free(out);
			free(big);
		}
	}
}

/* One line per interval for an event that repeats, with a count of the rest. */
static void test_log_gate(void)
{
	struct log_gate g = { 0 };
	unsigned long long others = 99;
	int passed = 0;

	ok(log_gate_pass(&g, 200, &others) && others == 0, "a zeroed gate lets the first through");
	for (int i = 0; i < 5; i++)
		passed += log_gate_pass(&g, 200, &others);
	is_int(passed, 0, "the next ones within the interval are held back");
	sleep_ms(250);
	ok(log_gate_pass(&g, 200, &others), "after the interval one goes through again");
	is_int(others, 5, "saying how many were held back");
	ok(!log_gate_pass(&g, 200, &others), "and the interval starts anew");
}

int main(void)
{
	test_log();
	test_log_gate();
	return done_testing();
}
