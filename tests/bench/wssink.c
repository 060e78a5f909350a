/*
 * wssink.c - a websocket sink for the benchmark: what nginx proxies to.
 *
 *   wssink [--port 0] [--address 127.0.0.1]
 *
 * Plain TCP on loopback, one epoll thread.  It prints "PORT <n>" on stdout
 * once it listens, then serves until SIGTERM or SIGINT:
 *   - a websocket upgrade gets a 101 (echoing subprotocol 2.0) and a hello
 *     text frame, like the relay's; every message after it is counted and
 *     dropped (payloads are skipped, not unmasked); a ping gets its pong; a
 *     close is echoed;
 *   - GET /stats gets {"messages":..,"bytes":..,"open":..,"accepted":..,
 *     "errors":..} and the connection is closed.
 * It stores and checks nothing else: it stands for an upstream that costs
 * nothing, so that the figures measure the proxy in front of it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "benchutil.h"
#include "wsframe.h"

#define SINK_HEAD_MAX 8192          /* one request head */
#define SINK_READ_CHUNK 65536
#define SINK_MAX_EVENTS 256
#define SINK_BACKLOG 4096
#define SINK_HELLO "{\"connectionId\":\"sink\",\"interval\":8000,\"sendInterval\":1," \
	"\"collectConsoleLogEnabled\":false,\"collectConsoleLogLevel\":\"error\"}"

struct sconn {
	struct sconn *prev, *next;  /* every connection, to free them at exit */
	int fd;
	bool websocket;
	char *head;                 /* request head, until it is complete */
	size_t head_len;
	struct wsf_parser in;
};

static struct {
	unsigned long long messages, bytes, open, accepted, errors;
} st;
static struct sconn *conns;

/* Writes all of buf, waiting briefly if the socket is full: answers here
 * are small and rare, so a blocking loop is simpler than buffering. */
static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			usleep(1000);
			continue;
		}
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void sconn_close(struct sconn *c)
{
	if (c->websocket)
		st.open--;
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	close(c->fd);
	free(c->head);
	free(c);
}

/* The value of header name in head (NUL-terminated copy in out), or NULL. */
static const char *header(const char *head, const char *name, char *out, size_t outlen)
{
	const char *p = head;
	size_t n = strlen(name), v;

	while ((p = strstr(p, "\r\n"))) {
		p += 2;
		if (strncasecmp(p, name, n) != 0 || p[n] != ':')
			continue;
		for (p += n + 1; *p == ' '; p++)
			;
		v = strcspn(p, "\r");
		if (v >= outlen)
			return NULL;
		memcpy(out, p, v);
		out[v] = '\0';
		return out;
	}
	return NULL;
}

/* Answers a complete request head: a websocket upgrade or /stats. */
static int answer(struct sconn *c)
{
	char key[128], buf[512], accept[WSF_ACCEPT_LEN + 1];
	uint8_t hello[WSF_HEADER_MAX + sizeof SINK_HELLO];
	size_t hlen;
	int n;

	if (!strncmp(c->head, "GET /stats", 10)) {
		n = snprintf(buf, sizeof buf,
		             "{\"messages\":%llu,\"bytes\":%llu,\"open\":%llu,\"accepted\":%llu,"
		             "\"errors\":%llu}\n",
		             st.messages, st.bytes, st.open, st.accepted, st.errors);
		dprintf(c->fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
		        "Content-Length: %d\r\nConnection: close\r\n\r\n%s", n, buf);
		return -1;
	}
	if (!header(c->head, "Sec-WebSocket-Key", key, sizeof key) || wsf_accept(key, accept) < 0) {
		dprintf(c->fd,
			"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
		st.errors++;
		return -1;
	}
	n = snprintf(buf, sizeof buf,
	             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
	             "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
	             "Sec-WebSocket-Protocol: 2.0\r\n\r\n", accept);
	hlen = wsf_build(hello, 0x1, true, NULL, (const uint8_t *)SINK_HELLO,
	                 sizeof SINK_HELLO - 1);
	if (write_all(c->fd, buf, (size_t)n) < 0 || write_all(c->fd, hello, hlen) < 0)
		return -1;
	c->websocket = true;
	st.open++;
	st.accepted++;
	return 0;
}

/*
 * A ping gets its pong, payload unmasked: the relay's upstream websockets
 * fence their frames with pings and delete messages on the pong.  The
 * parser keeps the last header's bytes, mask included, in p->hdr.
 */
static int answer_ping(struct sconn *c, const struct wsf_parser *p)
{
	uint8_t payload[WSF_CONTROL_MAX], frame[WSF_HEADER_MAX + WSF_CONTROL_MAX];
	unsigned l7 = p->hdr[1] & 127;
	const uint8_t *mask = p->hdr[1] & 0x80 ? p->hdr + 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0)
	                                       : NULL;

	for (size_t i = 0; i < p->ctl_len; i++)
		payload[i] = mask ? p->ctl[i] ^ mask[i & 3] : p->ctl[i];
	return write_all(c->fd, frame, wsf_build(frame, 0xA, true, NULL, payload, p->ctl_len));
}

/* One client frame (a wsf_frame_fn): counts messages, answers a ping,
 * echoes a close.  Returns -1 to close the connection. */
static int on_frame(void *arg, const struct wsf_parser *p)
{
	static const uint8_t close_frame[4] = { 0x88, 0x02, 0x03, 0xE8 };  /* 1000 */
	struct sconn *c = arg;

	st.bytes += p->len;
	if (p->opcode == 0x8) {
		write_all(c->fd, close_frame, sizeof close_frame);
		return -1;
	}
	if (p->opcode == 0x9)
		return answer_ping(c, p);
	if (p->opcode < 0x8 && p->fin)
		st.messages++;
	return 0;
}

/* Reads what the connection has.  Returns -1 when it is to be closed. */
static int on_readable(struct sconn *c, uint8_t *buf)
{
	for (;;) {
		ssize_t n = recv(c->fd, buf, SINK_READ_CHUNK, 0), used;
		const uint8_t *p = buf;

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (n <= 0)
			return -1;
		if (!c->websocket) {
			used = bench_head_add(c->head, &c->head_len, SINK_HEAD_MAX, buf, (size_t)n);
			if (used < 0) {
				st.errors++;
				return -1;
			}
			if (used == 0)
				continue;
			if (answer(c) < 0)
				return -1;
			/* Bytes after the head are the first frames. */
			p += used;
			n -= used;
			free(c->head);
			c->head = NULL;
		}
		if (n > 0 && wsf_parse(&c->in, p, (size_t)n, on_frame, c) != 0)
			return -1;
	}
}

static int listen_on(const char *address, unsigned port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	socklen_t sl = sizeof sa;
	int fd, one = 1;

	if (inet_pton(AF_INET, address, &sa.sin_addr) != 1)
		return -1;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, SINK_BACKLOG) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
		close(fd);
		return -1;
	}
	printf("PORT %u\n", ntohs(sa.sin_port));
	fflush(stdout);
	return fd;
}

static void accept_all(int epfd, int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct sconn *c;
		struct epoll_event e = { .events = EPOLLIN };

		if (fd < 0)
			return;
		c = calloc(1, sizeof *c);
		if (c)
			c->head = malloc(SINK_HEAD_MAX + 1);
		if (!c || !c->head) {
			if (c)
				free(c);
			close(fd);
			continue;
		}
		c->fd = fd;
		e.data.ptr = c;
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
			free(c->head);
			free(c);
			close(fd);
			continue;
		}
		c->next = conns;
		if (conns)
			conns->prev = c;
		conns = c;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "address", required_argument, NULL, 'a' },
		{ NULL, 0, NULL, 0 },
	};
	struct epoll_event evs[SINK_MAX_EVENTS], e = { .events = EPOLLIN };
	const char *address = "127.0.0.1";
	unsigned port = 0;
	uint8_t *buf = malloc(SINK_READ_CHUNK);
	int epfd = -1, lfd = -1, sfd = -1, ch, rc = 1;
	sigset_t mask;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch == 'p')
			port = (unsigned)strtoul(optarg, NULL, 10);
		else if (ch == 'a')
			address = optarg;
		else
			goto out;
	}
	bench_raise_nofile();
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	lfd = listen_on(address, port);
	if (!buf || epfd < 0 || sfd < 0 || lfd < 0) {
		fprintf(stderr, "wssink: cannot listen on %s:%u: %s\n", address, port,
			strerror(errno));
		goto out;
	}
	e.data.ptr = &lfd;
	epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &e);
	e.data.ptr = &sfd;
	epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &e);
	for (;;) {
		int n = epoll_wait(epfd, evs, SINK_MAX_EVENTS, -1);

		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == &sfd) {
				rc = 0;
				goto out;
			}
			if (evs[i].data.ptr == &lfd) {
				accept_all(epfd, lfd);
				continue;
			}
			if (on_readable(evs[i].data.ptr, buf) < 0)
				sconn_close(evs[i].data.ptr);
		}
	}
out:
	if (rc == 0)
		fprintf(stderr, "wssink: messages=%llu bytes=%llu accepted=%llu errors=%llu\n",
		        st.messages, st.bytes, st.accepted, st.errors);
	while (conns)
		sconn_close(conns);
	if (lfd >= 0)
		close(lfd);
	if (sfd >= 0)
		close(sfd);
	if (epfd >= 0)
		close(epfd);
	free(buf);
	return rc;
}
