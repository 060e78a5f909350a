/*
 * wsload.c - a websocket load generator that behaves like many watchRTC
 * SDKs at once, for the benchmark (tests/bench/run.sh).
 *
 *   wsload --port P [--host 127.0.0.1] [--path /websocket] [--connections N]
 *          [--threads T] [--duration S] [--rate R] [--frame-log FILE]...
 *          [--no-initial-batch] [--big-every K] [--handshakes H]
 *          [--connect-timeout S] [--seed X]
 *
 * Opens N TLS websockets over T threads (each an epoll loop with
 * non-blocking sockets and GnuTLS sessions), with the SDK's request
 * (query apiKey, timestamp, apiVersion, sessionId, newConnection; offer of
 * subprotocol 2.0), and waits on each for the server's hello.  Once every
 * connection is open or has failed it prints "ready" on stderr, then sends
 * for S seconds: R messages per second per connection, or with R = 0 as
 * fast as the server takes them.  A connection's first message is an
 * initial batch (~34 KB) unless --no-initial-batch, then every K-th is
 * another (0: never); the rest are getstats deltas (~1.7-2 KB), sizes taken
 * from the frame logs.  It then closes every connection with 1000 and
 * prints one JSON object of figures on stdout.  Exits 0 if nothing failed.
 * SIGTERM ends the sending early, as if the S seconds were over (for a
 * caller that decides when it has measured enough).
 *
 * Frames are built once, masked, into a pool shared by every connection, so
 * the generator spends its time on TLS and the sockets, not on making data.
 * The server's certificate is not verified.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "benchutil.h"
#include "sdkshape.h"
#include "wsframe.h"

#define WL_MAX_THREADS 64
#define WL_POOL_DELTA 256            /* prebuilt getstats frames */
#define WL_POOL_BIG 4                /* prebuilt initial batches */
#define WL_HEAD_MAX 4096             /* the 101's head */
#define WL_RECV_CHUNK 16384
#define WL_MAX_EVENTS 256
#define WL_CTL_MAX (WSF_HEADER_MAX + WSF_CONTROL_MAX)  /* one control frame */
#define WL_FLAT_BURST 16             /* messages per wakeup and connection, flat out */
#define WL_CLOSE_WAIT_MS 3000        /* for the close handshakes at the end */
#define WL_TICK_MS 10
#define WL_ERR_MAX 200

enum cstate { C_IDLE, C_CONNECT, C_TLS, C_REQUEST, C_RESPONSE, C_HELLO, C_OPEN, C_CLOSING, C_DONE };

struct frame {
	uint8_t *bytes;
	size_t len;
};

struct worker;

struct conn {
	struct worker *w;
	enum cstate st;
	int fd;
	gnutls_session_t tls;
	int64_t deadline_us;           /* connect phase, then close phase */
	char key[32];
	char *req;                     /* upgrade request, until sent */
	size_t req_len, req_off;
	char *head;                    /* the answer's head, until parsed */
	size_t head_len;
	struct wsf_parser in;          /* the server's frames */
	const struct frame *out;       /* message being written */
	size_t out_off;
	uint8_t ctl[WL_CTL_MAX];       /* control frame being written */
	size_t ctl_len, ctl_off;
	bool close_wanted;             /* we are closing: a close goes out next */
	bool close_sent;               /* it has been queued */
	uint64_t msgs;
	uint32_t events;
};

struct sched {
	int64_t due_us;
	struct conn *c;
};

struct worker {
	pthread_t thread;
	int epfd;
	struct conn *conns;
	size_t nconns, next_start, pending;   /* pending: started, not yet open or failed */
	struct sched *heap;
	size_t nheap;
	uint64_t rng;
	uint8_t rbuf[WL_RECV_CHUNK];
	int64_t last_open_us;
};

static struct {
	const char *host, *path;
	unsigned port;
	size_t connections, threads, handshakes;
	double duration_s, rate, connect_timeout_s;
	bool initial_batch;
	unsigned big_every;
	uint64_t seed;
	struct sockaddr_in addr;
	gnutls_certificate_credentials_t cred;
	gnutls_priority_t prio;
	struct frame delta[WL_POOL_DELTA], big[WL_POOL_BIG];
} g = {
	.host = "127.0.0.1", .path = "/websocket", .connections = 100, .threads = 2,
	.handshakes = 128, .duration_s = 10, .connect_timeout_s = 60, .initial_batch = true,
	.big_every = 0, .seed = 0x9E3779B97F4A7C15ULL,
};

/* 0: sending, 1: stop sending and close, 2: give up on what is left. */
static atomic_int phase;
static atomic_ullong n_opened, n_failed, n_msgs, n_bytes, n_late, n_peer_closed, n_io_errors;
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_error[WL_ERR_MAX];

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void note_error(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&err_lock);
	if (!first_error[0]) {
		va_start(ap, fmt);
		vsnprintf(first_error, sizeof first_error, fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&err_lock);
}

/* A masked client frame with FIN set, as the SDK sends. */
static size_t build_masked(uint8_t *out, unsigned opcode, const uint8_t *payload, size_t len,
                           uint64_t *rng)
{
	uint64_t r = sdk_rand(rng);
	uint8_t mask[4];

	memcpy(mask, &r, sizeof mask);
	return wsf_build(out, opcode, true, mask, payload, len);
}

/* Frames n messages of SDK text (big: initial batches) into f; main
 * frees the frames, made or not. */
static int pool_build(struct frame *f, size_t n, const struct sdk_sizes *sz, int big,
                      uint64_t *rng)
{
	struct sdk_body *bodies = calloc(n, sizeof *bodies);
	int rc = -1;

	if (!bodies || sdk_bodies_make(bodies, n, sz, big, rng) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		f[i].bytes = malloc(bodies[i].len + WSF_HEADER_MAX);
		if (!f[i].bytes)
			goto out;
		f[i].len = build_masked(f[i].bytes, 1, bodies[i].bytes, bodies[i].len, rng);
	}
	rc = 0;
out:
	if (bodies)
		sdk_bodies_free(bodies, n);
	free(bodies);
	return rc;
}

/* --- connections ---------------------------------------------------------- */

static void set_events(struct conn *c, uint32_t ev)
{
	struct epoll_event e = { .events = ev, .data.ptr = c };

	if (c->events == ev)
		return;
	if (epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &e) == 0)
		c->events = ev;
}

static void conn_release(struct conn *c)
{
	if (c->tls)
		gnutls_deinit(c->tls);
	if (c->fd >= 0)
		close(c->fd);
	free(c->req);
	free(c->head);
	c->tls = NULL;
	c->fd = -1;
	c->req = c->head = NULL;
	c->st = C_DONE;
}

/* A connection that never opened: a connect error. */
static void conn_fail(struct conn *c, const char *what)
{
	note_error("connect: %s", what);
	atomic_fetch_add(&n_failed, 1);
	c->w->pending--;
	conn_release(c);
}

/* An open connection ends: an error unless we were closing it. */
static void conn_end(struct conn *c, bool error, const char *what)
{
	if (error && atomic_load(&phase) == 0) {
		note_error("%s", what);
		atomic_fetch_add(&n_io_errors, 1);
	}
	conn_release(c);
}

static void heap_push(struct worker *w, struct conn *c, int64_t due)
{
	size_t i = w->nheap++;

	while (i > 0) {
		size_t p = (i - 1) / 2;

		if (w->heap[p].due_us <= due)
			break;
		w->heap[i] = w->heap[p];
		i = p;
	}
	w->heap[i] = (struct sched){ due, c };
}

static struct sched heap_pop(struct worker *w)
{
	struct sched top = w->heap[0], last = w->heap[--w->nheap];
	size_t i = 0;

	for (;;) {
		size_t l = 2 * i + 1, m = l;

		if (l >= w->nheap)
			break;
		if (l + 1 < w->nheap && w->heap[l + 1].due_us < w->heap[l].due_us)
			m = l + 1;
		if (last.due_us <= w->heap[m].due_us)
			break;
		w->heap[i] = w->heap[m];
		i = m;
	}
	if (w->nheap > 0)
		w->heap[i] = last;
	return top;
}

static void queue_control(struct conn *c, unsigned opcode, const uint8_t *payload, size_t len)
{
	if (c->ctl_off < c->ctl_len)
		return;  /* one control frame at a time; a ping's pong may be dropped */
	c->ctl_len = build_masked(c->ctl, opcode, payload, len, &c->w->rng);
	c->ctl_off = 0;
}

/* Starts the close handshake (1000); the frame follows whatever is being
 * written now, which must not be cut. */
static void send_close(struct conn *c)
{
	if (c->close_wanted)
		return;
	c->close_wanted = true;
	c->st = C_CLOSING;
	c->deadline_us = now_us() + WL_CLOSE_WAIT_MS * 1000LL;
}

/* Writes the pending message, then the pending control frame.  Returns 1 if
 * both went out, 0 if the socket is full, -1 on an error. */
static int conn_flush(struct conn *c)
{
	for (;;) {
		const uint8_t *p;
		size_t left;
		ssize_t n;

		if (c->out) {
			p = c->out->bytes + c->out_off;
			left = c->out->len - c->out_off;
		} else if (c->ctl_off < c->ctl_len) {
			p = c->ctl + c->ctl_off;
			left = c->ctl_len - c->ctl_off;
		} else if (c->close_wanted && !c->close_sent) {
			static const uint8_t normal[2] = { 0x03, 0xE8 };  /* 1000 */

			queue_control(c, 0x8, normal, sizeof normal);
			c->close_sent = true;
			continue;
		} else {
			return 1;
		}
		/* After GNUTLS_E_AGAIN the same call is repeated: p and left are
		 * unchanged until it succeeds, as GnuTLS requires. */
		n = gnutls_record_send(c->tls, p, left);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			return 0;
		if (n <= 0)
			return -1;
		if (c->out) {
			c->out_off += (size_t)n;
			if (c->out_off == c->out->len) {
				atomic_fetch_add_explicit(&n_msgs, 1, memory_order_relaxed);
				atomic_fetch_add_explicit(&n_bytes, c->out->len,
				                          memory_order_relaxed);
				c->out = NULL;
				c->msgs++;
			}
		} else {
			c->ctl_off += (size_t)n;
		}
	}
}

static const struct frame *next_frame(struct conn *c)
{
	bool big = (c->msgs == 0 && g.initial_batch) ||
	           (g.big_every > 0 && c->msgs % g.big_every == g.big_every - 1);

	if (big)
		return &g.big[sdk_rand(&c->w->rng) % WL_POOL_BIG];
	return &g.delta[sdk_rand(&c->w->rng) % WL_POOL_DELTA];
}

/* Writes what is pending and, flat out, more messages; keeps the epoll
 * interest in step.  Returns -1 if the connection failed. */
static int conn_write(struct conn *c)
{
	bool flat = g.rate <= 0 && c->st == C_OPEN && atomic_load(&phase) == 0;
	int r, burst = 0;

	for (;;) {
		r = conn_flush(c);
		if (r < 0)
			return -1;
		if (r == 0 || !flat || burst++ == WL_FLAT_BURST)
			break;
		c->out = next_frame(c);
		c->out_off = 0;
	}
	set_events(c, EPOLLIN | (r == 0 || flat ? EPOLLOUT : 0));
	return 0;
}

static void conn_opened(struct conn *c)
{
	struct worker *w = c->w;
	int64_t now = now_us();

	c->st = C_OPEN;
	w->pending--;
	w->last_open_us = now;
	atomic_fetch_add(&n_opened, 1);
	if (g.rate > 0) {
		/* Spread the first messages over one interval, as browsers that
		 * opened at different times would. */
		int64_t interval = (int64_t)(1e6 / g.rate) + 1;

		heap_push(w, c, now + (int64_t)(sdk_rand(&w->rng) % (uint64_t)interval));
	}
}

/* One complete frame from the server (a wsf_frame_fn).  Returns 1 when it
 * completes the close handshake we started, -1 if the connection cannot
 * go on. */
static int frame_done(void *arg, const struct wsf_parser *p)
{
	struct conn *c = arg;

	switch (p->opcode) {
	case 0x8:
		if (c->close_wanted)
			return 1;
		if (c->st != C_OPEN)
			return -1;
		if (atomic_load(&phase) == 0) {
			note_error("server closed the websocket");
			atomic_fetch_add(&n_peer_closed, 1);
		}
		send_close(c);
		return 0;
	case 0x9:
		queue_control(c, 0xA, p->ctl, p->ctl_len);
		return 0;
	case 0xA:
		return 0;
	default:
		if (c->st == C_HELLO)
			conn_opened(c);
		return 0;
	}
}

/* True if the head has the header name (with its colon) with exactly value. */
static bool header_is(const char *head, const char *name, const char *value)
{
	const char *p = strcasestr(head, name);
	size_t n = strlen(value);

	if (!p || p[-1] != '\n')
		return false;
	for (p += strlen(name); *p == ' ' || *p == '\t'; p++)
		;
	return strncmp(p, value, n) == 0 && (p[n] == '\r' || p[n] == ' ');
}

/* Checks the 101: status, subprotocol and Sec-WebSocket-Accept. */
static int check_answer(struct conn *c, char *err, size_t errlen)
{
	char expect[WSF_ACCEPT_LEN + 1];

	if (strncmp(c->head, "HTTP/1.1 101", 12) != 0) {
		snprintf(err, errlen, "answer %.12s", c->head);
		return -1;
	}
	if (wsf_accept(c->key, expect) < 0)
		return -1;
	if (!header_is(c->head, "Sec-WebSocket-Accept:", expect)) {
		snprintf(err, errlen, "bad Sec-WebSocket-Accept");
		return -1;
	}
	if (!header_is(c->head, "Sec-WebSocket-Protocol:", "2.0")) {
		snprintf(err, errlen, "subprotocol 2.0 not echoed");
		return -1;
	}
	return 0;
}

/* Reads what TLS has for the connection.  Returns -1 when it failed or
 * the peer went away, 1 when our close handshake completed. */
static int conn_read(struct conn *c, char *err, size_t errlen)
{
	struct worker *w = c->w;

	for (;;) {
		ssize_t n = gnutls_record_recv(c->tls, w->rbuf, sizeof w->rbuf);
		const uint8_t *p = w->rbuf;

		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			return 0;
		if (n <= 0) {
			snprintf(err, errlen, "%s",
			         n == 0 ? "connection closed" : gnutls_strerror((int)n));
			return -1;
		}
		if (c->st == C_RESPONSE) {
			ssize_t used =
				bench_head_add(c->head, &c->head_len, WL_HEAD_MAX, p, (size_t)n);

			if (used < 0) {
				snprintf(err, errlen, "answer head too long");
				return -1;
			}
			if (used == 0)
				continue;
			if (check_answer(c, err, errlen) < 0)
				return -1;
			/* Bytes after the head are the first frames. */
			p += used;
			n -= used;
			free(c->head);
			c->head = NULL;
			c->st = C_HELLO;
		}
		if (n > 0) {
			int r = wsf_parse(&c->in, p, (size_t)n, frame_done, c);

			if (r < 0)
				snprintf(err, errlen, "unexpected frame from server");
			if (r != 0)
				return r;
		}
	}
}

static int conn_start(struct worker *w, struct conn *c)
{
	struct epoll_event e = { .events = EPOLLOUT, .data.ptr = c };
	char session[24];
	uint8_t nonce[16];
	int one = 1, n;

	c->w = w;
	c->deadline_us = now_us() + (int64_t)(g.connect_timeout_s * 1e6);
	w->pending++;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		conn_fail(c, strerror(errno));
		return -1;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(c->fd, (struct sockaddr *)&g.addr, sizeof g.addr) < 0 && errno != EINPROGRESS) {
		conn_fail(c, strerror(errno));
		return -1;
	}
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &e) < 0) {
		conn_fail(c, strerror(errno));
		return -1;
	}
	c->events = EPOLLOUT;
	c->st = C_CONNECT;

	for (size_t i = 0; i < sizeof nonce; i++)
		nonce[i] = (uint8_t)sdk_rand(&w->rng);
	wsf_base64(nonce, sizeof nonce, c->key);
	for (size_t i = 0; i < 22; i++)
		session[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[sdk_rand(&w->rng) % 36];
	session[22] = '\0';
	n = asprintf(&c->req,
	             "GET %s?apiKey=benchkey&timestamp=%lld&apiVersion=v1&sessionId=%s"
	             "&newConnection=true HTTP/1.1\r\n"
	             "Host: %s:%u\r\n"
	             "Connection: Upgrade\r\n"
	             "Pragma: no-cache\r\n"
	             "Cache-Control: no-cache\r\n"
	             "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
	             "(KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36\r\n"
	             "Upgrade: websocket\r\n"
	             "Origin: https://app.example.com\r\n"
	             "Sec-WebSocket-Version: 13\r\n"
	             "Accept-Encoding: gzip, deflate, br, zstd\r\n"
	             "Accept-Language: en-US,en;q=0.9\r\n"
	             "Sec-WebSocket-Key: %s\r\n"
	             "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
	             "Sec-WebSocket-Protocol: 2.0\r\n\r\n",
	             g.path, (long long)time(NULL) * 1000, session, g.host, g.port, c->key);
	if (n < 0) {
		c->req = NULL;
		conn_fail(c, "out of memory");
		return -1;
	}
	c->req_len = (size_t)n;
	return 0;
}

/* Moves a connection through connect, TLS, request and answer. */
static void conn_handshake(struct conn *c)
{
	char err[WL_ERR_MAX] = "";
	int r, soerr = 0;
	socklen_t sl = sizeof soerr;

	switch (c->st) {
	case C_CONNECT:
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
			conn_fail(c, strerror(soerr ? soerr : errno));
			return;
		}
		if (gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_NONBLOCK) < 0 ||
		    gnutls_priority_set(c->tls, g.prio) < 0 ||
		    gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, g.cred) < 0) {
			conn_fail(c, "gnutls_init");
			return;
		}
		gnutls_transport_set_int(c->tls, c->fd);
		c->st = C_TLS;
		/* fall through */
	case C_TLS:
		r = gnutls_handshake(c->tls);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
			set_events(c, gnutls_record_get_direction(c->tls) ? EPOLLOUT : EPOLLIN);
			return;
		}
		if (r < 0) {
			snprintf(err, sizeof err, "TLS handshake: %s", gnutls_strerror(r));
			conn_fail(c, err);
			return;
		}
		c->st = C_REQUEST;
		/* fall through */
	case C_REQUEST:
		while (c->req_off < c->req_len) {
			ssize_t n = gnutls_record_send(c->tls, c->req + c->req_off,
			                               c->req_len - c->req_off);

			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
				set_events(c, EPOLLOUT);
				return;
			}
			if (n <= 0) {
				conn_fail(c, "sending the upgrade request");
				return;
			}
			c->req_off += (size_t)n;
		}
		free(c->req);
		c->req = NULL;
		c->head = malloc(WL_HEAD_MAX + 1);
		if (!c->head) {
			conn_fail(c, "out of memory");
			return;
		}
		c->st = C_RESPONSE;
		set_events(c, EPOLLIN);
		/* fall through */
	case C_RESPONSE:
	case C_HELLO:
		if (conn_read(c, err, sizeof err) != 0) {
			conn_fail(c, err);
			return;
		}
		if (c->st == C_OPEN && conn_write(c) < 0)
			conn_end(c, true, "write failed");
		return;
	default:
		return;
	}
}

static void conn_event(struct conn *c, uint32_t ev)
{
	char err[WL_ERR_MAX] = "";

	if (c->st < C_OPEN) {
		conn_handshake(c);
		return;
	}
	if (c->st == C_DONE)
		return;
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
		int r = conn_read(c, err, sizeof err);

		if (r != 0) {
			conn_end(c, r < 0 && !c->close_wanted, err);
			return;
		}
	}
	if (conn_write(c) < 0)
		conn_end(c, true, "write failed");
}

/* --- the worker loop ------------------------------------------------------ */

static void run_schedule(struct worker *w, int64_t now)
{
	int64_t interval = (int64_t)(1e6 / g.rate) + 1;

	while (w->nheap > 0 && w->heap[0].due_us <= now) {
		struct sched s = heap_pop(w);
		struct conn *c = s.c;

		if (c->st != C_OPEN)
			continue;
		if (c->out) {
			atomic_fetch_add_explicit(&n_late, 1, memory_order_relaxed);
		} else {
			c->out = next_frame(c);
			c->out_off = 0;
			if (conn_write(c) < 0) {
				conn_end(c, true, "write failed");
				continue;
			}
		}
		heap_push(w, c, s.due_us + interval);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[WL_MAX_EVENTS];
	bool closing = false;
	int64_t close_deadline = 0, last_scan = 0;
	size_t live = 1;

	for (;;) {
		int64_t now = now_us();
		int timeout = WL_TICK_MS, n;

		while (w->next_start < w->nconns && w->pending < g.handshakes &&
		       atomic_load(&phase) == 0)
			conn_start(w, &w->conns[w->next_start++]);
		if (atomic_load(&phase) >= 1 && !closing) {
			closing = true;
			close_deadline = now + WL_CLOSE_WAIT_MS * 1000LL;
			for (size_t i = 0; i < w->nconns; i++) {
				struct conn *c = &w->conns[i];

				if (c->st == C_OPEN) {
					send_close(c);
					if (conn_write(c) < 0)
						conn_end(c, false, "");
				} else if (c->st != C_DONE && c->st != C_IDLE &&
				           c->st != C_CLOSING) {
					conn_fail(c, "not open when the run ended");
				}
			}
		}
		/* Deadlines, once a tick: a scan of every connection. */
		if (closing || now - last_scan >= WL_TICK_MS * 1000LL) {
			last_scan = now;
			live = 0;
			for (size_t i = 0; i < w->nconns; i++) {
				struct conn *c = &w->conns[i];

				if (c->st == C_DONE || c->st == C_IDLE)
					continue;
				if (c->st < C_OPEN && now > c->deadline_us)
					conn_fail(c, "timed out");
				else if (c->st == C_CLOSING && now > c->deadline_us)
					conn_release(c);
				else if (closing &&
				         (atomic_load(&phase) >= 2 || now > close_deadline))
					conn_release(c);
				else
					live++;
			}
		}
		if (closing && live == 0)
			break;
		if (g.rate > 0 && !closing) {
			run_schedule(w, now);
			if (w->nheap > 0) {
				int64_t d = (w->heap[0].due_us - now_us()) / 1000;

				timeout = d < 0 ? 0 : d < WL_TICK_MS ? (int)d : WL_TICK_MS;
			}
		}
		n = epoll_wait(w->epfd, evs, WL_MAX_EVENTS, timeout);
		for (int i = 0; i < n; i++)
			conn_event(evs[i].data.ptr, evs[i].events);
	}
	return NULL;
}

/* --- main ------------------------------------------------------------------ */

static void usage(void)
{
	fprintf(stderr,
	        "usage: wsload --port P [--host ADDR] [--path PATH] [--connections N] [--threads T]\n"
	        "              [--duration S] [--rate R] [--frame-log FILE]... [--no-initial-batch]\n"
		"              [--big-every K] [--handshakes H] [--connect-timeout S]\n"
		"              [--seed X]\n");
}

static int parse_args(int argc, char **argv, struct sdk_logs *logs)
{
	static const struct option opts[] = {
		{ "host", required_argument, NULL, 'h' },
		{ "port", required_argument, NULL, 'p' },
		{ "path", required_argument, NULL, 'P' },
		{ "connections", required_argument, NULL, 'n' },
		{ "threads", required_argument, NULL, 't' },
		{ "duration", required_argument, NULL, 'd' },
		{ "rate", required_argument, NULL, 'r' },
		{ "frame-log", required_argument, NULL, 'f' },
		{ "no-initial-batch", no_argument, NULL, 'I' },
		{ "big-every", required_argument, NULL, 'b' },
		{ "handshakes", required_argument, NULL, 'H' },
		{ "connect-timeout", required_argument, NULL, 'T' },
		{ "seed", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'h': g.host = optarg; break;
		case 'p': g.port = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'P': g.path = optarg; break;
		case 'n': g.connections = strtoul(optarg, NULL, 10); break;
		case 't': g.threads = strtoul(optarg, NULL, 10); break;
		case 'd': g.duration_s = strtod(optarg, NULL); break;
		case 'r': g.rate = strtod(optarg, NULL); break;
		case 'I': g.initial_batch = false; break;
		case 'b': g.big_every = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'H': g.handshakes = strtoul(optarg, NULL, 10); break;
		case 'T': g.connect_timeout_s = strtod(optarg, NULL); break;
		case 's': g.seed = strtoull(optarg, NULL, 0) | 1; break;
		case 'f':
			if (sdk_logs_add(logs, optarg) < 0)
				return -1;
			break;
		default: return -1;
		}
	}
	if (optind != argc || g.port == 0 || g.port > 65535 || g.connections == 0 ||
	    g.threads == 0 || g.threads > WL_MAX_THREADS || g.handshakes == 0 || g.rate < 0 ||
	    g.duration_s < 0 || g.connect_timeout_s <= 0)
		return -1;
	if (g.threads > g.connections)
		g.threads = g.connections;
	g.addr.sin_family = AF_INET;
	g.addr.sin_port = htons((uint16_t)g.port);
	if (inet_pton(AF_INET, g.host, &g.addr.sin_addr) != 1)
		return -1;
	return 0;
}

static volatile sig_atomic_t term_received;

static void on_term(int sig)
{
	(void)sig;
	term_received = 1;
}

static void print_report(int64_t t0, int64_t t_ready, int64_t t_stop, uint64_t msgs_ready,
                         uint64_t msgs_stop, int64_t last_open)
{
	unsigned long long opened = atomic_load(&n_opened), failed = atomic_load(&n_failed);
	unsigned long long errors =
		failed + atomic_load(&n_peer_closed) + atomic_load(&n_io_errors);
	double connect_s = (last_open > t0 ? last_open - t0 : 0) / 1e6;
	double send_s = (t_stop - t_ready) / 1e6;
	char quoted[2 * WL_ERR_MAX + 1];
	size_t q = 0;

	for (const char *p = first_error; *p && q + 2 < sizeof quoted; p++) {
		if (*p == '"' || *p == '\\')
			quoted[q++] = '\\';
		quoted[q++] = (char)(*p >= 0x20 ? *p : ' ');
	}
	quoted[q] = '\0';
	printf("{\"connections\":%zu,\"threads\":%zu,\"rate_per_conn\":%g,\"opened\":%llu,"
	       "\"connect_errors\":%llu,\"connect_s\":%.3f,\"connects_per_s\":%.1f,"
	       "\"messages\":%llu,\"bytes\":%llu,\"send_s\":%.3f,\"messages_in_window\":%llu,"
	       "\"messages_per_s\":%.1f,\"late\":%llu,\"closed_by_server\":%llu,"
	       "\"io_errors\":%llu,\"errors\":%llu,\"first_error\":\"%s\"}\n",
	       g.connections, g.threads, g.rate, opened, failed, connect_s,
	       connect_s > 0 ? opened / connect_s : 0.0, (unsigned long long)atomic_load(&n_msgs),
	       (unsigned long long)atomic_load(&n_bytes), send_s,
	       (unsigned long long)(msgs_stop - msgs_ready),
	       send_s > 0 ? (msgs_stop - msgs_ready) / send_s : 0.0,
	       (unsigned long long)atomic_load(&n_late),
	       (unsigned long long)atomic_load(&n_peer_closed),
	       (unsigned long long)atomic_load(&n_io_errors), errors, quoted);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct sdk_logs logs = { .n = 0 };
	size_t started = 0;
	struct worker *w = NULL;
	struct sdk_sizes *sizes = NULL;
	char err[WL_ERR_MAX];
	int64_t t0, t_ready = 0, t_stop, last_open = 0;
	uint64_t rng, msgs_ready = 0, msgs_stop;
	int rc = 2;
	struct sigaction sa = { .sa_handler = on_term };

	if (parse_args(argc, argv, &logs) < 0) {
		usage();
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	bench_raise_nofile();
	rng = g.seed;
	sizes = sdk_sizes_create(&logs, err, sizeof err);
	if (!sizes || pool_build(g.delta, WL_POOL_DELTA, sizes, 0, &rng) < 0 ||
	    pool_build(g.big, WL_POOL_BIG, sizes, 1, &rng) < 0) {
		fprintf(stderr, "wsload: %s\n", sizes ? "out of memory" : err);
		goto out;
	}
	if (gnutls_global_init() < 0 || gnutls_certificate_allocate_credentials(&g.cred) < 0 ||
	    gnutls_priority_init(&g.prio, NULL, NULL) < 0) {
		fprintf(stderr, "wsload: cannot initialise GnuTLS\n");
		goto out;
	}

	w = calloc(g.threads, sizeof *w);
	if (!w)
		goto out;
	for (size_t i = 0; i < g.threads; i++)
		w[i].epfd = -1;
	t0 = now_us();
	for (size_t i = 0; i < g.threads; i++) {
		size_t share = g.connections / g.threads + (i < g.connections % g.threads);

		w[i].epfd = epoll_create1(EPOLL_CLOEXEC);
		w[i].conns = calloc(share, sizeof *w[i].conns);
		w[i].heap = calloc(share, sizeof *w[i].heap);
		w[i].nconns = share;
		w[i].rng = g.seed + 0x1000193 * (i + 1);
		if (w[i].epfd < 0 || !w[i].conns || !w[i].heap)
			goto stop;
		for (size_t j = 0; j < share; j++)
			w[i].conns[j].fd = -1;
		if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0)
			goto stop;
		started++;
	}

	/* Connect phase: until every connection opened or failed. */
	while (atomic_load(&n_opened) + atomic_load(&n_failed) < g.connections)
		usleep(WL_TICK_MS * 1000);
	t_ready = now_us();
	msgs_ready = atomic_load(&n_msgs);
	fprintf(stderr, "ready opened=%llu failed=%llu\n",
		(unsigned long long)atomic_load(&n_opened),
	        (unsigned long long)atomic_load(&n_failed));
	while (!term_received && now_us() - t_ready < (int64_t)(g.duration_s * 1e6))
		usleep(WL_TICK_MS * 1000);
	rc = 0;
stop:
	t_stop = now_us();
	msgs_stop = atomic_load(&n_msgs);
	atomic_store(&phase, 1);
	for (size_t i = 0; i < started; i++) {
		pthread_join(w[i].thread, NULL);
		if (w[i].last_open_us > last_open)
			last_open = w[i].last_open_us;
	}
	if (rc == 0) {
		print_report(t0, t_ready, t_stop, msgs_ready, msgs_stop, last_open);
		rc = atomic_load(&n_failed) + atomic_load(&n_peer_closed) +
		                     atomic_load(&n_io_errors)
		             ? 1
		             : 0;
	}
	for (size_t i = 0; i < g.threads; i++) {
		if (w[i].epfd >= 0)
			close(w[i].epfd);
		free(w[i].conns);
		free(w[i].heap);
	}
out:
	free(w);
	sdk_sizes_destroy(sizes);
	for (size_t i = 0; i < WL_POOL_DELTA; i++)
		free(g.delta[i].bytes);
	for (size_t i = 0; i < WL_POOL_BIG; i++)
		free(g.big[i].bytes);
	if (g.prio)
		gnutls_priority_deinit(g.prio);
	if (g.cred)
		gnutls_certificate_free_credentials(g.cred);
	gnutls_global_deinit();
	return rc;
}
