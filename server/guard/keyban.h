/*
 * keyban.h - API keys the upstream refused (401/403), remembered for a while
 * so that new connections and posts with them are refused at the door.
 */
#ifndef WATCHRTC_KEYBAN_H
#define WATCHRTC_KEYBAN_H

#include <stdbool.h>

struct keyban;

/* At most this many keys are remembered; adding one more forgets the oldest.
 * Keys only get here after the upstream refused them, so a client sending
 * endless made-up keys costs at most this much memory. */
#define KEYBAN_MAX_ENTRIES 10000

/* ttl_s: how long a refused key stays refused.  NULL on ENOMEM. */
struct keyban *keyban_create(unsigned ttl_s);
void keyban_destroy(struct keyban *kb);  /* accepts NULL */

void keyban_add(struct keyban *kb, const char *key);
bool keyban_contains(struct keyban *kb, const char *key);

#endif
