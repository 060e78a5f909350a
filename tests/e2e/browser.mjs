/*
 * browser.mjs - issues 4 and 16: the real watchRTC SDK (npm, unmodified) in
 * a real browser (Debian's chromium, headless, driven by playwright-core)
 * sends its telemetry through the relay to the backend mock
 * (tests/mock_backend.py), which behaves as the watchRTC backend does.
 *
 * 1. websocket: a page on its own HTTPS origin runs a call between two
 *    RTCPeerConnections; the SDK streams to wss://127.0.0.1:<relay>/websocket
 *    for about SDK_RUN_MS; meanwhile the backend drops the relay's upstream
 *    websocket and refuses upgrades with 503 for OUTAGE_S.  Every message
 *    the relay accepted must reach the backend as a websocket frame on / with
 *    the socket's query and X-Forwarded-For, in order, byte for byte what
 *    the browser sent.
 * 2. fallback: the relay restarts with --websocket false (same port, same
 *    queue); setUserRating() then goes over HTTPS (preflight + POST) and
 *    must reach the backend at /trace, after the session's queued messages.
 * 3. learned hello: the relay restarts with websockets again; a second page
 *    with the same key gets the backend's hello fields from the relay.
 *
 * Run by test_browser.py, in a network namespace that has only loopback;
 * it decides whether the test can run at all and kills every process of
 * it when it ends.  Prints TAP.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import LZString from "lz-string";
import { closeServer, freePort, MockBackend, Relay, startPageServer } from "./procs.mjs";
import { diag, done, eq, failed, ok, sleep, waitUntil, withTimeout } from "./tap.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TESTS_DIR = process.env.TESTS_SRCDIR || path.join(HERE, "..");
const CERTS_DIR = path.join(TESTS_DIR, "certs");
const RELAY_BIN = process.env.RELAY_BIN;
const PYTHON = process.env.E2E_PYTHON || "python3";
const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";

const TEST_DEADLINE_MS = 150000;   // the whole test; test_browser.py kills at a later one
const STEP_TIMEOUT_MS = 30000;     // one browser step (launch, page load, call set-up)
const WS_OPEN_TIMEOUT_MS = 20000;  // the SDK opens its socket ~3 s after the call starts
const SDK_RUN_MS = 26000;          // the SDK streams this long over the websocket
const OUTAGE_AFTER_MS = 6000;      // the upstream outage starts this long after the socket opens
const OUTAGE_S = 10;               // and lasts this long
const DRAIN_TIMEOUT_MS = 20000;    // the queue drains after the outage
const COLLECTION_MS = 1000;        // the page's (and the hello's) stats interval
const MIN_DELTAS_PER_PC = 10;      // getstats reports per PC in SDK_RUN_MS, at least
const FIRST_MESSAGES = 5;          // the watchrtc record and initial batch come among these
const FETCH_SETTLE_MS = 500;       // the SDK logs a failed fetch within this
const ABORT_CLEANUP_MS = 8000;     // cleaning up after a deadline or a signal

const API_KEY = "staging:key123";
const ROOM = "room-e2e";
const PEER = "peer-1";

// As the fixtures were captured (tests/fixtures/watchrtc-sdk/README.md);
// playwright adds --headless, --no-sandbox and --user-data-dir itself
// (headless: true, chromiumSandbox: false, launchPersistentContext).
const CHROMIUM_ARGS = [
	"--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
	"--disable-component-update", "--disable-sync",
	"--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
	"--ignore-certificate-errors",
	// The call on loopback, the only interface there is (and the page
	// signals only loopback candidates).
	"--allow-loopback-in-peer-connection",
];

const SDK_ERROR = /watchRTC\s*(%c)?\s*ERROR/;

// --- what the browser did: console, websockets (through CDP), fetches ---------
function watchBrowser(page, cdp) {
	const seen = { console: [], pageErrors: [], sockets: new Map(), frames: [], received: [],
	               traces: new Map(), phase: "websocket" };
	page.on("console", (m) => seen.console.push({ phase: seen.phase, type: m.type(), text: m.text() }));
	page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
	const socket = (id) => {
		if (!seen.sockets.has(id))
			seen.sockets.set(id, { url: "", request: {}, status: 0, response: {}, closed: false });
		return seen.sockets.get(id);
	};
	cdp.on("Network.webSocketCreated", (e) => { socket(e.requestId).url = e.url; });
	cdp.on("Network.webSocketWillSendHandshakeRequest", (e) => {
		socket(e.requestId).request = e.request.headers;
	});
	cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
		Object.assign(socket(e.requestId), { status: e.response.status, response: e.response.headers });
	});
	cdp.on("Network.webSocketFrameSent", (e) => {
		if (e.response.opcode === 1)
			seen.frames.push({ socket: e.requestId, text: e.response.payloadData });
	});
	cdp.on("Network.webSocketFrameReceived", (e) => {
		if (e.response.opcode === 1)
			seen.received.push({ socket: e.requestId, text: e.response.payloadData });
	});
	cdp.on("Network.webSocketClosed", (e) => { socket(e.requestId).closed = true; });
	// The fallback POSTs and their preflights, as the page's fetch saw them.
	cdp.on("Network.responseReceived", (e) => {
		if (new URL(e.response.url).pathname.endsWith("/trace"))
			seen.traces.set(e.requestId, { type: e.type, status: e.response.status,
			                               allowOrigin: header(e.response.headers, "access-control-allow-origin") });
	});
	cdp.on("Network.loadingFailed", (e) => {
		if (seen.traces.has(e.requestId))
			seen.traces.get(e.requestId).failed = e;
	});
	return seen;
}

function header(headers, name) {
	for (const [k, v] of Object.entries(headers || {}))
		if (k.toLowerCase() === name)
			return v;
	return undefined;
}

// --- what reached the upstream -------------------------------------------------
// A message is plain JSON or LZString's URI-safe encoding of JSON; it holds
// an array of records [name, pcId, data, timestamp] or one flat record.
function decode(text) {
	const json = /^[[{]/.test(text) ? text : LZString.decompressFromEncodedURIComponent(text);
	const value = JSON.parse(json);
	return Array.isArray(value) && Array.isArray(value[0]) ? value : [value];
}

// The session's text frames on the backend's websockets, in order of
// arrival, each message once: a copy (sent again after the drop, before
// its fence) repeats a text already seen.
function delivered(frames, upgrades, sessionId) {
	const conns = new Map(upgrades.filter((u) => u.status === 101 &&
	                                      new URLSearchParams(u.query).get("sessionId") === sessionId)
	                              .map((u) => [u.conn, u]));
	const seen = new Set();
	const out = [];
	let copies = 0;
	for (const f of frames) {
		if (f.opcode !== "text" || !conns.has(f.conn))
			continue;
		if (seen.has(f.text)) {
			copies++;
			continue;
		}
		seen.add(f.text);
		out.push({ ...f, upgrade: conns.get(f.conn) });
	}
	return { frames: out, copies, conns: [...conns.values()] };
}

// --- the phases --------------------------------------------------------------------
async function checkWebsocketPhase(t) {
	const { seen, mock, relay } = t;
	const [sockId, sock] = [...seen.sockets.entries()][0];
	const query = new URL(sock.url).searchParams;
	const sessionId = query.get("sessionId");
	t.sessionId = sessionId;
	eq(sock.status, 101, "the browser's websocket upgrade got 101");
	eq(header(sock.request, "sec-websocket-protocol"), "2.0", "the SDK asked for subprotocol 2.0");
	eq(header(sock.response, "sec-websocket-protocol"), "2.0", "and the relay answered with 2.0");
	ok(query.get("apiKey") === "key123" && query.get("apiVersion") === "v1" && sessionId,
	   "the socket URL carries apiKey=key123, apiVersion=v1 and a sessionId", sock.url);

	// Every message the relay accepted reaches the backend.
	const accepted = await relay.metric('watchrtc_relay_messages_received_total{transport="websocket"}');
	let got = [], d = null;
	await waitUntil(async () => {
		d = delivered(await mock.frames(), await mock.upgrades(), sessionId);
		got = d.frames;
		return got.length >= accepted;
	}, DRAIN_TIMEOUT_MS);
	ok(accepted >= 2 * MIN_DELTAS_PER_PC && got.length >= accepted,
	   "all " + accepted + " messages the relay accepted reached the backend after the outage",
	   "delivered " + got.length);
	const sent = seen.frames.map((f) => f.text);
	const firstBad = got.findIndex((r, i) => r.text !== sent[i]);
	ok(firstBad < 0 && got.length <= sent.length,
	   "as websocket text frames, byte for byte what the browser sent, in the order it sent them",
	   "first difference at message " + firstBad + " of " + got.length + " (browser sent " + sent.length + ")");
	diag("backend: " + d.conns.length + " upstream websockets for the session, " + d.copies +
	     " frames sent again after the drop");
	ok(d.conns.length >= 2, "the dropped upstream websocket was opened again", d.conns.length);
	const sockQuery = new URL(sock.url).search.slice(1);
	ok(d.conns.every((u) => u.path === "/" && u.query === sockQuery),
	   "every upstream websocket is on / with the socket's query, byte for byte",
	   d.conns.map((u) => u.target));
	ok(d.conns.every((u) => header(Object.fromEntries(u.headers), "x-forwarded-for") === "127.0.0.1" &&
	                        header(Object.fromEntries(u.headers), "sec-websocket-protocol") === "2.0"),
	   "each carries X-Forwarded-For: 127.0.0.1 and subprotocol 2.0", d.conns.map((u) => u.headers));

	checkContent(got.map((r) => decode(r.text)));
	const refused = (await mock.upgrades()).filter((u) => u.status === 503).length;
	ok(refused > 0, "the backend outage refused " + refused + " upgrades during the call");
	const retried = await relay.metric('watchrtc_relay_forward_attempts_total{result="retry"}');
	ok(retried > 0, "the relay retried them (" + retried + " retries)");
	t.deliveredWs = got.length;
	return sockId;
}

// The SDK's session: watchrtc and the initial batch first, then periodic
// getstats deltas of both peer connections.
function checkContent(messages) {
	const names = (m) => m.map((rec) => rec[0]);
	const first = messages.slice(0, FIRST_MESSAGES);
	const hello = messages.findIndex((m) => names(m).includes("watchrtc"));
	const initial = messages.findIndex((m) => names(m).includes("create"));
	ok(hello >= 0 && hello < FIRST_MESSAGES, "a watchrtc record comes among the first messages",
	   first.map(names));
	ok(initial >= 0 && initial < FIRST_MESSAGES,
	   "so does the initial batch (getUserMedia, create, SDP and ICE events)", first.map(names));
	// The buffered records go as one batch; whether the first stats and
	// hardware join it or follow it is a race in the SDK.
	const has = (name, pc) => first.flat().some((rec) => rec[0] === name && (!pc || rec[1] === pc));
	ok(has("getstats", "PC_0") && has("getstats", "PC_1") && has("hardware"),
	   "so do the first getstats of PC_0 and PC_1, and hardware", first.map(names));
	if (hello >= 0) {
		const cfg = messages[hello].find((rec) => rec[0] === "watchrtc")[2];
		ok(cfg.rtcApiKey === API_KEY && cfg.rtcRoomId === ROOM && cfg.rtcPeerId === PEER &&
		   [].concat(cfg.keys?.company).includes("acme") && cfg.interval === COLLECTION_MS,
		   "the watchrtc record carries the page's config and the relay's hello interval", cfg);
	}
	for (const pc of ["PC_0", "PC_1"]) {
		const stats = messages.slice(initial + 1).flat().filter((rec) => rec[0] === "getstats" && rec[1] === pc);
		const times = stats.map((rec) => rec[3]);
		const gaps = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
		const median = gaps[gaps.length >> 1];
		ok(stats.length >= MIN_DELTAS_PER_PC && stats.every((rec) => rec[2].getStatsId !== undefined),
		   pc + ": " + stats.length + " getstats reports followed the initial batch");
		ok(gaps.length > 0 && gaps[0] > 0 && median > COLLECTION_MS / 2 && median < COLLECTION_MS * 2,
		   pc + ": in time order, every ~" + COLLECTION_MS + " ms (median " + median + " ms)", gaps);
	}
	const pairs = messages.flat().filter((rec) => rec[0] === "candidatePairIPs").map((rec) => rec[2]);
	ok(pairs.length > 0 && pairs.every((p) => p.local === "127.0.0.1" && p.remote === "127.0.0.1"),
	   "the SDK reported the call's candidate pairs, on loopback", pairs);
	const before = messages.slice(0, Math.max(initial, 0)).flat().filter((rec) => rec[0] === "getstats");
	eq(before.length, 0, "no getstats report came before the initial batch");
}

// Errors in the console during phase, but those that match allow.
function checkConsole(seen, phase, allow = null) {
	const bad = seen.console.filter((m) => m.phase === phase && !allow?.test(m.text) &&
	                                       (SDK_ERROR.test(m.text) || m.type === "error"));
	ok(bad.length === 0 && seen.pageErrors.length === 0, "the SDK logged no error (" + phase + " phase)",
	   bad.map((m) => m.type + ": " + m.text).concat(seen.pageErrors));
}

async function fallbackPhase(t, firstSocket) {
	const { seen, mock, relay, page } = t;
	seen.phase = "fallback";
	eq(await relay.stop(), 0, "the relay stops on SIGTERM with status 0");
	ok(await waitUntil(() => seen.sockets.get(firstSocket).closed, STEP_TIMEOUT_MS),
	   "the browser saw its socket close");
	await relay.start(["--websocket", "false"]);

	await withTimeout(page.evaluate(() => watchRTC.setUserRating(5, "x")), STEP_TIMEOUT_MS, "setUserRating");
	const origin = "https://127.0.0.1:" + t.pageServer.address().port;
	const answers = (type) => [...seen.traces.values()].filter((x) => x.type === type);
	ok(await waitUntil(() => answers("Fetch").length > 0, STEP_TIMEOUT_MS), "the page POSTed the rating");
	eq(answers("Preflight").map((x) => [x.status, x.allowOrigin]), [[204, origin]],
	   "the browser's CORS preflight got 204 allowing the page's origin");
	eq(answers("Fetch").map((x) => [x.status, x.allowOrigin]), [[200, origin]],
	   "the POST to /websocket/trace got 200 allowing the page's origin");
	// The SDK drops the response unread, so Chrome may cancel its (empty)
	// body: that is no failure.  A CORS or network failure would be.
	const failures = [...seen.traces.values()].map((x) => x.failed).filter((f) => f && !f.canceled);
	eq(failures, [], "the page's fetch did not fail");
	ok(await relay.metric('watchrtc_relay_http_requests_total{route="preflight",code="204"}') >= 1,
	   "the relay counted the preflight");
	await sleep(FETCH_SETTLE_MS);
	eq(seen.console.filter((m) => /Failed to fetch/.test(m.text)).map((m) => m.text), [],
	   "the page logged no \"Failed to fetch\"");
	// Expected here, with the socket down: the SDK's note that the relay
	// closed it, its failed reconnects (refused while the relay restarts,
	// then 503) and Chrome's own line for each.
	checkConsole(seen, "fallback",
	             /disconnectedPrematurely|cantConnectToServer|\sEvent$|WebSocket connection to .* failed/);

	let posts = [];
	const trace = await waitUntil(async () => {
		posts = await mock.posts();
		return posts.find((p) => p.path === "/trace" && p.text.includes('"sessionId":"' + t.sessionId + '"'));
	}, DRAIN_TIMEOUT_MS);
	ok(trace, "the rating reached the backend at /trace");
	if (!trace)
		return;
	const body = JSON.parse(trace.text);
	ok(body.data?.[0] === "userRating" && body.data[2]?.rating === 5 && body.data[2]?.ratingComment === "x",
	   "it is the page's userRating 5, \"x\"", body);
	eq(header(Object.fromEntries(trace.headers), "x-forwarded-for"), "127.0.0.1",
	   "with X-Forwarded-For: 127.0.0.1");
	const d = delivered(await mock.frames(), await mock.upgrades(), t.sessionId);
	const last = d.frames[d.frames.length - 1];
	ok(d.frames.length >= t.deliveredWs && last && last.time <= trace.time &&
	   d.frames.every((r, i) => r.text === seen.frames[i]?.text),
	   "after the session's " + d.frames.length + " websocket messages, still in order and unchanged");
}

// A second page of the same key: its hello carries the fields the backend
// gave the first page's upstream websocket (learned, kept across restarts).
async function secondPagePhase(t, config) {
	const { relay } = t;
	eq(await relay.stop(), 0, "the relay stops again");
	await relay.start(["--hello-interval-ms", String(COLLECTION_MS)]);
	const page = await t.context.newPage();
	const cdp = await t.context.newCDPSession(page);
	await cdp.send("Network.enable");
	const seen = watchBrowser(page, cdp);
	seen.phase = "second page";
	await page.goto("https://127.0.0.1:" + t.pageServer.address().port + "/", { timeout: STEP_TIMEOUT_MS });
	await withTimeout(page.evaluate((c) => e2eStart(c), config), STEP_TIMEOUT_MS, "the second call");
	const got = await waitUntil(() => seen.received[0], WS_OPEN_TIMEOUT_MS);
	let hello = {};
	try {
		hello = JSON.parse(got?.text ?? "{}");
	} catch (e) {
		hello = { unparsed: got?.text };
	}
	ok(hello.projectId === "mock-project" && hello.interval === 5000 && hello.sendInterval === 2,
	   "a second page with the same key gets the backend's hello fields", hello);
	ok(typeof hello.connectionId === "string" && hello.connectionId.length === 16,
	   "and a connectionId of the relay's own", hello.connectionId);
	await page.close();
}

async function run(t) {
	const tmp = t.tmp;
	t.mock = await new MockBackend(PYTHON, TESTS_DIR, tmp, fs.readFileSync(path.join(CERTS_DIR, "ca.pem"))).start();
	t.relay = new Relay(RELAY_BIN, { port: await freePort(), stateDir: path.join(tmp, "state"),
	                                 upstreamPort: t.mock.port, certsDir: CERTS_DIR,
	                                 logPath: path.join(tmp, "relay.log") });
	await t.relay.start(["--hello-interval-ms", String(COLLECTION_MS)]);
	const sdk = path.join(HERE, "node_modules", "@testrtc", "watchrtc-sdk", "lib", "index.js");
	t.pageServer = await startPageServer(CERTS_DIR, {
		"/": { path: path.join(HERE, "page.html"), type: "text/html; charset=utf-8" },
		"/page.js": { path: path.join(HERE, "page.js"), type: "text/javascript" },
		"/watchrtc-sdk.js": { path: sdk, type: "text/javascript" },
	});
	diag("mock backend :" + t.mock.port + ", relay :" + t.relay.port + ", page :" +
	     t.pageServer.address().port);

	t.context = await withTimeout(chromium.launchPersistentContext(path.join(tmp, "profile"), {
		executablePath: CHROMIUM, headless: true, chromiumSandbox: false, args: CHROMIUM_ARGS,
		ignoreHTTPSErrors: true, timeout: STEP_TIMEOUT_MS,
		handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false,  // abort() closes it
	}), STEP_TIMEOUT_MS, "launching chromium");
	t.page = t.context.pages()[0] || await t.context.newPage();
	const cdp = await t.context.newCDPSession(t.page);
	await cdp.send("Network.enable");
	t.seen = watchBrowser(t.page, cdp);
	await t.page.goto("https://127.0.0.1:" + t.pageServer.address().port + "/", { timeout: STEP_TIMEOUT_MS });
	ok(await t.page.evaluate(() => typeof watchRTC === "object" && typeof e2eStart === "function"),
	   "the page loaded the SDK bundle from npm");

	const config = { rtcApiKey: API_KEY, rtcRoomId: ROOM, rtcPeerId: PEER, keys: { company: "acme" },
	                 proxyUrl: "wss://127.0.0.1:" + t.relay.port + "/websocket",
	                 collectionInterval: COLLECTION_MS };
	ok(await withTimeout(t.page.evaluate((c) => e2eStart(c), config), STEP_TIMEOUT_MS, "the call"),
	   "the page's two peer connections connected (audio, video, data channel)");
	const opened = await waitUntil(() => [...t.seen.sockets.values()].some((s) => s.status === 101),
	                               WS_OPEN_TIMEOUT_MS);
	if (!ok(opened, "the SDK opened its websocket to the relay", [...t.seen.sockets.values()]))
		return;
	await sleep(OUTAGE_AFTER_MS);
	// The open upstream websocket drops at its next frame; new ones are
	// refused for OUTAGE_S.
	await t.mock.behave({ drop_after: 1, drop_count: 1, refuse_status: 503, retry_after: 1,
	                      refuse_seconds: OUTAGE_S });
	diag("backend drops the upstream websocket and refuses upgrades for " + OUTAGE_S + " s");
	await sleep(SDK_RUN_MS - OUTAGE_AFTER_MS);
	diag("browser sent " + t.seen.frames.length + " messages on " + t.seen.sockets.size + " socket(s)");
	eq(t.seen.sockets.size, 1, "the socket stayed up through the backend outage");
	checkConsole(t.seen, "websocket");
	const first = await checkWebsocketPhase(t);
	await fallbackPhase(t, first);
	await secondPagePhase(t, config);
}

// Stops everything the test started; safe to call more than once.
function cleanup(t) {
	t.cleaning ||= (async () => {
		const steps = [
			["closing the browser", () => t.context?.close()],
			["stopping the relay", () => t.relay?.stop()],
			["stopping the mock backend", () => t.mock?.stop()],
			["closing the page server", () => t.pageServer && closeServer(t.pageServer)],
		];
		for (const [what, fn] of steps)
			await withTimeout(Promise.resolve().then(fn), STEP_TIMEOUT_MS, what).catch((e) => diag(String(e)));
		if (failed() && t.relay?.child)
			diag("relay log (tail):\n" + t.relay.child.logTail());
		fs.rmSync(t.tmp, { recursive: true, force: true });
	})();
	return t.cleaning;
}

// Ends the test early: the deadline passed or someone stopped it.
async function abort(t, why) {
	ok(false, why);
	await withTimeout(cleanup(t), ABORT_CLEANUP_MS, "cleaning up").catch((e) => diag(String(e)));
	process.exit(done());  // the exit handlers kill whatever is left
}

async function main() {
	const t = { tmp: fs.mkdtempSync(path.join(os.tmpdir(), "watchrtc-e2e-")) };
	const deadline = setTimeout(() => abort(t, "the test finished within " + TEST_DEADLINE_MS + " ms"),
	                            TEST_DEADLINE_MS);
	for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"])
		process.on(sig, () => abort(t, "the test was not stopped by " + sig));
	try {
		if (!RELAY_BIN)
			throw new Error("RELAY_BIN is not set (run this test from make check)");
		await run(t);
	} catch (e) {
		ok(false, "the test ran to its end", e.stack || String(e));
	}
	await cleanup(t);
	clearTimeout(deadline);
	process.exitCode = done();
}

main();
