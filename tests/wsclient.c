/*
 * wsclient.c - a small blocking websocket client over TLS (GnuTLS).
 *
 * All reads go through one buffer (rbuf): the bytes after the 101's head
 * may already hold the server's first frame.  Every wait is bounded: the
 * socket has SO_RCVTIMEO/SO_SNDTIMEO set to the timeout, and the loops
 * around GnuTLS check a deadline.
 */
#include "clock.h"
#include "wsclient.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "wsframe.h"

#define WSC_DEFAULT_TIMEOUT_MS 5000
#define WSC_MAX_HEAD 16384             /* the answer's head */
#define WSC_MAX_BODY 65536             /* the body of a refusal */
#define WSC_MAX_FRAME (64u << 20)      /* one received frame */
#define WSC_MAX_HEADERS 64
#define WSC_RBUF_SIZE 65536

struct wsclient {
	int fd;
	gnutls_session_t session;
	gnutls_certificate_credentials_t cred;
	int timeout_ms;
	int status;
	bool accept_ok;
	char key[128];
	struct wsclient_header headers[WSC_MAX_HEADERS];
	size_t nheaders;
	char *body;
	size_t body_len;
	uint8_t rbuf[WSC_RBUF_SIZE];
	size_t roff, rlen;                 /* unread bytes: rbuf[roff..rlen) */
};

const char *wsclient_strerror(int err)
{
	switch (err) {
	case WSC_OK: return "ok";
	case WSC_ETIMEDOUT: return "timed out";
	case WSC_ECLOSED: return "connection closed by peer";
	case WSC_EIO: return "I/O error";
	case WSC_EPROTO: return "protocol error";
	case WSC_ENOMEM: return "out of memory";
	case WSC_ETOOBIG: return "too big";
	default: return "unknown error";
	}
}

/* --- transport ------------------------------------------------------------ */

static int tcp_connect(const char *host, unsigned port, int timeout_ms, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL, *ai;
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	char service[16];
	int fd = -1, rc;

	snprintf(service, sizeof service, "%u", port);
	rc = getaddrinfo(host, service, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "%s: %s", host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		/* SO_SNDTIMEO also bounds a blocking connect() on Linux. */
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		snprintf(err, errlen, "connect %s:%u: %s", host, port, strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

/* Writes all of buf to the TLS session, or fails at the deadline. */
static int tls_write_all(struct wsclient *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	int64_t deadline = mono_ms() + c->timeout_ms;

	while (len > 0) {
		ssize_t n = gnutls_record_send(c->session, p, len);

		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			if (mono_ms() >= deadline)
				return WSC_ETIMEDOUT;
			continue;
		}
		return n == GNUTLS_E_PUSH_ERROR && (errno == EPIPE || errno == ECONNRESET) ?
		       WSC_ECLOSED : WSC_EIO;
	}
	return WSC_OK;
}

int wsclient_wait_readable(struct wsclient *c, int timeout_ms)
{
	struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
	int n;

	if (c->roff < c->rlen || gnutls_record_check_pending(c->session) > 0)
		return 1;
	do
		n = poll(&pfd, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	return n < 0 ? WSC_EIO : n > 0;
}

/* Reads more bytes into rbuf, waiting until deadline. */
static int fill(struct wsclient *c, int64_t deadline)
{
	if (c->roff == c->rlen) {
		c->roff = c->rlen = 0;
	} else if (c->rlen == sizeof c->rbuf) {
		memmove(c->rbuf, c->rbuf + c->roff, c->rlen - c->roff);
		c->rlen -= c->roff;
		c->roff = 0;
	}
	for (;;) {
		int64_t left = deadline - mono_ms();
		ssize_t n;
		int r;

		r = wsclient_wait_readable(c, left < 0 ? 0 : (int)left);
		if (r < 0)
			return r;
		if (r == 0)
			return WSC_ETIMEDOUT;
		n = gnutls_record_recv(c->session, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen);
		if (n > 0) {
			c->rlen += (size_t)n;
			return WSC_OK;
		}
		if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION)
			return WSC_ECLOSED;
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			if (mono_ms() >= deadline)
				return WSC_ETIMEDOUT;
			continue;
		}
		return n == GNUTLS_E_PULL_ERROR && errno == ECONNRESET ? WSC_ECLOSED : WSC_EIO;
	}
}

/* Copies exactly n bytes from the stream into out. */
static int read_exact(struct wsclient *c, void *out, size_t n, int64_t deadline)
{
	uint8_t *o = out;

	while (n > 0) {
		size_t avail = c->rlen - c->roff, take;
		int r;

		if (avail == 0) {
			r = fill(c, deadline);
			if (r < 0)
				return r;
			continue;
		}
		take = avail < n ? avail : n;
		memcpy(o, c->rbuf + c->roff, take);
		c->roff += take;
		o += take;
		n -= take;
	}
	return WSC_OK;
}

/* --- the handshake -------------------------------------------------------- */

static int parse_head(struct wsclient *c, char *head)
{
	char *line, *save = NULL;

	line = strtok_r(head, "\r\n", &save);
	if (!line || sscanf(line, "HTTP/1.%*d %d", &c->status) != 1)
		return WSC_EPROTO;
	while ((line = strtok_r(NULL, "\r\n", &save))) {
		char *colon = strchr(line, ':'), *v;

		if (!colon || c->nheaders == WSC_MAX_HEADERS)
			continue;
		*colon = '\0';
		for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
			;
		c->headers[c->nheaders].name = strdup(line);
		c->headers[c->nheaders].value = strdup(v);
		if (!c->headers[c->nheaders].name || !c->headers[c->nheaders].value) {
			free(c->headers[c->nheaders].name);
			free(c->headers[c->nheaders].value);
			return WSC_ENOMEM;
		}
		c->nheaders++;
	}
	return WSC_OK;
}

/* Reads the answer's head (and a refusal's body) into c. */
static int read_answer(struct wsclient *c)
{
	int64_t deadline = mono_ms() + c->timeout_ms;
	char head[WSC_MAX_HEAD + 1], expect[WSF_ACCEPT_LEN + 1];
	const char *cl, *acc;
	size_t hlen = 0;
	int r;

	/* Byte by byte from rbuf, so that what follows the head stays there. */
	for (;;) {
		if (hlen == WSC_MAX_HEAD)
			return WSC_ETOOBIG;
		r = read_exact(c, head + hlen, 1, deadline);
		if (r < 0)
			return r;
		hlen++;
		if (hlen >= 4 && !memcmp(head + hlen - 4, "\r\n\r\n", 4))
			break;
	}
	head[hlen] = '\0';
	r = parse_head(c, head);
	if (r < 0)
		return r;

	acc = wsclient_header(c, "Sec-WebSocket-Accept");
	c->accept_ok = wsf_accept(c->key, expect) == 0 && acc && !strcmp(acc, expect);
	if (c->status == 101)
		return WSC_OK;

	cl = wsclient_header(c, "Content-Length");
	c->body_len = cl ? strtoul(cl, NULL, 10) : 0;
	if (c->body_len > WSC_MAX_BODY)
		return WSC_ETOOBIG;
	c->body = calloc(1, c->body_len + 1);
	if (!c->body)
		return WSC_ENOMEM;
	return read_exact(c, c->body, c->body_len, deadline);
}

static int send_request(struct wsclient *c, const struct wsclient_opts *o, const char *host)
{
	const char *proto = o->protocol ? o->protocol : "2.0";
	char *req = NULL;
	int n, r;

	n = asprintf(&req,
	             "GET %s HTTP/1.1\r\n"
	             "Host: %s:%u\r\n"
	             "Upgrade: websocket\r\n"
	             "Connection: Upgrade\r\n"
	             "Sec-WebSocket-Key: %s\r\n"
	             "Sec-WebSocket-Version: %s\r\n"
	             "%s%s%s"
	             "%s%s%s"
	             "%s%s%s"
	             "%s%s%s"
	             "%s"
	             "\r\n",
	             o->path ? o->path : "/", host, o->port, c->key, o->version ? o->version : "13",
	             *proto ? "Sec-WebSocket-Protocol: " : "", proto, *proto ? "\r\n" : "",
	             o->origin ? "Origin: " : "", o->origin ? o->origin : "",
	             o->origin ? "\r\n" : "", o->user_agent ? "User-Agent: " : "",
	             o->user_agent ? o->user_agent : "", o->user_agent ? "\r\n" : "",
	             o->xff ? "X-Forwarded-For: " : "", o->xff ? o->xff : "", o->xff ? "\r\n" : "",
	             o->extra_headers ? o->extra_headers : "");
	if (n < 0)
		return WSC_ENOMEM;
	r = tls_write_all(c, req, (size_t)n);
	free(req);
	if (r == WSC_OK && o->early_len)
		r = tls_write_all(c, o->early, o->early_len);
	return r;
}

int wsclient_connect(struct wsclient **out, const struct wsclient_opts *o, char *err,
                     size_t errlen)
{
	const char *host = o->host ? o->host : "127.0.0.1";
	struct wsclient *c = calloc(1, sizeof *c);
	char scratch[256];
	uint8_t nonce[16];
	int r = WSC_ENOMEM;

	*out = NULL;
	if (!err) {
		err = scratch;
		errlen = sizeof scratch;
	}
	snprintf(err, errlen, "out of memory");
	if (!c)
		return WSC_ENOMEM;
	c->fd = -1;
	c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : WSC_DEFAULT_TIMEOUT_MS;
	if (o->key) {
		snprintf(c->key, sizeof c->key, "%s", o->key);
	} else {
		gnutls_rnd(GNUTLS_RND_NONCE, nonce, sizeof nonce);
		wsf_base64(nonce, sizeof nonce, c->key);
	}

	c->fd = tcp_connect(host, o->port, c->timeout_ms, err, errlen);
	if (c->fd < 0) {
		r = WSC_EIO;
		goto out;
	}
	if (gnutls_certificate_allocate_credentials(&c->cred) < 0 ||
	    gnutls_init(&c->session, GNUTLS_CLIENT) < 0) {
		c->session = NULL;
		goto out;
	}
	/* No certificate verification: the tests' server uses a private CA. */
	if (gnutls_set_default_priority(c->session) < 0 ||
	    gnutls_credentials_set(c->session, GNUTLS_CRD_CERTIFICATE, c->cred) < 0)
		goto out;
	gnutls_transport_set_int(c->session, c->fd);
	gnutls_handshake_set_timeout(c->session, (unsigned)c->timeout_ms);
	do
		r = gnutls_handshake(c->session);
	while (r < 0 && !gnutls_error_is_fatal(r));
	if (r < 0) {
		snprintf(err, errlen, "TLS handshake: %s", gnutls_strerror(r));
		r = WSC_EIO;
		goto out;
	}
	r = send_request(c, o, host);
	if (r == WSC_OK)
		r = read_answer(c);
	if (r < 0)
		snprintf(err, errlen, "upgrade: %s", wsclient_strerror(r));
out:
	if (r < 0) {
		wsclient_destroy(c);
		return r;
	}
	*out = c;
	return WSC_OK;
}

void wsclient_destroy(struct wsclient *c)
{
	if (!c)
		return;
	if (c->session) {
		gnutls_record_set_timeout(c->session, 100);
		gnutls_bye(c->session, GNUTLS_SHUT_WR);
		gnutls_deinit(c->session);
	}
	if (c->cred)
		gnutls_certificate_free_credentials(c->cred);
	if (c->fd >= 0)
		close(c->fd);
	for (size_t i = 0; i < c->nheaders; i++) {
		free(c->headers[i].name);
		free(c->headers[i].value);
	}
	free(c->body);
	free(c);
}

int wsclient_status(const struct wsclient *c)
{
	return c->status;
}

bool wsclient_accept_ok(const struct wsclient *c)
{
	return c->accept_ok;
}

size_t wsclient_header_count(const struct wsclient *c)
{
	return c->nheaders;
}

const struct wsclient_header *wsclient_header_at(const struct wsclient *c, size_t i)
{
	return i < c->nheaders ? &c->headers[i] : NULL;
}

const char *wsclient_header(const struct wsclient *c, const char *name)
{
	for (size_t i = 0; i < c->nheaders; i++) {
		if (!strcasecmp(c->headers[i].name, name))
			return c->headers[i].value;
	}
	return NULL;
}

const char *wsclient_body(const struct wsclient *c, size_t *len)
{
	if (len)
		*len = c->body_len;
	return c->body ? c->body : "";
}

int wsclient_fd(const struct wsclient *c)
{
	return c->fd;
}

/* --- frames --------------------------------------------------------------- */

int wsclient_send_frame(struct wsclient *c, unsigned opcode, bool fin, bool masked,
                        const void *payload, size_t len)
{
	uint8_t mask[4], *frame;
	size_t n;
	int r;

	frame = malloc(WSF_HEADER_MAX + len);
	if (!frame)
		return WSC_ENOMEM;
	if (masked)
		gnutls_rnd(GNUTLS_RND_NONCE, mask, sizeof mask);
	n = wsf_build(frame, opcode, fin, masked ? mask : NULL, payload, len);
	r = tls_write_all(c, frame, n);
	free(frame);
	return r;
}

int wsclient_send_message(struct wsclient *c, unsigned opcode, const void *payload, size_t len,
                          size_t fragment)
{
	const uint8_t *p = payload;
	size_t off = 0;

	if (fragment == 0 || fragment >= len)
		return wsclient_send_frame(c, opcode, true, true, payload, len);
	while (off < len) {
		size_t n = len - off < fragment ? len - off : fragment;
		int r = wsclient_send_frame(c, off == 0 ? opcode : 0, off + n == len, true, p + off,
		                            n);

		if (r < 0)
			return r;
		off += n;
	}
	return WSC_OK;
}

int wsclient_send_close(struct wsclient *c, uint16_t code, const char *reason)
{
	uint8_t payload[125];
	size_t n = 0, rlen = reason ? strlen(reason) : 0;

	if (code) {
		payload[n++] = (uint8_t)(code >> 8);
		payload[n++] = (uint8_t)code;
		if (rlen > sizeof payload - 2)
			rlen = sizeof payload - 2;
		memcpy(payload + n, reason, rlen);
		n += rlen;
	}
	return wsclient_send_frame(c, 0x8, true, true, payload, n);
}

int wsclient_send_raw(struct wsclient *c, const void *bytes, size_t len)
{
	return tls_write_all(c, bytes, len);
}

int wsclient_send_filler(struct wsclient *c, unsigned opcode, uint64_t len, char fill,
                         uint64_t *sent)
{
	uint8_t mask[4], hdr[WSF_HEADER_MAX], chunk[16384];
	uint64_t off = 0;
	int r;

	*sent = 0;
	gnutls_rnd(GNUTLS_RND_NONCE, mask, sizeof mask);
	r = tls_write_all(c, hdr, wsf_header(hdr, opcode, true, len, mask));
	while (r == WSC_OK && off < len) {
		size_t n = len - off < sizeof chunk ? (size_t)(len - off) : sizeof chunk;

		if (wsclient_wait_readable(c, 0) != 0)
			break;  /* the server answered (a close, presumably): stop */
		for (size_t i = 0; i < n; i++)
			chunk[i] = (uint8_t)fill ^ mask[(off + i) & 3];
		r = tls_write_all(c, chunk, n);
		if (r == WSC_OK)
			off += n;
	}
	*sent = off;
	return r;
}

int wsclient_recv_frame(struct wsclient *c, struct wsclient_frame *f, int timeout_ms)
{
	int64_t deadline = mono_ms() + (timeout_ms >= 0 ? timeout_ms : c->timeout_ms);
	uint8_t h[2], ext[8], mask[4] = { 0 };
	uint64_t len;
	int r;

	memset(f, 0, sizeof *f);
	r = read_exact(c, h, 2, deadline);
	if (r < 0)
		return r;
	f->fin = h[0] & 0x80;
	f->opcode = h[0] & 0x0f;
	f->masked = h[1] & 0x80;
	len = h[1] & 0x7f;
	if (len >= 126) {
		size_t n = len == 126 ? 2 : 8;

		r = read_exact(c, ext, n, deadline);
		if (r < 0)
			return r;
		len = 0;
		for (size_t i = 0; i < n; i++)
			len = (len << 8) | ext[i];
	}
	if (len > WSC_MAX_FRAME)
		return WSC_ETOOBIG;
	if (f->masked && (r = read_exact(c, mask, 4, deadline)) < 0)
		return r;
	f->payload = malloc((size_t)len + 1);
	if (!f->payload)
		return WSC_ENOMEM;
	r = read_exact(c, f->payload, (size_t)len, deadline);
	if (r < 0) {
		wsclient_frame_release(f);
		return r;
	}
	for (size_t i = 0; f->masked && i < len; i++)
		f->payload[i] ^= mask[i & 3];
	f->payload[len] = '\0';
	f->len = (size_t)len;
	if (f->opcode == 0x8) {
		f->close_code = len >= 2 ? (uint16_t)(f->payload[0] << 8 | f->payload[1]) : 1005;
		f->close_reason = len > 2 ? (const char *)f->payload + 2 : "";
	}
	return WSC_OK;
}

void wsclient_frame_release(struct wsclient_frame *f)
{
	free(f->payload);
	memset(f, 0, sizeof *f);
}
