/*
 * main.c - watchrtc-relay: loads the settings, opens the queue, starts the
 * forwarders, the websocket loops and the TLS listener, then waits for a
 * signal.
 *
 * Signals are blocked in every thread and taken here with sigwait(), so no
 * handler ever runs inside library code: SIGTERM/SIGINT shut down cleanly,
 * SIGHUP reads the configuration again and applies what can change live
 * (API keys, origins, log level, the TLS certificate and key).  `watchrtc-relay queue ...` is the
 * queue CLI (cli.c).
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "access.h"
#include "admin.h"
#include "cause.h"
#include "cli.h"
#include "clientip.h"
#include "config.h"
#include "egress.h"
#include "fdfit.h"
#include "forwarder.h"
#include "http.h"
#include "keyban.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "relay.h"
#include "tls.h"
#include "tls_creds.h"
#include "websocket.h"

/* Feeds the queue's commit figures into the metrics (writer thread). */
static void on_commit(void *arg, size_t batch, const uint32_t *latency_us, size_t n)
{
	metrics_add(M_COMMITS, 1);
	metrics_observe(H_COMMIT_BATCH, (double)batch);
	for (size_t i = 0; i < n; i++)
		metrics_observe(H_COMMIT_SECONDS, latency_us[i] / 1e6);
}

/* The queue's database stopped or started taking writes (writer thread):
 * one line each way, not one per refused message. */
static void on_writable(void *arg, bool writable, const char *error)
{
	char quoted[256];

	if (writable)
		log_info("queue_writable",
		         "msg=\"the database takes writes again: ingest resumes\"");
	else
		log_error("queue_unwritable", "reason=%s msg=\"new messages are refused (503, "
		          "close 1013) until it takes writes again\"",
		          log_quote(error, quoted, sizeof quoted));
}

/* SIGHUP: new handshakes get the certificate and key now in the files;
 * open connections keep theirs.  On failure the current pair stays. */
static void reload_tls(const struct config *cfg)
{
	struct tls_pair p;
	char *cause = NULL;

	if (tls_load(&p, cfg->tls_cert, cfg->tls_key, cfg->state_dir, &cause) < 0 ||
	    tls_creds_install(&p, &cause) < 0)
		log_error("tls_reload_failed", "reason=\"%s\" msg=\"the current certificate stays "
		          "in use\"", cause ? cause : "out of memory");
	else
		log_info("tls_reloaded", "sha256=%s", p.fingerprint);
	tls_pair_release(&p);
	free(cause);
}

/* Each connection is a file descriptor: take what the hard limit allows. */
/* Raises the soft open-file limit to the hard one; returns the soft limit
 * (0 if unknown). */
static unsigned long long raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	log_info("nofile_limit", "soft=%llu hard=%llu", (unsigned long long)rl.rlim_cur,
	         (unsigned long long)rl.rlim_max);
	return rl.rlim_cur == RLIM_INFINITY ? ULLONG_MAX : (unsigned long long)rl.rlim_cur;
}

/* Kept aside for everything but the client connections and their upstream
 * websockets: stdio, the queue's database files, the listening and admin
 * sockets, each thread's epoll and eventfd, and one per upstream POST in
 * flight.  The connections' own costs are in fdfit.h. */
#define FDS_RESERVED_BASE 64

/*
 * Fits max-connections (and max-http-connections if need be) into what the
 * open-file limit can hold at worst, in r->max_connections and
 * r->max_http_connections, so that the relay refuses the connections over
 * it (logged once a second) instead of running out of descriptors, which
 * nothing can then be done about.  The worst case is
 * every un-upgraded connection there may be (3 descriptors each) and the
 * rest upgraded websockets, each with its upstream websocket in
 * upstream-protocol websocket.  -1 if the limit cannot hold a single
 * connection.
 */
static int fit_max_connections(struct relay *r, unsigned long long nofile, char **cause)
{
	const struct config *cfg = &r->cfg;
	unsigned long long reserved = FDS_RESERVED_BASE +
	        (unsigned long long)cfg->forward_workers * cfg->forward_inflight +
	        2ULL * (cfg->http_threads + cfg->ws_threads + cfg->forward_workers) +
	        FDFIT_PER_HTTP * (unsigned long long)cfg->http_threads;
	unsigned per_ws = strcmp(cfg->upstream_protocol, "websocket")
	                          ? FDFIT_PER_WEBSOCKET_HTTP_POST
	                          : FDFIT_PER_WEBSOCKET_UPSTREAM_WS;
	struct fdfit fit;

	if (fdfit_solve(&fit, nofile, reserved, cfg->max_connections, cfg->max_http_connections,
	                per_ws) < 0) {
		cause_set(cause, -1, "the open-file limit (%llu) leaves no room for connections: "
		          "%llu are kept for the queue, upstream and threads; raise LimitNOFILE",
		          nofile, reserved);
		return -1;
	}
	if (nofile == 0)
		goto out;
	if (fit.http_lowered)
		log_warn("max_http_connections_lowered",
		         "from=%u to=%u nofile=%llu reserved=%llu fds_per_http=%d "
		         "detail=\"the open-file limit cannot hold more connections being set up: "
		         "raise LimitNOFILE for more\"",
		         cfg->max_http_connections, fit.max_http_connections, nofile, reserved,
		         FDFIT_PER_HTTP);
	if (fit.lowered)
		log_warn("max_connections_lowered",
		         "from=%u to=%u max_http_connections=%u nofile=%llu reserved=%llu "
		         "fds_per_http=%d fds_per_websocket=%u fds_worst_case=%llu detail=\"the "
		         "open-file limit cannot hold more: raise LimitNOFILE for more\"",
		         cfg->max_connections, fit.max_connections, fit.max_http_connections,
		         nofile, reserved, FDFIT_PER_HTTP, per_ws, fit.worst_case);
	else
		log_info("max_connections",
		         "max_connections=%u max_http_connections=%u nofile=%llu reserved=%llu "
		         "fds_per_http=%d fds_per_websocket=%u fds_worst_case=%llu",
		         fit.max_connections, fit.max_http_connections, nofile, reserved,
		         FDFIT_PER_HTTP, per_ws, fit.worst_case);
out:
	/* Over max-connections, max-http-connections is max-connections. */
	r->max_connections = fit.max_connections;
	r->max_http_connections = fit.max_http_connections;
	return 0;
}

/*
 * glibc gives the top of a thread's heap back to the kernel once more than
 * 128 KB of it is free, and faults it in again on the next allocation:
 * each upstream request allocates and frees libcurl's transfer buffers, so
 * a forwarder thread did that for every message (madvise and page faults
 * were ~10% of the CPU while draining, BENCHMARKS.md).  Keeping up to
 * MALLOC_TRIM_BYTES free per heap ends that for a few MB of memory.
 */
#define MALLOC_TRIM_BYTES (4 * 1024 * 1024)

static void tune_malloc(void)
{
#ifdef M_TRIM_THRESHOLD
	mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_BYTES);
#endif
}

/*
 * The state directory holds the queue and the TLS key, and the relay may
 * run as root: it must be a real directory (not a symlink someone placed)
 * owned by this user or by root.  It is opened without following a
 * symlink and checked and chmod'ed through that descriptor, so a path
 * swapped in between is not what gets changed.
 */
static int make_state_dir(const char *dir, char **cause)
{
	const char *why = NULL;
	struct stat st;
	int fd = -1, rc = -1;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		goto out;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		/* O_DIRECTORY makes a symlink ENOTDIR, not ELOOP: say which. */
		if ((errno == ENOTDIR || errno == ELOOP) && lstat(dir, &st) == 0 &&
		    S_ISLNK(st.st_mode))
			why = "is a symlink (refused: give the real directory)";
		goto out;
	}
	if (fstat(fd, &st) < 0)
		goto out;
	if (st.st_uid != geteuid() && st.st_uid != 0) {
		why = "is owned by another user (refused: it must be this user's or root's)";
		goto out;
	}
	/* The queue holds API keys: keep the directory private. */
	if ((st.st_mode & 077) && fchmod(fd, 0700) < 0) {
		/* Kubernetes' fsGroup makes a volume root:GROUP 2775, which only
		 * root may chmod: use it if it is ours to write, since every file
		 * the relay makes in it is 0600. */
		if (errno != EPERM || faccessat(fd, ".", W_OK | X_OK, AT_EACCESS) < 0)
			goto out;
		log_warn("state_dir_mode", "dir=%s mode=%04o msg=\"cannot make it 0700 (not its "
		         "owner); using it since it is writable: the files in it are 0600\"", dir,
		         (unsigned)(st.st_mode & 07777));
	}
	rc = 0;
out:
	if (rc < 0)
		cause_set(cause, -1, "state directory %s: %s", dir, why ? why : strerror(errno));
	if (fd >= 0)
		close(fd);
	return rc;
}

/*
 * What a start would refuse in the configuration itself, checked before
 * anything opens, by --check-config as by a start (both exit 2 on it): the
 * TLS pair loads and is one pair, its key's mode, tls-priorities,
 * trusted-proxy and admin-listen.  Creates no file and opens no socket.
 */
static int check_settings(const struct config *cfg, char **cause)
{
	struct trusted_proxies *tp = NULL;
	gnutls_priority_t prio;
	struct tls_pair p;
	const char *err_pos = NULL;
	int rc;

	if (tls_load_existing(&p, cfg->tls_cert, cfg->tls_key, cfg->state_dir, cause) < 0)
		return -1;
	rc = p.cert_pem ? tls_creds_check(&p, cause) : 0;
	tls_pair_release(&p);
	if (rc < 0)
		return -1;
	if ((rc = gnutls_priority_init(&prio, cfg->tls_priorities, &err_pos)) < 0) {
		cause_set(cause, -1, "tls-priorities: %s at \"%s\"", gnutls_strerror(rc),
		          err_pos ? err_pos : "");
		return -1;
	}
	gnutls_priority_deinit(prio);
	if (trusted_proxies_create(&tp, cfg->trusted_proxies, cause) < 0)
		return -1;
	trusted_proxies_destroy(tp);
	return admin_check_listen(cfg->admin_listen, cfg->admin_allow_remote, cause);
}

/*
 * The CA file upstream connections trust: upstream-ca or the system
 * bundle, plus upstream-ca-extra's certificates when that is set (written
 * together into the state directory at each start).
 */
static int upstream_ca_file(const struct config *cfg, char *path, size_t size, char **cause)
{
	const char *base = *cfg->upstream_ca ? cfg->upstream_ca : FWD_SYSTEM_CA;

	if (!*cfg->upstream_ca_extra) {
		snprintf(path, size, "%s", base);
		return 0;
	}
	snprintf(path, size, "%s/upstream-ca-bundle.pem", cfg->state_dir);
	if (egress_ca_bundle(base, cfg->upstream_ca_extra, path, cause) < 0)
		return -1;
	log_info("upstream_ca", "bundle=%s base=%s extra=%s", path, base, cfg->upstream_ca_extra);
	return 0;
}

/* Settings SIGHUP applies; any other that changed takes a restart. */
static const char *const live_settings[] = {
	"allowed-keys", "allowed-keys-file", "allowed-origins", "log-level", "tls-cert", "tls-key",
};

struct reload {
	bool access, tls, level;
	unsigned restart;                 /* changed settings that wait for a restart */
};

static void on_changed(const char *name, void *arg)
{
	struct reload *rl = arg;

	for (size_t i = 0; i < sizeof live_settings / sizeof live_settings[0]; i++) {
		if (strcmp(name, live_settings[i]))
			continue;
		log_info("setting_changed", "setting=%s msg=\"applied now\"", name);
		if (!strncmp(name, "allowed-", 8))
			rl->access = true;
		else if (!strncmp(name, "tls-", 4))
			rl->tls = true;
		else
			rl->level = true;
		return;
	}
	rl->restart++;
	log_warn("setting_needs_restart", "setting=%s msg=\"changed in the configuration; the "
	         "value in force stays until the relay restarts\"", name);
}

#define SWAP_STR(x, y) do { char *t_ = (x); (x) = (y); (y) = t_; } while (0)

/*
 * SIGHUP: reads the configuration again (the same command line, so it
 * still wins over the file) and applies what can change live; a
 * configuration that would not start is refused as a whole.  The strings
 * swapped into r->cfg are read by this thread only.
 */
static void reload_config(struct relay *r, int argc, char **argv)
{
	struct config fresh;
	struct reload rl = { 0 };
	enum log_level level;
	char *cause = NULL, quoted[512];

	if (config_load(&fresh, argc, argv, &cause) != CONFIG_RUN ||
	    check_settings(&fresh, &cause) < 0) {
		log_error("config_reload_failed",
		          "reason=%s msg=\"the configuration in force stays\"",
		          log_quote(cause ? cause : "bad configuration", quoted, sizeof quoted));
		free(cause);
		config_release(&fresh);
		access_reload(r->access);   /* the keys file still, as before */
		reload_tls(&r->cfg);
		return;
	}
	config_diff(&r->cfg, &fresh, on_changed, &rl);
	if (rl.access) {
		SWAP_STR(r->cfg.allowed_keys, fresh.allowed_keys);
		SWAP_STR(r->cfg.allowed_keys_file, fresh.allowed_keys_file);
		SWAP_STR(r->cfg.allowed_origins, fresh.allowed_origins);
		access_update(r->access, r->cfg.allowed_keys, r->cfg.allowed_keys_file,
		              r->cfg.allowed_origins);
	} else {
		access_reload(r->access);
	}
	if (rl.level && log_parse_level(fresh.log_level, &level) == 0) {
		SWAP_STR(r->cfg.log_level, fresh.log_level);
		log_set_level(level);
	}
	if (rl.tls) {
		SWAP_STR(r->cfg.tls_cert, fresh.tls_cert);
		SWAP_STR(r->cfg.tls_key, fresh.tls_key);
	}
	reload_tls(&r->cfg);
	log_info("config_reloaded", "file=%s settings_waiting_for_restart=%u",
	         r->cfg.config_file && *r->cfg.config_file ? r->cfg.config_file : "-", rl.restart);
	config_release(&fresh);
}

static int wait_for_signal(struct relay *r, int argc, char **argv)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			log_info("sighup", "msg=\"reloading\"");
			reload_config(r, argc, argv);
			continue;
		}
		return sig;
	}
}

/* The forwarder's websockets hand backend text to the SDK's live connection. */
static void backend_text(void *arg, const char *session, const char *text, size_t len)
{
	(void)ws_server_send_text(arg, session, text, len);
}

int main(int argc, char **argv)
{
	struct relay r = { 0 };
	struct queue_options qo;
	struct ws_options wo;
	struct forwarder_options fo;
	struct access_options ao;
	struct tls_pair tls = { 0 };
	struct forwarder *fwd = NULL;
	struct http_server *http = NULL;
	struct admin_server *admin = NULL;
	char *cause = NULL, db_path[PATH_MAX], ca_path[PATH_MAX];
	unsigned long long nofile;
	enum log_level level;
	sigset_t set;
	int rc = 1, sig;

	if (argc > 1 && !strcmp(argv[1], "queue"))
		return cli_queue_main(argc - 1, argv + 1);
	switch (config_load(&r.cfg, argc, argv, &cause)) {
	case CONFIG_EXIT:
		config_release(&r.cfg);
		return 0;
	case CONFIG_ERROR:
		fprintf(stderr, "watchrtc-relay: %s\n", cause ? cause : "bad configuration");
		free(cause);
		config_release(&r.cfg);
		return 2;
	case CONFIG_RUN:
		break;
	}
	if (check_settings(&r.cfg, &cause) < 0) {
		if (r.cfg.check_config)
			fprintf(stderr, "watchrtc-relay: %s\n", cause ? cause : "out of memory");
		else
			log_error("startup_failed",
			          "reason=\"%s\" status=2 msg=\"bad configuration\"",
			          cause ? cause : "out of memory");
		free(cause);
		config_release(&r.cfg);
		return 2;
	}
	if (r.cfg.check_config) {
		printf("configuration ok\n");
		config_release(&r.cfg);
		return 0;
	}
	if (log_parse_level(r.cfg.log_level, &level) == 0)
		log_set_level(level);

	/* Block the signals before any thread starts, so all inherit the mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	nofile = raise_nofile();
	tune_malloc();
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || gnutls_global_init() < 0) {
		cause = strdup("cannot initialise libcurl or GnuTLS");
		goto out;
	}
	if (fit_max_connections(&r, nofile, &cause) < 0)
		goto out;
	if (make_state_dir(r.cfg.state_dir, &cause) < 0)
		goto out;
	if (tls_load(&tls, r.cfg.tls_cert, r.cfg.tls_key, r.cfg.state_dir, &cause) < 0)
		goto out;

	queue_options_init(&qo);
	qo.max_bytes = r.cfg.queue_max_bytes;
	qo.max_messages = r.cfg.queue_max_messages;
	qo.max_age_ms = (uint64_t)r.cfg.queue_max_age_s * 1000;
	qo.commit_window_ms = r.cfg.commit_window_ms;
	qo.on_commit = on_commit;
	qo.on_writable = on_writable;
	qo.close_orphans = !strcmp(r.cfg.upstream_protocol, "websocket");
	snprintf(db_path, sizeof db_path, "%s/queue.db", r.cfg.state_dir);
	if (queue_open(&r.queue, db_path, &qo, &cause) != QUEUE_OK)
		goto out;

	r.keyban = keyban_create(r.cfg.key_reject_ttl_s);
	if (!r.keyban) {
		cause = strdup("out of memory");
		goto out;
	}
	if (trusted_proxies_create(&r.proxies, r.cfg.trusted_proxies, &cause) < 0)
		goto out;
	ao = (struct access_options){
		.keys = r.cfg.allowed_keys,
		.keys_file = r.cfg.allowed_keys_file,
		.origins = r.cfg.allowed_origins,
		.max_conns_per_ip = r.cfg.max_connections_per_ip,
		.max_msgs_per_ip_per_s = r.cfg.max_messages_per_ip_per_s,
		.ip_table_size = r.cfg.ip_table_size,
	};
	if (access_create(&r.access, &ao, &cause) < 0)
		goto out;

	wo = (struct ws_options){
		.threads = r.cfg.ws_threads,
		.max_message_bytes = r.cfg.max_message_bytes,
		.max_queued_frames = r.cfg.ws_max_queued_frames,
		.ping_interval_s = r.cfg.ws_ping_interval_s,
		.interval_ms = r.cfg.hello_interval_ms,
		.send_interval = r.cfg.hello_send_interval,
		.collect_console_log = r.cfg.collect_console_log,
		.console_log_level = r.cfg.console_log_level,
		.project_id = r.cfg.project_id,
		.upstream_ws = !strcmp(r.cfg.upstream_protocol, "websocket"),
	};
	if (ws_server_start(&r.ws, &wo, r.queue, &cause) < 0)
		goto out;

	if (upstream_ca_file(&r.cfg, ca_path, sizeof ca_path, &cause) < 0)
		goto out;
	fo = (struct forwarder_options){
		.upstream = r.cfg.upstream,
		.ca_file = ca_path,
		.proxy = r.cfg.upstream_proxy,
		.insecure = r.cfg.upstream_insecure,
		.workers = r.cfg.forward_workers,
		.inflight = r.cfg.forward_inflight,
		.timeout_ms = r.cfg.upstream_timeout_ms,
		.connect_timeout_ms = r.cfg.upstream_connect_timeout_ms,
		.retry_base_ms = r.cfg.retry_base_ms,
		.retry_max_ms = r.cfg.retry_max_ms,
		/* config.c accepts only "1.1" and "2" */
		.http_version =
	                strcmp(r.cfg.upstream_http_version, "2") ? FWD_HTTP_1_1 : FWD_HTTP_2,
		.websocket = wo.upstream_ws,
		.ws_threads = r.cfg.upstream_ws_threads,
		.fence_messages = r.cfg.upstream_fence_messages,
		.fence_ms = r.cfg.upstream_fence_ms,
		.max_message_bytes = r.cfg.max_message_bytes,
		.ping_interval_ms = r.cfg.ws_ping_interval_s * 1000,
		.backend_text = backend_text,
		.backend_text_arg = r.ws,
	};
	if (forwarder_start(&fwd, r.queue, r.keyban, &fo, &cause) < 0)
		goto out;
	egress_log_proxy(r.cfg.upstream_proxy, r.cfg.upstream);

	if (http_server_start(&http, &r, &tls, &cause) < 0)
		goto out;
	if (admin_server_start(&admin, &r, &cause) < 0)
		goto out;
	log_info("listening", "addr=%s port=%u state_dir=%s upstream=%s instance=%s",
	         r.cfg.listen_address, r.cfg.port, r.cfg.state_dir, r.cfg.upstream,
	         queue_instance_id(r.queue));

	sig = wait_for_signal(&r, argc, argv);
	log_info("shutdown", "signal=%s deadline_ms=%u", sig == SIGINT ? "SIGINT" : "SIGTERM",
	         r.cfg.shutdown_deadline_ms);
	atomic_store(&r.stopping, true);
	rc = 0;
out:
	if (cause) {
		log_error("startup_failed", "reason=\"%s\"", cause);
		free(cause);
	}
	/* Stop the ingress first, so everything received is in the queue
	 * before the forwarders stop and the queue commits its last batch. */
	http_server_quiesce(http);
	if (r.ws)
		ws_server_shutdown(r.ws, r.cfg.shutdown_deadline_ms);
	http_server_stop(http);
	admin_server_stop(admin);
	forwarder_stop(fwd, r.cfg.shutdown_deadline_ms);
	ws_server_stop(r.ws);
	queue_close(r.queue);
	keyban_destroy(r.keyban);
	access_destroy(r.access);   /* after the websockets: they hold its slots */
	trusted_proxies_destroy(r.proxies);
	tls_pair_release(&tls);
	curl_global_cleanup();
	gnutls_global_deinit();
	if (rc == 0)
		log_info("stopped", "status=ok");
	config_release(&r.cfg);
	return rc;
}
