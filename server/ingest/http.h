/*
 * http.h - the TLS listener (libmicrohttpd): routes each request to the
 * health, metrics, HTTPS-fallback or websocket-upgrade handler.
 */
#ifndef WATCHRTC_HTTP_H
#define WATCHRTC_HTTP_H

struct relay;
struct tls_pair;
struct http_server;

int http_server_start(struct http_server **out, struct relay *r, const struct tls_pair *tls,
                      char **cause) __attribute__((warn_unused_result));
/* Stops accepting connections; requests in progress finish. */
void http_server_quiesce(struct http_server *s);
/* Stops the daemon and frees s.  Accepts NULL. */
void http_server_stop(struct http_server *s);

#endif
