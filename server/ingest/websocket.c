/*
 * websocket.c - the SDK's websocket sessions after the HTTP upgrade.
 *
 * The TLS listener (listener.c) hands each upgraded connection, its socket
 * and its GnuTLS session, to ws_server_adopt; the connection is posted
 * (evloop_post) to one of a few threads, each running one evloop
 * (server/evloop.h), round robin, and lives there until it closes.  A loop
 * owns its connections outright: nothing else touches them, so the
 * per-connection state needs no locks.  Backend text and shutdown reach a
 * loop as posts too; a timer scans for idle connections (pings) and, while
 * any is closing, another for close and linger deadlines; a finished
 * connection is freed after the batch of events that may still name it
 * (evloop_defer).
 *
 * Framing is wslay's event API over the non-blocking socket.  wslay
 * reassembles fragments, refuses unmasked client frames (1002) and
 * messages over max_message_bytes (1009).  It would also check text for
 * UTF-8 a byte at a time as it arrives, which was over a third of this
 * thread's time: ws_textmark.c shows it each text frame as binary instead,
 * and the relay checks the text messages whole (utf8.c, eight ASCII bytes
 * at a time) and closes with 1007 itself.  tests/fuzz/fuzz-ws-frames.c
 * checks that the relay takes exactly the messages plain wslay would.
 * Pings reach wslay as pongs too (ws_textmark.c), and the relay answers the
 * newest ping of each turn itself: wslay would queue a pong for every one.
 *
 * The relay only ever sends one hello text frame, pongs, pings and a close,
 * all small; a peer that stops reading cannot make it buffer more than
 * WS_MAX_OUT_BYTES of payload nor more than max_queued_frames frames (an
 * empty pong is 0 bytes of payload but an allocation all the same), and a
 * close handshake that does not finish within WS_CLOSE_TIMEOUT_MS drops the
 * connection.
 */
#include "websocket.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <jansson.h>
#include <wslay/wslay.h>

#include "access.h"
#include "cause.h"
#include "clock.h"
#include "evloop.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "utf8.h"
#include "ws_textmark.h"

#define WS_TICK_MS 1000                 /* liveness scan period */
#define WS_DEADLINE_TICK_MS 100         /* deadline scan period while anything is closing */
#define WS_CLOSE_TIMEOUT_MS 3000        /* a close handshake must finish within this */
#define WS_LINGER_MS 2000               /* reading what a failed peer still sends... */
#define WS_LINGER_QUIET_MS 250          /* ...until it has been quiet this long */
#define WS_MAX_OUT_BYTES (64 * 1024)    /* queued outgoing payload per connection */
#define WS_CONN_ID_BYTES 8              /* connectionId: 16 hex characters */
#define WS_SHUTDOWN_DROP_WAIT_MS 5000   /* loops drop everything well within this */
#define WS_RX_BUDGET (256 * 1024)        /* bytes read from one connection per turn */
#define WS_CLOSE_PAYLOAD_MAX 125          /* a control frame's payload */

struct ws_loop;
struct ws_conn;

/* Backend text for the live connection of a session (ws_server_send_text). */
struct ws_mail {
	struct ws_loop *loop;
	struct ws_conn *conn;             /* checked against the registry before use */
	char *session;
	size_t len;
	char text[];
};

/* The registry: each session's latest connection, so that backend text
 * reaches it from the forwarder's threads. */
struct ws_reg {
	struct ws_reg *next;
	uint64_t hash;
	struct ws_conn *conn;
	char session[];
};

struct ws_conn {
	struct ws_loop *loop;
	struct ws_conn *prev, *next;      /* the loop's list, once started */
	struct ev_io io;                  /* fd */
	struct ev_deferred dead_link;     /* freed after the batch that finished it */
	wslay_event_context_ptr ctx;      /* NULL while at rest (conn_ctx) */
	struct ws_conn_meta *meta;
	gnutls_session_t tls;             /* the connection's TLS session: ours */
	int fd;                           /* its socket: ours */
	char id[2 * WS_CONN_ID_BYTES + 1];
	char *target;                     /* "/?" + the query: the upstream target */
	char *extra;                      /* bytes MHD read past the request head */
	size_t extra_len, extra_off;
	int64_t seq;                      /* messages taken so far */
	int64_t opened_ms, last_rx_ms;    /* monotonic */
	int64_t ping_sent_ms;             /* 0: no ping outstanding */
	int64_t deadline_ms;              /* 0: none; else drop at this time */
	uint16_t close_code;              /* first close sent or received, for the log */
	/* The client's own close frame's payload (code and reason) when it
	 * closed first: stored as the connection's end (upstream_ws). */
	uint8_t close_payload[WS_CLOSE_PAYLOAD_MAX];
	size_t close_len;
	bool client_closed;
	bool close_noted, close_by_relay;
	bool refuse_data;                 /* closing for an error: store nothing more */
	bool close_after_hello;           /* key rejected: close 1008 once the hello is out */
	bool io_failed;                   /* the last recv/send hit EOF or an error */
	bool send_blocked;                /* a frame may be partly written */
	bool lingering;                   /* wslay is done; draining until EOF */
	struct ws_textmark mark;          /* which messages wslay delivers as binary were text */
	bool pong_owed;                   /* a ping came: answer the newest, once */
	uint8_t pong_len;
	uint8_t pong_payload[125];        /* a control frame's payload is at most 125 bytes */
	size_t rx_budget;                 /* bytes it may still read this turn */
	bool rx_more;                     /* the budget ran out with bytes left */
	bool registered;                  /* in the server's registry */
};

struct ws_loop {
	struct ws_server *srv;
	struct evloop *ev;
	pthread_t thread;
	bool started;
	struct ws_conn *conns;            /* started connections: loop thread only */
	size_t closing;                   /* conns with a deadline: loop thread only */
	bool closing_all;                 /* 1001 queued everywhere: loop thread only */
	struct ev_timer tick_timer;       /* liveness scan, every WS_TICK_MS */
	struct ev_timer deadline_timer;   /* deadline scan, armed while anything is closing */
};

struct ws_server {
	struct ws_options o;              /* strings owned */
	struct queue *q;
	struct ws_loop *loops;
	unsigned nloops;
	atomic_uint next_loop;
	atomic_bool refusing;             /* shutdown began: close everything with 1001 */
	atomic_bool dropping;             /* shutdown deadline passed: drop the rest */
	pthread_mutex_t open_lock;
	pthread_cond_t open_cond;         /* signalled when open drops */
	size_t open;                      /* adopted and not yet finished */
	pthread_mutex_t reg_lock;         /* guards reg */
	struct ws_reg **reg;
	size_t reg_mask, reg_count;
};

void ws_conn_meta_free(struct ws_conn_meta *meta)
{
	if (!meta)
		return;
	if (meta->access)
		access_conn_release(meta->access, meta->client_ip);
	free(meta->client_ip);
	free(meta->query);
	free(meta->session);
	free(meta->api_key);
	free(meta->peer_ip);
	free(meta->xff);
	free(meta->user_agent);
	free(meta->origin);
	free(meta);
}

/* --- connection bookkeeping ----------------------------------------------- */

static void open_count_add(struct ws_server *s, int delta)
{
	pthread_mutex_lock(&s->open_lock);
	s->open = (size_t)((ptrdiff_t)s->open + delta);
	if (delta < 0)
		pthread_cond_broadcast(&s->open_cond);
	pthread_mutex_unlock(&s->open_lock);
}

/* --- the session registry ------------------------------------------------- */

static uint64_t reg_hash(const char *s)
{
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */

	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	return h;
}

/* The entry of session; reg_lock held. */
static struct ws_reg **reg_find(struct ws_server *s, const char *session, uint64_t h)
{
	struct ws_reg **pp;

	for (pp = &s->reg[h & s->reg_mask]; *pp; pp = &(*pp)->next)
		if ((*pp)->hash == h && !strcmp((*pp)->session, session))
			return pp;
	return pp;
}

static void reg_grow(struct ws_server *s)
{
	size_t n = (s->reg_mask + 1) * 2;
	struct ws_reg **slot = calloc(n, sizeof *slot), *e, *next;

	if (!slot)
		return;
	for (size_t i = 0; i <= s->reg_mask; i++)
		for (e = s->reg[i]; e; e = next) {
			next = e->next;
			e->next = slot[e->hash & (n - 1)];
			slot[e->hash & (n - 1)] = e;
		}
	free(s->reg);
	s->reg = slot;
	s->reg_mask = n - 1;
}

/* c becomes its session's live connection (loop thread). */
static void reg_add(struct ws_server *s, struct ws_conn *c)
{
	const char *session = c->meta->session;
	uint64_t h;
	struct ws_reg **pp, *e;
	size_t len;

	if (!s->reg || !session || !*session)
		return;
	h = reg_hash(session);
	len = strlen(session) + 1;
	pthread_mutex_lock(&s->reg_lock);
	pp = reg_find(s, session, h);
	if (*pp) {
		(*pp)->conn->registered = false;
		(*pp)->conn = c;
		c->registered = true;
	} else if ((e = malloc(sizeof *e + len))) {
		memcpy(e->session, session, len);
		e->hash = h;
		e->conn = c;
		e->next = NULL;
		*pp = e;
		c->registered = true;
		if (++s->reg_count > 2 * (s->reg_mask + 1))
			reg_grow(s);
	}
	pthread_mutex_unlock(&s->reg_lock);
}

static void reg_del(struct ws_server *s, struct ws_conn *c)
{
	struct ws_reg **pp, *e;

	if (!c->registered)
		return;
	pthread_mutex_lock(&s->reg_lock);
	pp = reg_find(s, c->meta->session, reg_hash(c->meta->session));
	if ((e = *pp) && e->conn == c) {
		*pp = e->next;
		free(e);
		s->reg_count--;
	}
	c->registered = false;
	pthread_mutex_unlock(&s->reg_lock);
}

static void conn_free(struct ws_conn *c)
{
	if (!c)
		return;
	if (c->ctx)
		wslay_event_context_free(c->ctx);
	ws_conn_meta_free(c->meta);
	free(c->target);
	free(c->extra);
	free(c);
}

static void conn_free_deferred(struct ev_deferred *d)
{
	conn_free((struct ws_conn *)((char *)d - offsetof(struct ws_conn, dead_link)));
}

/* Drops c at `at` (monotonic ms) unless it is gone by then. */
static void conn_set_deadline(struct ws_conn *c, int64_t at)
{
	struct ws_loop *l = c->loop;

	if (!c->deadline_ms)
		l->closing++;
	c->deadline_ms = at;
	if (!ev_timer_armed(&l->deadline_timer) &&
	    evloop_timer_start(l->ev, &l->deadline_timer, WS_DEADLINE_TICK_MS) < 0)
		log_warn("ws_error", "conn=%s reason=\"deadline timer: out of memory\"", c->id);
}

/*
 * Stores the end of c after its last message, for its upstream websocket:
 * the client's close frame as it sent it, or 1001 ("going away") when it
 * sent none first (a TCP drop, a timeout, a close by the relay).  A
 * connection that stored no message has no upstream websocket to end.
 */
static void conn_store_end(struct ws_conn *c)
{
	static const uint8_t going_away[2] = { 1001 >> 8, 1001 & 0xff };
	const struct ws_conn_meta *m = c->meta;
	struct queue_msg qm;
	int rc;

	if (!c->loop->srv->o.upstream_ws || c->seq == 0)
		return;
	qm = (struct queue_msg){
		.received_ms = wall_ms(),
		.session = m->session ? m->session : "",
		.target = c->target,
		.content_type = QUEUE_CT_WS_CLOSE,
		.xff = m->xff,
		.peer_ip = m->peer_ip,
		.user_agent = m->user_agent,
		.origin = m->origin,
		.api_key = m->api_key,
		.conn_id = c->id,
		.seq = c->seq + 1,
		.body = c->client_closed ? c->close_payload : going_away,
		.body_len = c->client_closed ? c->close_len : sizeof going_away,
	};
	rc = queue_put(c->loop->srv->q, &qm, false, NULL);
	if (rc != QUEUE_OK)
		log_warn("ws_end_not_stored", "conn=%s error=\"%s\" detail=\"the next start ends "
		         "it upstream with 1001\"", c->id, queue_strerror(rc));
}

/*
 * Ends c: closes the TLS connection, logs the close and frees c.  why says
 * what ended it when no close code tells.
 */
static void conn_finish(struct ws_conn *c, const char *why)
{
	struct ws_loop *l = c->loop;
	char key[32], sess[96], reason[64];
	uint16_t code = c->close_noted ? c->close_code : 1006;

	evloop_io_stop(l->ev, &c->io);   /* also off the fed list */
	if (c->deadline_ms)
		l->closing--;
	if (c->prev)
		c->prev->next = c->next;
	else if (l->conns == c)
		l->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;

	conn_store_end(c);
	reg_del(l->srv, c);
	log_info("ws_close", "conn=%s peer=%s key=%s session=%s code=%u by=%s messages=%" PRId64
	         " duration_ms=%" PRId64 " reason=%s",
	         c->id, c->meta->peer_ip ? c->meta->peer_ip : "-",
	         log_key(c->meta->api_key, key, sizeof key),
	         log_quote(c->meta->session ? c->meta->session : "", sess, sizeof sess), code,
	         !c->close_noted ? "none" : c->close_by_relay ? "relay" : "client", c->seq,
	         mono_ms() - c->opened_ms, log_quote(why, reason, sizeof reason));

	/* Best effort, never waiting: the close frame said goodbye already. */
	if (!c->io_failed)
		gnutls_bye(c->tls, GNUTLS_SHUT_WR);
	gnutls_deinit(c->tls);
	close(c->fd);
	metrics_gauge_add(G_WS_OPEN, -1);
	open_count_add(l->srv, -1);
	/* Events of this batch may still name c. */
	evloop_defer(l->ev, &c->dead_link, conn_free_deferred);
}

/* Remembers the first close of the connection, for the log and metrics. */
static void conn_note_close(struct ws_conn *c, uint16_t code, bool by_relay)
{
	if (c->close_noted)
		return;
	c->close_noted = true;
	c->close_code = code;
	c->close_by_relay = by_relay;
	if (by_relay && (code == WSLAY_CODE_PROTOCOL_ERROR ||
	                 code == WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA ||
	                 code == WSLAY_CODE_MESSAGE_TOO_BIG))
		metrics_add(M_WS_CLOSED_ERROR, 1);
}

/*
 * Queues a close frame with code and reason; the connection is dropped if
 * the peer has not completed the handshake within WS_CLOSE_TIMEOUT_MS.
 * Harmless if a close is already queued.
 */
static int conn_ctx(struct ws_conn *c);

static void conn_close(struct ws_conn *c, uint16_t code, const char *reason)
{
	int rc = conn_ctx(c) < 0 ? -1 : wslay_event_queue_close(c->ctx, code,
	                                                        (const uint8_t *)reason,
	                                                        strlen(reason));

	if (rc == 0)
		conn_note_close(c, code, true);
	if (!c->deadline_ms)
		conn_set_deadline(c, mono_ms() + WS_CLOSE_TIMEOUT_MS);
}

/* --- wslay callbacks ------------------------------------------------------ */

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
	struct ws_conn *c = user;
	ssize_t n;

	/* One busy connection must not keep the loop from the others, and
	 * one whose pongs pile up must not be read until they are sent: each
	 * ping read queues one. */
	if (c->rx_budget == 0 ||
	    wslay_event_get_queued_msg_count(ctx) >= c->loop->srv->o.max_queued_frames) {
		c->rx_more = true;
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	if (len > c->rx_budget)
		len = c->rx_budget;
	if (c->extra_off < c->extra_len) {
		n = (ssize_t)(c->extra_len - c->extra_off < len ? c->extra_len - c->extra_off
		                                                : len);
		memcpy(buf, c->extra + c->extra_off, (size_t)n);
		c->extra_off += (size_t)n;
	} else {
		do
			n = gnutls_record_recv(c->tls, buf, len);
		while (n == GNUTLS_E_INTERRUPTED);
	}
	if (n > 0) {
		c->rx_budget -= (size_t)n;
		c->last_rx_ms = mono_ms();
		c->ping_sent_ms = 0;
		if (ws_textmark_feed(&c->mark, buf, (size_t)n))
			return n;
		log_info("ws_protocol_error", "conn=%s reason=\"over %d messages pending\"", c->id,
		         WS_TEXTMARK_MAX);
		c->io_failed = true;
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
		return -1;
	}
	if (n == GNUTLS_E_AGAIN) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
	} else {
		/* EOF, a socket error, or TLS refusing (a renegotiation too). */
		c->io_failed = true;
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
	}
	return -1;
}

static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                       int flags, void *user)
{
	struct ws_conn *c = user;
	ssize_t n;

	/* After AGAIN wslay offers the same bytes again, as GnuTLS requires. */
	do
		n = gnutls_record_send(c->tls, data, len);
	while (n == GNUTLS_E_INTERRUPTED);
	if (n >= 0)
		return n;
	if (n == GNUTLS_E_AGAIN) {
		c->send_blocked = true;
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
	} else {
		c->io_failed = true;
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
	}
	return -1;
}

/* One complete text or binary message: becomes one queue row. */
static void conn_take_message(struct ws_conn *c, const struct wslay_event_on_msg_recv_arg *arg)
{
	struct ws_server *s = c->loop->srv;
	const struct ws_conn_meta *m = c->meta;
	/* Every binary message wslay delivers takes its mark, refused or not. */
	bool text = arg->opcode == WSLAY_TEXT_FRAME ||
	            (arg->opcode == WSLAY_BINARY_FRAME && ws_textmark_pop(&c->mark));
	struct queue_msg qm;
	int rc;

	if (c->refuse_data)
		return;
	if (text && !utf8_valid(arg->msg, arg->msg_length)) {
		log_info("ws_protocol_error",
		         "conn=%s code=%u reason=\"invalid UTF-8 in a text message\"", c->id,
		         WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA);
		c->refuse_data = true;
		conn_close(c, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8");
		wslay_event_shutdown_read(c->ctx);
		return;
	}
	if (!access_message(m->access, m->client_ip)) {
		log_info("ws_message_refused", "conn=%s client=%s reason=\"rate limit: over "
		         "max-messages-per-ip-per-s\"", c->id, m->client_ip ? m->client_ip : "-");
		c->refuse_data = true;
		conn_close(c, WSLAY_CODE_POLICY_VIOLATION, "rate limit");
		wslay_event_shutdown_read(c->ctx);
		return;
	}
	qm = (struct queue_msg){
		.received_ms = wall_ms(),
		.session = m->session ? m->session : "",
		.target = c->target,
		.content_type = text ? "text/plain; charset=utf-8" : "application/octet-stream",
		.xff = m->xff,
		.peer_ip = m->peer_ip,
		.user_agent = m->user_agent,
		.origin = m->origin,
		.api_key = m->api_key,
		.conn_id = c->id,
		.seq = c->seq + 1,
		.body = arg->msg_length ? arg->msg : (const void *)"",
		.body_len = arg->msg_length,
	};
	rc = queue_put(s->q, &qm, false, NULL);
	if (rc == QUEUE_OK) {
		c->seq++;
		metrics_add(M_RECEIVED_WS, 1);
		metrics_add(M_RECEIVED_BYTES, arg->msg_length);
		return;
	}
	/* Not stored: tell the SDK to come back later rather than lose data silently. */
	log_warn("ws_message_refused", "conn=%s seq=%" PRId64 " bytes=%zu error=\"%s\"", c->id,
	         qm.seq, arg->msg_length, queue_strerror(rc));
	c->refuse_data = true;
	if (rc == QUEUE_ECLOSED)
		conn_close(c, WSLAY_CODE_GOING_AWAY, "server shutting down");
	else if (rc == QUEUE_EFULL || rc == QUEUE_EIO)
		conn_close(c, 1013, "try again later");
	else
		conn_close(c, WSLAY_CODE_INTERNAL_SERVER_ERROR, "internal error");
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user)
{
	struct ws_conn *c = user;

	switch (arg->opcode) {
	case WSLAY_TEXT_FRAME:
	case WSLAY_BINARY_FRAME:
		conn_take_message(c, arg);
		break;
	case WSLAY_CONNECTION_CLOSE:
		if (!c->close_noted && arg->msg_length <= sizeof c->close_payload) {
			c->client_closed = true;
			c->close_len = arg->msg_length;
			memcpy(c->close_payload, arg->msg, arg->msg_length);
		}
		/* wslay has queued the echo of this close already. */
		conn_note_close(c, arg->status_code ? arg->status_code : WSLAY_CODE_NO_STATUS_RCVD,
		                false);
		break;
	case WSLAY_PONG:
		/* A ping, shown to wslay as a pong (ws_textmark): remember only
		 * the newest; conn_service answers it. */
		if (ws_textmark_pop_ping(&c->mark)) {
			c->pong_owed = true;
			c->pong_len = (uint8_t)(arg->msg_length <= sizeof c->pong_payload ?
			                        arg->msg_length : sizeof c->pong_payload);
			if (c->pong_len)   /* an empty ping's msg may be NULL */
				memcpy(c->pong_payload, arg->msg, c->pong_len);
		}
		break;
	default:
		break;  /* any bytes count as liveness */
	}
}

static const struct wslay_event_callbacks ws_callbacks = {
	.recv_callback = on_recv,
	.send_callback = on_send,
	.on_msg_recv_callback = on_msg,
};

/* The connection's wslay context, made anew if it was let go at rest. */
static int conn_ctx(struct ws_conn *c)
{
	if (c->ctx)
		return 0;
	if (wslay_event_context_server_init(&c->ctx, &ws_callbacks, c) != 0) {
		c->ctx = NULL;
		return -1;
	}
	wslay_event_config_set_max_recv_msg_length(c->ctx, c->loop->srv->o.max_message_bytes);
	return 0;
}

/*
 * An SDK connection is idle nearly all the time (a message every few
 * seconds), and its wslay context is 8.6 KB of buffers, a third of what
 * the connection costs (BENCHMARKS.md).  At rest -- wslay has parsed and
 * delivered every byte it was given, the mark is between frames outside a
 * fragmented message, nothing is queued or half sent, no close begun -- a
 * fresh context carries on exactly where this one would
 * (tests/fuzz/fuzz-ws-frames.c), so it is let go until there is work.
 */
static void conn_ctx_rest(struct ws_conn *c)
{
	wslay_event_context_ptr ctx = c->ctx;

	if (!ctx || c->deadline_ms || c->lingering || c->refuse_data || c->close_after_hello ||
	    c->pong_owed || c->rx_more || c->send_blocked || c->extra_off < c->extra_len ||
	    !ws_textmark_at_rest(&c->mark) || !wslay_event_want_read(ctx) ||
	    wslay_event_want_write(ctx) || wslay_event_get_close_sent(ctx) ||
	    wslay_event_get_close_received(ctx) || gnutls_record_check_pending(c->tls) > 0)
		return;
	wslay_event_context_free(ctx);
	c->ctx = NULL;
}


/* --- the event loop ------------------------------------------------------- */

/* -1 with errno when epoll refuses; the interest stays as it was. */
static int conn_set_interest(struct ws_conn *c, uint32_t events)
{
	return evloop_io_set(c->loop->ev, &c->io, events);
}

/*
 * After wslay is done with a connection the peer did not close properly,
 * reads and discards what it still sends until it closes too (or the
 * linger deadline), so that closing our end does not reset the connection
 * before the peer has read our close frame.
 */
static void conn_drain(struct ws_conn *c)
{
	char buf[16384];
	ssize_t n;

	for (int i = 0; i < 64; i++) {
		n = gnutls_record_recv(c->tls, buf, sizeof buf);
		if (n > 0) {
			c->last_rx_ms = mono_ms();
			continue;
		}
		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == GNUTLS_E_AGAIN)
			return;
		c->io_failed = true;
		conn_finish(c, "closed");
		return;
	}
}

static void conn_start_linger(struct ws_conn *c)
{
	c->lingering = true;
	c->last_rx_ms = mono_ms();   /* from now on: when the peer last sent anything */
	conn_set_deadline(c, c->last_rx_ms + WS_LINGER_MS);
	if (conn_set_interest(c, EPOLLIN) < 0)
		log_debug("ws_error", "conn=%s reason=\"epoll_ctl: %s\"", c->id, strerror(errno));
	conn_drain(c);
}

/*
 * A frame-level protocol error (bad length encoding, fragmented control
 * frame): wslay queued an empty close and may not be used any more.  Write
 * a 1002 close ourselves unless a frame is half sent, then linger.
 */
static void conn_protocol_error(struct ws_conn *c)
{
	static const uint8_t close_1002[] = { 0x88, 0x10, 0x03, 0xea, 'p', 'r', 'o', 't', 'o',
	                                      'c', 'o', 'l', ' ', 'e', 'r', 'r', 'o', 'r' };

	log_info("ws_protocol_error", "conn=%s reason=\"malformed frame\"", c->id);
	if (!c->send_blocked && !wslay_event_get_close_sent(c->ctx)) {
		ssize_t n = gnutls_record_send(c->tls, close_1002, sizeof close_1002);
		(void)n;   /* best effort: the connection is going away either way */
		conn_note_close(c, WSLAY_CODE_PROTOCOL_ERROR, true);
	}
	conn_start_linger(c);
}

/*
 * Runs wslay on c after epoll reported events (or when there may be work
 * without an event: adopted bytes, a newly queued frame).  May free c.
 */
static void conn_service(struct ws_conn *c, uint32_t events)
{
	wslay_event_context_ptr ctx;
	uint32_t want;

	if (c->lingering) {
		conn_drain(c);
		return;
	}
	if (conn_ctx(c) < 0) {
		conn_finish(c, "out of memory");
		return;
	}
	ctx = c->ctx;
	if (wslay_event_want_read(ctx) &&
	    ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->extra_off < c->extra_len)) {
		c->io_failed = false;
		c->rx_budget = WS_RX_BUDGET;
		c->rx_more = false;
		if (wslay_event_recv(ctx) != 0) {
			if (c->io_failed)
				conn_finish(c, "connection lost");
			else
				conn_protocol_error(c);
			return;
		}
	}
	if (c->pong_owed) {
		struct wslay_event_msg pong = { WSLAY_PONG, c->pong_payload, c->pong_len };

		c->pong_owed = false;
		(void)wslay_event_queue_msg(ctx, &pong);   /* refused only once closing */
	}
	if (wslay_event_get_queued_msg_length(ctx) > WS_MAX_OUT_BYTES) {
		conn_finish(c, "peer not reading");
		return;
	}
	/* Past its frame header, a frame over max-message-bytes is refused
	 * now: wslay would wait for payload that may never come. */
	if (!c->refuse_data && ws_textmark_longest(&c->mark) > c->loop->srv->o.max_message_bytes) {
		log_info("ws_protocol_error", "conn=%s code=%u reason=\"frame header over "
		         "max-message-bytes\"", c->id, WSLAY_CODE_MESSAGE_TOO_BIG);
		c->refuse_data = true;
		conn_close(c, WSLAY_CODE_MESSAGE_TOO_BIG, "message too big");
		wslay_event_shutdown_read(ctx);
	}
	if (wslay_event_want_write(ctx)) {
		c->send_blocked = false;
		if (wslay_event_send(ctx) != 0) {
			conn_finish(c, "connection lost");
			return;
		}
	}
	/* Frames still queued after a send are frames the peer does not read
	 * (on_recv stops reading at this count, so a reading peer never gets
	 * here). */
	if (wslay_event_get_queued_msg_count(ctx) >= c->loop->srv->o.max_queued_frames) {
		conn_finish(c, "peer not reading");
		return;
	}
	/* wslay sends control frames ahead of data: queue this close only
	 * once the {error} hello has left, or the SDK would never see it. */
	if (c->close_after_hello && !wslay_event_want_write(ctx)) {
		c->close_after_hello = false;
		conn_close(c, WSLAY_CODE_POLICY_VIOLATION, "api key rejected");
		if (wslay_event_send(ctx) != 0) {
			conn_finish(c, "connection lost");
			return;
		}
	}
	/* Closes that wslay started itself (1002, 1009, and 1007 for a close
	 * frame's reason: text frames reach it as binary) show up here; every
	 * other close was noted when it was queued or received. */
	if (wslay_event_get_close_sent(ctx) && !c->close_noted) {
		uint16_t code = wslay_event_get_status_code_sent(ctx);

		log_info("ws_protocol_error", "conn=%s code=%u reason=\"%s\"", c->id, code,
		         code == WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA
		                 ? "invalid UTF-8 in a close reason"
		         : code == WSLAY_CODE_MESSAGE_TOO_BIG ? "message over max-message-bytes"
		                                              : "protocol error");
		conn_note_close(c, code, true);
	}

	if (!wslay_event_want_read(ctx) && !wslay_event_want_write(ctx)) {
		if (wslay_event_get_close_received(ctx))
			conn_finish(c, "closed");
		else
			conn_start_linger(c);
		return;
	}
	if (!c->deadline_ms && (!wslay_event_want_read(ctx) || wslay_event_get_close_sent(ctx)))
		conn_set_deadline(c, mono_ms() + WS_CLOSE_TIMEOUT_MS);
	want = (wslay_event_want_read(ctx) ? EPOLLIN : 0) |
	       (wslay_event_want_write(ctx) ? EPOLLOUT : 0);
	if (conn_set_interest(c, want) < 0)
		log_debug("ws_error", "conn=%s reason=\"epoll_ctl: %s\"", c->id, strerror(errno));
	/* The budget ran out with bytes left (GnuTLS may hold them already,
	 * where epoll cannot see them): served again after the others. */
	if (c->rx_more && wslay_event_want_read(ctx))
		evloop_io_feed(c->loop->ev, &c->io, EPOLLIN);
	conn_ctx_rest(c);
}

static void conn_io(struct evloop *ev, struct ev_io *w, uint32_t events)
{
	(void)ev;
	conn_service((struct ws_conn *)((char *)w - offsetof(struct ws_conn, io)), events);
}

/* The fields learned from the upstream's hello for c's key (those about
 * one connection were left out when it was stored), or NULL. */
static json_t *hello_learned(const struct ws_server *s, const struct ws_conn *c)
{
	char *text;
	json_t *obj;

	if (!s->o.upstream_ws || !c->meta->api_key)
		return NULL;
	text = queue_hello_get(s->q, c->meta->api_key);
	if (!text)
		return NULL;
	obj = json_loads(text, 0, NULL);
	free(text);
	if (obj && !json_is_object(obj)) {
		json_decref(obj);
		obj = NULL;
	}
	return obj;
}

/* The hello-* settings, then what the upstream's hello for this key said
 * over them, then this connection's own connectionId. */
static char *hello_text(const struct ws_server *s, const struct ws_conn *c)
{
	const struct ws_options *o = &s->o;
	json_t *obj, *learned = NULL;
	char *text = NULL;

	if (c->meta->key_rejected)
		obj = json_pack("{s:s}", "error",
		                c->meta->key_reason ? c->meta->key_reason
		                                    : "api key rejected by upstream");
	else
		obj = json_pack("{s:s, s:I, s:I, s:b, s:s}", "connectionId", c->id,
		                "interval", (json_int_t)o->interval_ms,
		                "sendInterval", (json_int_t)o->send_interval,
		                "collectConsoleLogEnabled", (int)o->collect_console_log,
		                "collectConsoleLogLevel",
		                o->console_log_level ? o->console_log_level : "error");
	if (!obj)
		return NULL;
	if (!c->meta->key_rejected && o->project_id && *o->project_id &&
	    json_object_set_new(obj, "projectId", json_string(o->project_id)) != 0)
		goto out;
	if (!c->meta->key_rejected && ((learned = hello_learned(s, c))) &&
	    (json_object_update(obj, learned) != 0 ||
	     json_object_set_new(obj, "connectionId", json_string(c->id)) != 0))
		goto out;
	text = json_dumps(obj, JSON_COMPACT);
out:
	json_decref(learned);
	json_decref(obj);
	return text;
}

/* Registers an adopted connection with the loop and greets it. */
static void conn_start(struct ws_loop *l, struct ws_conn *c)
{
	struct ws_server *s = l->srv;
	char key[32], sess[96], ua[160];
	char *hello;

	c->prev = NULL;
	c->next = l->conns;
	if (l->conns)
		l->conns->prev = c;
	l->conns = c;
	c->opened_ms = c->last_rx_ms = mono_ms();
	if (conn_set_interest(c, EPOLLIN) < 0) {
		log_error("ws_error", "conn=%s reason=\"epoll_ctl: %s\"", c->id, strerror(errno));
		conn_finish(c, "cannot poll");
		return;
	}
	log_info("ws_open", "conn=%s peer=%s client=%s key=%s session=%s ua=%s", c->id,
	         c->meta->peer_ip ? c->meta->peer_ip : "-",
	         c->meta->client_ip ? c->meta->client_ip : "-",
	         log_key(c->meta->api_key, key, sizeof key),
	         log_quote(c->meta->session ? c->meta->session : "", sess, sizeof sess),
	         log_quote(c->meta->user_agent ? c->meta->user_agent : "", ua, sizeof ua));

	if (atomic_load(&s->dropping)) {
		conn_finish(c, "shutdown deadline");
		return;
	}
	if (atomic_load(&s->refusing)) {
		c->refuse_data = true;
		conn_close(c, WSLAY_CODE_GOING_AWAY, "server shutting down");
	} else if (!(hello = hello_text(s, c))) {
		conn_close(c, WSLAY_CODE_INTERNAL_SERVER_ERROR, "internal error");
	} else {
		struct wslay_event_msg msg = {WSLAY_TEXT_FRAME, (const uint8_t *)hello,
		                              strlen(hello)};

		if (conn_ctx(c) == 0)
			wslay_event_queue_msg(c->ctx, &msg);
		free(hello);
		if (c->meta->key_rejected) {
			/* The SDK stops retrying after an {error} hello. */
			c->refuse_data = true;
			c->close_after_hello = true;
		} else if (s->o.upstream_ws) {
			reg_add(s, c);
		}
	}
	conn_service(c, EPOLLIN | EPOLLOUT);
}

/* Delivers backend text to the connection it was meant for, if it is
 * still its session's live connection (loop thread). */
static void loop_deliver_mail(struct evloop *ev, void *arg)
{
	struct ws_mail *m = arg;
	struct ws_loop *l = m->loop;
	struct ws_server *s = l->srv;
	struct ws_reg **pp;
	char sess[96];
	bool live;

	(void)ev;
	pthread_mutex_lock(&s->reg_lock);
	pp = reg_find(s, m->session, reg_hash(m->session));
	/* Only this thread frees its connections, and it takes them out
	 * of the registry first: a registered pointer is alive. */
	live = *pp && (*pp)->conn == m->conn && m->conn->loop == l;
	pthread_mutex_unlock(&s->reg_lock);
	if (live && !m->conn->deadline_ms) {
		struct wslay_event_msg msg = {WSLAY_TEXT_FRAME, (const uint8_t *)m->text, m->len};

		if (conn_ctx(m->conn) == 0 && wslay_event_queue_msg(m->conn->ctx, &msg) == 0) {
			log_debug("ws_backend_text", "conn=%s bytes=%zu", m->conn->id, m->len);
			conn_service(m->conn, EPOLLOUT);
		}
	} else {
		log_debug("backend_text_dropped", "session=%s bytes=%zu reason=\"no live "
		          "connection\"", log_quote(m->session, sess, sizeof sess), m->len);
	}
	free(m->session);
	free(m);
}

int ws_server_send_text(struct ws_server *s, const char *session, const char *text, size_t len)
{
	struct ws_reg **pp;
	struct ws_mail *m;
	struct ws_loop *l;
	char sess[96];

	if (!s || !session)
		return -1;
	m = malloc(sizeof *m + len + 1);
	if (!m || !(m->session = strdup(session))) {
		free(m);
		return -1;
	}
	memcpy(m->text, text, len);
	m->text[len] = '\0';
	m->len = len;
	pthread_mutex_lock(&s->reg_lock);
	pp = s->reg ? reg_find(s, session, reg_hash(session)) : NULL;
	if (!pp || !*pp) {
		pthread_mutex_unlock(&s->reg_lock);
		log_debug("backend_text_dropped",
		          "session=%s bytes=%zu reason=\"no live connection\"",
		          log_quote(session, sess, sizeof sess), len);
		free(m->session);
		free(m);
		return -1;
	}
	m->conn = (*pp)->conn;
	l = m->loop = m->conn->loop;
	if (evloop_post(l->ev, loop_deliver_mail, m) < 0) {
		pthread_mutex_unlock(&s->reg_lock);
		free(m->session);
		free(m);
		return -1;
	}
	pthread_mutex_unlock(&s->reg_lock);
	return 0;
}

/* An adopted connection reaches its loop. */
static void loop_take_conn(struct evloop *ev, void *arg)
{
	struct ws_conn *c = arg;

	(void)ev;
	conn_start(c->loop, c);
}

/* ws_server_shutdown: close everything with 1001, or, once its deadline
 * passed, drop the rest. */
static void loop_shutdown(struct evloop *ev, void *arg)
{
	struct ws_loop *l = arg;
	struct ws_server *s = l->srv;
	struct ws_conn *c, *next;

	(void)ev;
	if (atomic_load(&s->dropping)) {
		while (l->conns)
			conn_finish(l->conns, "shutdown deadline");
		return;
	}
	if (atomic_load(&s->refusing) && !l->closing_all) {
		l->closing_all = true;
		for (c = l->conns; c; c = next) {
			next = c->next;
			conn_close(c, WSLAY_CODE_GOING_AWAY, "server shutting down");
			conn_service(c, EPOLLOUT);
		}
	}
}

/* Drops the connections whose close handshake or linger has run out. */
static void loop_check_deadlines(struct evloop *ev, struct ev_timer *t)
{
	struct ws_loop *l =
		(struct ws_loop *)((char *)t - offsetof(struct ws_loop, deadline_timer));
	int64_t now = mono_ms();
	struct ws_conn *c, *next;

	for (c = l->conns; c && l->closing; c = next) {
		next = c->next;
		if (!c->deadline_ms)
			continue;
		if (now >= c->deadline_ms)
			conn_finish(c, c->lingering ? "linger timeout" : "close timeout");
		else if (c->lingering && now - c->last_rx_ms >= WS_LINGER_QUIET_MS)
			conn_finish(c, "closed");
	}
	if (l->closing && evloop_timer_start(ev, t, WS_DEADLINE_TICK_MS) < 0)
		log_warn("ws_error", "reason=\"deadline timer: out of memory\"");
}

/*
 * Pings a connection idle for ping_interval_s and drops one that has not
 * answered within another interval: a peer that vanished without a FIN
 * would otherwise stay forever.  The drop counts from the ping, not from
 * the last byte, so a late tick never drops a connection it did not ping.
 */
static void loop_check_liveness(struct evloop *ev, struct ev_timer *t)
{
	struct ws_loop *l = (struct ws_loop *)((char *)t - offsetof(struct ws_loop, tick_timer));
	int64_t ping_ms = (int64_t)l->srv->o.ping_interval_s * 1000;
	int64_t now = mono_ms();
	struct ws_conn *c, *next;

	if (evloop_timer_start(ev, t, WS_TICK_MS) < 0)
		log_warn("ws_error", "reason=\"liveness timer: out of memory\"");
	for (c = l->conns; c; c = next) {
		int64_t idle = now - c->last_rx_ms;

		next = c->next;
		if (c->deadline_ms)
			continue;   /* closing already */
		if (c->ping_sent_ms && now - c->ping_sent_ms >= ping_ms) {
			/* Try to say why, but do not wait for an answer. */
			conn_close(c, WSLAY_CODE_GOING_AWAY, "ping timeout");
			c->send_blocked = false;
			if (c->ctx)
				wslay_event_send(c->ctx);
			conn_finish(c, "ping timeout");
		} else if (idle >= ping_ms && !c->ping_sent_ms) {
			struct wslay_event_msg ping = { WSLAY_PING, (const uint8_t *)"", 0 };

			c->ping_sent_ms = now;
			if (conn_ctx(c) == 0)
				wslay_event_queue_msg(c->ctx, &ping);
			conn_service(c, EPOLLOUT);
		}
	}
}

static void *loop_main(void *arg)
{
	struct ws_loop *l = arg;

	evloop_run(l->ev);
	/* Whatever is left (late adoptions included) is dropped. */
	while (l->conns)
		conn_finish(l->conns, "server exiting");
	return NULL;
}

/* --- the server ----------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int loop_init(struct ws_loop *l, struct ws_server *s, char **cause)
{
	l->srv = s;
	if (evloop_create(&l->ev, cause) < 0)
		return -1;
	ev_timer_init(&l->tick_timer, loop_check_liveness);
	ev_timer_init(&l->deadline_timer, loop_check_deadlines);
	if (s->o.ping_interval_s && evloop_timer_start(l->ev, &l->tick_timer, WS_TICK_MS) < 0) {
		cause_set(cause, -1, "websocket loop: out of memory");
		return -1;
	}
	if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
		cause_set(cause, -1, "websocket loop: cannot start a thread");
		return -1;
	}
	l->started = true;
	return 0;
}

int ws_server_start(struct ws_server **out, const struct ws_options *o, struct queue *q,
                    char **cause)
{
	struct ws_server *s = calloc(1, sizeof *s);
	pthread_condattr_t ca;

	*out = NULL;
	if (cause)
		*cause = NULL;
	if (!s)
		goto nomem;
	s->o = *o;
	s->o.console_log_level = dup_or_null(o->console_log_level);
	s->o.project_id = dup_or_null(o->project_id);
	s->q = q;
	s->nloops = o->threads ? o->threads : 1;
	pthread_mutex_init(&s->open_lock, NULL);
	pthread_mutex_init(&s->reg_lock, NULL);
	s->reg = calloc(256, sizeof *s->reg);
	s->reg_mask = 255;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->open_cond, &ca);
	pthread_condattr_destroy(&ca);
	s->loops = calloc(s->nloops, sizeof *s->loops);
	if (!s->loops || (o->console_log_level && !s->o.console_log_level) ||
	    (o->project_id && !s->o.project_id))
		goto nomem;
	for (unsigned i = 0; i < s->nloops; i++) {
		if (loop_init(&s->loops[i], s, cause) < 0) {
			ws_server_stop(s);
			return -1;
		}
	}
	*out = s;
	return 0;
nomem:
	if (cause)
		*cause = strdup("out of memory");
	ws_server_stop(s);
	return -1;
}

size_t ws_server_open(struct ws_server *s)
{
	size_t n;

	if (!s)
		return 0;
	pthread_mutex_lock(&s->open_lock);
	n = s->open;
	pthread_mutex_unlock(&s->open_lock);
	return n;
}

void ws_server_adopt(struct ws_server *s, struct ws_conn_meta *meta, int fd,
                     gnutls_session_t tls, const char *extra, size_t extra_len)
{
	struct ws_conn *c = calloc(1, sizeof *c);
	uint8_t rnd[WS_CONN_ID_BYTES];
	struct ws_loop *l;
	int flags;

	if (!c)
		goto fail;
	ws_textmark_init(&c->mark);
	c->meta = meta;
	c->tls = tls;
	c->fd = fd;
	if (asprintf(&c->target, "/?%s", meta->query ? meta->query : "") < 0) {
		c->target = NULL;
		goto fail;
	}
	if (extra_len) {
		c->extra = malloc(extra_len);
		if (!c->extra)
			goto fail;
		memcpy(c->extra, extra, extra_len);
		c->extra_len = extra_len;
	}
	if (gnutls_rnd(GNUTLS_RND_NONCE, rnd, sizeof rnd) < 0)
		goto fail;
	for (size_t i = 0; i < sizeof rnd; i++)
		snprintf(c->id + 2 * i, 3, "%02x", rnd[i]);
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		goto fail;

	metrics_add(M_WS_CONNECTIONS, 1);
	metrics_gauge_add(G_WS_OPEN, 1);
	open_count_add(s, 1);
	log_debug("ws_adopt", "conn=%s fd=%d early_bytes=%zu", c->id, fd, extra_len);
	l = &s->loops[atomic_fetch_add(&s->next_loop, 1) % s->nloops];
	c->loop = l;
	ev_io_init(&c->io, fd, conn_io);
	if (evloop_post(l->ev, loop_take_conn, c) < 0) {
		/* Out of memory, or the server is stopping. */
		metrics_gauge_add(G_WS_OPEN, -1);
		open_count_add(s, -1);
		goto fail;
	}
	return;
fail:
	log_error("ws_error", "peer=%s reason=\"cannot adopt the connection: out of resources\"",
	          meta && meta->peer_ip ? meta->peer_ip : "-");
	gnutls_deinit(tls);
	close(fd);
	if (c)
		conn_free(c);   /* frees meta too */
	else
		ws_conn_meta_free(meta);
}

/* Waits until no connection is open or until deadline (monotonic ms). */
static size_t wait_open(struct ws_server *s, int64_t deadline)
{
	size_t left;

	pthread_mutex_lock(&s->open_lock);
	while (s->open > 0) {
		int64_t now = mono_ms();
		struct timespec ts;

		if (now >= deadline)
			break;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += (deadline - now) / 1000;
		ts.tv_nsec += ((deadline - now) % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&s->open_cond, &s->open_lock, &ts);
	}
	left = s->open;
	pthread_mutex_unlock(&s->open_lock);
	return left;
}

static void loop_post_shutdown(struct ws_loop *l)
{
	if (l->started && evloop_post(l->ev, loop_shutdown, l) < 0)
		log_warn("ws_error", "reason=\"shutdown: out of memory\"");
}

void ws_server_shutdown(struct ws_server *s, unsigned deadline_ms)
{
	size_t open_before, left;

	if (!s)
		return;
	pthread_mutex_lock(&s->open_lock);
	open_before = s->open;
	pthread_mutex_unlock(&s->open_lock);
	atomic_store(&s->refusing, true);
	for (unsigned i = 0; i < s->nloops; i++)
		loop_post_shutdown(&s->loops[i]);
	left = wait_open(s, mono_ms() + deadline_ms);
	if (left > 0) {
		atomic_store(&s->dropping, true);
		for (unsigned i = 0; i < s->nloops; i++)
			loop_post_shutdown(&s->loops[i]);
		wait_open(s, mono_ms() + WS_SHUTDOWN_DROP_WAIT_MS);
	}
	log_info("ws_shutdown", "connections=%zu closed=%zu dropped=%zu", open_before,
	         open_before > left ? open_before - left : 0, left);
}

void ws_server_stop(struct ws_server *s)
{
	if (!s)
		return;
	for (unsigned i = 0; s->loops && i < s->nloops; i++) {
		struct ws_loop *l = &s->loops[i];

		if (l->started) {
			evloop_stop(l->ev);
			pthread_join(l->thread, NULL);
		}
		/* Mail still posted is dropped, connections finished since are freed. */
		evloop_destroy(l->ev);
	}
	free(s->loops);
	for (size_t i = 0; s->reg && i <= s->reg_mask; i++)
		for (struct ws_reg *e = s->reg[i], *next; e; e = next) {
			next = e->next;
			free(e);
		}
	free(s->reg);
	pthread_mutex_destroy(&s->reg_lock);
	pthread_cond_destroy(&s->open_cond);
	pthread_mutex_destroy(&s->open_lock);
	free((char *)s->o.console_log_level);
	free((char *)s->o.project_id);
	free(s);
}
