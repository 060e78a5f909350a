/*
 * procs.mjs - the processes and servers around the browser: the relay
 * under test, the mock upstream (tests/mock_upstream.py) and the HTTPS
 * server of the test page.  Everything listens on 127.0.0.1 only.
 *
 * Every child is started in this process's group (the wrapper,
 * test_browser.py, kills that whole group when the test ends, whatever
 * happened) and is also killed here on exit, so none outlives the test.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import https from "node:https";
import net from "node:net";
import path from "node:path";
import { waitUntil, withTimeout } from "./tap.mjs";

const REQUEST_TIMEOUT_MS = 5000;    // one control or metrics request
const START_TIMEOUT_MS = 15000;     // a child up and answering
const STOP_TIMEOUT_MS = 10000;      // SIGTERM to exit, before SIGKILL
const LOG_TAIL_BYTES = 3000;        // of a child's log, shown on failure

const children = new Set();
process.on("exit", () => {
	for (const child of children)
		child.kill("SIGKILL");
});

// A child process whose output goes to a log file.
export class Child {
	constructor(argv, logPath, stdin = "ignore") {
		this.logPath = logPath;
		const fd = fs.openSync(logPath, "a");
		this.proc = spawn(argv[0], argv.slice(1), { stdio: [stdin, fd, fd] });
		fs.closeSync(fd);
		this.code = undefined;
		this.exited = new Promise((resolve) => {
			this.proc.on("exit", (code, signal) => {
				this.code = code === null ? signal : code;
				children.delete(this.proc);
				resolve(this.code);
			});
			this.proc.on("error", (err) => {
				this.code = String(err);
				children.delete(this.proc);
				resolve(this.code);
			});
		});
		children.add(this.proc);
	}

	running() {
		return this.code === undefined;
	}

	// Sends sig and waits for the exit (SIGKILL after STOP_TIMEOUT_MS);
	// returns the exit status, or the signal that ended it.
	async stop(sig = "SIGTERM") {
		if (!this.running())
			return this.code;
		this.proc.kill(sig);
		try {
			return await withTimeout(this.exited, STOP_TIMEOUT_MS, "stopping " + this.logPath);
		} catch {
			this.proc.kill("SIGKILL");
			await this.exited;
			return "timeout";
		}
	}

	logTail() {
		try {
			const text = fs.readFileSync(this.logPath, "utf8");
			return text.slice(-LOG_TAIL_BYTES);
		} catch {
			return "";
		}
	}
}

export function freePort() {
	return new Promise((resolve, reject) => {
		const srv = net.createServer();
		srv.on("error", reject);
		srv.listen(0, "127.0.0.1", () => {
			const { port } = srv.address();
			srv.close(() => resolve(port));
		});
	});
}

// One HTTPS request to 127.0.0.1:port, verified against the test CA;
// resolves to { status, body } (body as a string).
export function request(ca, port, method, urlPath, body) {
	return new Promise((resolve, reject) => {
		const req = https.request({ host: "127.0.0.1", port, method, path: urlPath, ca,
		                            headers: body ? { "Content-Type": "application/json" } : {},
		                            agent: false, timeout: REQUEST_TIMEOUT_MS }, (res) => {
			const parts = [];
			res.on("data", (d) => parts.push(d));
			res.on("end", () => resolve({ status: res.statusCode,
			                              body: Buffer.concat(parts).toString("utf8") }));
			res.on("error", reject);
		});
		req.on("timeout", () => req.destroy(new Error(method + " " + urlPath + " timed out")));
		req.on("error", reject);
		req.end(body ? JSON.stringify(body) : undefined);
	});
}

// tests/mock_upstream.py, which records what the relay forwards.
export class MockUpstream {
	constructor(python, testsDir, tmpDir, ca, script = "mock_upstream.py") {
		this.ca = ca;
		this.child = new Child([python, path.join(testsDir, script), "--port", "0",
		                        "--exit-on-eof"], path.join(tmpDir, script + ".log"), "pipe");
		// Its stdout is the log file; the port is the log's first line.
		this.port = 0;
	}

	async start() {
		const line = await waitUntil(() => {
			const m = /^PORT (\d+)$/m.exec(this.child.logTail());
			return m ? m[1] : (this.child.running() ? undefined : "exited");
		}, START_TIMEOUT_MS, 50);
		if (!line || line === "exited")
			throw new Error("mock upstream did not start:\n" + this.child.logTail());
		this.port = Number(line);
		return this;
	}

	// Every recorded request, oldest first (see the top of mock_upstream.py).
	async requests() {
		const res = await request(this.ca, this.port, "GET", "/_mock/requests");
		if (res.status !== 200)
			throw new Error("mock upstream /_mock/requests answered " + res.status);
		return JSON.parse(res.body);
	}

	async behave(spec) {
		const res = await request(this.ca, this.port, "POST", "/_mock/behave", spec);
		if (res.status !== 200)
			throw new Error("mock upstream /_mock/behave answered " + res.status);
	}

	async stop() {
		this.child.proc.stdin?.end();
		return this.child.stop();
	}
}

// tests/mock_backend.py: the backend as the SDK sees it (websocket on /,
// hello first; POST /trace and /error), with its records over HTTPS.
export class MockBackend extends MockUpstream {
	constructor(python, testsDir, tmpDir, ca) {
		super(python, testsDir, tmpDir, ca, "mock_backend.py");
	}

	async records(kind) {
		const res = await request(this.ca, this.port, "GET", "/_mock/" + kind);
		if (res.status !== 200)
			throw new Error("mock backend /_mock/" + kind + " answered " + res.status);
		return JSON.parse(res.body);
	}

	upgrades() { return this.records("upgrades"); }
	frames() { return this.records("frames"); }
	posts() { return this.records("posts"); }
}

// The relay under test.  It keeps its port and state directory across
// restarts, as a real deployment would.
export class Relay {
	constructor(bin, { port, stateDir, upstreamPort, certsDir, logPath }) {
		Object.assign(this, { bin, port, stateDir, upstreamPort, certsDir, logPath });
		this.ca = fs.readFileSync(path.join(certsDir, "ca.pem"));
		this.child = null;
	}

	// The relay refuses a key others can read, and a fresh clone's files
	// are 0644: it gets a private copy.
	privateKey() {
		const key = path.join(path.dirname(this.stateDir), "server-key.pem");
		if (!fs.existsSync(key)) {
			fs.copyFileSync(path.join(this.certsDir, "server-key.pem"), key);
			fs.chmodSync(key, 0o600);
		}
		return key;
	}

	async start(extraArgs = []) {
		const argv = [this.bin, "--listen-address", "127.0.0.1", "--port", String(this.port),
		              "--state-dir", this.stateDir,
		              "--tls-cert", path.join(this.certsDir, "server.pem"),
		              "--tls-key", this.privateKey(),
		              "--upstream", "https://127.0.0.1:" + this.upstreamPort,
		              "--upstream-ca", path.join(this.certsDir, "ca.pem"),
		              "--retry-base-ms", "100", "--retry-max-ms", "1000",
		              "--log-level", "debug", ...extraArgs];
		fs.appendFileSync(this.logPath, "=== " + argv.join(" ") + "\n");
		this.child = new Child(argv, this.logPath);
		const live = await waitUntil(async () => {
			if (!this.child.running())
				return "exited";
			return (await request(this.ca, this.port, "GET", "/healthcheck/live")).status === 200;
		}, START_TIMEOUT_MS);
		if (live !== true)
			throw new Error("relay did not come up" + (this.child.running() ? "" : " (exit status " +
			                this.child.code + ")") + ":\n" + this.child.logTail());
		return this;
	}

	async stop() {
		return this.child ? this.child.stop() : undefined;
	}

	// The value of the sample named exactly so (labels included), or NaN.
	async metric(sample) {
		const res = await request(this.ca, this.port, "GET", "/metrics");
		for (const line of res.body.split("\n")) {
			const at = line.lastIndexOf(" ");
			if (!line.startsWith("#") && line.slice(0, at) === sample)
				return Number(line.slice(at + 1));
		}
		return NaN;
	}
}

// The test page's own HTTPS origin (a port of its own, so the relay is
// cross-origin to it): the page, its script and the SDK bundle.
export function startPageServer(certsDir, files) {
	const server = https.createServer({
		cert: fs.readFileSync(path.join(certsDir, "server.pem")),
		key: fs.readFileSync(path.join(certsDir, "server-key.pem")),
	}, (req, res) => {
		const file = files[req.url];
		if (req.method !== "GET" || !file) {
			res.writeHead(404).end();
			return;
		}
		res.writeHead(200, { "Content-Type": file.type, "Cache-Control": "no-store" });
		res.end(fs.readFileSync(file.path));
	});
	return new Promise((resolve, reject) => {
		server.on("error", reject);
		server.listen(0, "127.0.0.1", () => resolve(server));
	});
}

export async function closeServer(server) {
	server.closeAllConnections();
	await withTimeout(new Promise((resolve) => server.close(resolve)), STOP_TIMEOUT_MS,
	                  "closing the page server").catch(() => {});
}
