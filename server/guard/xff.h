/* xff.h - X-Forwarded-For: parsing the client's chain and building ours. */
#ifndef WATCHRTC_XFF_H
#define WATCHRTC_XFF_H

#include <stdbool.h>

/* True if s is a literal IPv4 or IPv6 address (no port, no brackets). */
bool xff_is_ip(const char *s);

/*
 * The X-Forwarded-For value to send upstream: the well-formed IPv4/IPv6
 * entries of incoming (which may be NULL or malformed; other entries are
 * dropped, never forwarded as they are), then peer_ip, joined by ", "
 * (nginx's $proxy_add_x_forwarded_for).  Caller frees.  NULL on ENOMEM.
 */
char *xff_forward_chain(const char *incoming, const char *peer_ip);

#endif
