/*
 * tap.mjs - TAP output and time bounds for the browser test.
 *
 * The same small vocabulary as tests/relaytest.py (ok, eq, diag, done), so
 * that automake's tap-driver reads this test like the Python ones.
 */

let count = 0;
let failures = 0;

export function diag(msg) {
	for (const line of String(msg).split("\n"))
		process.stdout.write("# " + line + "\n");
}

export function ok(cond, name, detail) {
	count++;
	if (!cond)
		failures++;
	process.stdout.write((cond ? "ok " : "not ok ") + count + " - " + name + "\n");
	if (!cond && detail !== undefined)
		diag(typeof detail === "string" ? detail : JSON.stringify(detail));
	return !!cond;
}

export function eq(got, want, name) {
	const g = JSON.stringify(got);
	const w = JSON.stringify(want);
	return ok(g === w, name, "got " + g + ", want " + w);
}

// Prints the plan; returns the process exit status.
export function done() {
	process.stdout.write("1.." + count + "\n");
	return failures === 0 && count > 0 ? 0 : 1;
}

export function failed() {
	return failures > 0;
}

export function sleep(ms) {
	return new Promise((resolve) => setTimeout(resolve, ms));
}

// Rejects with "WHAT timed out after MS ms" unless promise settles first.
export function withTimeout(promise, ms, what) {
	let timer;
	const timeout = new Promise((_, reject) => {
		timer = setTimeout(() => reject(new Error(what + " timed out after " + ms + " ms")), ms);
	});
	return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Polls the (possibly async) pred until it is truthy or ms pass; returns
// its last value.  A pred that throws counts as falsy.
export async function waitUntil(pred, ms, intervalMs = 200) {
	const end = Date.now() + ms;
	for (;;) {
		let v;
		try {
			v = await pred();
		} catch {
			v = undefined;
		}
		if (v || Date.now() >= end)
			return v;
		await sleep(intervalMs);
	}
}
