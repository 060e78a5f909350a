/*
 * proxyproto.h - the PROXY protocol header (HAProxy's, versions 1 and 2)
 * that a load balancer in TCP mode puts before the client's bytes to say
 * who the client is.  A parser of untrusted bytes: it only reads the
 * buffer it is given, and never more than PROXYPROTO_MAX bytes of it.
 */
#ifndef WATCHRTC_PROXYPROTO_H
#define WATCHRTC_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* The longest header accepted: v1's 107 bytes, or v2's 16 plus an
 * address block and TLVs (HAProxy sends a few dozen bytes of them). */
#define PROXYPROTO_MAX 1024

enum proxyproto_result {
	PROXYPROTO_NOT = 0,     /* the bytes do not begin a PROXY header (TLS, say) */
	PROXYPROTO_MORE = 1,    /* a header may be coming: read more */
	PROXYPROTO_OK = 2,      /* a whole header: see struct proxyproto_header */
	PROXYPROTO_BAD = -1,    /* a PROXY header, malformed or unsupported */
};

struct proxyproto_header {
	size_t len;                     /* bytes the header takes */
	int version;                    /* 1 or 2 */
	bool has_source;                /* false: LOCAL, UNKNOWN or not IP (keep the peer) */
	struct sockaddr_storage source; /* the client (IPv4 or IPv6, with its port) */
	socklen_t source_len;
};

/*
 * Looks at the first len bytes of a connection.  On PROXYPROTO_BAD *why
 * (static text) says what is wrong.  Only the bytes up to out->len belong
 * to the header.
 */
enum proxyproto_result proxyproto_parse(const unsigned char *buf, size_t len,
                                        struct proxyproto_header *out, const char **why);

#endif
