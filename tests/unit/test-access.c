/* test-access.c - the key and origin allowlists and the per-client limits. */
#include "access.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"
#include "tap.h"
#include "testutil.h"

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
		printf("Bail out! cannot write %s\n", path);
		exit(1);
	}
}

static struct access *make(const struct access_options *o)
{
	struct access *a = NULL;
	char *cause = NULL;

	if (access_create(&a, o, &cause) < 0) {
		printf("Bail out! access_create: %s\n", cause ? cause : "?");
		exit(1);
	}
	return a;
}

static void test_keys(const char *dir)
{
	char path[512], *cause = NULL;
	struct access *a;
	struct access_options o = { .ip_table_size = 16 };
	char longkey[300];

	a = make(&o);
	ok(access_key_allowed(a, "anything") && access_key_allowed(a, NULL),
	   "no allowlist: every key, even none");
	access_destroy(a);
	ok(access_key_allowed(NULL, "k"), "no rules at all: allowed");

	o.keys = " alpha, beta ,,gamma";
	a = make(&o);
	ok(access_key_allowed(a, "alpha") && access_key_allowed(a, "beta") &&
	   access_key_allowed(a, "gamma"), "inline keys are allowed (blanks trimmed)");
	ok(!access_key_allowed(a, "delta") && !access_key_allowed(a, NULL) &&
	   !access_key_allowed(a, "") && !access_key_allowed(a, "alph"),
	   "other keys, a prefix, an empty and a missing key are not");
	is_int(access_key_count(a), 3, "three keys");
	access_destroy(a);

	snprintf(path, sizeof path, "%s/keys", dir);
	write_file(path, "# staging\r\nfile1\r\n\n  file2  \nalpha\n");
	o.keys = "alpha";
	o.keys_file = path;
	a = make(&o);
	ok(access_key_allowed(a, "file1") && access_key_allowed(a, "file2") &&
	   access_key_allowed(a, "alpha"), "file keys (CRLF, blanks, comments) and inline keys");
	ok(!access_key_allowed(a, "# staging"), "a comment line is not a key");
	is_int(access_key_count(a), 3, "duplicates count once");

	write_file(path, "file3\n");
	is_int(access_reload(a), 0, "reload");
	ok(access_key_allowed(a, "file3") && !access_key_allowed(a, "file1") &&
	   access_key_allowed(a, "alpha"), "reload takes the new file, keeps the inline keys");

	memset(longkey, 'k', sizeof longkey - 2);
	longkey[sizeof longkey - 2] = '\n';
	longkey[sizeof longkey - 1] = '\0';
	write_file(path, longkey);
	ok(access_reload(a) < 0 && access_key_allowed(a, "file3"),
	   "a key file with an over-long key fails to load and the old keys stay");
	unlink(path);
	ok(access_reload(a) < 0 && access_key_allowed(a, "file3"),
	   "a missing key file fails to load and the old keys stay");
	write_file(path, "# nothing\n");
	o.keys = NULL;
	is_int(access_reload(a), 0, "an empty key file loads");
	ok(access_key_allowed(a, "alpha") && !access_key_allowed(a, "file3"),
	   "and leaves only the inline keys");
	access_destroy(a);

	a = make(&o);
	ok(!access_key_allowed(a, "file3") && !access_key_allowed(a, "x"),
	   "a configured but empty allowlist refuses every key");
	access_destroy(a);

	unlink(path);
	a = NULL;
	ok(access_create(&a, &o, &cause) < 0 && !a && cause && strstr(cause, path),
	   "a missing key file at start is an error naming it");
	free(cause);
}

static void test_origins(void)
{
	struct access_options o = { .origins = "https://app.example.com, https://b.example:8443",
	                            .ip_table_size = 16 };
	struct access *a = make(&o);

	ok(access_origin_allowed(a, "https://app.example.com") &&
	   access_origin_allowed(a, "HTTPS://App.Example.com") &&
	   access_origin_allowed(a, "https://b.example:8443"), "listed origins, any case");
	ok(!access_origin_allowed(a, "https://evil.example") &&
	   !access_origin_allowed(a, "http://app.example.com") &&
	   !access_origin_allowed(a, "https://b.example") &&
	   !access_origin_allowed(a, "https://app.example.com.evil.example") &&
	   !access_origin_allowed(a, "null") && !access_origin_allowed(a, NULL),
	   "another origin, scheme, port, a suffix trick, \"null\" and none are refused");
	access_destroy(a);
	o.origins = "";
	a = make(&o);
	ok(access_origin_allowed(a, "https://whatever") && access_origin_allowed(a, NULL),
	   "no origin allowlist: any origin");
	access_destroy(a);
}

static void test_connections(void)
{
	struct access_options o = { .max_conns_per_ip = 2, .ip_table_size = 16 };
	struct access *a = make(&o);
	char ip[64];
	int refused = 0;

	is_int(access_conn_acquire(a, "192.0.2.1"), ACCESS_OK, "first connection");
	is_int(access_conn_acquire(a, "192.0.2.1"), ACCESS_OK, "second connection");
	is_int(access_conn_acquire(a, "192.0.2.1"), ACCESS_TOO_MANY, "third: too many");
	is_int(access_conn_acquire(a, "::ffff:192.0.2.1"), ACCESS_TOO_MANY,
	       "the same client as IPv4-mapped IPv6: too many too");
	is_int(access_conn_acquire(a, "192.0.2.2"), ACCESS_OK, "another client is not affected");
	access_conn_release(a, "192.0.2.1");
	is_int(access_conn_acquire(a, "192.0.2.1"), ACCESS_OK,
	       "a released slot can be taken again");

	is_int(access_conn_acquire(a, "2001:db8:1:2::1"), ACCESS_OK, "IPv6 client");
	is_int(access_conn_acquire(a, "2001:db8:1:2:ffff::9"), ACCESS_OK, "same /64");
	is_int(access_conn_acquire(a, "2001:db8:1:2:aaaa::7"), ACCESS_TOO_MANY,
	       "a third address of the same /64 counts against the same limit");
	is_int(access_conn_acquire(a, "2001:db8:1:3::1"), ACCESS_OK,
	       "another /64 is another client");

	/* 16 entries: 4 clients hold connections; fill the rest with held ones. */
	for (int i = 0; i < 20; i++) {
		snprintf(ip, sizeof ip, "198.51.100.%d", i);
		if (access_conn_acquire(a, ip) != ACCESS_OK)
			refused++;
	}
	is_int(refused, 8, "with every entry held by a connected client, new clients are refused");
	is_int(access_tracked(a), 16, "the table never grows past ip-table-size");
	snprintf(ip, sizeof ip, "198.51.100.%d", 0);
	access_conn_release(a, ip);
	is_int(access_conn_acquire(a, "203.0.113.1"), ACCESS_OK,
	       "an idle client's entry is reused for a new one");
	is_int(access_conn_acquire(a, "203.0.113.2"), ACCESS_TABLE_FULL,
	       "and then the table is full");
	ok(strlen(access_verdict_reason(ACCESS_TABLE_FULL)) > 0, "the refusal has a reason");
	access_destroy(a);

	o.max_conns_per_ip = 0;
	a = make(&o);
	for (int i = 0; i < 100; i++)
		refused += access_conn_acquire(a, "192.0.2.1") != ACCESS_OK;
	is_int(access_tracked(a), 0, "no limit: nothing is tracked");
	access_destroy(a);
}

static void test_rate(void)
{
	struct access_options o = { .max_msgs_per_ip_per_s = 10, .ip_table_size = 16 };
	struct access *a = make(&o);
	int taken = 0;
	char ip[64];

	/* The bucket holds 5 s of the rate: 50 messages at once. */
	for (int i = 0; i < 60; i++)
		taken += access_message_at(a, "192.0.2.1", 1000000);
	is_int(taken, 50, "a burst takes 5 seconds' worth, no more");
	ok(access_message_at(a, "192.0.2.2", 1000000), "another client has its own bucket");
	ok(!access_message_at(a, "192.0.2.1", 1000050), "50 ms later: not yet a whole token");
	ok(access_message_at(a, "192.0.2.1", 1000100), "100 ms later: one more (10/s)");
	taken = 0;
	for (int i = 0; i < 100; i++)
		taken += access_message_at(a, "192.0.2.1", 1000100 + 100 * (i + 1));
	is_int(taken, 100, "the sustained rate is 10/s");
	taken = 0;
	for (int i = 0; i < 100; i++)
		taken += access_message_at(a, "192.0.2.1", 2000000);
	is_int(taken, 50, "after a long pause the bucket is full again, not fuller");
	ok(!access_message_at(a, "192.0.2.1", 1), "a clock going backwards refills nothing");

	/* Idle clients are forgotten, oldest first, when others need entries. */
	for (int i = 0; i < 40; i++) {
		snprintf(ip, sizeof ip, "198.51.100.%d", i);
		access_message_at(a, ip, 3000000);
	}
	is_int(access_tracked(a), 16, "many clients: the table stays at ip-table-size");
	access_destroy(a);

	o.max_msgs_per_ip_per_s = 0;
	a = make(&o);
	taken = 0;
	for (int i = 0; i < 1000; i++)
		taken += access_message_at(a, "192.0.2.1", 1000);
	is_int(taken, 1000, "no rate limit: every message");
	access_destroy(a);
	ok(access_message(NULL, "192.0.2.1"), "no rules at all: every message");
}

int main(void)
{
	char *dir = tmpdir_create("test-access");

	log_set_level(LOG_ERROR);
	test_keys(dir);
	test_origins();
	test_connections();
	test_rate();
	tmpdir_remove(dir);
	return done_testing();
}
