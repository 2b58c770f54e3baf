/**
 * The daemon's telemetry file (`--telemetry FILE`), in the spirit of the seed's
 * hotlink_telemetry.json: rewritten atomically (core/atomicfile.ts, so a reader never sees half
 * a file) every `TELEMETRY_INTERVAL_MS`, and once more at stop.
 *
 * Fields: `time`; `mode` ("relay" — "direct" and "mixed" once a path of its own carries a
 * session's data); `connected`; `tx`/`rx` {packets, bytes} over every path, and `relay`,
 * `direct` (TLS), `ice` and `turn` with the same split per path; `latency_us` {send_avg, send_max, write_avg, write_max} — send: encoding and
 * handing one Data to the relay socket; write: handing one delivery to the local application;
 * `direct` and `ice` also {offers, answers, failures, fallbacks}; `sessions`: the tunnels' and
 * channels' status, with each session's rung and why the rungs above it failed.
 */
import { writeFileAtomic } from "../core/atomicfile.ts";
import type { Logger } from "../core/log.ts";

const TELEMETRY_INTERVAL_MS = 1_000;

/** Average and maximum of durations, in microseconds. */
class LatencyStat {
  count = 0;
  sumUs = 0;
  maxUs = 0;

  add(us: number): void {
    this.count++;
    this.sumUs += us;
    if (us > this.maxUs) this.maxUs = us;
  }

  get avgUs(): number {
    return this.count === 0 ? 0 : this.sumUs / this.count;
  }
}

/** Packets and bytes of session Data on one path. */
export interface PathCounters {
  txPackets: number;
  txBytes: number;
  rxPackets: number;
  rxBytes: number;
}

/** Counters every part of the daemon adds to. */
export class DaemonCounters {
  readonly relay: PathCounters = { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0 };
  /** The TLS direct path: its Data, and its offers, upgrades, failed dials and fallbacks. */
  readonly direct = { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, offers: 0, answers: 0, failures: 0, fallbacks: 0 };
  /** ICE between host or server-reflexive candidates: its Data, and its attempts and outcomes (TURN's too). */
  readonly ice = { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, offers: 0, answers: 0, failures: 0, fallbacks: 0 };
  /** ICE through a TURN server's relay candidate: its Data. */
  readonly turn: PathCounters = { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0 };
  readonly send = new LatencyStat();
  readonly write = new LatencyStat();
}

interface TelemetrySource {
  connected(): boolean;
  counters: DaemonCounters;
  sessions(): unknown;
  /** Relay streams (relay-stream.ts): connections carried and their bytes; absent, none. */
  streams?(): { connections: number; txBytes: number; rxBytes: number };
}

function telemetrySnapshot(source: TelemetrySource): Record<string, unknown> {
  const c = source.counters;
  const r = c.relay;
  const paths = [c.direct, c.ice, c.turn];
  const off = paths.reduce((n, p) => n + p.txPackets + p.rxPackets, 0);
  const mode = off === 0 ? "relay" : r.txPackets + r.rxPackets === 0 ? "direct" : "mixed";
  const st = source.streams?.() ?? { connections: 0, txBytes: 0, rxBytes: 0 };
  const streamBytes = { txPackets: 0, rxPackets: 0, txBytes: st.txBytes, rxBytes: st.rxBytes };
  const sum = (key: "txPackets" | "txBytes" | "rxPackets" | "rxBytes"): number => r[key] + streamBytes[key] + paths.reduce((n, p) => n + p[key], 0);
  const split = (p: PathCounters) => ({ tx: { packets: p.txPackets, bytes: p.txBytes }, rx: { packets: p.rxPackets, bytes: p.rxBytes } });
  const upgrades = (d: DaemonCounters["direct"]) => ({ offers: d.offers, answers: d.answers, failures: d.failures, fallbacks: d.fallbacks });
  return {
    time: new Date().toISOString(),
    mode,
    connected: source.connected(),
    tx: { packets: sum("txPackets"), bytes: sum("txBytes") },
    rx: { packets: sum("rxPackets"), bytes: sum("rxBytes") },
    relay: split(r),
    direct: { ...split(c.direct), ...upgrades(c.direct) },
    ice: { ...split(c.ice), ...upgrades(c.ice) },
    turn: split(c.turn),
    stream: { connections: st.connections, tx: { bytes: st.txBytes }, rx: { bytes: st.rxBytes } },
    latency_us: {
      send_avg: round(c.send.avgUs),
      send_max: round(c.send.maxUs),
      write_avg: round(c.write.avgUs),
      write_max: round(c.write.maxUs),
    },
    sessions: source.sessions(),
  };
}

const round = (x: number): number => Math.round(x * 10) / 10;

/** Writes `file` now and every interval until `stop()` (which writes it a last time). */
export function startTelemetry(file: string, source: TelemetrySource, log: Logger): { stop(): void } {
  let failed = false;
  const write = (): void => {
    try {
      // Not durable: rewritten every second on the event loop, where an fsync could stall the
      // data path, and a lost last version is harmless.
      writeFileAtomic(file, `${JSON.stringify(telemetrySnapshot(source), null, 2)}\n`, { mode: 0o644, durable: false, what: "telemetry file" });
      failed = false;
    } catch (err) {
      if (!failed) log.warn("cannot write the telemetry file", { file, err });
      failed = true;
    }
  };
  write();
  const timer = setInterval(write, TELEMETRY_INTERVAL_MS);
  timer.unref();
  return {
    stop: () => {
      clearInterval(timer);
      write();
    },
  };
}
