/**
 * The WebRTC library behind the ICE rungs (ice.ts), as the few calls they make: one peer
 * connection with one negotiated data channel (id 0, ordered, reliable, binary), trickled
 * candidates, the connection's state, and the selected candidate pair (which says whether a
 * TURN relay carries it). The library is @roamhq/wrtc — libwebrtc as a native addon, chosen by
 * measurement over werift (ARCHITECTURE.md, scripts/bench/lib/bare-datachannel.ts) — loaded on
 * first use, so a daemon that never tries ICE never maps it; `bun build --compile` embeds its
 * `.node` file in the single binary.
 */
import { StoaError, describeError } from "../core/errors.ts";

export interface RtcCandidate {
  candidate: string;
  sdpMid: string | null;
  sdpMLineIndex: number | null;
}

export interface RtcChannel {
  /** Queues one message (libwebrtc copies it); false, and nothing sent, once the channel is not open. */
  send(bytes: Uint8Array): boolean;
  readonly open: boolean;
  onOpen(fn: () => void): void;
  onClose(fn: () => void): void;
  onMessage(fn: (bytes: Uint8Array) => void): void;
}

/** One end of the pair ICE selected. `type`: host, srflx, prflx or relay. */
export interface PairEnd {
  type: string;
  address: string;
  port: number;
}

export interface SelectedPair {
  local: PairEnd;
  remote: PairEnd;
}

export interface RtcPeer {
  /** The session's data channel (the same one on both sides: negotiated, id 0). */
  channel(): RtcChannel;
  onCandidate(fn: (c: RtcCandidate) => void): void;
  /** The connection's state as it changes: new, connecting, connected, disconnected, failed, closed. */
  onState(fn: (state: string) => void): void;
  /** Offerer: the local offer's SDP. */
  createOffer(): Promise<string>;
  /** Answerer: takes the offer, returns the answer's SDP. */
  answer(offerSdp: string): Promise<string>;
  /** Offerer: takes the answer. */
  acceptAnswer(answerSdp: string): Promise<void>;
  addCandidate(c: RtcCandidate): Promise<void>;
  selectedPair(): Promise<SelectedPair | null>;
  /**
   * Closes the connection; its channel sends nothing more. The peer's channel then closes on
   * the peer's libwebrtc signalling thread, and in the binding that races a `send` on the
   * peer's event loop: `RTCDataChannel::Send` checks the native channel, copies the message,
   * then reads the channel again, which the close has cleared meanwhile (a segfault of the
   * peer's main thread, seen at 1 ICE-to-TLS handover in 30). So a side closes an open
   * channel only once its peer sends nothing more on it (ice.ts, "Letting go").
   */
  close(): void;
}

export interface RtcIceServer {
  urls: string;
  username?: string;
  credential?: string;
}

// The library's own API is the browser's; these are the parts used here.
interface WrtcDataChannel {
  binaryType: string;
  readyState: string;
  send(data: Uint8Array): void;
  onopen: (() => void) | null;
  onclose: (() => void) | null;
  onmessage: ((e: { data: ArrayBuffer | string }) => void) | null;
}

interface WrtcPeerConnection {
  createDataChannel(label: string, init: { negotiated: boolean; id: number; ordered: boolean }): WrtcDataChannel;
  createOffer(): Promise<{ type: string; sdp: string }>;
  createAnswer(): Promise<{ type: string; sdp: string }>;
  setLocalDescription(d: { type: string; sdp: string }): Promise<void>;
  setRemoteDescription(d: { type: string; sdp: string }): Promise<void>;
  addIceCandidate(c: RtcCandidate): Promise<void>;
  getStats(): Promise<{ forEach(fn: (stat: Record<string, unknown>) => void): void }>;
  readonly localDescription: { sdp: string } | null;
  readonly connectionState: string;
  readonly iceConnectionState: string;
  onicecandidate: ((e: { candidate: { candidate: string; sdpMid?: string | null; sdpMLineIndex?: number | null } | null }) => void) | null;
  onconnectionstatechange: (() => void) | null;
  oniceconnectionstatechange: (() => void) | null;
  close(): void;
}

interface Wrtc {
  RTCPeerConnection: new (config: { iceServers: RtcIceServer[] }) => WrtcPeerConnection;
}

let wrtc: Wrtc | null = null;

function library(): Wrtc {
  if (wrtc !== null) return wrtc;
  try {
    // A static specifier, so that `bun build --compile` embeds the addon.
    const mod = require("@roamhq/wrtc") as Wrtc & { default?: Wrtc };
    wrtc = mod.default ?? mod;
    return wrtc;
  } catch (err) {
    throw new StoaError("internal", `cannot load the WebRTC library (@roamhq/wrtc) for ICE: ${describeError(err)}; run with --direct tls to go without ICE`, { cause: err });
  }
}

/**
 * The candidate pair a connection's statistics (RTCStatsReport entries) say carries it: the
 * transport's selected pair, else a nominated one that succeeded; null when there is none yet.
 */
export function pairFromStats(entries: Iterable<Record<string, unknown>>): SelectedPair | null {
  const stats = new Map<string, Record<string, unknown>>();
  for (const s of entries) stats.set(String(s.id), s);
  let pairId: unknown;
  for (const s of stats.values()) if (s.type === "transport" && typeof s.selectedCandidatePairId === "string") pairId = s.selectedCandidatePairId;
  let pair = pairId === undefined ? undefined : stats.get(String(pairId));
  if (pair === undefined) {
    for (const s of stats.values()) if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated === true) pair = s;
  }
  if (pair === undefined) return null;
  const end = (id: unknown): PairEnd | null => {
    const c = stats.get(String(id));
    if (c === undefined) return null;
    return { type: String(c.candidateType ?? "unknown"), address: String(c.address ?? c.ip ?? "?"), port: Number(c.port ?? 0) };
  };
  const local = end(pair.localCandidateId);
  const remote = end(pair.remoteCandidateId);
  return local === null || remote === null ? null : { local, remote };
}

/**
 * Closed peer connections after which their threads and sockets are released. libwebrtc lets
 * go of a closed connection's (measured: 4 threads and 8 descriptors each) only when the
 * binding's object is collected, and a daemon that allocates little may not collect for hours:
 * 50 sessions' ICE attempts held 400 descriptors and 200 threads. So once this many were closed,
 * a full collection runs `RELEASE_DELAY_MS` later (two: the first runs the
 * binding's finalizers, the second frees what they let go), a few ms on a daemon's heap.
 */
const RELEASE_AFTER_CLOSES = 8;
const RELEASE_DELAY_MS = 1_000;
let closedUnreleased = 0;
let releaseTimer: ReturnType<typeof setTimeout> | undefined;

function releaseClosed(): void {
  closedUnreleased++;
  if (closedUnreleased < RELEASE_AFTER_CLOSES || releaseTimer !== undefined) return;
  releaseTimer = setTimeout(() => {
    releaseTimer = undefined;
    closedUnreleased = 0;
    Bun.gc(true);
    setTimeout(() => Bun.gc(true), 50).unref();
  }, RELEASE_DELAY_MS);
  releaseTimer.unref();
}

/** A peer connection with the session's data channel. Throws StoaError("internal") without the library. */
export function openRtcPeer(iceServers: RtcIceServer[]): RtcPeer {
  const pc = new (library().RTCPeerConnection)({ iceServers });
  const dc = pc.createDataChannel("hlnk", { negotiated: true, id: 0, ordered: true });
  dc.binaryType = "arraybuffer";
  // Every getter and call on the binding's channel blocks on a libwebrtc thread (measured: tens
  // of µs each, ~50 µs under load): the open state is kept from the events, not read per send.
  let state: "connecting" | "open" | "closed" = "connecting";
  const opened: (() => void)[] = [];
  const closedFns: (() => void)[] = [];
  dc.onopen = () => {
    if (state !== "connecting") return;
    state = "open";
    for (const fn of opened.splice(0)) fn();
  };
  dc.onclose = () => {
    if (state === "closed") return;
    state = "closed";
    for (const fn of closedFns.splice(0)) fn();
  };
  const channel: RtcChannel = {
    send(bytes) {
      if (state !== "open") return false;
      try {
        dc.send(bytes);
        return true;
      } catch {
        state = "closed"; // closed under us: its close event follows
        return false;
      }
    },
    get open() {
      return state === "open";
    },
    onOpen(fn) {
      if (state === "open") queueMicrotask(fn);
      else opened.push(fn);
    },
    onClose(fn) {
      closedFns.push(fn);
    },
    onMessage(fn) {
      dc.onmessage = (e) => fn(typeof e.data === "string" ? new TextEncoder().encode(e.data) : new Uint8Array(e.data));
    },
  };
  let closed = false;
  return {
    channel: () => channel,
    onCandidate(fn) {
      pc.onicecandidate = (e) => {
        const c = e.candidate;
        if (c === null || c.candidate === "") return; // the end of gathering
        fn({ candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null });
      };
    },
    onState(fn) {
      // Both: libwebrtc moves the ICE state first when a path stops answering.
      pc.onconnectionstatechange = () => fn(pc.connectionState);
      pc.oniceconnectionstatechange = () => {
        const s = pc.iceConnectionState;
        if (s === "disconnected" || s === "failed" || s === "closed") fn(s);
      };
    },
    async createOffer() {
      await pc.setLocalDescription(await pc.createOffer());
      return pc.localDescription?.sdp ?? "";
    },
    async answer(offerSdp) {
      await pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
      await pc.setLocalDescription(await pc.createAnswer());
      return pc.localDescription?.sdp ?? "";
    },
    acceptAnswer: (answerSdp) => pc.setRemoteDescription({ type: "answer", sdp: answerSdp }),
    addCandidate: (c) => pc.addIceCandidate(c),
    async selectedPair() {
      const stats: Record<string, unknown>[] = [];
      (await pc.getStats()).forEach((stat) => void stats.push(stat));
      return pairFromStats(stats);
    },
    close() {
      if (closed) return;
      closed = true;
      // Nothing goes into the binding's channel from here on, and no event comes out: they are
      // dispatched on a later tick, read from the handlers then.
      state = "closed";
      opened.length = 0;
      closedFns.length = 0;
      pc.onicecandidate = null;
      pc.onconnectionstatechange = null;
      pc.oniceconnectionstatechange = null;
      dc.onopen = null;
      dc.onclose = null;
      dc.onmessage = null;
      pc.close();
      releaseClosed();
    },
  };
}
