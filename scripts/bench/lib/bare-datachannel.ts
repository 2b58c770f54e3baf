#!/usr/bin/env bun
/**
 * A bare WebRTC data channel between two Bun processes (issue 16): the ceiling of an ICE
 * transport for the hotlink on this machine, per library — werift (pure TypeScript) or
 * @roamhq/wrtc (libwebrtc as a native addon). This process is the offerer and the sender; it
 * starts a copy of itself with `--answer` as the receiver, and the two signal over the child's
 * stdin/stdout (one JSON object a line). Host candidates on 127.0.0.1 only (every other
 * candidate is dropped from the signalling and the SDP), no STUN/TURN, one data channel,
 * ordered and reliable, binary messages. One run measures:
 *   setup      — createOffer() on the sender until the channel's `open` there (ICE, DTLS, SCTP
 *                and the DCEP open), after both processes have loaded the library (load: ms to
 *                import it, the receiver's figure beside it)
 *   latency    — 1 KiB messages ×2000 (after 200 unmeasured), one in flight: the sender stamps
 *                `performance.now()` into the first 8 bytes, the receiver takes receive − stamp
 *                and answers with 1 byte; P50/P99 nearest-rank-low (sorted[floor((n−1)p)]) and
 *                mean, µs. The two processes' clocks are made one by adding the difference of
 *                their `performance.timeOrigin` (wall clock at start, each paired with its
 *                monotonic base; checked against clock_gettime(CLOCK_MONOTONIC) to agree within
 *                ≈ 2 µs between processes). Not `process.hrtime.bigint()`: in Bun 1.4.5 it counts
 *                from the process's start, not CLOCK_MONOTONIC, so it differs per process
 *   throughput — --mib MiB (64) of random bytes in 16 KiB and in 64 KiB messages, the sender
 *                waiting whenever bufferedAmount passes 4 MiB until it is down to 1 MiB (werift:
 *                `bufferedamountlow`; wrtc has none, so a 1 ms poll), so nothing is queued
 *                without bound or dropped; MiB/s = bytes / (last byte received − first send),
 *                and the receiver's byte count and SHA-256 must equal the sender's or the run
 *                fails. A transfer whose bufferedAmount stays above 1 MiB for 20 s is reported
 *                as stalled (werift 0.25.2 does that here), the sizes after it as skipped, and
 *                the run goes on to close. CPU: seconds each process spent (getrusage: every
 *                thread, so libwebrtc's too) per GiB moved.
 * Then both close their peer connection; the receiver must exit by itself (no process.exit)
 * within 5 s or it counts as hung and is killed — `exit` reports which, and the thread count
 * each process had before the library was loaded, with the connection open, and after close.
 * The library is imported lazily from node_modules as seen from this file (NODE_PATH works
 * too), so the script runs with only one of the two installed.
 *
 *   bun scripts/bench/lib/bare-datachannel.ts --lib werift|wrtc [--json] [--mib 64]
 * `--json` prints one JSON object (the `Result` interface) instead of the text.
 */
import { createHash, randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import { parseArgs } from "node:util";
import { describeError } from "../../../src/core/errors.ts";

const LIBS = { werift: "werift", wrtc: "@roamhq/wrtc" } as const;
type LibName = keyof typeof LIBS;
const LATENCY_SIZE = 1024;
const LATENCY_COUNT = 2000;
const LATENCY_WARMUP = 200;
const THROUGHPUT_SIZES = [16 * 1024, 64 * 1024];
const HIGH_WATER = 4 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;
const EXIT_WAIT_MS = 5000;
const STEP_TIMEOUT_MS = 120_000;
/** A transfer whose bufferedAmount does not go down to LOW_WATER for this long has stalled. */
const STALL_MS = 20_000;

const USAGE = `usage: bun scripts/bench/lib/bare-datachannel.ts --lib werift|wrtc [--json] [--mib 64]
  --lib    the WebRTC library: werift (${LIBS.werift}) or wrtc (${LIBS.wrtc}); it must be installed
           in node_modules next to this repository (or on NODE_PATH)
  --json   print one JSON object with the figures instead of text
  --mib    MiB per throughput transfer (default 64)`;

/** A candidate as it travels in the signalling. */
interface Candidate {
  candidate: string;
  sdpMid: string | null;
  sdpMLineIndex: number | null;
}

/** What this benchmark needs of a data channel, the same for both libraries. */
interface Channel {
  send(bytes: Uint8Array): void;
  readonly bufferedAmount: number;
  /** Resolves once bufferedAmount is at most `threshold`. */
  drained(threshold: number): Promise<void>;
  onMessage(message: (bytes: Uint8Array) => void): void;
  onOpen(open: () => void): void;
}

/** What this benchmark needs of a peer connection. */
interface Peer {
  createChannel(label: string): Channel;
  onChannel(channel: (ch: Channel) => void): void;
  onCandidate(candidate: (c: Candidate) => void): void;
  createOffer(): Promise<string>;
  answer(offerSdp: string): Promise<string>;
  acceptAnswer(answerSdp: string): Promise<void>;
  addCandidate(c: Candidate): Promise<void>;
  close(): Promise<void>;
}

/** Loads `lib` and returns a factory of peers; the error says what to install. */
async function loadLib(lib: LibName): Promise<() => Peer> {
  const specifier: string = LIBS[lib];
  let mod: any;
  try {
    mod = await import(specifier);
  } catch (err) {
    throw new Error(`cannot import ${specifier} (${describeError(err)}): install it (bun add ${specifier}) or point NODE_PATH at a node_modules that has it`);
  }
  return lib === "werift" ? () => weriftPeer(mod) : () => wrtcPeer(mod.default ?? mod);
}

const LOOPBACK = "127.0.0.1";

/** True for an ICE candidate line whose connection address is 127.0.0.1. */
function isLoopbackCandidate(candidate: string): boolean {
  // candidate:<foundation> <component> <transport> <priority> <address> <port> typ …
  return candidate.replace(/^a=/, "").split(" ")[4] === LOOPBACK;
}

/** The SDP with every a=candidate line that is not on 127.0.0.1 removed. */
function loopbackOnly(sdp: string): string {
  return sdp
    .split("\r\n")
    .filter((line) => !line.startsWith("a=candidate:") || isLoopbackCandidate(line))
    .join("\r\n");
}

function weriftPeer(mod: any): Peer {
  const pc = new mod.RTCPeerConnection({
    iceServers: [],
    iceUseIpv6: false,
    iceInterfaceAddresses: { udp4: LOOPBACK },
    iceAdditionalHostAddresses: [LOOPBACK],
  });
  const wrap = (dc: any): Channel => ({
    send: (bytes) => dc.send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)),
    get bufferedAmount() {
      return dc.bufferedAmount as number;
    },
    drained(threshold) {
      if (dc.bufferedAmount <= threshold) return Promise.resolve();
      dc.bufferedAmountLowThreshold = threshold;
      return new Promise((resolve) => {
        const { unSubscribe } = dc.bufferedAmountLow.subscribe(() => {
          unSubscribe();
          resolve();
        });
      });
    },
    onMessage: (message) => dc.onMessage.subscribe((data: Buffer | string) => message(typeof data === "string" ? Buffer.from(data) : data)),
    onOpen(open) {
      if (dc.readyState === "open") open();
      else dc.stateChanged.subscribe((state: string) => state === "open" && open());
    },
  });
  return {
    createChannel: (label) => wrap(pc.createDataChannel(label, { ordered: true })),
    onChannel: (channel) => pc.onDataChannel.subscribe((dc: any) => channel(wrap(dc))),
    onCandidate: (candidate) =>
      pc.onIceCandidate.subscribe((c: any) => c?.candidate && candidate({ candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null })),
    async createOffer() {
      await pc.setLocalDescription(await pc.createOffer());
      return loopbackOnly(pc.localDescription.sdp);
    },
    async answer(offerSdp) {
      await pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
      await pc.setLocalDescription(await pc.createAnswer());
      return loopbackOnly(pc.localDescription.sdp);
    },
    acceptAnswer: (answerSdp) => pc.setRemoteDescription({ type: "answer", sdp: answerSdp }),
    addCandidate: (c) => pc.addIceCandidate(c),
    close: () => pc.close(),
  };
}

function wrtcPeer(wrtc: any): Peer {
  const pc = new wrtc.RTCPeerConnection({ iceServers: [] });
  const wrap = (dc: any): Channel => {
    dc.binaryType = "arraybuffer";
    return {
      send: (bytes) => dc.send(bytes),
      get bufferedAmount() {
        return dc.bufferedAmount as number;
      },
      // @roamhq/wrtc 0.10 has neither bufferedAmountLowThreshold nor `bufferedamountlow`
      // (setting them does nothing): poll bufferedAmount, which libwebrtc keeps current.
      async drained(threshold) {
        while (dc.bufferedAmount > threshold) await Bun.sleep(1);
      },
      onMessage(message) {
        dc.onmessage = (e: { data: ArrayBuffer | string }) => message(typeof e.data === "string" ? Buffer.from(e.data) : new Uint8Array(e.data));
      },
      onOpen(open) {
        if (dc.readyState === "open") open();
        else dc.onopen = open;
      },
    };
  };
  return {
    createChannel: (label) => wrap(pc.createDataChannel(label, { ordered: true })),
    onChannel(channel) {
      pc.ondatachannel = (e: { channel: any }) => channel(wrap(e.channel));
    },
    onCandidate(candidate) {
      pc.onicecandidate = (e: { candidate: any }) =>
        e.candidate?.candidate && candidate({ candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid ?? null, sdpMLineIndex: e.candidate.sdpMLineIndex ?? null });
    },
    async createOffer() {
      await pc.setLocalDescription(await pc.createOffer());
      return loopbackOnly(pc.localDescription.sdp);
    },
    async answer(offerSdp) {
      await pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
      await pc.setLocalDescription(await pc.createAnswer());
      return loopbackOnly(pc.localDescription.sdp);
    },
    acceptAnswer: (answerSdp) => pc.setRemoteDescription({ type: "answer", sdp: answerSdp }),
    addCandidate: (c) => pc.addIceCandidate(c),
    async close() {
      pc.close();
    },
  };
}

/** Signalling messages, one JSON object a line on the receiver's stdin/stdout. */
type Signal =
  | { type: "loaded"; loadMs: number; threads: number; timeOrigin: number }
  | { type: "offer"; sdp: string }
  | { type: "answer"; sdp: string }
  | { type: "candidate"; c: Candidate }
  | { type: "latency" }
  | { type: "throughput"; bytes: number }
  | { type: "ready" }
  | { type: "latencies"; us: number[] }
  | { type: "received"; bytes: number; sha256: string; lastMs: number; cpuS: number }
  | { type: "close" }
  | { type: "closed"; threadsOpen: number; threadsClosed: number };
type SignalType = Signal["type"];

/**
 * Reads signals from a byte stream. Candidates go to `candidates`; `next(types)` waits for the
 * next other signal and throws when it is not one of `types`.
 */
class SignalReader {
  #queue: Signal[] = [];
  #waiting: ((s: Signal | null) => void) | null = null;
  #ended = false;
  candidates: (c: Candidate) => void = () => {};
  constructor(stream: ReadableStream<Uint8Array>, what: string) {
    void this.#pump(stream, what);
  }
  async #pump(stream: ReadableStream<Uint8Array>, what: string): Promise<void> {
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of stream) {
      buffered += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        // Anything else on the stream is a library writing to stdout: show it, do not parse it.
        if (!line.startsWith('{"type":')) {
          if (line.trim() !== "") console.error(`${what} printed: ${line}`);
          continue;
        }
        const signal = JSON.parse(line) as Signal;
        if (signal.type === "candidate") this.candidates(signal.c);
        else this.#deliver(signal);
      }
    }
    this.#ended = true;
    this.#deliver(null);
  }
  #deliver(signal: Signal | null): void {
    const waiting = this.#waiting;
    this.#waiting = null;
    if (waiting !== null) waiting(signal);
    else if (signal !== null) this.#queue.push(signal);
  }
  async next<T extends SignalType>(...types: T[]): Promise<Extract<Signal, { type: T }>> {
    const s = this.#queue.shift() ?? (await this.#wait(types));
    if (!(types as SignalType[]).includes(s.type)) throw new Error(`signalling: expected ${types.join(" or ")}, got ${s.type}`);
    return s as Extract<Signal, { type: T }>;
  }
  #wait(types: SignalType[]): Promise<Signal> {
    const what = types.join(" or ");
    if (this.#ended) return Promise.reject(new Error(`signalling: the stream ended before ${what}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`signalling: no ${what} within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
      this.#waiting = (s) => {
        clearTimeout(timer);
        if (s === null) reject(new Error(`signalling: the stream ended before ${what}`));
        else resolve(s);
      };
    });
  }
}

/** Remote candidates, held until the remote description is set (addIceCandidate needs it). */
function candidateSink(peer: Peer, who: string): { add(c: Candidate): void; remoteSet(): void } {
  let held: Candidate[] | null = [];
  const add = (c: Candidate) => void peer.addCandidate(c).catch((err) => console.error(`${who}: addIceCandidate(${c.candidate}): ${describeError(err)}`));
  return {
    add: (c) => (held === null ? add(c) : held.push(c)),
    remoteSet() {
      const now = held ?? [];
      held = null;
      now.forEach(add);
    },
  };
}

/** Resolves once the channel's `open` fires. */
function opened(ch: Channel): Promise<void> {
  return new Promise((resolve) => ch.onOpen(resolve));
}

/** `promise`, or a rejection naming `what` after STEP_TIMEOUT_MS. */
function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: Timer | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Threads of this process now (libwebrtc starts its own). */
function threadCount(): number {
  return readdirSync("/proc/self/task").length;
}

/** CPU seconds of every thread of this process so far (getrusage RUSAGE_SELF). */
function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Settling time before counting threads after close (a sleep: what it shows is a count). */
const SETTLE_MS = 500;

/** The receiver: answers the offer, records what each phase the sender announces sends. */
async function receiver(lib: LibName): Promise<void> {
  const out = (s: Signal) => process.stdout.write(`${JSON.stringify(s)}\n`);
  const threadsBefore = threadCount();
  const t0 = performance.now();
  const newPeer = await loadLib(lib);
  out({ type: "loaded", loadMs: performance.now() - t0, threads: threadsBefore, timeOrigin: performance.timeOrigin });
  const signals = new SignalReader(Bun.stdin.stream(), "the sender");
  const peer = newPeer();
  const sink = candidateSink(peer, "receiver");
  signals.candidates = sink.add;
  peer.onCandidate((c) => isLoopbackCandidate(c.candidate) && out({ type: "candidate", c }));
  const channel = new Promise<Channel>((resolve) => peer.onChannel(resolve));
  const offer = await signals.next("offer");
  const answerSdp = await peer.answer(offer.sdp);
  sink.remoteSet();
  out({ type: "answer", sdp: answerSdp });
  const ch = await within(channel, "the sender's data channel");

  // What a message means depends on the phase the sender announced last.
  let onMessage: (bytes: Uint8Array) => void = () => {};
  ch.onMessage((bytes) => onMessage(bytes));
  const ack = new Uint8Array(1);
  for (;;) {
    const s = await signals.next("latency", "throughput", "close");
    if (s.type === "latency") {
      const us: number[] = [];
      let n = 0;
      onMessage = (bytes) => {
        const now = performance.now();
        const stamp = new DataView(bytes.buffer, bytes.byteOffset, 8).getFloat64(0, true);
        // In this process's time base minus the sender's; the sender adds the difference.
        if (++n > LATENCY_WARMUP) us.push((now - stamp) * 1000);
        ch.send(ack);
        if (n === LATENCY_WARMUP + LATENCY_COUNT) out({ type: "latencies", us });
      };
    } else if (s.type === "throughput") {
      const hash = createHash("sha256");
      let got = 0;
      const cpu0 = cpuSeconds();
      onMessage = (bytes) => {
        hash.update(bytes);
        got += bytes.byteLength;
        if (got < s.bytes) return;
        const lastMs = performance.now();
        out({ type: "received", bytes: got, sha256: hash.digest("hex"), lastMs, cpuS: cpuSeconds() - cpu0 });
        onMessage = () => {};
      };
    } else {
      const threadsOpen = threadCount();
      await peer.close();
      await Bun.sleep(SETTLE_MS);
      out({ type: "closed", threadsOpen, threadsClosed: threadCount() });
      // No process.exit: the process must end by itself once the sender closes stdin.
      return;
    }
    out({ type: "ready" });
  }
}

interface ThreadCounts {
  /** before the library was imported */
  before: number;
  /** with the connection open */
  open: number;
  /** SETTLE_MS after close */
  closed: number;
}

interface Result {
  lib: LibName;
  loadMs: { sender: number; receiver: number };
  setupMs: number;
  latencyUs: { size: number; count: number; p50: number; p99: number; avg: number };
  /**
   * One per message size. "stalled": the channel stopped taking data (bufferedAmount stuck above
   * LOW_WATER for STALL_MS) after `stalledAtBytes`; the sizes after it are "skipped", as the
   * channel is wedged. Figures are null unless "ok".
   */
  throughput: {
    size: number;
    mib: number;
    status: "ok" | "stalled" | "skipped";
    stalledAtBytes: number | null;
    mibPerS: number | null;
    cpuSPerGiB: { sender: number; receiver: number } | null;
  }[];
  threads: { sender: ThreadCounts; receiver: ThreadCounts };
  /** the receiver after its stdin closed: ended by itself ("clean") or killed after EXIT_WAIT_MS */
  exit: { receiver: "clean" | "hung"; ms: number; code: number | null };
}

/** Nearest-rank-low percentile of sorted values. */
function percentile(sorted: number[], p: number): number {
  return sorted[Math.floor((sorted.length - 1) * p)] ?? Number.NaN;
}

/**
 * Sends `data` in `size`-byte messages; past HIGH_WATER buffered, waits for LOW_WATER. Returns
 * null, or the bytes handed to the channel when it stopped draining for STALL_MS (a stall).
 */
async function sendAll(ch: Channel, data: Uint8Array, size: number): Promise<number | null> {
  for (let off = 0; off < data.byteLength; off += size) {
    if (ch.bufferedAmount > HIGH_WATER) {
      let timer: Timer | undefined;
      const stalled = new Promise<true>((resolve) => (timer = setTimeout(() => resolve(true), STALL_MS)));
      const outcome = await Promise.race([ch.drained(LOW_WATER).then(() => false), stalled]);
      clearTimeout(timer);
      if (outcome) return off;
    }
    ch.send(data.subarray(off, Math.min(off + size, data.byteLength)));
  }
  return null;
}

/** The sender: starts the receiver, connects, runs the phases, closes; returns the figures. */
async function sender(lib: LibName, mib: number): Promise<Result> {
  const threadsBefore = threadCount();
  const t0 = performance.now();
  const newPeer = await loadLib(lib);
  const loadMs = performance.now() - t0;
  const child = Bun.spawn([process.execPath, import.meta.path, "--answer", "--lib", lib], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const send = (s: Signal) => {
    child.stdin.write(`${JSON.stringify(s)}\n`);
    void child.stdin.flush();
  };
  try {
    const signals = new SignalReader(child.stdout, "the receiver");
    const loaded = await signals.next("loaded");
    const peer = newPeer();
    const sink = candidateSink(peer, "sender");
    signals.candidates = sink.add;
    peer.onCandidate((c) => isLoopbackCandidate(c.candidate) && send({ type: "candidate", c }));
    const ch = peer.createChannel("bench");
    const open = opened(ch);

    const tSetup = performance.now();
    send({ type: "offer", sdp: await peer.createOffer() });
    const answer = await signals.next("answer");
    await peer.acceptAnswer(answer.sdp);
    sink.remoteSet();
    await within(open, "the data channel's open");
    const setupMs = performance.now() - tSetup;

    let acked: (() => void) | null = null;
    ch.onMessage(() => acked?.());

    send({ type: "latency" });
    await signals.next("ready");
    const message = new Uint8Array(LATENCY_SIZE).fill(0x55);
    const stamp = new DataView(message.buffer);
    for (let i = 0; i < LATENCY_WARMUP + LATENCY_COUNT; i++) {
      const ack = new Promise<void>((resolve) => (acked = resolve));
      stamp.setFloat64(0, performance.now(), true);
      ch.send(message);
      await within(ack, `the answer to message ${i + 1}`);
    }
    acked = null;
    // The receiver's performance.now() minus the sender's, at one instant.
    const originMs = loaded.timeOrigin - performance.timeOrigin;
    const us = (await signals.next("latencies")).us.map((x) => x + originMs * 1000).sort((a, b) => a - b);
    const latencyUs = { size: LATENCY_SIZE, count: us.length, p50: percentile(us, 0.5), p99: percentile(us, 0.99), avg: us.reduce((a, b) => a + b, 0) / us.length };

    const data = new Uint8Array(randomBytes(mib * 1024 * 1024));
    const sha256 = createHash("sha256").update(data).digest("hex");
    const throughput: Result["throughput"] = [];
    for (const size of THROUGHPUT_SIZES) {
      if (throughput.some((x) => x.status !== "ok")) {
        throughput.push({ size, mib, status: "skipped", stalledAtBytes: null, mibPerS: null, cpuSPerGiB: null });
        continue;
      }
      send({ type: "throughput", bytes: data.byteLength });
      await signals.next("ready");
      const cpu0 = cpuSeconds();
      const start = performance.now();
      const stalledAt = await sendAll(ch, data, size);
      if (stalledAt !== null) {
        throughput.push({ size, mib, status: "stalled", stalledAtBytes: stalledAt, mibPerS: null, cpuSPerGiB: null });
        continue;
      }
      const got = await signals.next("received");
      const cpuS = cpuSeconds() - cpu0;
      if (got.bytes !== data.byteLength || got.sha256 !== sha256) {
        throw new Error(`${size}-byte messages: the receiver got ${got.bytes} bytes with SHA-256 ${got.sha256}; sent ${data.byteLength} with ${sha256}`);
      }
      const seconds = (got.lastMs + originMs - start) / 1000;
      const gib = data.byteLength / 2 ** 30;
      throughput.push({ size, mib, status: "ok", stalledAtBytes: null, mibPerS: mib / seconds, cpuSPerGiB: { sender: cpuS / gib, receiver: got.cpuS / gib } });
    }

    const threadsOpen = threadCount();
    send({ type: "close" });
    const closed = await signals.next("closed");
    await peer.close();
    child.stdin.end();
    const tExit = performance.now();
    let timer: Timer | undefined;
    const code = await Promise.race([child.exited, new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), EXIT_WAIT_MS)))]);
    clearTimeout(timer);
    const exitMs = performance.now() - tExit;
    await Bun.sleep(SETTLE_MS);
    return {
      lib,
      loadMs: { sender: loadMs, receiver: loaded.loadMs },
      setupMs,
      latencyUs,
      throughput,
      threads: {
        sender: { before: threadsBefore, open: threadsOpen, closed: threadCount() },
        receiver: { before: loaded.threads, open: closed.threadsOpen, closed: closed.threadsClosed },
      },
      exit: { receiver: code === null ? "hung" : "clean", ms: exitMs, code },
    };
  } finally {
    if (child.exitCode === null) child.kill();
  }
}

function format(r: Result): string {
  const f = (n: number, digits = 0) => n.toFixed(digits);
  const t = r.threads;
  return [
    `bare data channel, ${LIBS[r.lib]} (two Bun processes, 127.0.0.1, ordered + reliable)`,
    `  load          sender ${f(r.loadMs.sender)} ms, receiver ${f(r.loadMs.receiver)} ms`,
    `  setup         ${f(r.setupMs)} ms (createOffer → open)`,
    `  latency       ${r.latencyUs.size} B ×${r.latencyUs.count}: P50 ${f(r.latencyUs.p50)} µs, P99 ${f(r.latencyUs.p99)} µs, avg ${f(r.latencyUs.avg)} µs`,
    ...r.throughput.map((x) => {
      const what = `  throughput    ${x.mib} MiB in ${x.size / 1024} KiB messages:`;
      if (x.status === "skipped") return `${what} skipped (the channel stalled before)`;
      if (x.status === "stalled" || x.mibPerS === null || x.cpuSPerGiB === null) {
        return `${what} STALLED after ${x.stalledAtBytes} bytes: bufferedAmount stuck above ${LOW_WATER} for ${STALL_MS / 1000} s`;
      }
      return `${what} ${f(x.mibPerS, 1)} MiB/s; CPU s/GiB sender ${f(x.cpuSPerGiB.sender, 1)}, receiver ${f(x.cpuSPerGiB.receiver, 1)} (SHA-256 checked)`;
    }),
    `  threads       sender ${t.sender.before} → ${t.sender.open} open → ${t.sender.closed} closed; receiver ${t.receiver.before} → ${t.receiver.open} → ${t.receiver.closed}`,
    `  exit          receiver ${r.exit.receiver === "clean" ? `ended by itself in ${f(r.exit.ms)} ms (code ${r.exit.code})` : `still running ${EXIT_WAIT_MS} ms after close: killed`}`,
  ].join("\n");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      lib: { type: "string" },
      json: { type: "boolean", default: false },
      mib: { type: "string", default: "64" },
      answer: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const lib = values.lib;
  if (lib !== "werift" && lib !== "wrtc") {
    console.error(`--lib must be werift or wrtc${lib === undefined ? "" : `, not ${JSON.stringify(lib)}`}\n${USAGE}`);
    process.exit(2);
  }
  if (values.answer) return receiver(lib);
  const mib = Number(values.mib);
  if (!Number.isInteger(mib) || mib <= 0) {
    console.error(`--mib must be a whole number of MiB above 0, not ${JSON.stringify(values.mib)}\n${USAGE}`);
    process.exit(2);
  }
  const result = await sender(lib, mib);
  console.log(values.json ? JSON.stringify(result) : format(result));
  // Everything is closed; a library that still holds the event loop must not hang the caller.
  setTimeout(() => {
    console.error(`bare-datachannel: still running ${EXIT_WAIT_MS} ms after closing: ${LIBS[lib]} holds the event loop; exiting`);
    process.exit(0);
  }, EXIT_WAIT_MS).unref();
}

await main();
