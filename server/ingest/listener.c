/*
 * listener.c - the TLS listener (listener.h).
 *
 * Each thread runs one evloop (server/evloop.h): a watcher on the shared
 * listening socket (EPOLLEXCLUSIVE, so one loop wakes per connection; out
 * of file descriptors, a timer resumes it), two watchers per connection,
 * and a timer that looks for late PROXY headers once a second.  A loop owns
 * its connections outright; the only shared state is the table that maps
 * libmicrohttpd's end of a socketpair back to its connection, for
 * listener_upgraded, which runs on libmicrohttpd's thread and posts the
 * upgrade to the connection's loop (evloop_post).
 *
 * A connection goes through three phases (four with proxy-protocol):
 *   proxy hdr  with proxy-protocol only: a PROXY header, if the connection
 *              begins with one, is read and checked; only then is the
 *              connection given to libmicrohttpd, with the header's source
 *              as its client address;
 *   handshake  the TLS handshake, non-blocking;
 *   proxy      bytes copied between TLS and the socketpair in both
 *              directions, one buffer each way (a full buffer stops the
 *              reading side: a client that never reads cannot grow it);
 *   upgrade    libmicrohttpd answered 101: what is left of the answer goes
 *              out, the bytes the client sent early are collected, the
 *              socketpair is closed and the TLS connection moves to the
 *              websocket server.
 * Time limits stay where they were: the relay's request deadline and
 * libmicrohttpd's idle timeout close the socketpair, and the listener then
 * closes the TLS side.
 */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <microhttpd.h>

#include "cause.h"
#include "clientip.h"
#include "clock.h"
#include "evloop.h"
#include "log.h"
#include "proxyproto.h"
#include "tls_creds.h"
#include "websocket.h"

#define LISTENER_BUF_BYTES 16384        /* each direction, proxy phase only */
#define LISTENER_ACCEPT_BATCH 64        /* accepts per wake-up, so one loop cannot starve */
#define LISTENER_BACKLOG 1024
#define LISTENER_LIMIT_LOG_INTERVAL_MS 1000  /* one "...connections reached" line per interval */
#define LISTENER_EMFILE_BACKOFF_MS 100  /* no accepts for this long after running out of fds */
#define LISTENER_SWEEP_MS 1000          /* how often late PROXY headers and lingerers are seen to */
#define LISTENER_LINGER_MS 2000         /* the longest an answered client may still send */
#define LISTENER_LINGER_READS 16        /* reads of a lingerer per wake-up, so it cannot starve */

/* An upgrade libmicrohttpd handed over, on its way to the connection's loop. */
struct upgrade {
	struct listener *lsn;
	int mhd_fd;
	struct MHD_UpgradeResponseHandle *urh;
	char *early;                      /* client bytes past the request head */
	size_t early_len;
	struct ws_conn_meta *meta;
};

struct buf {
	char *data;                       /* LISTENER_BUF_BYTES, allocated with the connection */
	size_t off, len;                  /* bytes [off, len) wait to be written */
};

struct lconn {
	struct lloop *loop;
	struct lconn *prev, *next;        /* the loop's list */
	int fd;                           /* the client's TCP socket */
	int mfd, mhd_fd;                  /* our and libmicrohttpd's end of the socketpair */
	gnutls_session_t tls;
	struct ev_io tls_io, mhd_io;      /* fd and mfd: either pumps both ways */
	struct ev_deferred dead_link;     /* freed after the batch that closed it */
	char peer[INET6_ADDRSTRLEN];
	struct buf c2m, m2c;              /* client to libmicrohttpd, and back */
	struct upgrade *up;               /* set once libmicrohttpd upgraded it */
	bool handshaken;
	bool tls_eof;                     /* the client finished sending */
	bool mhd_eof;                     /* libmicrohttpd closed its end */
	bool dead;                        /* closed: freed after the current batch */
	bool handed_over;                 /* now the websocket server's, and counted there */
	bool awaiting_proxy;              /* proxy-protocol: the first bytes are not in yet */
	bool http_attached;               /* libmicrohttpd has mhd_fd (and closes it) */
	bool mhd_deaf;                    /* libmicrohttpd reads no more: the client's bytes drop */
	bool lingering;                   /* answered: waiting for the client to stop sending */
	long long opened_ms;              /* mono_ms() at accept */
	long long linger_ms;              /* mono_ms() when the lingering began */
	struct sockaddr_storage client;   /* the address libmicrohttpd is given */
	socklen_t client_len;
};

struct lloop {
	struct listener *lsn;
	struct evloop *ev;
	pthread_t thread;
	bool started;
	struct ev_io accept_io;           /* the listening socket (EPOLLEXCLUSIVE) */
	bool listening;                   /* accept_io is wanted (not quiesced or broken) */
	struct ev_timer resume_timer;     /* out of fds: armed while accepting is paused */
	struct ev_timer sweep_timer;      /* armed while PROXY headers or lingerers are awaited */
	struct lconn *conns;              /* loop thread only */
	unsigned awaiting_proxy;          /* connections whose PROXY header is not in yet */
	unsigned lingering;               /* answered connections the client still sends on */
};

struct listener {
	struct MHD_Daemon *mhd;
	struct ws_server *ws;
	gnutls_certificate_credentials_t cred;
	gnutls_priority_t prio;
	int lfd;
	unsigned max_connections;
	unsigned max_http_connections;    /* at most max_connections */
	bool proxy_protocol;
	const struct trusted_proxies *proxies;
	unsigned header_timeout_ms;
	struct lloop *loops;
	unsigned nloops;
	atomic_uint open;                 /* connections in the listener's hands */
	atomic_bool quiescing, exiting;
	struct log_gate limit_log;        /* "max-connections reached" */
	struct log_gate http_limit_log;   /* "max-http-connections reached" */
	struct log_gate fd_log;           /* "out of file descriptors" */
	pthread_mutex_t table_lock;
	struct lconn **by_mhd_fd;         /* index: libmicrohttpd's end of the socketpair */
	size_t table_size;
};

/* --- the mhd_fd -> connection table ------------------------------------------ */

static int table_put(struct listener *l, int fd, struct lconn *c)
{
	int rc = 0;

	pthread_mutex_lock(&l->table_lock);
	if ((size_t)fd >= l->table_size) {
		size_t n = l->table_size ? l->table_size : 1024;
		struct lconn **grown;

		while (n <= (size_t)fd)
			n *= 2;
		grown = realloc(l->by_mhd_fd, n * sizeof *grown);
		if (!grown) {
			rc = -1;
			goto out;
		}
		memset(grown + l->table_size, 0, (n - l->table_size) * sizeof *grown);
		l->by_mhd_fd = grown;
		l->table_size = n;
	}
	l->by_mhd_fd[fd] = c;
out:
	pthread_mutex_unlock(&l->table_lock);
	return rc;
}

/* Locked by the caller. */
static struct lconn *table_get(struct listener *l, int fd)
{
	return fd >= 0 && (size_t)fd < l->table_size ? l->by_mhd_fd[fd] : NULL;
}

static void table_drop(struct listener *l, int fd, struct lconn *c)
{
	pthread_mutex_lock(&l->table_lock);
	if (table_get(l, fd) == c)
		l->by_mhd_fd[fd] = NULL;
	pthread_mutex_unlock(&l->table_lock);
}

/* --- connections --------------------------------------------------------------- */

static void upgrade_free(struct upgrade *u)
{
	if (!u)
		return;
	if (u->urh)
		MHD_upgrade_action(u->urh, MHD_UPGRADE_ACTION_CLOSE);
	ws_conn_meta_free(u->meta);
	free(u->early);
	free(u);
}

/* Both of c's watchers pump c both ways; a failed epoll_ctl leaves the
 * interest as it was, as before the event loop module. */
static void set_interest(struct lconn *c, struct ev_io *w, uint32_t want)
{
	if (w->fd < 0)
		return;
	if (evloop_io_set(c->loop->ev, w, want) < 0)
		log_debug("tls_error", "peer=%s reason=\"epoll_ctl: %s\"", c->peer,
		          strerror(errno));
}

static void conn_free(struct lconn *c)
{
	free(c->c2m.data);
	free(c->m2c.data);
	free(c);
}

static void conn_free_deferred(struct ev_deferred *d)
{
	conn_free((struct lconn *)((char *)d - offsetof(struct lconn, dead_link)));
}

/* Unlinks c and queues it for freeing after the current batch of events:
 * the batch may still name it. */
static void conn_close(struct lconn *c, const char *why)
{
	struct lloop *lp = c->loop;

	if (c->dead)
		return;
	log_debug("tls_close", "peer=%s reason=\"%s\"", c->peer, why);
	c->dead = true;
	if (c->prev)
		c->prev->next = c->next;
	else
		lp->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	evloop_io_stop(lp->ev, &c->tls_io);
	evloop_io_stop(lp->ev, &c->mhd_io);
	if (c->fd >= 0) {
		if (c->handshaken && !c->tls_eof && !c->lingering)
			gnutls_bye(c->tls, GNUTLS_SHUT_WR);   /* best effort: non-blocking */
		close(c->fd);
	}
	if (c->mfd >= 0) {
		table_drop(lp->lsn, c->mhd_fd, c);
		close(c->mfd);   /* libmicrohttpd sees EOF and closes its end */
	}
	if (!c->http_attached && c->mhd_fd >= 0)
		close(c->mhd_fd);   /* never given to libmicrohttpd */
	if (c->awaiting_proxy)
		lp->awaiting_proxy--;
	if (c->lingering)
		lp->lingering--;
	if (c->tls)
		gnutls_deinit(c->tls);
	upgrade_free(c->up);
	if (!c->handed_over)
		atomic_fetch_sub(&lp->lsn->open, 1);
	evloop_defer(lp->ev, &c->dead_link, conn_free_deferred);
}

/* GnuTLS said AGAIN: which way it waits. */
static uint32_t tls_wait(const struct lconn *c)
{
	return gnutls_record_get_direction(c->tls) ? EPOLLOUT : EPOLLIN;
}

/*
 * The upgrade's last step, once the 101 is out: the TLS connection goes
 * to the websocket server, with the early bytes, and leaves the listener.
 */
static void conn_hand_over(struct lconn *c)
{
	struct lloop *lp = c->loop;
	struct upgrade *u = c->up;

	evloop_io_stop(lp->ev, &c->tls_io);
	/* Uncounted here before it is counted there: the other way round, an
	 * accept on another thread could see it twice and refuse a client
	 * under max-connections (at most one per thread may get in over it
	 * instead, for a moment). */
	c->handed_over = true;
	atomic_fetch_sub(&lp->lsn->open, 1);
	ws_server_adopt(lp->lsn->ws, u->meta, c->fd, c->tls, u->early, u->early_len);
	u->meta = NULL;
	c->fd = -1;
	c->tls = NULL;
	conn_close(c, "upgraded");
}

/*
 * Appends what is readable on fd (non-blocking) to *buf.  0 at EAGAIN, -1
 * on EOF, an error or out of memory.
 */
static int drain_fd(int fd, char **buf, size_t *len)
{
	char chunk[4096];

	for (;;) {
		ssize_t n = recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
		char *grown;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n <= 0)
			return -1;
		grown = realloc(*buf, *len + (size_t)n);
		if (!grown)
			return -1;
		memcpy(grown + *len, chunk, (size_t)n);
		*buf = grown;
		*len += (size_t)n;
	}
}

static void conn_mhd_io(struct evloop *ev, struct ev_io *w, uint32_t events);

/*
 * libmicrohttpd has sent its 101 into the socketpair and let go of the
 * connection.  Collect, in the order the client sent them, the bytes that
 * are past the request head: those libmicrohttpd read (u->early already),
 * those still in its end of the socketpair, and those the listener had
 * not passed on yet.  Then close the socketpair; the rest of the 101 is
 * still to be read from our end first.
 */
static void conn_begin_upgrade(struct lconn *c, struct upgrade *u)
{
	struct lloop *lp = c->loop;
	size_t pending = c->c2m.len - c->c2m.off;
	int rc;

	c->up = u;
	/* The rest of the 101 (libmicrohttpd wrote all of it before calling us). */
	if (c->m2c.off == c->m2c.len)
		c->m2c.off = c->m2c.len = 0;
	for (;;) {
		ssize_t n = recv(c->mfd, c->m2c.data + c->m2c.len, LISTENER_BUF_BYTES - c->m2c.len,
		                 MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0) {
			c->m2c.len += (size_t)n;
			if (c->m2c.len < LISTENER_BUF_BYTES)
				continue;
		}
		break;
	}
	rc = drain_fd(u->mhd_fd, &u->early, &u->early_len);
	if (rc == 0 && pending) {
		char *grown = realloc(u->early, u->early_len + pending);

		if (!grown) {
			rc = -1;
		} else {
			memcpy(grown + u->early_len, c->c2m.data + c->c2m.off, pending);
			u->early = grown;
			u->early_len += pending;
			c->c2m.off = c->c2m.len = 0;
		}
	}
	MHD_upgrade_action(u->urh, MHD_UPGRADE_ACTION_CLOSE);
	u->urh = NULL;
	evloop_io_stop(lp->ev, &c->mhd_io);
	table_drop(lp->lsn, c->mhd_fd, c);
	close(c->mfd);
	c->mfd = -1;
	ev_io_init(&c->mhd_io, -1, conn_mhd_io);   /* set_interest skips it */
	if (rc < 0)
		conn_close(c, "upgrade: out of memory");
}

static void conn_pump(struct lconn *c);

/* Gives c to libmicrohttpd as a connection from c->client, and starts
 * the TLS handshake. */
static void conn_attach_http(struct lconn *c)
{
	struct listener *l = c->loop->lsn;

	/* libmicrohttpd closes mhd_fd whatever happens. */
	c->http_attached = true;
	if (MHD_add_connection(l->mhd, c->mhd_fd, (const struct sockaddr *)&c->client,
	                       c->client_len) != MHD_YES) {
		log_warn("connection_refused",
		         "peer=%s reason=\"the HTTP server cannot take it: %s\"", c->peer,
		         strerror(errno));
		conn_close(c, "refused by the HTTP server");
		return;
	}
	conn_pump(c);
}

static void proxy_refuse(struct lconn *c, const char *why)
{
	log_warn("proxy_refused", "peer=%s reason=\"%s\"", c->peer, why);
	conn_close(c, "PROXY header refused");
}

/*
 * proxy-protocol: looks at the connection's first bytes without taking
 * them.  A PROXY header from a trusted proxy is read (exactly its bytes:
 * the TLS handshake reads the rest) and its source becomes the client; a
 * connection that begins with TLS goes on as it is (a direct client, a
 * probe); a PROXY header from anyone else, or a malformed one, closes it.
 * The socket is edge-triggered meanwhile, so a header that arrives in
 * pieces does not spin the loop.
 */
static void proxy_step(struct lconn *c)
{
	struct proxyproto_header h;
	unsigned char buf[PROXYPROTO_MAX];
	const char *why = NULL;
	char from[CLIENTIP_SIZE];
	ssize_t n = recv(c->fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
		set_interest(c, &c->tls_io, EPOLLIN | EPOLLET);
		return;
	}
	if (n <= 0) {
		conn_close(c, "closed before its first bytes");
		return;
	}
	switch (proxyproto_parse(buf, (size_t)n, &h, &why)) {
	case PROXYPROTO_MORE:
		if ((size_t)n < sizeof buf) {
			set_interest(c, &c->tls_io, EPOLLIN | EPOLLET);
			return;
		}
		proxy_refuse(c, "PROXY header too long");
		return;
	case PROXYPROTO_BAD:
		proxy_refuse(c, why);
		return;
	case PROXYPROTO_OK:
		if (!trusted_proxies_contains(c->loop->lsn->proxies, c->peer)) {
			proxy_refuse(c, "PROXY header from an address that is not a trusted-proxy");
			return;
		}
		/* Takes the header's bytes, which are in the socket already. */
		if (recv(c->fd, buf, h.len, MSG_DONTWAIT) != (ssize_t)h.len) {
			conn_close(c, "PROXY header: read failed");
			return;
		}
		if (h.has_source) {
			memcpy(&c->client, &h.source, h.source_len);
			c->client_len = h.source_len;
			snprintf(from, sizeof from, "%s", c->peer);
			clientip_from_sockaddr((const struct sockaddr *)&c->client, c->peer,
			                       sizeof c->peer);
			log_debug("proxy_header", "proxy=%s client=%s version=%d", from, c->peer,
			          h.version);
		}
		break;
	case PROXYPROTO_NOT:
		break;   /* TLS straight away: the peer is the client */
	}
	c->awaiting_proxy = false;
	c->loop->awaiting_proxy--;
	set_interest(c, &c->tls_io, 0);
	conn_attach_http(c);
}

/* Closes the connections whose PROXY header is late (request-timeout-s)
 * and the lingerers whose time is up: once a second while there are any. */
static void loop_sweep(struct evloop *ev, struct ev_timer *t)
{
	struct lloop *lp = (struct lloop *)((char *)t - offsetof(struct lloop, sweep_timer));
	long long now = (long long)evloop_now(ev);
	struct lconn *c, *next;

	for (c = lp->conns; c && (lp->awaiting_proxy || lp->lingering); c = next) {
		next = c->next;
		if (c->awaiting_proxy && now - c->opened_ms >= lp->lsn->header_timeout_ms) {
			log_info("proxy_refused", "peer=%s reason=\"no PROXY header or TLS within "
			         "request-timeout-s\"", c->peer);
			conn_close(c, "PROXY header deadline");
		} else if (c->lingering && now - c->linger_ms >= LISTENER_LINGER_MS) {
			conn_close(c, "answered; the client was still sending");
		}
	}
	if ((lp->awaiting_proxy || lp->lingering) &&
	    evloop_timer_start(ev, t, LISTENER_SWEEP_MS) < 0)
		log_warn("tls_error", "reason=\"connection sweep: out of memory\"");
}

static int arm_sweep(struct lloop *lp)
{
	if (ev_timer_armed(&lp->sweep_timer))
		return 0;
	return evloop_timer_start(lp->ev, &lp->sweep_timer, LISTENER_SWEEP_MS);
}

/* Reads and drops what the client still sends, until it closes. */
static void linger_drain(struct lconn *c)
{
	for (int i = 0; i < LISTENER_LINGER_READS; i++) {
		ssize_t n = recv(c->fd, c->c2m.data, LISTENER_BUF_BYTES, MSG_DONTWAIT);

		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		conn_close(c, "answered");
		return;
	}
	set_interest(c, &c->tls_io, EPOLLIN);
}

/*
 * The answer is out and libmicrohttpd is done, but the client may still be
 * sending: a body refused at its head (413, 429).  Closing with its bytes
 * unread would send a reset, and a reset can destroy the answer before the
 * client reads it.  So the relay ends its side (close_notify, FIN) and
 * reads and drops what comes until the client closes, for at most
 * LISTENER_LINGER_MS: a lingering close, as Apache and nginx do.
 */
static void conn_linger(struct lconn *c)
{
	if (c->tls_eof) {
		conn_close(c, "answered");
		return;
	}
	if (arm_sweep(c->loop) < 0) {
		conn_close(c, "answered; no room to linger");
		return;
	}
	c->lingering = true;
	c->loop->lingering++;
	c->linger_ms = (long long)mono_ms();
	gnutls_bye(c->tls, GNUTLS_SHUT_WR);   /* best effort: non-blocking */
	shutdown(c->fd, SHUT_WR);
	evloop_io_stop(c->loop->ev, &c->mhd_io);
	linger_drain(c);
}

/*
 * Moves bytes until nothing more can move without waiting, then sets what
 * to wait for.  May close c.
 */
static void conn_pump(struct lconn *c)
{
	bool progress;
	ssize_t n;

	if (c->dead)
		return;
	if (c->lingering) {
		linger_drain(c);
		return;
	}
	if (c->awaiting_proxy) {
		proxy_step(c);
		return;
	}
	if (!c->handshaken) {
		int rc;

		/* libmicrohttpd says nothing before a request: EOF here means the
		 * request deadline ran out during the handshake. */
		if (c->m2c.len == 0) {
			n = recv(c->mfd, c->m2c.data, LISTENER_BUF_BYTES, MSG_DONTWAIT);
			if (n > 0) {
				c->m2c.len = (size_t)n;
			} else if (n == 0 ||
			           (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
				conn_close(c, "request deadline during the TLS handshake");
				return;
			}
		}
		rc = gnutls_handshake(c->tls);
		if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
			set_interest(c, &c->tls_io, tls_wait(c));
			set_interest(c, &c->mhd_io,
			             c->m2c.len == 0 ? EPOLLIN : 0);
			return;
		}
		if (rc < 0) {
			log_debug("tls_handshake_failed", "peer=%s reason=\"%s\"", c->peer,
			          gnutls_strerror(rc));
			conn_close(c, "TLS handshake failed");
			return;
		}
		c->handshaken = true;
	}
	do {
		progress = false;
		/* client -> libmicrohttpd (not once the upgrade began) */
		if (!c->up && !c->tls_eof && !c->mhd_deaf && c->c2m.off == c->c2m.len) {
			n = gnutls_record_recv(c->tls, c->c2m.data, LISTENER_BUF_BYTES);
			if (n > 0) {
				c->c2m.off = 0;
				c->c2m.len = (size_t)n;
				progress = true;
			} else if (n == 0 ||
			           (n < 0 && n != GNUTLS_E_AGAIN && n != GNUTLS_E_INTERRUPTED)) {
				if (n < 0 && n != GNUTLS_E_PREMATURE_TERMINATION) {
					/* Renegotiation among others: refused by ending it. */
					log_debug("tls_error", "peer=%s reason=\"%s\"", c->peer,
					          gnutls_strerror((int)n));
					conn_close(c, "TLS error");
					return;
				}
				c->tls_eof = true;
				if (c->mfd >= 0)
					shutdown(c->mfd, SHUT_WR);
			}
		}
		if (c->mfd >= 0 && c->c2m.off < c->c2m.len) {
			n = send(c->mfd, c->c2m.data + c->c2m.off, c->c2m.len - c->c2m.off,
			         MSG_NOSIGNAL);
			if (n > 0) {
				c->c2m.off += (size_t)n;
				progress = true;
			} else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
			           errno != EINTR) {
				/* libmicrohttpd answered and closed before reading all
				 * (a refused body): its answer may still be unread here,
				 * so the client's bytes are dropped, not the connection. */
				c->mhd_deaf = true;
				c->c2m.off = c->c2m.len;
				progress = true;
			}
		}
		/* libmicrohttpd -> client */
		if (c->mfd >= 0 && !c->mhd_eof && c->m2c.off == c->m2c.len) {
			n = recv(c->mfd, c->m2c.data, LISTENER_BUF_BYTES, 0);
			if (n > 0) {
				c->m2c.off = 0;
				c->m2c.len = (size_t)n;
				progress = true;
			} else if (n == 0 ||
			           (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
				c->mhd_eof = true;
			}
		}
		if (c->m2c.off < c->m2c.len) {
			/* A send that said AGAIN is repeated with the same bytes, as
			 * GnuTLS requires: nothing is appended until the buffer empties. */
			n = gnutls_record_send(c->tls, c->m2c.data + c->m2c.off,
			                       c->m2c.len - c->m2c.off);
			if (n > 0) {
				c->m2c.off += (size_t)n;
				progress = true;
			} else if (n != GNUTLS_E_AGAIN && n != GNUTLS_E_INTERRUPTED) {
				conn_close(c, "client gone");
				return;
			}
		}
	} while (progress);

	if (c->m2c.off == c->m2c.len) {
		if (c->up) {
			conn_hand_over(c);
			return;
		}
		if (c->mhd_eof) {
			conn_linger(c);
			return;
		}
	}
	set_interest(c, &c->tls_io,
	             (!c->up && !c->tls_eof && !c->mhd_deaf && c->c2m.off == c->c2m.len
	              ? EPOLLIN : 0) |
	             (c->m2c.off < c->m2c.len ? tls_wait(c) : 0));
	set_interest(c, &c->mhd_io,
	             (!c->mhd_eof && c->m2c.off == c->m2c.len ? EPOLLIN : 0) |
	             (c->c2m.off < c->c2m.len ? EPOLLOUT : 0));
}

static void conn_tls_io(struct evloop *ev, struct ev_io *w, uint32_t events)
{
	(void)ev;
	(void)events;
	conn_pump((struct lconn *)((char *)w - offsetof(struct lconn, tls_io)));
}

static void conn_mhd_io(struct evloop *ev, struct ev_io *w, uint32_t events)
{
	(void)ev;
	(void)events;
	conn_pump((struct lconn *)((char *)w - offsetof(struct lconn, mhd_io)));
}

/* Logs a connection refused for max-connections or max-http-connections:
 * clearly, but at most once per interval and limit, with a count of the
 * others. */
static void note_refusal(struct listener *l, bool http)
{
	unsigned long long others;

	if (http) {
		if (log_gate_pass(&l->http_limit_log, LISTENER_LIMIT_LOG_INTERVAL_MS, &others))
			log_warn("connection_refused", "reason=\"max-http-connections (%u) reached: "
			         "connections not yet upgraded to a websocket\" "
			         "also_refused_since_last_line=%llu", l->max_http_connections,
			         others);
		return;
	}
	if (log_gate_pass(&l->limit_log, LISTENER_LIMIT_LOG_INTERVAL_MS, &others))
		log_warn("connection_refused", "reason=\"max-connections (%u) reached\" "
		         "also_refused_since_last_line=%llu", l->max_connections, others);
}

/* Registers the listening socket with this loop, or takes it out. */
static void watch_accept(struct lloop *lp, bool on)
{
	if (evloop_io_set(lp->ev, &lp->accept_io, on ? EPOLLIN | EPOLLEXCLUSIVE : 0) < 0)
		lp->listening = false;
}

/* Out of file descriptors: the pending connections stay in the backlog,
 * and this loop stops accepting for LISTENER_EMFILE_BACKOFF_MS rather than
 * spin on a listening socket that stays readable. */
static void pause_accepting(struct lloop *lp)
{
	struct listener *l = lp->lsn;
	unsigned long long others;

	watch_accept(lp, false);
	if (evloop_timer_start(lp->ev, &lp->resume_timer, LISTENER_EMFILE_BACKOFF_MS) < 0)
		lp->listening = false;
	if (log_gate_pass(&l->fd_log, LISTENER_LIMIT_LOG_INTERVAL_MS, &others))
		log_warn("accept_paused", "reason=\"out of file descriptors: raise LimitNOFILE or "
		         "lower max-connections\" pause_ms=%d also_paused_since_last_line=%llu",
		         LISTENER_EMFILE_BACKOFF_MS, others);
}

/* The pause is over: listening again, unless quiesced meanwhile. */
static void resume_accepting(struct evloop *ev, struct ev_timer *t)
{
	struct lloop *lp = (struct lloop *)((char *)t - offsetof(struct lloop, resume_timer));

	(void)ev;
	if (lp->listening && !atomic_load(&lp->lsn->quiescing))
		watch_accept(lp, true);
}

/* Sets up a newly accepted socket: TLS session, socketpair, libmicrohttpd.
 * Returns -1 when the process ran out of descriptors on the way (the
 * socket is closed): the caller pauses as if accept() itself had failed,
 * rather than accept and drop the whole backlog one connection at a time. */
static int conn_open(struct lloop *lp, int fd, const struct sockaddr_storage *ss,
                     socklen_t sslen)
{
	struct listener *l = lp->lsn;
	struct lconn *c = calloc(1, sizeof *c);
	int sp[2] = { -1, -1 }, one = 1;
	const char *why = "out of memory";
	bool out_of_fds;

	if (!c)
		goto fail;
	c->loop = lp;
	c->fd = fd;
	c->mfd = c->mhd_fd = -1;
	ev_io_init(&c->tls_io, fd, conn_tls_io);
	ev_io_init(&c->mhd_io, -1, conn_mhd_io);
	c->opened_ms = (long long)mono_ms();
	memcpy(&c->client, ss, sslen);
	c->client_len = sslen;
	clientip_from_sockaddr((const struct sockaddr *)ss, c->peer, sizeof c->peer);
	c->c2m.data = malloc(LISTENER_BUF_BYTES);
	c->m2c.data = malloc(LISTENER_BUF_BYTES);
	if (!c->c2m.data || !c->m2c.data)
		goto fail;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	why = "TLS session";
	if (gnutls_init(&c->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL) < 0) {
		c->tls = NULL;
		goto fail;
	}
	if (gnutls_priority_set(c->tls, l->prio) < 0 ||
	    gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, l->cred) < 0)
		goto fail;
	gnutls_certificate_server_set_request(c->tls, GNUTLS_CERT_IGNORE);
	gnutls_handshake_set_timeout(c->tls, 0);   /* the request deadline covers it */
	gnutls_transport_set_int(c->tls, fd);
	why = "socketpair";
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
		goto fail;
	c->mfd = sp[0];
	c->mhd_fd = sp[1];
	ev_io_init(&c->mhd_io, c->mfd, conn_mhd_io);
	if (table_put(l, c->mhd_fd, c) < 0)
		goto fail;

	atomic_fetch_add(&l->open, 1);
	c->next = lp->conns;
	if (lp->conns)
		lp->conns->prev = c;
	lp->conns = c;
	if (l->proxy_protocol) {
		c->awaiting_proxy = true;
		lp->awaiting_proxy++;
		if (arm_sweep(lp) < 0) {
			conn_close(c, "PROXY header sweep: out of memory");
			return 0;
		}
		conn_pump(c);
		return 0;
	}
	conn_attach_http(c);
	return 0;
fail:
	out_of_fds = errno == EMFILE || errno == ENFILE;
	if (!out_of_fds)
		log_warn("connection_refused", "peer=%s reason=\"%s: %s\"", c ? c->peer : "-",
		         why, strerror(errno));
	if (c) {
		if (c->mhd_fd >= 0)
			table_drop(l, c->mhd_fd, c);
		if (sp[0] >= 0)
			close(sp[0]);
		if (sp[1] >= 0)
			close(sp[1]);
		if (c->tls)
			gnutls_deinit(c->tls);
		conn_free(c);
	}
	close(fd);
	return out_of_fds ? -1 : 0;
}

static void loop_accept(struct evloop *ev, struct ev_io *w, uint32_t events)
{
	struct lloop *lp = (struct lloop *)((char *)w - offsetof(struct lloop, accept_io));
	struct listener *l = lp->lsn;

	(void)ev;
	(void)events;

	for (int i = 0; i < LISTENER_ACCEPT_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof ss;
		unsigned unupgraded;
		int fd = accept4(l->lfd, (struct sockaddr *)&ss, &sslen,
		                 SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EMFILE || errno == ENFILE) {
				pause_accepting(lp);
				return;
			}
			/* Quiesced (shut down) or broken: stop listening here. */
			watch_accept(lp, false);
			lp->listening = false;
			return;
		}
		if (atomic_load(&l->quiescing)) {
			close(fd);
			continue;
		}
		unupgraded = atomic_load(&l->open);
		if (unupgraded + ws_server_open(l->ws) >= l->max_connections) {
			close(fd);
			note_refusal(l, false);
			continue;
		}
		/* Each costs 3 descriptors until its upgrade (main.c's fit). */
		if (unupgraded >= l->max_http_connections) {
			close(fd);
			note_refusal(l, true);
			continue;
		}
		if (conn_open(lp, fd, &ss, sslen) < 0) {
			pause_accepting(lp);
			return;
		}
	}
}

/* An upgrade handed over by listener_upgraded, on the connection's loop
 * (or on the thread that destroys the loop, after the listener halted). */
static void loop_take_upgrade(struct evloop *ev, void *arg)
{
	struct upgrade *u = arg;
	struct listener *l = u->lsn;
	struct lconn *c;

	pthread_mutex_lock(&l->table_lock);
	c = table_get(l, u->mhd_fd);
	pthread_mutex_unlock(&l->table_lock);
	/* Only this loop drops its connections from the table, so c
	 * cannot go away between the lookup and here. */
	if (!c || c->loop->ev != ev || c->dead || c->up || atomic_load(&l->exiting)) {
		upgrade_free(u);   /* the client left meanwhile, or the relay is stopping */
		return;
	}
	conn_begin_upgrade(c, u);
	conn_pump(c);
}

/* listener_quiesce: this loop stops accepting. */
static void loop_quiesce(struct evloop *ev, void *arg)
{
	struct lloop *lp = arg;

	(void)ev;
	if (lp->listening) {
		watch_accept(lp, false);
		lp->listening = false;
	}
}

static void *loop_main(void *arg)
{
	struct lloop *lp = arg;

	evloop_run(lp->ev);
	/* Upgrades still on their way were refused (listener_halt set exiting
	 * first); the connections left close now and are freed with the loop. */
	while (lp->conns)
		conn_close(lp->conns, "server exiting");
	return NULL;
}

void listener_upgraded(struct listener *l, int mhd_fd, struct MHD_UpgradeResponseHandle *urh,
                       const char *extra, size_t extra_len, struct ws_conn_meta *meta)
{
	struct upgrade *u = calloc(1, sizeof *u);
	struct lconn *c;

	if (!u) {
		MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
		ws_conn_meta_free(meta);
		return;
	}
	u->lsn = l;
	u->mhd_fd = mhd_fd;
	u->urh = urh;
	u->meta = meta;
	if (extra_len) {
		u->early = malloc(extra_len);
		if (!u->early) {
			upgrade_free(u);
			return;
		}
		memcpy(u->early, extra, extra_len);
		u->early_len = extra_len;
	}
	pthread_mutex_lock(&l->table_lock);
	c = atomic_load(&l->exiting) ? NULL : table_get(l, mhd_fd);
	if (c && evloop_post(c->loop->ev, loop_take_upgrade, u) < 0)
		c = NULL;
	pthread_mutex_unlock(&l->table_lock);
	if (!c)
		upgrade_free(u);
}

/* --- start and stop --------------------------------------------------------------- */

static int open_socket(struct listener *l, const struct listener_options *o, char **cause)
{
	struct sockaddr_storage ss;
	unsigned len;
	char what[96];
	int one = 1;

	snprintf(what, sizeof what, "cannot listen on %s port %u", o->address, o->port);
	if (clientip_sockaddr(o->address, o->port, &ss, &len) < 0)
		return cause_set(cause, -1, "%s: not an IPv4 or IPv6 address", what);
	l->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->lfd < 0)
		return cause_set(cause, -1, "%s: %s", what, strerror(errno));
	setsockopt(l->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(l->lfd, (struct sockaddr *)&ss, len) < 0 || listen(l->lfd, LISTENER_BACKLOG) < 0)
		return cause_set(cause, -1, "%s: %s", what, strerror(errno));
	return 0;
}

static int loop_init(struct lloop *lp, struct listener *l, char **cause)
{
	lp->lsn = l;
	if (evloop_create(&lp->ev, cause) < 0)
		return -1;
	ev_io_init(&lp->accept_io, l->lfd, loop_accept);
	ev_timer_init(&lp->resume_timer, resume_accepting);
	ev_timer_init(&lp->sweep_timer, loop_sweep);
	if (evloop_io_set(lp->ev, &lp->accept_io, EPOLLIN | EPOLLEXCLUSIVE) < 0)
		return cause_set(cause, -1, "TLS listener loop: %s", strerror(errno));
	lp->listening = true;
	if (pthread_create(&lp->thread, NULL, loop_main, lp) != 0)
		return cause_set(cause, -1, "TLS listener loop: cannot start a thread");
	lp->started = true;
	return 0;
}

int listener_start(struct listener **out, const struct listener_options *o,
                   struct MHD_Daemon *mhd, struct ws_server *ws, char **cause)
{
	struct listener *l = calloc(1, sizeof *l);
	const char *err_pos = NULL;
	int rc;

	*out = NULL;
	*cause = NULL;
	if (!l) {
		*cause = strdup("out of memory");
		return -1;
	}
	l->mhd = mhd;
	l->ws = ws;
	l->lfd = -1;
	l->max_connections = o->max_connections;
	l->max_http_connections = o->max_http_connections < o->max_connections
	                                  ? o->max_http_connections
	                                  : o->max_connections;
	l->proxy_protocol = o->proxy_protocol;
	l->proxies = o->proxies;
	l->header_timeout_ms = o->header_timeout_ms;
	l->nloops = o->threads ? o->threads : 1;
	pthread_mutex_init(&l->table_lock, NULL);
	if ((rc = gnutls_certificate_allocate_credentials(&l->cred)) < 0) {
		l->cred = NULL;
		cause_set(cause, -1, "TLS credentials: %s", gnutls_strerror(rc));
		goto fail;
	}
	/* The certificate is asked for at each handshake: SIGHUP swaps it. */
	gnutls_certificate_set_retrieve_function2(l->cred, tls_creds_retrieve);
	if ((rc = gnutls_priority_init(&l->prio, o->priorities, &err_pos)) < 0) {
		l->prio = NULL;
		cause_set(cause, -1, "tls-priorities: %s", err_pos ? err_pos : gnutls_strerror(rc));
		goto fail;
	}
	if (open_socket(l, o, cause) < 0)
		goto fail;
	l->loops = calloc(l->nloops, sizeof *l->loops);
	if (!l->loops) {
		*cause = strdup("out of memory");
		goto fail;
	}
	for (unsigned i = 0; i < l->nloops; i++)
		if (loop_init(&l->loops[i], l, cause) < 0)
			goto fail;
	*out = l;
	return 0;
fail:
	listener_stop(l);
	return -1;
}

void listener_quiesce(struct listener *l)
{
	if (!l)
		return;
	atomic_store(&l->quiescing, true);
	/* Linux: the port stops taking connections at once (they get a reset). */
	if (l->lfd >= 0)
		shutdown(l->lfd, SHUT_RD);
	for (unsigned i = 0; l->loops && i < l->nloops; i++) {
		struct lloop *lp = &l->loops[i];

		if (lp->started && evloop_post(lp->ev, loop_quiesce, lp) < 0)
			log_warn("tls_error", "reason=\"quiesce: out of memory\"");
	}
}

void listener_halt(struct listener *l)
{
	if (!l || atomic_load(&l->exiting))
		return;
	pthread_mutex_lock(&l->table_lock);
	atomic_store(&l->exiting, true);   /* from here on listener_upgraded refuses */
	pthread_mutex_unlock(&l->table_lock);
	for (unsigned i = 0; l->loops && i < l->nloops; i++) {
		struct lloop *lp = &l->loops[i];

		if (lp->started) {
			evloop_stop(lp->ev);
			pthread_join(lp->thread, NULL);
			lp->started = false;
		}
	}
	if (l->lfd >= 0)
		close(l->lfd);
	l->lfd = -1;
}

void listener_stop(struct listener *l)
{
	if (!l)
		return;
	listener_halt(l);
	for (unsigned i = 0; l->loops && i < l->nloops; i++) {
		struct lloop *lp = &l->loops[i];

		evloop_destroy(lp->ev);
	}
	free(l->loops);
	if (l->prio)
		gnutls_priority_deinit(l->prio);
	if (l->cred)
		gnutls_certificate_free_credentials(l->cred);
	free(l->by_mhd_fd);
	pthread_mutex_destroy(&l->table_lock);
	free(l);
}
