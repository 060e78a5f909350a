/*
 * upstream_ws.c - websockets to the backend (see upstream_ws.h).
 *
 * A websocket goes through these states on its evloop:
 *   CONNECT  libcurl (CONNECT_ONLY on http://host:port) resolves, connects
 *            and opens the proxy's CONNECT tunnel; one curl multi per evloop
 *            is driven by the loop's watchers and a timer, so nothing blocks.
 *            When it is done the socket is dup()ed (a CONNECT_ONLY handle
 *            closes its connection when it leaves the multi) and the easy
 *            handle freed.
 *   TLS      a non-blocking GnuTLS handshake with the client's one set of
 *            credentials: the CA bundle is parsed once per process, not
 *            once per connection as libcurl's own TLS would (BENCHMARKS.md).
 *   UPGRADE  our request out, the 101 in (upstream_handshake.c).
 *   HELLO    wslay's client context runs; the first JSON text message is
 *            the backend's hello (other text before it is skipped, as the
 *            SDK skips it).
 *   OPEN, CLOSING, ENDED.
 *
 * wslay sends control frames (ping, close) ahead of data frames still in
 * its queue.  A fence is a ping that must follow the frames queued before
 * it, so control frames wait in our own FIFO (with the data queued after
 * them) until wslay's queue holds no data message; a data message being
 * written is finished first, wslay never interleaves frames.
 */
#include "upstream_ws.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <jansson.h>
#include <wslay/wslay.h>

#include "cause.h"
#include "egress.h"
#include "evloop.h"
#include "upstream_handshake.h"

#define UPWS_RX_BUDGET (256 * 1024)     /* bytes read from one websocket per turn */
#define UPWS_BATCH_BYTES 16384          /* one TLS record's worth of frames */
#define UPWS_FENCE_BYTES 8              /* a fence's ping payload: its id, big-endian */

/* The object that embeds member ptr. */
#define OWNER(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* --- the client and its per-loop connectors ------------------------------------ */

/* One curl multi per evloop: the connects of that loop's websockets. */
struct connector {
	struct connector *next;
	struct evloop *loop;
	CURLM *multi;
	struct ev_timer timer;
	bool dying;              /* upstream_client_destroy: touch no loop any more */
	/* What wslay hands one websocket in one turn, gathered into TLS records
	 * of up to UPWS_BATCH_BYTES (ws_batch_flush): empty between turns. */
	uint8_t batch[UPWS_BATCH_BYTES];
	size_t batch_len;
};

/* A socket libcurl asked the loop to watch. */
struct csock {
	struct ev_io io;
	struct connector *cn;
	struct ev_deferred dead;
};

struct upstream_client {
	struct upstream_client_options o;   /* strings not kept: see below */
	char *host;              /* for SNI and the certificate check: no brackets */
	char *host_header;       /* as the URL wrote it: host[:port] */
	char *connect_url;       /* http://host:port/ for libcurl */
	char *path;
	char *proxy;             /* "" = none */
	char *noproxy;           /* NULL = none */
	bool sni;                /* host is a name, not an address */
	gnutls_certificate_credentials_t cred;
	gnutls_priority_t prio;
	pthread_mutex_t lock;
	struct connector *connectors;
	gnutls_datum_t ticket;   /* the newest session to resume (lock) */
};

/* --- one websocket --------------------------------------------------------------- */

enum state { S_CONNECT, S_TLS, S_UPGRADE, S_HELLO, S_OPEN, S_CLOSING, S_ENDED };

/* Something for wslay that must not overtake what was queued before it. */
struct pending {
	struct pending *next;
	uint8_t opcode;
	uint16_t close_code;
	size_t len;
	uint8_t data[];
};

struct upstream_ws {
	struct upstream_client *client;
	struct evloop *loop;
	struct connector *cn;
	struct upstream_ws_callbacks cb;
	void *arg;
	enum state state;
	CURL *easy;
	char errbuf[CURL_ERROR_SIZE];
	int socket_errno;             /* why libcurl's last socket() failed; 0 = it did not */
	int fd;
	struct ev_io io;
	struct ev_timer timer;
	struct ev_deferred dead;
	gnutls_session_t tls;
	wslay_event_context_ptr ctx;
	char *req;                    /* the upgrade request; NULL once sent */
	size_t req_len, req_off;
	char accept[29];
	char *rx;                     /* the answer head, then what followed it */
	size_t rx_len, rx_off;
	int64_t deadline_ms;          /* connect/handshake/close; 0 = none */
	int64_t last_tx_ms;
	int64_t keepalive_ms;         /* a keepalive ping is out since; 0 = none */
	/* fences: ids [fence_acked + 1, fence_next) are out; their times in a ring */
	uint64_t fence_next, fence_acked;
	int64_t *fence_at;
	size_t fence_cap;
	struct pending *held, **held_tail;
	size_t held_bytes;
	size_t rx_budget;
	/* Taken from wslay, not yet taken by GnuTLS: the socket was full.  Only
	 * then is there a buffer of the websocket's own (ws_unsent_flush). */
	uint8_t *unsent;
	size_t unsent_len, unsent_off;
	bool tls_resume;              /* GnuTLS holds a record half written */
	bool rx_more, io_failed, ended, freed;
	bool hello_error;             /* close 1000 queued after an {error} hello */
	char *hello_reason;
	uint16_t close_code_rx;
	char close_reason_rx[124];
};

const char *upws_class_name(enum upws_class cls)
{
	static const char *const names[] = {
		[UPWS_CLOSED] = "closed", [UPWS_REFUSED] = "refused",
		[UPWS_HELLO_ERROR] = "hello_error", [UPWS_NETWORK] = "network",
		[UPWS_PROTOCOL] = "protocol", [UPWS_TIMEOUT] = "timeout",
		[UPWS_BACKEND_CLOSED] = "backend_closed", [UPWS_DROPPED] = "dropped",
		[UPWS_ABORTED] = "aborted", [UPWS_NO_FDS] = "no_fds",
	};

	return (unsigned)cls < sizeof names / sizeof names[0] ? names[cls] : "unknown";
}

static void ws_service(struct upstream_ws *ws, uint32_t events);
static void ws_arm(struct upstream_ws *ws);

/*
 * Ends ws: no more I/O, the socket closed, on_end called.  The memory stays
 * until upstream_ws_destroy's deferred free, so callers up the stack (wslay,
 * curl's message loop) may still look at ws->ended.
 */
static void ws_end(struct upstream_ws *ws, enum upws_class cls, int status, int retry_after,
                   const char *reason, bool notify)
{
	struct upws_result r = {
		.cls = cls, .opened = ws->state >= S_OPEN, .http_status = status,
		.retry_after_s = retry_after, .close_code = ws->close_code_rx,
		.reason = reason ? reason : "",
	};

	if (ws->ended)
		return;
	ws->ended = true;
	if (ws->easy) {
		curl_multi_remove_handle(ws->cn->multi, ws->easy);
		curl_easy_cleanup(ws->easy);
		ws->easy = NULL;
	}
	evloop_timer_stop(ws->loop, &ws->timer);
	evloop_io_stop(ws->loop, &ws->io);   /* also off the fed list */
	if (ws->fd >= 0) {
		close(ws->fd);
		ws->fd = -1;
	}
	ws->state = S_ENDED;
	if (notify)
		ws->cb.on_end(ws, &r, ws->arg);
}

static void ws_fail(struct upstream_ws *ws, enum upws_class cls, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void ws_fail(struct upstream_ws *ws, enum upws_class cls, const char *fmt, ...)
{
	char reason[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	ws_end(ws, cls, 0, -1, reason, true);
}

/* The answer head's buffer is not needed once wslay has its leftovers:
 * thousands of open websockets should not keep 8 KB each for it. */
static void ws_drop_rx(struct upstream_ws *ws)
{
	free(ws->rx);
	ws->rx = NULL;
	ws->rx_len = ws->rx_off = 0;
}

/*
 * Keeps only what followed the answer head (frames read with it), in a
 * buffer of its own size, and frees the 8 KB head buffer before wslay's
 * context is made, so that the context can take its place.
 */
static int ws_keep_leftover(struct upstream_ws *ws, size_t head_len)
{
	size_t n = ws->rx_len - head_len;
	char *rest = NULL;

	if (n && !(rest = malloc(n)))
		return -1;
	if (n)
		memcpy(rest, ws->rx + head_len, n);
	ws_drop_rx(ws);
	ws->rx = rest;
	ws->rx_len = n;
	return 0;
}

/* A connection that failed: before on_open it never carried anything. */
static enum upws_class lost_class(const struct upstream_ws *ws)
{
	return ws->state >= S_OPEN ? UPWS_DROPPED : UPWS_NETWORK;
}

/* --- connecting with libcurl ------------------------------------------------------- */

static void connector_action(struct connector *cn, curl_socket_t s, int what);
static void ws_io_cb(struct evloop *l, struct ev_io *w, uint32_t events);
static int ws_tls_init(struct upstream_ws *ws);

static void csock_free(struct ev_deferred *d)
{
	free(OWNER(d, struct csock, dead));
}

static void csock_cb(struct evloop *l, struct ev_io *w, uint32_t events)
{
	struct csock *cs = (struct csock *)w;
	int what = 0;

	(void)l;
	if (events & (EPOLLIN | EPOLLHUP))
		what |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		what |= CURL_CSELECT_OUT;
	if (events & EPOLLERR)
		what |= CURL_CSELECT_ERR;
	connector_action(cs->cn, w->fd, what);
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct connector *cn = userp;
	struct csock *cs = socketp;
	uint32_t ev = 0;

	(void)easy;
	if (what == CURL_POLL_REMOVE) {
		if (!cs)
			return 0;
		curl_multi_assign(cn->multi, s, NULL);
		if (cn->dying) {
			free(cs);
		} else {
			evloop_io_stop(cn->loop, &cs->io);
			evloop_defer(cn->loop, &cs->dead, csock_free);
		}
		return 0;
	}
	if (cn->dying)
		return 0;
	if (!cs) {
		cs = calloc(1, sizeof *cs);
		if (!cs)
			return -1;
		ev_io_init(&cs->io, s, csock_cb);
		cs->cn = cn;
		curl_multi_assign(cn->multi, s, cs);
	}
	if (what & CURL_POLL_IN)
		ev |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev |= EPOLLOUT;
	return evloop_io_set(cn->loop, &cs->io, ev) < 0 ? -1 : 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct connector *cn = userp;

	(void)multi;
	if (cn->dying)
		return 0;
	if (timeout_ms < 0) {
		evloop_timer_stop(cn->loop, &cn->timer);
		return 0;
	}
	return evloop_timer_start(cn->loop, &cn->timer, timeout_ms) < 0 ? -1 : 0;
}

static void connector_timer_cb(struct evloop *l, struct ev_timer *t)
{
	(void)l;
	connector_action(OWNER(t, struct connector, timer), CURL_SOCKET_TIMEOUT, 0);
}

static bool is_out_of_fds(int err)
{
	return err == EMFILE || err == ENFILE;
}

/*
 * Out of descriptors, libcurl only says it could not connect ("Couldn't
 * connect to server") or resolve (its resolver's socketpair, getaddrinfo's
 * own files): the socket() it makes here records why, and a resolve that
 * failed looks whether a descriptor can be had right now.
 */
static curl_socket_t on_curl_opensocket(void *arg, curlsocktype purpose,
                                        struct curl_sockaddr *a)
{
	struct upstream_ws *ws = arg;
	int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);

	(void)purpose;
	ws->socket_errno = fd < 0 ? errno : 0;
	return fd < 0 ? CURL_SOCKET_BAD : fd;
}

static bool connect_out_of_fds(const struct upstream_ws *ws, CURLcode rc)
{
	int probe;

	if (ws->socket_errno)
		return is_out_of_fds(ws->socket_errno);
	if (rc != CURLE_COULDNT_RESOLVE_HOST && rc != CURLE_COULDNT_RESOLVE_PROXY)
		return false;
	probe = eventfd(0, EFD_CLOEXEC);
	if (probe >= 0) {
		close(probe);
		return false;
	}
	return is_out_of_fds(errno);
}

/* libcurl connected ws (or gave up): take the socket and start TLS. */
static void ws_connected(struct upstream_ws *ws, CURLcode rc)
{
	curl_socket_t s = CURL_SOCKET_BAD;

	if (rc == CURLE_OK && (curl_easy_getinfo(ws->easy, CURLINFO_ACTIVESOCKET, &s) != CURLE_OK ||
	                       s == CURL_SOCKET_BAD))
		rc = CURLE_COULDNT_CONNECT;
	if (rc == CURLE_OK) {
		/* Ours from now on: the easy handle closes its copy when it goes. */
		ws->fd = fcntl(s, F_DUPFD_CLOEXEC, 0);
		if (ws->fd < 0) {
			ws_fail(ws, is_out_of_fds(errno) ? UPWS_NO_FDS : UPWS_NETWORK, "dup: %s",
			        strerror(errno));
			return;
		}
	}
	curl_multi_remove_handle(ws->cn->multi, ws->easy);
	curl_easy_cleanup(ws->easy);
	ws->easy = NULL;
	if (rc != CURLE_OK && rc != CURLE_OPERATION_TIMEDOUT && connect_out_of_fds(ws, rc)) {
		ws_fail(ws, UPWS_NO_FDS, "connect: out of file descriptors (%s)",
		        ws->errbuf[0] ? ws->errbuf : curl_easy_strerror(rc));
		return;
	}
	if (rc != CURLE_OK) {
		ws_fail(ws, rc == CURLE_OPERATION_TIMEDOUT ? UPWS_TIMEOUT : UPWS_NETWORK,
		        "connect: %s", ws->errbuf[0] ? ws->errbuf : curl_easy_strerror(rc));
		return;
	}
	/* The TLS session is made only now, in the memory the easy handle just
	 * gave back: made before the connect, thousands of long-lived sessions
	 * would sit between the holes of freed easy handles (BENCHMARKS.md). */
	if (ws_tls_init(ws) < 0) {
		ws_fail(ws, UPWS_NETWORK, "out of memory for a TLS session");
		return;
	}
	ev_io_init(&ws->io, ws->fd, ws_io_cb);
	ws->state = S_TLS;
	ws->deadline_ms = evloop_now(ws->loop) + ws->client->o.handshake_timeout_ms;
	ws_service(ws, EPOLLOUT);
}

static void connector_action(struct connector *cn, curl_socket_t s, int what)
{
	CURLMsg *m;
	int running, left;

	curl_multi_socket_action(cn->multi, s, what, &running);
	while ((m = curl_multi_info_read(cn->multi, &left))) {
		struct upstream_ws *ws;
		char *priv = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
		ws = (struct upstream_ws *)priv;
		if (ws && ws->easy == m->easy_handle)
			ws_connected(ws, m->data.result);
	}
}

/* The connector of loop, made on first use (loop thread). */
static struct connector *connector_get(struct upstream_client *c, struct evloop *loop)
{
	struct connector *cn;

	pthread_mutex_lock(&c->lock);
	for (cn = c->connectors; cn && cn->loop != loop; cn = cn->next)
		;
	if (!cn && (cn = calloc(1, sizeof *cn))) {
		cn->loop = loop;
		ev_timer_init(&cn->timer, connector_timer_cb);
		cn->multi = curl_multi_init();
		if (!cn->multi ||
		    curl_multi_setopt(cn->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) ||
		    curl_multi_setopt(cn->multi, CURLMOPT_SOCKETDATA, cn) ||
		    curl_multi_setopt(cn->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) ||
		    curl_multi_setopt(cn->multi, CURLMOPT_TIMERDATA, cn)) {
			if (cn->multi)
				curl_multi_cleanup(cn->multi);
			free(cn);
			cn = NULL;
		} else {
			cn->next = c->connectors;
			c->connectors = cn;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return cn;
}

static int ws_start_connect(struct upstream_ws *ws)
{
	const struct upstream_client *c = ws->client;
	CURL *e = curl_easy_init();

	if (!e)
		return -1;
	ws->easy = e;
	/* No CURLOPT_FORBID_REUSE: with it a CONNECT_ONLY handle closes the
	 * connection as soon as it is done (BENCHMARKS.md). */
	if (curl_easy_setopt(e, CURLOPT_URL, c->connect_url) ||
	    curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L) ||
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) ||
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->o.connect_timeout_ms) ||
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->o.connect_timeout_ms) ||
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, ws->errbuf) ||
	    curl_easy_setopt(e, CURLOPT_PRIVATE, ws) ||
	    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_curl_opensocket) ||
	    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, ws) ||
	    curl_easy_setopt(e, CURLOPT_PROXY, c->proxy) ||
	    curl_easy_setopt(e, CURLOPT_HTTPPROXYTUNNEL, 1L) ||
	    curl_easy_setopt(e, CURLOPT_PROXYAUTH, (long)CURLAUTH_ANY) ||
	    (c->noproxy && curl_easy_setopt(e, CURLOPT_NOPROXY, c->noproxy)) ||
	    curl_multi_add_handle(ws->cn->multi, e))
		return -1;
	return 0;
}

/* --- TLS and the upgrade ---------------------------------------------------------- */

static void ws_set_interest(struct upstream_ws *ws, uint32_t events)
{
	if (evloop_io_set(ws->loop, &ws->io, events) < 0)
		ws_fail(ws, UPWS_NETWORK, "epoll: %s", strerror(errno));
}

/* The interest a TLS call that returned GNUTLS_E_AGAIN waits for. */
static void ws_wait_tls(struct upstream_ws *ws)
{
	ws_set_interest(ws, gnutls_record_get_direction(ws->tls) ? EPOLLOUT : EPOLLIN);
}

static void ws_tls_failed(struct upstream_ws *ws, int rc)
{
	gnutls_datum_t out = { NULL, 0 };
	unsigned status = gnutls_session_get_verify_cert_status(ws->tls);

	if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR && status &&
	    gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0) {
		ws_fail(ws, UPWS_NETWORK, "TLS: %s", (const char *)out.data);
		gnutls_free(out.data);
		return;
	}
	ws_fail(ws, UPWS_NETWORK, "TLS: %s", gnutls_strerror(rc));
}

/*
 * Session resumption.  A drain or the reconnect after an outage opens a
 * websocket per session to one backend, thousands at once: a full
 * handshake checks the certificate chain and the server's signature, a
 * resumed one only does the key exchange (BENCHMARKS.md).  Each websocket
 * offers the newest ticket any websocket of this client was given, and
 * keeps the one it is given; a server that refuses it gets a full
 * handshake.  One ticket for many connections is what TLS 1.3 advises
 * against for privacy (the server could link them), and they are all the
 * relay's, to one backend, in the open anyway.
 */
static void ws_tls_resume(struct upstream_ws *ws)
{
	struct upstream_client *c = ws->client;

	pthread_mutex_lock(&c->lock);
	if (c->ticket.size)
		(void)gnutls_session_set_data(ws->tls, c->ticket.data, c->ticket.size);
	pthread_mutex_unlock(&c->lock);
}

/* Once open: the server sends its tickets right after the handshake, so
 * by the hello they have been read. */
static void ws_tls_keep_ticket(struct upstream_ws *ws)
{
	struct upstream_client *c = ws->client;
	gnutls_datum_t d = { NULL, 0 };

	if (!(gnutls_session_get_flags(ws->tls) & GNUTLS_SFLAGS_SESSION_TICKET) ||
	    gnutls_session_get_data2(ws->tls, &d) < 0)
		return;
	pthread_mutex_lock(&c->lock);
	gnutls_free(c->ticket.data);
	c->ticket = d;
	pthread_mutex_unlock(&c->lock);
}

bool upstream_ws_resumed(const struct upstream_ws *ws)
{
	return ws->tls && gnutls_session_is_resumed(ws->tls);
}

static int ws_tls_init(struct upstream_ws *ws)
{
	const struct upstream_client *c = ws->client;
	static const gnutls_datum_t http11 = { (unsigned char *)"http/1.1", 8 };

	if (gnutls_init(&ws->tls, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL) < 0) {
		ws->tls = NULL;
		return -1;
	}
	if (gnutls_priority_set(ws->tls, c->prio) < 0 ||
	    gnutls_credentials_set(ws->tls, GNUTLS_CRD_CERTIFICATE, c->cred) < 0 ||
	    (c->sni &&
	     gnutls_server_name_set(ws->tls, GNUTLS_NAME_DNS, c->host, strlen(c->host)) < 0) ||
	    gnutls_alpn_set_protocols(ws->tls, &http11, 1, 0) < 0)
		return -1;
	if (!c->o.insecure)
		gnutls_session_set_verify_cert(ws->tls, c->host, 0);
	ws_tls_resume(ws);
	return 0;
}

static void ws_do_tls(struct upstream_ws *ws)
{
	int rc;

	gnutls_transport_set_int(ws->tls, ws->fd);
	do
		rc = gnutls_handshake(ws->tls);
	while (rc == GNUTLS_E_INTERRUPTED || (rc < 0 && !gnutls_error_is_fatal(rc) &&
	                                      rc != GNUTLS_E_AGAIN));
	if (rc == GNUTLS_E_AGAIN) {
		ws_wait_tls(ws);
		return;
	}
	if (rc < 0) {
		ws_tls_failed(ws, rc);
		return;
	}
	ws->state = S_UPGRADE;
}

static const struct wslay_event_callbacks ws_callbacks;

/* The 101 came: wslay takes over, with what followed the head. */
static int ws_start_frames(struct upstream_ws *ws)
{
	if (wslay_event_context_client_init(&ws->ctx, &ws_callbacks, ws) != 0) {
		ws->ctx = NULL;
		return -1;
	}
	wslay_event_config_set_max_recv_msg_length(ws->ctx, ws->client->o.max_message_bytes);
	ws->state = S_HELLO;
	return 0;
}

/* Writes the request, reads the answer head.  0: carry on with frames. */
static int ws_do_upgrade(struct upstream_ws *ws)
{
	struct uphs_response resp;
	ssize_t n;

	if (!ws->rx && !(ws->rx = malloc(UPHS_MAX_RESPONSE_HEAD))) {
		ws_fail(ws, UPWS_NETWORK, "out of memory");
		return -1;
	}
	while (ws->req) {
		n = gnutls_record_send(ws->tls, ws->req + ws->req_off, ws->req_len - ws->req_off);
		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == GNUTLS_E_AGAIN) {
			ws_wait_tls(ws);
			return -1;
		}
		if (n < 0) {
			ws_fail(ws, UPWS_NETWORK, "sending the upgrade: %s",
				gnutls_strerror((int)n));
			return -1;
		}
		ws->req_off += (size_t)n;
		if (ws->req_off == ws->req_len) {
			free(ws->req);
			ws->req = NULL;
		}
	}
	for (;;) {
		n = gnutls_record_recv(ws->tls, ws->rx + ws->rx_len,
		                       UPHS_MAX_RESPONSE_HEAD - ws->rx_len);
		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == GNUTLS_E_AGAIN) {
			ws_set_interest(ws, EPOLLIN);
			return -1;
		}
		if (n <= 0) {
			ws_fail(ws, UPWS_NETWORK, "reading the upgrade's answer: %s",
			        n ? gnutls_strerror((int)n) : "connection closed");
			return -1;
		}
		ws->rx_len += (size_t)n;
		switch (uphs_parse_response(ws->rx, ws->rx_len, ws->accept, &resp)) {
		case UPHS_NEED_MORE:
			continue;
		case UPHS_UPGRADED:
			if (ws_keep_leftover(ws, resp.head_len) < 0 || ws_start_frames(ws) < 0) {
				ws_fail(ws, UPWS_NETWORK, "out of memory");
				return -1;
			}
			return 0;
		case UPHS_REFUSED: {
			char reason[64];

			snprintf(reason, sizeof reason, "upgrade answered %d", resp.status);
			ws_end(ws, UPWS_REFUSED, resp.status, resp.retry_after_s, reason, true);
			return -1;
		}
		case UPHS_BAD:
			ws_fail(ws, UPWS_PROTOCOL, "upgrade answer: %s", resp.why);
			return -1;
		}
	}
}

/* --- frames ------------------------------------------------------------------------- */


static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
	struct upstream_ws *ws = user;
	ssize_t n;

	(void)flags;
	if (ws->ended) {
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
		return -1;
	}
	if (ws->rx_budget == 0) {
		ws->rx_more = true;
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	if (len > ws->rx_budget)
		len = ws->rx_budget;
	if (ws->rx_off < ws->rx_len) {
		n = (ssize_t)(ws->rx_len - ws->rx_off < len ? ws->rx_len - ws->rx_off : len);
		memcpy(buf, ws->rx + ws->rx_off, (size_t)n);
		ws->rx_off += (size_t)n;
		if (ws->rx_off == ws->rx_len)
			ws_drop_rx(ws);
	} else {
		do
			n = gnutls_record_recv(ws->tls, buf, len);
		while (n == GNUTLS_E_INTERRUPTED);
	}
	if (n > 0) {
		ws->rx_budget -= (size_t)n;
		return n;
	}
	if (n == GNUTLS_E_AGAIN) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
	} else {
		ws->io_failed = true;
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
	}
	return -1;
}

/*
 * Hands bytes to GnuTLS until they are all taken or the socket is full.
 * After GNUTLS_E_AGAIN GnuTLS holds one record half written and must be
 * called again before anything else: ws->tls_resume.  Returns how many
 * bytes were taken, or -1 on a lost connection (io_failed).
 */
static ssize_t ws_tls_write(struct upstream_ws *ws, const uint8_t *data, size_t len)
{
	size_t off = 0;
	ssize_t n;

	if (ws->tls_resume) {
		do
			n = gnutls_record_send(ws->tls, NULL, 0);
		while (n == GNUTLS_E_INTERRUPTED);
		if (n == GNUTLS_E_AGAIN)
			return 0;
		if (n < 0)
			goto lost;
		ws->tls_resume = false;
		return n;       /* the record's bytes: the start of data */
	}
	while (off < len) {
		do
			n = gnutls_record_send(ws->tls, data + off, len - off);
		while (n == GNUTLS_E_INTERRUPTED);
		if (n == GNUTLS_E_AGAIN) {
			ws->tls_resume = true;
			break;
		}
		if (n < 0)
			goto lost;
		off += (size_t)n;
	}
	return (ssize_t)off;
lost:
	ws->io_failed = true;
	return -1;
}

/* Writes what an earlier turn left unsent.  0 when all is out, 1 while the
 * socket is still full, -1 on a lost connection. */
static int ws_unsent_flush(struct upstream_ws *ws)
{
	while (ws->tls_resume || ws->unsent_off < ws->unsent_len) {
		ssize_t n = ws_tls_write(ws, ws->unsent + ws->unsent_off,
		                         ws->unsent_len - ws->unsent_off);

		if (n < 0)
			return -1;
		ws->unsent_off += (size_t)n;
		if (ws->tls_resume)
			return 1;
	}
	free(ws->unsent);
	ws->unsent = NULL;
	ws->unsent_len = ws->unsent_off = 0;
	return 0;
}

/* Writes the loop's batch (this websocket's frames of this turn); what the
 * socket does not take is kept as ws->unsent.  -1 on a lost connection or
 * out of memory. */
static int ws_batch_flush(struct upstream_ws *ws)
{
	struct connector *cn = ws->cn;
	ssize_t n;

	if (!cn->batch_len)
		return 0;
	n = ws_tls_write(ws, cn->batch, cn->batch_len);
	if (n >= 0 && (size_t)n < cn->batch_len) {
		ws->unsent = malloc(cn->batch_len - (size_t)n);
		if (ws->unsent) {
			ws->unsent_len = cn->batch_len - (size_t)n;
			memcpy(ws->unsent, cn->batch + n, ws->unsent_len);
		} else {
			n = -1;
		}
	}
	cn->batch_len = 0;
	return n < 0 ? -1 : 0;
}

/* Something is still to be written: in wslay, or taken from it and not
 * yet by the kernel. */
static bool ws_want_write(const struct upstream_ws *ws)
{
	return wslay_event_want_write(ws->ctx) || ws->unsent || ws->tls_resume ||
	       ws->cn->batch_len;
}

/*
 * wslay's frames go into the loop's batch, not one TLS record and one
 * sendmsg each: a backlog's messages of ~2 KB then travel several to a
 * record (a fifth of the drain's CPU was sendmsg: BENCHMARKS.md).
 */
static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
	struct upstream_ws *ws = user;
	struct connector *cn = ws->cn;

	(void)flags;
	if (ws->ended) {
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
		return -1;
	}
	if (ws->unsent || ws->tls_resume) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	if (cn->batch_len + len > sizeof cn->batch) {
		if (ws_batch_flush(ws) < 0) {
			ws->io_failed = true;
			wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
			return -1;
		}
		if (ws->unsent) {
			wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
			return -1;
		}
	}
	if (len > sizeof cn->batch)
		len = sizeof cn->batch;     /* wslay offers the rest again */
	memcpy(cn->batch + cn->batch_len, data, len);
	cn->batch_len += len;
	return (ssize_t)len;
}

static int on_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
	(void)ctx;
	(void)user;
	return gnutls_rnd(GNUTLS_RND_NONCE, buf, len) < 0 ? -1 : 0;
}

static void ws_hello(struct upstream_ws *ws, const struct wslay_event_on_msg_recv_arg *arg)
{
	json_t *obj = json_loadb((const char *)arg->msg, arg->msg_length, JSON_REJECT_DUPLICATES,
	                         NULL);
	json_t *err;
	char *text;

	/* The SDK logs a message that is not a JSON object and waits on. */
	if (!json_is_object(obj)) {
		json_decref(obj);
		return;
	}
	err = json_object_get(obj, "error");
	if (err) {
		ws->hello_error = true;
		ws->hello_reason = json_is_string(err)
		                           ? strdup(json_string_value(err))
		                           : json_dumps(err, JSON_COMPACT | JSON_ENCODE_ANY);
		json_decref(obj);
		/* As the SDK does: close with 1000 and never come back. */
		wslay_event_queue_close(ws->ctx, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
		return;
	}
	json_decref(obj);
	text = malloc(arg->msg_length + 1);
	if (!text) {
		ws_fail(ws, UPWS_NETWORK, "out of memory");
		return;
	}
	memcpy(text, arg->msg, arg->msg_length);
	text[arg->msg_length] = '\0';
	ws->state = S_OPEN;
	ws->deadline_ms = 0;
	ws_tls_keep_ticket(ws);
	ws->last_tx_ms = evloop_now(ws->loop);
	ws->cb.on_open(ws, text, arg->msg_length, ws->arg);
	free(text);
}

static void ws_text(struct upstream_ws *ws, const struct wslay_event_on_msg_recv_arg *arg)
{
	char *text = malloc(arg->msg_length + 1);

	if (!text) {
		ws_fail(ws, UPWS_NETWORK, "out of memory");
		return;
	}
	memcpy(text, arg->msg, arg->msg_length);
	text[arg->msg_length] = '\0';
	if (ws->cb.on_text)
		ws->cb.on_text(ws, text, arg->msg_length, ws->arg);
	free(text);
}

/* A pong: the fences it answers, in order, or the keepalive. */
static void ws_pong(struct upstream_ws *ws, const uint8_t *p, size_t len)
{
	uint64_t id = 0;

	if (len == 0) {
		ws->keepalive_ms = 0;
		return;
	}
	if (len != UPWS_FENCE_BYTES)
		return;
	for (size_t i = 0; i < UPWS_FENCE_BYTES; i++)
		id = id << 8 | p[i];
	while (ws->fence_acked < id && ws->fence_acked + 1 < ws->fence_next && !ws->ended &&
	       !ws->freed) {
		ws->fence_acked++;
		if (ws->cb.on_fence)
			ws->cb.on_fence(ws, ws->fence_acked, ws->arg);
	}
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user)
{
	struct upstream_ws *ws = user;

	(void)ctx;
	if (ws->ended || ws->freed)
		return;
	switch (arg->opcode) {
	case WSLAY_TEXT_FRAME:
		if (ws->state == S_HELLO)
			ws_hello(ws, arg);
		else if (!ws->hello_error)
			ws_text(ws, arg);
		break;
	case WSLAY_PONG:
		ws_pong(ws, arg->msg, arg->msg_length);
		break;
	case WSLAY_CONNECTION_CLOSE:
		ws->close_code_rx = arg->status_code;
		if (arg->msg_length > 2) {
			size_t n = arg->msg_length - 2;

			if (n >= sizeof ws->close_reason_rx)
				n = sizeof ws->close_reason_rx - 1;
			memcpy(ws->close_reason_rx, arg->msg + 2, n);
			ws->close_reason_rx[n] = '\0';
		}
		break;
	default:
		break;   /* wslay answers pings itself; binary is not the backend's */
	}
}

static const struct wslay_event_callbacks ws_callbacks = {
	.recv_callback = on_recv,
	.send_callback = on_send,
	.genmask_callback = on_genmask,
	.on_msg_recv_callback = on_msg,
};

/* Moves held frames into wslay: a control frame only once no data message
 * waits in wslay's queue, so that it cannot overtake one. */
static int ws_release_held(struct upstream_ws *ws)
{
	while (ws->held) {
		struct pending *p = ws->held;
		bool control = p->opcode & 0x8;
		int rc;

		if (control && wslay_event_get_queued_msg_count(ws->ctx) > 0)
			break;
		if (p->opcode == WSLAY_CONNECTION_CLOSE) {
			rc = wslay_event_queue_close(ws->ctx, p->close_code, p->data, p->len);
		} else {
			struct wslay_event_msg m = { p->opcode, p->data, p->len };

			rc = wslay_event_queue_msg(ws->ctx, &m);
		}
		if (rc == WSLAY_ERR_NO_MORE_MSG) {
			/* The backend's close came first: nothing more goes out. */
			while (ws->held) {
				p = ws->held;
				ws->held = p->next;
				free(p);
			}
			ws->held_tail = &ws->held;
			ws->held_bytes = 0;
			return 0;
		}
		if (rc != 0)
			return -1;
		ws->held = p->next;
		if (!ws->held)
			ws->held_tail = &ws->held;
		ws->held_bytes -= p->len;
		free(p);
	}
	return 0;
}

/* Runs wslay: reads, writes, and sees whether the websocket ended. */
static void ws_frames(struct upstream_ws *ws, uint32_t events)
{
	wslay_event_context_ptr ctx = ws->ctx;
	uint32_t want;
	int full;

	if (wslay_event_want_read(ctx) &&
	    ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || ws->rx_off < ws->rx_len ||
	     gnutls_record_check_pending(ws->tls))) {
		ws->io_failed = false;
		ws->rx_budget = UPWS_RX_BUDGET;
		ws->rx_more = false;
		if (wslay_event_recv(ctx) != 0) {
			if (!ws->ended)
				ws_fail(ws, ws->io_failed ? lost_class(ws) : UPWS_PROTOCOL,
				        ws->io_failed ? "connection lost" : "malformed frame");
			return;
		}
		if (ws->ended)
			return;
	}
	/* What an earlier turn could not write goes first. */
	if ((full = ws_unsent_flush(ws)) < 0) {
		ws_fail(ws, lost_class(ws), "connection lost");
		return;
	}
	for (int round = 0; round < 2 && !full; round++) {
		if (ws_release_held(ws) < 0) {
			ws_fail(ws, UPWS_NETWORK, "out of memory");
			return;
		}
		if (wslay_event_want_write(ctx) && wslay_event_send(ctx) != 0) {
			ws->cn->batch_len = 0;
			ws_fail(ws, lost_class(ws), "connection lost");
			return;
		}
		if (ws_batch_flush(ws) < 0) {
			ws_fail(ws, lost_class(ws), "connection lost");
			return;
		}
		if (!ws->held)
			break;   /* a second round only if sending made room for them */
	}
	if (ws->hello_error && !ws_want_write(ws)) {
		ws_end(ws, UPWS_HELLO_ERROR, 0, -1, ws->hello_reason, true);
		return;
	}
	if (wslay_event_get_close_received(ctx)) {
		bool ours = wslay_event_get_close_sent(ctx) && ws->state == S_CLOSING;

		if (ours && !ws_want_write(ws)) {
			ws_end(ws, UPWS_CLOSED, 0, -1, ws->close_reason_rx, true);
			return;
		}
		if (!ours && !ws_want_write(ws)) {
			/* wslay has sent the echo of the backend's close. */
			ws_end(ws, UPWS_BACKEND_CLOSED, 0, -1, ws->close_reason_rx, true);
			return;
		}
	} else if (wslay_event_get_close_sent(ctx) && ws->state != S_CLOSING && !ws->hello_error) {
		/* wslay closed by itself: 1009 or 1002 for what the backend sent. */
		ws_fail(ws, UPWS_PROTOCOL, "backend sent %s",
		        wslay_event_get_status_code_sent(ctx) == WSLAY_CODE_MESSAGE_TOO_BIG
		                ? "a message over max_message_bytes" : "an invalid frame");
		return;
	}
	if (!wslay_event_want_read(ctx) && !ws_want_write(ws)) {
		ws_fail(ws, lost_class(ws), "connection closed");
		return;
	}
	want = (wslay_event_want_read(ctx) ? EPOLLIN : 0) |
	       (ws_want_write(ws) ? EPOLLOUT : 0);
	ws_set_interest(ws, want);
	if (!ws->ended && ws->rx_more)
		evloop_io_feed(ws->loop, &ws->io, EPOLLIN);
}

static void ws_service(struct upstream_ws *ws, uint32_t events)
{
	if (ws->ended)
		return;
	if (events & EPOLLERR && ws->state < S_HELLO) {
		int err = 0;
		socklen_t len = sizeof err;

		getsockopt(ws->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		ws_fail(ws, UPWS_NETWORK, "socket: %s", strerror(err ? err : EIO));
		return;
	}
	if (ws->state == S_TLS) {
		ws_do_tls(ws);
		if (ws->ended || ws->state == S_TLS)
			goto out;
	}
	if (ws->state == S_UPGRADE && ws_do_upgrade(ws) < 0)
		goto out;
	if (ws->state >= S_HELLO && ws->state < S_ENDED)
		ws_frames(ws, events);
out:
	if (!ws->ended)
		ws_arm(ws);
}

static void ws_io_cb(struct evloop *l, struct ev_io *w, uint32_t events)
{
	(void)l;
	ws_service(OWNER(w, struct upstream_ws, io), events);
}

/* --- time ------------------------------------------------------------------------------ */

static int64_t earliest(int64_t a, int64_t b)
{
	return !a ? b : !b ? a : a < b ? a : b;
}

/* The next moment something is due: a deadline, a pong, a keepalive. */
static int64_t ws_next_due(const struct upstream_ws *ws)
{
	const struct upstream_client_options *o = &ws->client->o;
	int64_t due = ws->deadline_ms;

	if (ws->state < S_OPEN || ws->state == S_ENDED)
		return due;
	if (ws->fence_acked + 1 < ws->fence_next)
		due = earliest(due, ws->fence_at[(ws->fence_acked + 1) % ws->fence_cap] +
		                    o->pong_timeout_ms);
	if (ws->keepalive_ms)
		due = earliest(due, ws->keepalive_ms + o->pong_timeout_ms);
	else if (o->ping_interval_ms && ws->state == S_OPEN)
		due = earliest(due, ws->last_tx_ms + o->ping_interval_ms);
	return due;
}

static void ws_arm(struct upstream_ws *ws)
{
	int64_t due = ws_next_due(ws);

	if (!due) {
		evloop_timer_stop(ws->loop, &ws->timer);
		return;
	}
	if (evloop_timer_start(ws->loop, &ws->timer, due - evloop_now(ws->loop)) < 0)
		ws_fail(ws, UPWS_NETWORK, "out of memory");
}

static void ws_timer_cb(struct evloop *l, struct ev_timer *t)
{
	struct upstream_ws *ws = OWNER(t, struct upstream_ws, timer);
	const struct upstream_client_options *o = &ws->client->o;
	int64_t now = evloop_now(l);
	static const char *const phase[] = {
		[S_CONNECT] = "connect", [S_TLS] = "TLS handshake", [S_UPGRADE] = "upgrade",
		[S_HELLO] = "hello", [S_OPEN] = "open", [S_CLOSING] = "close", [S_ENDED] = "end",
	};

	if (ws->deadline_ms && now >= ws->deadline_ms) {
		ws_fail(ws, UPWS_TIMEOUT, "%s took over %u ms", phase[ws->state],
		        ws->state == S_CLOSING ? o->close_timeout_ms
		        : ws->state == S_CONNECT ? o->connect_timeout_ms : o->handshake_timeout_ms);
		return;
	}
	if (ws->state >= S_OPEN) {
		if ((ws->fence_acked + 1 < ws->fence_next &&
		     now >= ws->fence_at[(ws->fence_acked + 1) % ws->fence_cap] +
		                     o->pong_timeout_ms) ||
		    (ws->keepalive_ms && now >= ws->keepalive_ms + o->pong_timeout_ms)) {
			ws_fail(ws, UPWS_TIMEOUT, "no pong within %u ms", o->pong_timeout_ms);
			return;
		}
		if (ws->state == S_OPEN && !ws->keepalive_ms && o->ping_interval_ms &&
		    now >= ws->last_tx_ms + o->ping_interval_ms) {
			struct wslay_event_msg ping = { WSLAY_PING, (const uint8_t *)"", 0 };

			/* Order does not matter for a keepalive: straight to wslay. */
			if (wslay_event_queue_msg(ws->ctx, &ping) == 0) {
				ws->keepalive_ms = now;
				ws->last_tx_ms = now;
				evloop_io_feed(l, &ws->io, EPOLLOUT);
			}
		}
	}
	ws_arm(ws);
}

/* --- the public API ------------------------------------------------------------------ */

static char *dup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *dup_printf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return n < 0 ? NULL : s;
}

static void ws_free_now(struct ev_deferred *d)
{
	struct upstream_ws *ws = OWNER(d, struct upstream_ws, dead);

	while (ws->held) {
		struct pending *p = ws->held;

		ws->held = p->next;
		free(p);
	}
	if (ws->ctx)
		wslay_event_context_free(ws->ctx);
	if (ws->tls)
		gnutls_deinit(ws->tls);
	free(ws->fence_at);
	free(ws->hello_reason);
	free(ws->req);
	free(ws->rx);
	free(ws->unsent);
	free(ws);
}

void upstream_ws_destroy(struct upstream_ws *ws)
{
	if (!ws || ws->freed)
		return;
	ws_end(ws, UPWS_ABORTED, 0, -1, NULL, false);
	ws->freed = true;
	evloop_defer(ws->loop, &ws->dead, ws_free_now);
}

static int ws_make_request(struct upstream_ws *ws, const struct upstream_ws_request *req,
                           char **cause)
{
	uint8_t raw[16];
	gnutls_datum_t in = { raw, sizeof raw }, key = { NULL, 0 };
	const char *why = NULL;
	struct uphs_request r = {
		.host = ws->client->host_header, .path = ws->client->path, .query = req->query,
		.user_agent = req->user_agent, .origin = req->origin, .xff = req->xff,
	};

	if (gnutls_rnd(GNUTLS_RND_NONCE, raw, sizeof raw) < 0 ||
	    gnutls_base64_encode2(&in, &key) < 0) {
		*cause = strdup("cannot make a websocket key");
		return -1;
	}
	r.key = (const char *)key.data;
	if (uphs_accept_for(r.key, ws->accept) == 0)
		ws->req = uphs_build_request(&r, &ws->req_len, &why);
	else
		why = "cannot make a websocket key";
	gnutls_free(key.data);
	if (!ws->req) {
		*cause = strdup(why);
		return -1;
	}
	return 0;
}

int upstream_ws_create(struct upstream_ws **out, struct upstream_client *c, struct evloop *loop,
                       const struct upstream_ws_request *req,
                       const struct upstream_ws_callbacks *cb, void *arg, char **cause)
{
	struct upstream_ws *ws = calloc(1, sizeof *ws);

	*out = NULL;
	*cause = NULL;
	if (!ws) {
		*cause = strdup("out of memory");
		return -1;
	}
	ws->client = c;
	ws->loop = loop;
	ws->cb = *cb;
	ws->arg = arg;
	ws->fd = -1;
	ws->fence_next = 1;
	ws->held_tail = &ws->held;
	ev_timer_init(&ws->timer, ws_timer_cb);
	ev_io_init(&ws->io, -1, ws_io_cb);
	if (ws_make_request(ws, req, cause) < 0)
		goto fail;
	ws->cn = connector_get(c, loop);
	if (!ws->cn || ws_start_connect(ws) < 0) {
		*cause = strdup("out of resources for an upstream websocket");
		goto fail;
	}
	ws->deadline_ms = evloop_now(loop) + c->o.connect_timeout_ms + c->o.handshake_timeout_ms;
	if (evloop_timer_start(loop, &ws->timer, ws->deadline_ms - evloop_now(loop)) < 0) {
		*cause = strdup("out of memory");
		goto fail;
	}
	*out = ws;
	return 0;
fail:
	ws->freed = true;
	ws->ended = true;
	evloop_timer_stop(loop, &ws->timer);
	if (ws->easy) {
		if (ws->cn)
			curl_multi_remove_handle(ws->cn->multi, ws->easy);
		curl_easy_cleanup(ws->easy);
	}
	ws_free_now(&ws->dead);
	return -1;
}

static int ws_hold(struct upstream_ws *ws, uint8_t opcode, uint16_t code, const void *buf,
                   size_t len)
{
	struct pending *p = malloc(sizeof *p + len);

	if (!p)
		return -1;
	p->next = NULL;
	p->opcode = opcode;
	p->close_code = code;
	p->len = len;
	if (len)
		memcpy(p->data, buf, len);
	*ws->held_tail = p;
	ws->held_tail = &p->next;
	ws->held_bytes += len;
	return 0;
}

size_t upstream_ws_queued(const struct upstream_ws *ws)
{
	return ws->held_bytes + (ws->ctx ? wslay_event_get_queued_msg_length(ws->ctx) : 0);
}

bool upstream_ws_is_open(const struct upstream_ws *ws)
{
	return ws->state == S_OPEN && !ws->ended;
}

int upstream_ws_send_text(struct upstream_ws *ws, const void *buf, size_t len)
{
	size_t queued;
	int rc;

	if (!upstream_ws_is_open(ws))
		return -1;
	queued = upstream_ws_queued(ws);
	if (queued && queued + len > ws->client->o.max_send_bytes)
		return -1;
	if (ws->held) {
		rc = ws_hold(ws, WSLAY_TEXT_FRAME, 0, buf, len);
	} else {
		struct wslay_event_msg m = { WSLAY_TEXT_FRAME, buf, len };

		rc = wslay_event_queue_msg(ws->ctx, &m);
	}
	if (rc != 0)
		return -1;
	ws->last_tx_ms = evloop_now(ws->loop);
	evloop_io_feed(ws->loop, &ws->io, EPOLLOUT);
	return 0;
}

int upstream_ws_fence(struct upstream_ws *ws, uint64_t *id)
{
	uint8_t payload[UPWS_FENCE_BYTES];
	uint64_t out = ws->fence_next - ws->fence_acked - 1;   /* fences out now */

	if (!upstream_ws_is_open(ws))
		return -1;
	if (out + 1 > ws->fence_cap) {
		size_t cap = ws->fence_cap ? 2 * ws->fence_cap : 8;
		int64_t *at = malloc(cap * sizeof *at);

		if (!at)
			return -1;
		/* Re-lay the ring for the new capacity. */
		for (uint64_t i = ws->fence_acked + 1; i < ws->fence_next; i++)
			at[i % cap] = ws->fence_at[i % ws->fence_cap];
		free(ws->fence_at);
		ws->fence_at = at;
		ws->fence_cap = cap;
	}
	for (size_t i = 0; i < UPWS_FENCE_BYTES; i++)
		payload[i] = (uint8_t)(ws->fence_next >> (8 * (UPWS_FENCE_BYTES - 1 - i)));
	if (ws_hold(ws, WSLAY_PING, 0, payload, sizeof payload) < 0)
		return -1;
	ws->fence_at[ws->fence_next % ws->fence_cap] = evloop_now(ws->loop);
	*id = ws->fence_next++;
	ws->last_tx_ms = evloop_now(ws->loop);
	evloop_io_feed(ws->loop, &ws->io, EPOLLOUT);
	ws_arm(ws);
	return 0;
}

int upstream_ws_send_close(struct upstream_ws *ws, uint16_t code, const char *reason)
{
	size_t rlen = reason ? strlen(reason) : 0;

	if (ws->ended || ws->state == S_CLOSING)
		return -1;
	if (ws->state != S_OPEN) {
		ws_end(ws, UPWS_ABORTED, 0, -1, "closed before the hello", true);
		return 0;
	}
	if (rlen > 123)
		rlen = 123;
	if (ws_hold(ws, WSLAY_CONNECTION_CLOSE, code, reason, rlen) < 0)
		return -1;
	ws->state = S_CLOSING;
	ws->keepalive_ms = 0;
	ws->deadline_ms = evloop_now(ws->loop) + ws->client->o.close_timeout_ms;
	evloop_io_feed(ws->loop, &ws->io, EPOLLOUT);
	ws_arm(ws);
	return 0;
}

void upstream_ws_abort(struct upstream_ws *ws)
{
	ws_end(ws, UPWS_ABORTED, 0, -1, "aborted", true);
}

/* --- the client ------------------------------------------------------------------------ */

/* The first of names set and not empty in the environment, or NULL. */
static int parse_url(struct upstream_client *c, const char *url, char **cause)
{
	CURLU *u = curl_url();
	char *host = NULL, *port = NULL, *path = NULL, *scheme = NULL;
	int rc = -1;

	if (!u)
		goto out;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    (strcmp(scheme, "https") && strcmp(scheme, "wss")) ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		cause_set(cause, -1, "upstream %s: not an https:// URL", url);
		goto out;
	}
	if (curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
		port = NULL;
	if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
		path = NULL;
	c->path = strdup(path && *path ? path : "/");
	c->host_header = port ? dup_printf("%s:%s", host, port) : strdup(host);
	c->connect_url = dup_printf("http://%s:%s/", host, port ? port : "443");
	if (host[0] == '[') {
		c->host = strndup(host + 1, strlen(host) - 2);
		c->sni = false;
	} else {
		struct in_addr a4;

		c->host = strdup(host);
		c->sni = inet_pton(AF_INET, host, &a4) != 1;
	}
	if (!c->path || !c->host_header || !c->connect_url || !c->host)
		goto out;
	rc = 0;
out:
	if (rc < 0 && !*cause)
		*cause = strdup("out of memory");
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_free(scheme);
	curl_url_cleanup(u);
	return rc;
}

int upstream_client_create(struct upstream_client **out, const struct upstream_client_options *o,
                           char **cause)
{
	struct upstream_client *c = calloc(1, sizeof *c);
	const char *proxy, *noproxy;
	int rc;

	*out = NULL;
	*cause = NULL;
	if (!c) {
		*cause = strdup("out of memory");
		return -1;
	}
	pthread_mutex_init(&c->lock, NULL);
	c->o = *o;
	c->o.url = c->o.ca_file = c->o.proxy = NULL;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		*cause = strdup("libcurl: cannot initialise");
		goto fail;
	}
	if (parse_url(c, o->url, cause) < 0)
		goto fail;
	/* The variables libcurl reads for an https:// URL, in its order (and as
	 * egress_log_proxy logs them): libcurl itself sees our http:// connect
	 * URL, so it must not pick its own, hence "" for none.  The setting
	 * wins over all of them, no_proxy included. */
	if (o->proxy && *o->proxy) {
		proxy = o->proxy;
		noproxy = "";
	} else {
		proxy = egress_env_proxy(true, NULL);
		noproxy = egress_env_no_proxy();
	}
	/* An HTTPS proxy would wrap the tunnel in libcurl's own TLS session,
	 * which does not survive the dup(): only plain tunnels are taken. */
	if (proxy && !strncasecmp(proxy, "https://", 8)) {
		cause_set(cause, -1, "egress proxy %s: an https:// proxy is not supported for "
		          "upstream websockets (use http:// or socks5://)", proxy);
		goto fail;
	}
	c->proxy = strdup(proxy ? proxy : "");
	c->noproxy = noproxy ? strdup(noproxy) : NULL;
	if (!c->proxy || (noproxy && !c->noproxy)) {
		*cause = strdup("out of memory");
		goto fail;
	}
	if ((rc = gnutls_certificate_allocate_credentials(&c->cred)) < 0) {
		c->cred = NULL;
		cause_set(cause, -1, "upstream TLS credentials: %s", gnutls_strerror(rc));
		goto fail;
	}
	/* Parsed once here, shared by every connection of the process. */
	if (o->ca_file && *o->ca_file)
		rc = gnutls_certificate_set_x509_trust_file(c->cred, o->ca_file,
		                                            GNUTLS_X509_FMT_PEM);
	else
		rc = gnutls_certificate_set_x509_system_trust(c->cred);
	if (rc <= 0 && !o->insecure) {
		cause_set(cause, -1, "upstream-ca %s: %s",
		          o->ca_file && *o->ca_file ? o->ca_file : "(system trust)",
		          rc < 0 ? gnutls_strerror(rc) : "no certificate");
		goto fail;
	}
	if ((rc = gnutls_priority_init2(&c->prio, NULL, NULL, 0)) < 0) {
		c->prio = NULL;
		cause_set(cause, -1, "upstream TLS priorities: %s", gnutls_strerror(rc));
		goto fail;
	}
	*out = c;
	return 0;
fail:
	upstream_client_destroy(c);
	return -1;
}

void upstream_client_destroy(struct upstream_client *c)
{
	if (!c)
		return;
	while (c->connectors) {
		struct connector *cn = c->connectors;

		c->connectors = cn->next;
		cn->dying = true;
		curl_multi_cleanup(cn->multi);
		free(cn);
	}
	if (c->cred)
		gnutls_certificate_free_credentials(c->cred);
	if (c->prio)
		gnutls_priority_deinit(c->prio);
	free(c->host);
	free(c->host_header);
	free(c->connect_url);
	free(c->path);
	free(c->proxy);
	free(c->noproxy);
	gnutls_free(c->ticket.data);
	pthread_mutex_destroy(&c->lock);
	free(c);
	curl_global_cleanup();
}
