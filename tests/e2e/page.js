/*
 * page.js - the test page's call: two RTCPeerConnections in this one page
 * (PC_0 calls PC_1), fake audio+video in each direction and a data
 * channel, so that the watchRTC SDK sees a real call and reports real
 * stats.  The test calls e2eStart(config) through playwright.
 */
"use strict";

// Only loopback candidates are signalled: the call never leaves 127.0.0.1.
function isLoopback(candidate) {
	const addr = candidate.address || candidate.candidate.split(" ")[4] || "";
	return addr === "127.0.0.1" || addr === "::1";
}

function signalCandidates(from, to) {
	from.addEventListener("icecandidate", (ev) => {
		if (ev.candidate && isLoopback(ev.candidate))
			to.addIceCandidate(ev.candidate).catch(() => {});
	});
}

function connected(pc) {
	return new Promise((resolve, reject) => {
		const check = () => {
			if (pc.connectionState === "connected")
				resolve();
			else if (pc.connectionState === "failed")
				reject(new Error("peer connection failed"));
		};
		pc.addEventListener("connectionstatechange", check);
		check();
	});
}

async function addCamera(pc) {
	const stream = await navigator.mediaDevices.getUserMedia({
		audio: true,
		video: { width: 320, height: 240, frameRate: 15 },  // small: the CPU is shared
	});
	for (const track of stream.getTracks())
		pc.addTrack(track, stream);
}

// Resolves once both peer connections are connected and the data channel
// is open; the call then goes on until the page is closed.
window.e2eStart = async function (config) {
	watchRTC.init(config);  // before the peer connections: it wraps them
	const pc0 = new RTCPeerConnection();
	const pc1 = new RTCPeerConnection();
	signalCandidates(pc0, pc1);
	signalCandidates(pc1, pc0);

	const channel = pc0.createDataChannel("e2e");
	const opened = new Promise((resolve) => { channel.onopen = resolve; });
	await addCamera(pc0);
	await pc0.setLocalDescription(await pc0.createOffer());
	await pc1.setRemoteDescription(pc0.localDescription);
	await addCamera(pc1);
	await pc1.setLocalDescription(await pc1.createAnswer());
	await pc0.setRemoteDescription(pc1.localDescription);
	await Promise.all([connected(pc0), connected(pc1), opened]);

	setInterval(() => {
		if (channel.readyState === "open")
			channel.send("ping " + Date.now());
	}, 500);
	window.e2eCall = { pc0, pc1, channel };  // keeps the call alive
	return true;
};
