#!/usr/bin/env bun
/**
 * A bare WebRTC data channel between two Bun processes (issue 16): the ceiling of an ICE
 * transport for the hotlink on this machine, per library — werift (pure TypeScript) or
 * @roamhq/wrtc (libwebrtc as a native addon). This process is the offerer and the sender; it
 * starts a copy of itself with `--answer` as the receiver, and the two signal over the child's
 * stdin/stdout (one JSON object a line). By default host candidates on 127.0.0.1 only (every
 * other candidate is dropped from the signalling and the SDP), no STUN/TURN; one data channel,
 * ordered and reliable, binary messages. In a network lab (wrtc only; scripts/bench/hotlink.ts
 * runs it in the NAT lab, lib/hotlink-nat.ts): `--candidates all` lets every gathered candidate
 * through, `--ice-servers stun:HOST:PORT` gives the STUN server for server-reflexive ones, and
 * `--answer-netns NAME` starts the receiver with `ip netns exec NAME` — the caller starts this
 * process in the other namespace. Behind two port-preserving NATs that makes the pair
 * srflx ↔ srflx, as hotlink's daemons' is; `pair` (the sender's getStats, read as
 * src/hotlink/rtc.ts does) says which pair carried it. One run measures:
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
 *   chain      — the same messages and counts, with a Unix stream socket before and after the
 *                channel: the shape of hotlink's ICE rung (application → IPC socket → daemon →
 *                data channel → daemon → IPC socket → application) with no protocol. A third
 *                process, the probe (a copy of this script with `--probe DIR`), writes each
 *                stamped message into a socket the sender serves; the sender sends each 1 KiB it
 *                reads as one message (reads of other sizes are cut or joined to 1 KiB); the
 *                receiver writes each message into a socket the probe serves; the probe takes
 *                receive − stamp (one clock) and writes the next message once it got the last.
 *                The sockets are in a mkdtemp directory under /tmp, removed after the phase (paths,
 *                not abstract sockets: they work across network namespaces too)
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
 *       [--candidates loopback|all] [--ice-servers stun:HOST:PORT,...] [--answer-netns NAME]
 * `--json` prints one JSON object (the `Result` interface) instead of the text.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { describeError } from "../../../src/core/errors.ts";
import { Outbox } from "../../../src/core/outbox.ts";
import { type PairEnd, type SelectedPair, pairFromStats } from "../../../src/hotlink/rtc.ts";

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
       [--candidates loopback|all] [--ice-servers stun:HOST:PORT,...] [--answer-netns NAME]
  --lib          the WebRTC library: werift (${LIBS.werift}) or wrtc (${LIBS.wrtc}); it must be installed
                 in node_modules next to this repository (or on NODE_PATH)
  --json         print one JSON object with the figures instead of text
  --mib          MiB per throughput transfer (default 64)
  --candidates   loopback (default): host candidates on 127.0.0.1 only; all: every candidate gathered
  --ice-servers  comma-separated ICE server URLs, each an RTCIceServer {urls} (default none)
  --answer-netns start the receiver in this network namespace (ip netns exec; needs root)
  The last three need --lib wrtc.`;

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
  /** The candidate pair ICE selected, from getStats as src/hotlink/rtc.ts reads it; wrtc only. */
  selectedPair?(): Promise<SelectedPair | null>;
  close(): Promise<void>;
}

/** Loads `lib` and returns a factory of peers; the error says what to install. */
async function loadLib(lib: LibName, place: Placement): Promise<() => Peer> {
  const specifier: string = LIBS[lib];
  let mod: any;
  try {
    mod = await import(specifier);
  } catch (err) {
    throw new Error(`cannot import ${specifier} (${describeError(err)}): install it (bun add ${specifier}) or point NODE_PATH at a node_modules that has it`);
  }
  return lib === "werift" ? () => weriftPeer(mod) : () => wrtcPeer(mod.default ?? mod, place);
}

const LOOPBACK = "127.0.0.1";
/**
 * Which candidates travel in the signalling and the SDP: "loopback", host candidates on
 * 127.0.0.1 only; "all", every one the library gathered (as the hotlink daemons send them).
 */
const CANDIDATE_POLICIES = ["loopback", "all"] as const;
type CandidatePolicy = (typeof CANDIDATE_POLICIES)[number];

/** Where the channel runs: the candidates it may use, its ICE servers, the receiver's namespace. */
interface Placement {
  candidates: CandidatePolicy;
  /** ICE server URLs (`stun:HOST:PORT`), each one RTCIceServer `{urls}`. */
  iceServers: string[];
  /** The network namespace the receiver runs in (`ip netns exec`), or null: this process's. */
  answerNetns: string | null;
}

const LOOPBACK_PLACEMENT: Placement = { candidates: "loopback", iceServers: [], answerNetns: null };

/** True for an ICE candidate line `policy` lets through. */
function keeps(policy: CandidatePolicy, candidate: string): boolean {
  // candidate:<foundation> <component> <transport> <priority> <address> <port> typ …
  return policy === "all" || candidate.replace(/^a=/, "").split(" ")[4] === LOOPBACK;
}

/** The SDP without the a=candidate lines `policy` drops. */
function keptSdp(policy: CandidatePolicy, sdp: string): string {
  return sdp
    .split("\r\n")
    .filter((line) => !line.startsWith("a=candidate:") || keeps(policy, line))
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
      return keptSdp("loopback", pc.localDescription.sdp);
    },
    async answer(offerSdp) {
      await pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
      await pc.setLocalDescription(await pc.createAnswer());
      return keptSdp("loopback", pc.localDescription.sdp);
    },
    acceptAnswer: (answerSdp) => pc.setRemoteDescription({ type: "answer", sdp: answerSdp }),
    addCandidate: (c) => pc.addIceCandidate(c),
    close: () => pc.close(),
  };
}

function wrtcPeer(wrtc: any, place: Placement): Peer {
  const pc = new wrtc.RTCPeerConnection({ iceServers: place.iceServers.map((urls) => ({ urls })) });
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
      return keptSdp(place.candidates, pc.localDescription.sdp);
    },
    async answer(offerSdp) {
      await pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
      await pc.setLocalDescription(await pc.createAnswer());
      return keptSdp(place.candidates, pc.localDescription.sdp);
    },
    acceptAnswer: (answerSdp) => pc.setRemoteDescription({ type: "answer", sdp: answerSdp }),
    addCandidate: (c) => pc.addIceCandidate(c),
    async selectedPair() {
      const stats: Record<string, unknown>[] = [];
      (await pc.getStats()).forEach((stat: Record<string, unknown>) => void stats.push(stat));
      return pairFromStats(stats);
    },
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
  | { type: "chain"; socket: string }
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
async function receiver(lib: LibName, place: Placement): Promise<void> {
  const out = (s: Signal) => process.stdout.write(`${JSON.stringify(s)}\n`);
  const threadsBefore = threadCount();
  const t0 = performance.now();
  const newPeer = await loadLib(lib, place);
  out({ type: "loaded", loadMs: performance.now() - t0, threads: threadsBefore, timeOrigin: performance.timeOrigin });
  const signals = new SignalReader(Bun.stdin.stream(), "the sender");
  const peer = newPeer();
  const sink = candidateSink(peer, "receiver");
  signals.candidates = sink.add;
  peer.onCandidate((c) => keeps(place.candidates, c.candidate) && out({ type: "candidate", c }));
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
    const s = await signals.next("latency", "chain", "throughput", "close");
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
    } else if (s.type === "chain") {
      // The chain's last hop: each message into the probe's socket as it arrives; the probe
      // closes the connection when it is done.
      const conn = await Bun.connect({ unix: s.socket, socket: { data() {}, drain: () => void toProbe.flush() } });
      const toProbe = new Outbox(conn);
      onMessage = (bytes) => void toProbe.write(bytes);
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

interface LatencyUs {
  size: number;
  count: number;
  p50: number;
  p99: number;
  avg: number;
}

interface Result {
  lib: LibName;
  placement: Placement;
  /** The sender's selected candidate pair after the last phase; null with werift (not read). */
  pair: SelectedPair | null;
  loadMs: { sender: number; receiver: number };
  setupMs: number;
  latencyUs: LatencyUs;
  /** probe → Unix socket → sender → channel → receiver → Unix socket → probe */
  chainLatencyUs: LatencyUs;
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

/** The figures of LATENCY_SIZE-byte latencies, µs. */
function latencySummary(us: number[]): LatencyUs {
  const sorted = [...us].sort((a, b) => a - b);
  return { size: LATENCY_SIZE, count: sorted.length, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), avg: sorted.reduce((a, b) => a + b, 0) / sorted.length };
}

/**
 * Cuts a byte stream into `size`-byte messages whatever the sizes of its reads: call the result
 * with each read; `message` gets each whole message, as a view of the read or, for one that
 * spans reads, a buffer of its own.
 */
function messages(size: number, message: (bytes: Uint8Array) => void): (read: Uint8Array) => void {
  let partial = new Uint8Array(size);
  let have = 0;
  return (read) => {
    let at = 0;
    if (have > 0) {
      at = Math.min(size - have, read.byteLength);
      partial.set(read.subarray(0, at), have);
      have += at;
      if (have < size) return;
      message(partial);
      partial = new Uint8Array(size);
      have = 0;
    }
    for (; at + size <= read.byteLength; at += size) message(read.subarray(at, at + size));
    partial.set(read.subarray(at), 0);
    have = read.byteLength - at;
  };
}

/** The probe's socket and the sender's, in the chain's directory. */
const probeSocket = (dir: string) => join(dir, "probe.sock");
const senderSocket = (dir: string) => join(dir, "sender.sock");

/**
 * The probe of the chain: serves probeSocket(dir) for the receiver, and once it connected,
 * writes stamped messages into senderSocket(dir), one in flight; prints the latencies (µs, its
 * own clock) as a signal, closes both connections and ends.
 */
async function probe(dir: string): Promise<void> {
  const out = (s: Signal) => process.stdout.write(`${JSON.stringify(s)}\n`);
  let arrived: ((us: number) => void) | null = null;
  const take = messages(LATENCY_SIZE, (m) => {
    const now = performance.now();
    arrived?.((now - new DataView(m.buffer, m.byteOffset, 8).getFloat64(0, true)) * 1000);
  });
  const connected = Promise.withResolvers<void>();
  const server = Bun.listen({ unix: probeSocket(dir), socket: { open: () => connected.resolve(), data: (_s, read) => take(read) } });
  out({ type: "ready" });
  await within(connected.promise, "the receiver's connection to the probe");
  const conn = await Bun.connect({ unix: senderSocket(dir), socket: { data() {}, drain: () => void toSender.flush() } });
  // Queued as a view of `message`: it is stamped again only once it came back, so all was written.
  const toSender = new Outbox(conn);
  const message = new Uint8Array(LATENCY_SIZE).fill(0x55);
  const stamp = new DataView(message.buffer);
  const us: number[] = [];
  for (let i = 0; i < LATENCY_WARMUP + LATENCY_COUNT; i++) {
    const back = new Promise<number>((resolve) => (arrived = resolve));
    stamp.setFloat64(0, performance.now(), true);
    toSender.write(message);
    const x = await within(back, `chain message ${i + 1}`);
    if (i >= LATENCY_WARMUP) us.push(x);
  }
  out({ type: "latencies", us });
  conn.end();
  server.stop(true);
}

/** The chain phase (see the module header), with the probe as a third process. */
async function chainLatency(ch: Channel, tellReceiver: (s: Signal) => void, receiverSignals: SignalReader): Promise<LatencyUs> {
  const dir = mkdtempSync("/tmp/bare-dc-");
  let probeProc: Bun.Subprocess<"ignore", "pipe", "inherit"> | null = null;
  try {
    const forward = messages(LATENCY_SIZE, (m) => ch.send(m));
    const server = Bun.listen({ unix: senderSocket(dir), socket: { data: (_s, read) => forward(read) } });
    probeProc = Bun.spawn([process.execPath, import.meta.path, "--probe", dir], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
    const probeSignals = new SignalReader(probeProc.stdout, "the probe");
    await probeSignals.next("ready");
    tellReceiver({ type: "chain", socket: probeSocket(dir) });
    await receiverSignals.next("ready");
    const { us } = await probeSignals.next("latencies");
    const code = await within(probeProc.exited, "the probe's exit");
    if (code !== 0) throw new Error(`the probe exited with code ${code}`);
    server.stop(true);
    return latencySummary(us);
  } finally {
    if (probeProc !== null && probeProc.exitCode === null) probeProc.kill();
    rmSync(dir, { recursive: true, force: true });
  }
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
async function sender(lib: LibName, mib: number, place: Placement): Promise<Result> {
  const threadsBefore = threadCount();
  const t0 = performance.now();
  const newPeer = await loadLib(lib, place);
  const loadMs = performance.now() - t0;
  const answerer = [
    process.execPath, import.meta.path, "--answer", "--lib", lib, "--candidates", place.candidates,
    ...(place.iceServers.length === 0 ? [] : ["--ice-servers", place.iceServers.join(",")]),
  ];
  // `ip netns exec` execs the command: the child's pid is the receiver's, so kill() reaches it.
  const netns = place.answerNetns === null ? [] : [Bun.which("ip") ?? "/usr/sbin/ip", "netns", "exec", place.answerNetns];
  const child = Bun.spawn([...netns, ...answerer], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
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
    peer.onCandidate((c) => keeps(place.candidates, c.candidate) && send({ type: "candidate", c }));
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
    const latencyUs = latencySummary((await signals.next("latencies")).us.map((x) => x + originMs * 1000));
    const chainLatencyUs = await chainLatency(ch, send, signals);

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

    // After every phase: the pair that carried the last transfer.
    const pair = (await peer.selectedPair?.()) ?? null;
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
      placement: place,
      pair,
      loadMs: { sender: loadMs, receiver: loaded.loadMs },
      setupMs,
      latencyUs,
      chainLatencyUs,
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
  const p = r.placement;
  const where = p.candidates === "loopback" ? "127.0.0.1" : `${p.candidates} candidates`;
  const servers = p.iceServers.length === 0 ? "" : `, ICE servers ${p.iceServers.join(" ")}`;
  const end = (e: PairEnd) => `${e.type} ${e.address}:${e.port}`;
  return [
    `bare data channel, ${LIBS[r.lib]} (two Bun processes, ${where}${servers}, ordered + reliable${p.answerNetns === null ? "" : `; receiver in netns ${p.answerNetns}`})`,
    ...(r.pair === null ? [] : [`  pair          ${end(r.pair.local)} ↔ ${end(r.pair.remote)} (the sender's selected pair after the last phase)`]),
    `  load          sender ${f(r.loadMs.sender)} ms, receiver ${f(r.loadMs.receiver)} ms`,
    `  setup         ${f(r.setupMs)} ms (createOffer → open)`,
    `  latency       ${r.latencyUs.size} B ×${r.latencyUs.count}: P50 ${f(r.latencyUs.p50)} µs, P99 ${f(r.latencyUs.p99)} µs, avg ${f(r.latencyUs.avg)} µs`,
    `  chain         ${r.chainLatencyUs.size} B ×${r.chainLatencyUs.count}: P50 ${f(r.chainLatencyUs.p50)} µs, P99 ${f(r.chainLatencyUs.p99)} µs, avg ${f(r.chainLatencyUs.avg)} µs (probe → unix → DC → unix → probe)`,
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
      candidates: { type: "string", default: "loopback" },
      "ice-servers": { type: "string" },
      "answer-netns": { type: "string" },
      answer: { type: "boolean", default: false },
      probe: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (values.probe !== undefined) return probe(values.probe);
  const lib = values.lib;
  if (lib !== "werift" && lib !== "wrtc") {
    console.error(`--lib must be werift or wrtc${lib === undefined ? "" : `, not ${JSON.stringify(lib)}`}\n${USAGE}`);
    process.exit(2);
  }
  const candidates = values.candidates as CandidatePolicy;
  if (!CANDIDATE_POLICIES.includes(candidates)) {
    console.error(`--candidates must be ${CANDIDATE_POLICIES.join(" or ")}, not ${JSON.stringify(values.candidates)}\n${USAGE}`);
    process.exit(2);
  }
  const place: Placement = {
    candidates,
    iceServers: (values["ice-servers"] ?? "").split(",").filter((u) => u !== ""),
    answerNetns: values["answer-netns"] ?? null,
  };
  // werift's peer is built for 127.0.0.1 only and its selected pair is not read here.
  if (lib === "werift" && JSON.stringify(place) !== JSON.stringify(LOOPBACK_PLACEMENT)) {
    console.error(`--candidates, --ice-servers and --answer-netns need --lib wrtc\n${USAGE}`);
    process.exit(2);
  }
  if (values.answer) return receiver(lib, place);
  const mib = Number(values.mib);
  if (!Number.isInteger(mib) || mib <= 0) {
    console.error(`--mib must be a whole number of MiB above 0, not ${JSON.stringify(values.mib)}\n${USAGE}`);
    process.exit(2);
  }
  const result = await sender(lib, mib, place);
  console.log(values.json ? JSON.stringify(result) : format(result));
  // Everything is closed; a library that still holds the event loop must not hang the caller.
  setTimeout(() => {
    console.error(`bare-datachannel: still running ${EXIT_WAIT_MS} ms after closing: ${LIBS[lib]} holds the event loop; exiting`);
    process.exit(0);
  }, EXIT_WAIT_MS).unref();
}

await main();
