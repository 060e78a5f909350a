/*
 * cli.h - `watchrtc-relay queue ...`: the queue CLI, run by main() instead
 * of the relay when the first argument is "queue".
 *
 *   watchrtc-relay queue [--state-dir DIR | --config FILE] [--json] COMMAND
 *     stats                      depth, bytes, oldest age, sessions waiting
 *                                for a retry, dead letters by reason
 *     dead list [--limit N]      the dead letters, oldest first
 *     dead replay --all | ID...  back into the queue, keeping ids and order
 *     dead purge [--all | ID...] delete them
 *     check                      PRAGMA integrity_check
 *     salvage [--output FILE]    copy the readable rows of a corrupt
 *                                database into a new one
 *
 * Output is for people, or with --json one JSON document for scripts.
 */
#ifndef WATCHRTC_CLI_H
#define WATCHRTC_CLI_H

/* argv[0] is "queue".  Returns the exit status: 0 done, 1 failed (the
 * reason is on stderr; for check: the database is damaged), 2 bad usage. */
int cli_queue_main(int argc, char **argv);

#endif
