/*
 * answer.h - HTTP error answers shared by every route (answer.c).
 */
#ifndef WATCHRTC_ANSWER_H
#define WATCHRTC_ANSWER_H

#include <microhttpd.h>

/* Queues a JSON error answer {"error": reason} with CORS headers for origin
 * (none when origin is NULL) and, when retry_after_s is not 0, a
 * Retry-After header.  Returns what MHD_queue_response returned. */
enum MHD_Result http_answer_error_retry(struct MHD_Connection *c, unsigned status,
                                        const char *origin, const char *reason,
                                        unsigned retry_after_s);
/* The same without Retry-After. */
enum MHD_Result http_answer_error(struct MHD_Connection *c, unsigned status,
                                  const char *origin, const char *reason);

#endif
