/**
 * An HLNK IPC channel: `--ipc CHANNEL=unix:PATH`. Applications connect to the Unix socket
 * (mode 0600) and write HLNK frames (hlnk.ts) whose path is CHANNEL or below it; every peer
 * daemon that declared the same channel delivers each frame, as an HLNK frame, to every
 * application connected to its own socket for that channel.
 *
 * - Sending: one session per channel (pth = CHANNEL, no `to`: every reader), opened on the first
 *   frame. Frames wait, in order, until it is accepted (at most `PENDING_BYTES`; the
 *   applications are not read meanwhile). "no receiver" is retried every `OPEN_RETRY_MS` for
 *   `HOLD_MS`; after that the waiting frames are dropped with an error in the log and the
 *   applications' connections are closed, so a writer learns that its frames went nowhere.
 * - A frame whose path is outside the channel, a payload over the server's Data limit, or bytes
 *   that are not HLNK are a broken application: its connection is closed (and logged). The
 *   decoder resynchronises on garbage, but garbage means lost frames, so it is not tolerated.
 * - Receiving: every peer's session for CHANNEL is accepted; frames go through that session's
 *   reorder buffer to the applications connected now. With none connected, frames are held
 *   (`HOLD_BYTES`, `HOLD_MS`) and delivered to the first one that connects; past either bound
 *   the session is closed with a reason that reaches the sender.
 * The frame's `seq` on delivery is the session's seq (1, 2, …): what the application wrote as
 * seq is not carried (Data has one sequence number, the session's).
 * TCP tunnels are separate code (tunnel.ts; seed 003, lesson 4).
 */
import type { Socket } from "bun";
import type { Logger } from "../core/log.ts";
import { Outbox } from "../core/outbox.ts";
import { type UnixBinding, bindUnix } from "../core/unixsock.ts";
import { HlnkDecoder, type HlnkFrame, HlnkStreamEncoder, hlnkHeader, hlnkPayloadLength } from "./hlnk.ts";
import type { IpcStatus } from "./protocol.ts";
import { type Delivery, Incoming, Outgoing, type SessionTable } from "./sessions.ts";
import { APP_HIGH_WATER, HOLD_BYTES, HOLD_MS, OPEN_RETRY_MS } from "./tunnel.ts";

/** Frame bytes waiting for the session to be accepted before applications stop being read. */
const PENDING_BYTES = 16 * 1024 * 1024;
/** Payloads up to this size are framed for the applications in a reused buffer (larger ones go as their head, then themselves). */
const SCRATCH_PAYLOAD_BYTES = 64 * 1024;
const encoder = new TextEncoder();
/** Outbox.write's options, one object each (not one per delivery). */
const COPY = { copy: true } as const;
const NO_COPY = { copy: false } as const;

export interface IpcSpec {
  channel: string;
  path: string;
}

interface AppState {
  decoder: HlnkDecoder;
  /** Frames for the application that its socket did not take yet. */
  outbox: Outbox | null;
}

type App = Socket<AppState>;

interface Pending {
  /** The application's frame (its payload as it came: `HlnkFrame.src`, `parts`, or `payload`). */
  f: HlnkFrame;
  pth: string;
  etg: string;
}

export class IpcChannel {
  readonly spec: IpcSpec;
  readonly #table: SessionTable;
  readonly #log: Logger;
  #binding: UnixBinding<{ stop(closeActive?: boolean): void }> | null = null;
  readonly #apps = new Set<App>();
  #out: Outgoing | null = null;
  #openingSince = 0;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #pending: Pending[] = [];
  #pendingBytes = 0;
  #appsPaused = false;
  readonly #ins = new Set<Incoming>();
  #held: Uint8Array[] = [];
  readonly #frames = new HlnkStreamEncoder();
  #heldBytes = 0;
  #holdTimer: ReturnType<typeof setTimeout> | undefined;
  #holdingLink = false;
  readonly counters = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, badApps: 0 };

  constructor(spec: IpcSpec, table: SessionTable, log: Logger) {
    this.spec = spec;
    this.#table = table;
    this.#log = log.child({ ipc: spec.channel });
  }

  async listen(): Promise<void> {
    this.#binding = await bindUnix(this.spec.path, (unix) =>
      Bun.listen<AppState>({
        unix,
        data: { decoder: new HlnkDecoder({ views: true }), outbox: null },
        socket: {
          open: (s) => this.#onAppOpen(s),
          data: (s, chunk) => this.#onAppData(s, chunk),
          drain: (s) => this.#flushApp(s),
          close: (s) => this.#onAppClose(s),
          error: (s) => s.terminate(),
        },
      }),
    );
  }

  offer(sid: string, frm: string | undefined): Incoming {
    const session: Incoming = new Incoming(this.#table, sid, this.spec.channel, frm, {
      deliver: (item) => this.#deliver(item),
      ended: (reason) => {
        this.#ins.delete(session);
        if (reason !== null) this.#log.info("an incoming session ended", { sid, from: frm, reason });
      },
    });
    this.#ins.add(session);
    return session;
  }

  onLinkUp(): void {
    if (this.#pending.length > 0 && this.#out === null) this.#openOut();
  }

  onLinkDown(reason: string): void {
    this.#out?.onLinkDown(reason);
    for (const s of [...this.#ins]) s.onLinkDown(reason);
  }

  status(): IpcStatus {
    const out = this.#out;
    return {
      channel: this.spec.channel,
      path: this.spec.path,
      apps: this.#apps.size,
      out: out === null ? null : out.status(),
      in: [...this.#ins].map((s) => ({ ...s.status(), from: s.frm })),
      held: this.#heldBytes,
    };
  }

  async close(reason: string): Promise<void> {
    clearTimeout(this.#retry);
    clearTimeout(this.#holdTimer);
    this.#out?.abort(reason);
    for (const s of [...this.#ins]) s.close(reason);
    for (const app of this.#apps) app.end();
    await this.#binding?.close(true);
    this.#binding = null;
  }

  #onAppOpen(s: App): void {
    s.data = { decoder: new HlnkDecoder({ views: true }), outbox: new Outbox(s) };
    this.#apps.add(s);
    if (this.#appsPaused) s.pause();
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    for (const bytes of held) this.#writeApp(s, bytes, false);
  }

  #onAppClose(s: App): void {
    this.#apps.delete(s);
    const left = s.data.outbox?.queued ?? 0;
    if (left > 0) this.#log.warn("an application left with frames still to be written to it", { bytes: left });
    this.#updateLinkHold();
  }

  #onAppData(s: App, chunk: Uint8Array): void {
    const frames = s.data.decoder.push(chunk);
    if (s.data.decoder.skipped > 0) return this.#badApp(s, "it wrote bytes that are not HLNK frames");
    const channel = this.spec.channel;
    const max = this.#table.link.maxPayload;
    for (const f of frames) {
      if (f.path !== channel && !f.path.startsWith(`${channel}/`)) {
        return this.#badApp(s, `it wrote a frame for ${JSON.stringify(f.path)}, outside the channel ${channel}`);
      }
      const length = hlnkPayloadLength(f);
      if (max > 0 && length > max) {
        return this.#badApp(s, `it wrote a ${length}-byte payload; the relay server takes at most ${max} per frame`);
      }
      this.#send(f, f.path, f.etag);
    }
  }

  #badApp(s: App, why: string): void {
    this.counters.badApps++;
    this.#log.warn(`closing an application connection: ${why}`);
    s.end();
  }

  /** `f`'s payload (a range of its read, or its parts: `pay` is read only for those). */
  #send(f: HlnkFrame, pth: string, etg: string): void {
    const out = this.#out;
    if (out !== null && out.state === "open" && this.#pending.length === 0) {
      this.#transmit(out, f, pth, etg);
      return;
    }
    this.#pending.push({ f, pth, etg });
    this.#pendingBytes += hlnkPayloadLength(f);
    if (this.#pendingBytes > PENDING_BYTES) this.#pauseApps();
    if (out === null) this.#openOut();
  }

  #transmit(out: Outgoing, f: HlnkFrame, pth: string, etg: string): void {
    const path = pth === this.spec.channel ? undefined : pth;
    const etag = etg === "" ? undefined : etg;
    const src = f.src;
    const length = hlnkPayloadLength(f);
    if (src !== undefined) out.sendInPlace(src, f.srcAt ?? 0, length, path, etag);
    else out.send(f.payload, path, etag);
    this.counters.txFrames++;
    this.counters.txBytes += length;
    if (out.busy) {
      this.#pauseApps();
      out.whenWritable(() => this.#resumeApps());
    }
  }

  #openOut(): void {
    if (!this.#table.link.up) return; // onLinkUp opens it
    const out: Outgoing = new Outgoing(this.#table, this.spec.channel, undefined, {
      accepted: () => {
        this.#openingSince = 0;
        const pending = this.#pending;
        this.#pending = [];
        this.#pendingBytes = 0;
        for (const frame of pending) this.#transmit(out, frame.f, frame.pth, frame.etg);
        if (!out.busy) this.#resumeApps();
      },
      ended: (reason, rejected) => {
        if (this.#out !== out) return;
        this.#out = null;
        if (reason === null) return;
        const waited = performance.now() - this.#openingSince;
        if (rejected && this.#openingSince !== 0 && waited < HOLD_MS) {
          this.#retry = setTimeout(() => {
            if (this.#out === null && this.#pending.length > 0) this.#openOut();
          }, OPEN_RETRY_MS);
          return;
        }
        this.#openingSince = 0;
        if (this.#pending.length > 0) {
          this.#log.error("frames could not be delivered; closing the applications' connections", {
            reason,
            frames: this.#pending.length,
          });
          this.#pending = [];
          this.#pendingBytes = 0;
          for (const app of this.#apps) app.end();
        }
      },
    });
    this.#out = out;
    if (this.#openingSince === 0) this.#openingSince = performance.now();
    out.open();
  }

  #pauseApps(): void {
    if (this.#appsPaused) return;
    this.#appsPaused = true;
    for (const app of this.#apps) app.pause();
  }

  #resumeApps(): void {
    if (!this.#appsPaused || this.#pendingBytes > PENDING_BYTES) return;
    // The transport the session uses (its direct connection or the relay), or the relay.
    const transport = this.#out ?? this.#table.link;
    if (transport.busy) {
      transport.whenWritable(() => this.#resumeApps());
      return;
    }
    this.#appsPaused = false;
    for (const app of this.#apps) app.resume();
  }

  #deliver(item: Delivery): void {
    this.counters.rxFrames++;
    this.counters.rxBytes += item.byteLength;
    const path = item.pth ?? this.spec.channel;
    const etag = item.etg ?? "";
    if (this.#apps.size > 0 && item.byteLength <= SCRATCH_PAYLOAD_BYTES && item.parts === undefined) {
      // A small frame goes through one reused buffer: the socket takes it whole almost always,
      // and the outbox copies what it does not (no garbage per delivery, fewer collections).
      const src = item.src;
      const frame = src === undefined ? this.#frames.encode(path, etag, item.seq, item.pay) : this.#frames.encodeRange(path, etag, item.seq, src, item.srcAt ?? 0, item.byteLength);
      for (const app of this.#apps) this.#writeApp(app, frame, true);
      return;
    }
    // A large one goes as its head, then its payload as it came (a view, or the views of the
    // reads it spanned): those bytes are never copied on the way to the applications.
    const pieces = [hlnkHeader(encoder.encode(path), encoder.encode(etag), item.byteLength, BigInt(item.seq)), ...(item.parts ?? [item.pay])];
    if (this.#apps.size > 0) {
      for (const app of this.#apps) for (const piece of pieces) this.#writeApp(app, piece, false);
      return;
    }
    const bytes = (pieces[0]?.byteLength ?? 0) + item.byteLength;
    if (this.#heldBytes + bytes > HOLD_BYTES) {
      for (const s of [...this.#ins]) s.close(`no application connected to ${this.spec.path} and ${HOLD_BYTES} bytes already held`);
      return;
    }
    this.#held.push(...pieces);
    this.#heldBytes += bytes;
    if (this.#holdTimer === undefined) {
      this.#holdTimer = setTimeout(() => {
        this.#holdTimer = undefined;
        if (this.#apps.size > 0) return;
        const why = `no application connected to ${this.spec.path} within ${HOLD_MS / 1000} s`;
        this.#log.error("dropping held frames", { reason: why, bytes: this.#heldBytes });
        this.#held = [];
        this.#heldBytes = 0;
        for (const s of [...this.#ins]) s.close(why);
      }, HOLD_MS);
    }
  }

  /** `copy`: `bytes` is the reused scratch buffer (what the socket does not take is copied). */
  #writeApp(app: App, bytes: Uint8Array, copy: boolean): void {
    const outbox = app.data.outbox;
    outbox?.write(bytes, copy ? COPY : NO_COPY);
    // Taken whole with the link not held (every delivery, nearly): nothing to look at.
    if (!this.#holdingLink && (outbox?.queued ?? 0) === 0) return;
    this.#updateLinkHold();
  }

  #flushApp(app: App): void {
    app.data.outbox?.flush();
    this.#updateLinkHold();
  }

  /** The relay socket is not read while any application is too far behind. */
  #updateLinkHold(): void {
    let behind = false;
    for (const app of this.#apps) if ((app.data.outbox?.queued ?? 0) > APP_HIGH_WATER) behind = true;
    if (behind && !this.#holdingLink) {
      this.#holdingLink = true;
      this.#table.hold(this);
    } else if (!behind && this.#holdingLink) {
      this.#holdingLink = false;
      this.#table.release(this);
    }
  }
}
