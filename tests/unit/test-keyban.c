/* test-keyban.c - the set of API keys the upstream refused: expiry and the
 * capacity bound. */
#include "keyban.h"

#include <stdio.h>

#include "tap.h"
#include "testutil.h"

static void test_keyban(void)
{
	struct keyban *kb = keyban_create(1);
	char key[32];
	int all = 1;

	ok(kb, "keyban_create");
	ok(!keyban_contains(kb, "k1"), "empty set contains nothing");
	keyban_add(kb, "k1");
	ok(keyban_contains(kb, "k1"), "added key is contained");
	ok(!keyban_contains(kb, "k2"), "other key is not");
	ok(!keyban_contains(kb, "k"), "a prefix of a key is not");
	ok(!keyban_contains(kb, NULL), "NULL is never contained");
	keyban_add(kb, NULL);
	keyban_add(kb, "");
	ok(!keyban_contains(kb, ""), "the empty key is never added");
	sleep_ms(500);
	keyban_add(kb, "k2");
	sleep_ms(600);
	ok(!keyban_contains(kb, "k1"), "k1 expired after its 1 s ttl");
	ok(keyban_contains(kb, "k2"), "k2, added 0.6 s ago, has not");
	keyban_destroy(kb);
	keyban_destroy(NULL);

	kb = keyban_create(3600);
	for (int i = 0; i <= KEYBAN_MAX_ENTRIES; i++) {
		snprintf(key, sizeof key, "key-%d", i);
		keyban_add(kb, key);
	}
	ok(!keyban_contains(kb, "key-0"), "over capacity: the oldest key is forgotten");
	for (int i = 1; i <= KEYBAN_MAX_ENTRIES; i++) {
		snprintf(key, sizeof key, "key-%d", i);
		if (!keyban_contains(kb, key))
			all = 0;
	}
	ok(all, "the %d newest keys are all kept", KEYBAN_MAX_ENTRIES);
	keyban_add(kb, "key-1");        /* refused again: now the newest */
	keyban_add(kb, "one-more");
	ok(keyban_contains(kb, "key-1"), "a re-added key is not the next evicted");
	ok(!keyban_contains(kb, "key-2"), "the oldest one is instead");
	ok(keyban_contains(kb, "one-more"), "the new key is kept");
	keyban_destroy(kb);
}

int main(void)
{
	test_keyban();
	return done_testing();
}
