/**
 * The hotlink client daemon (`stoa hotlink connect`): one relay link, the tunnels and IPC
 * channels declared for it, and the dispatch of server messages to their sessions.
 *
 * - Sessions are found by sid. An Open from the server is offered to the tunnel or IPC channel
 *   declared for its path (tunnels first: a path is one or the other, never both — seed 003,
 *   lesson 4); nobody here for it → Reject.
 * - When the relay link drops, every session ends (the server dropped them too): tunnels reset
 *   their application connections, IPC channels keep their applications and re-open on the
 *   next frame. The link reconnects with backoff.
 * - Channels come from flags at start, and later from the control socket (control.ts) or marker
 *   files (watch.ts); each remembers where it came from (`origin`, shown by `ls`). At most
 *   `MAX_CHANNELS` of them.
 */
import type { Logger } from "../core/log.ts";
import { StoaError } from "../core/errors.ts";
import { RelayLink } from "./link.ts";
import type { RelayLinkMode } from "./framed-link.ts";
import { type IceServer, parseIceServers, shownIceServer } from "./ice-servers.ts";
import { IpcChannel, type IpcSpec } from "./ipc.ts";
import { type ChannelOrigin, type DaemonStatus, type HotlinkMessage, MAX_CHANNELS, MessageType } from "./protocol.ts";
import { type Incoming, SessionTable } from "./sessions.ts";
import { startTelemetry } from "./telemetry.ts";
import { Tunnel, type TunnelSpec } from "./tunnel.ts";

interface DaemonOptions {
  /** ws://host:port/v1/hotlink (a bare ws://host:port gets the path added). */
  server: string;
  user: string;
  token: string;
  tunnels?: TunnelSpec[];
  ipc?: IpcSpec[];
  log: Logger;
  /** Reconnect backoff floor in ms. */
  minDelayMs?: number;
  /** The relay link (link.ts): "auto" (default) takes the relay's framed link when offered. */
  linkMode?: RelayLinkMode;
  /** Tunnels ride relay streams when the relay offers them (relay-stream.ts). Default true. */
  relayStreams?: boolean;
  /** Rewrite this JSON file every second (telemetry.ts). */
  telemetry?: string;
  /**
   * Direct paths (direct.ts): listen on `listen` ("::" for every address) for the sessions this
   * daemon receives, offering `advertise` (default: this host's addresses); and dial the
   * offers of the sessions it sends. Absent: relay only.
   */
  direct?: { listen: string; advertise?: string[] };
  /**
   * The ICE rungs (ice.ts): offer an ICE path for the sessions this daemon receives when TLS
   * failed or is off, and answer the offers of those it sends. `servers`: STUN/TURN servers;
   * absent, the relay server's from Welcome. Absent: no ICE.
   */
  ice?: { servers?: IceServer[] };
}

export class HotlinkDaemon {
  readonly #options: DaemonOptions;
  readonly #log: Logger;
  readonly link: RelayLink;
  /** Every session of this daemon, its path settings and counters (sessions.ts). */
  readonly sessions: SessionTable;
  readonly #tunnels = new Map<string, Tunnel>();
  readonly #ipc = new Map<string, IpcChannel>();
  readonly #origins = new Map<string, ChannelOrigin>();
  #upWaiters: (() => void)[] = [];
  /** The relay server's ICE servers, from its last Welcome. */
  #welcomeIce: IceServer[] = [];
  #telemetry: { stop(): void } | null = null;

  private constructor(options: DaemonOptions) {
    this.#options = options;
    this.#log = options.log;
    this.link = new RelayLink({
      url: relayUrl(options.server),
      user: options.user,
      token: options.token,
      log: options.log,
      minDelayMs: options.minDelayMs,
      ...(options.linkMode === undefined ? {} : { linkMode: options.linkMode }),
      onUp: (welcome) => {
        this.#log.info("connected to the relay server", { server: options.server, user: welcome.usr, link: this.link.transport });
        this.#welcomeIce = welcomeIceServers(welcome.ice, this.#log);
        for (const t of this.#tunnels.values()) t.onLinkUp();
        for (const c of this.#ipc.values()) c.onLinkUp();
        for (const w of this.#upWaiters.splice(0)) w();
      },
      onDown: (reason) => {
        for (const t of this.#tunnels.values()) t.onLinkDown(reason);
        for (const c of this.#ipc.values()) c.onLinkDown(reason);
      },
      onMessage: (message) => this.#dispatch(message),
    });
    this.sessions = new SessionTable(this.link);
    this.sessions.streams = options.relayStreams ?? true;
    if (options.direct !== undefined) {
      this.sessions.direct = {
        listen: options.direct.listen,
        ...(options.direct.advertise === undefined ? {} : { advertise: options.direct.advertise }),
        log: options.log,
        counters: this.sessions.counters,
      };
    }
    if (options.ice !== undefined) {
      const own = options.ice.servers;
      this.sessions.ice = { servers: () => own ?? this.#welcomeIce, log: options.log, counters: this.sessions.counters, open: { count: 0 } };
    }
  }

  /** Starts the daemon: binds every tunnel port and IPC socket, dials the server. */
  static async start(options: DaemonOptions): Promise<HotlinkDaemon> {
    const daemon = new HotlinkDaemon(options);
    try {
      for (const spec of options.tunnels ?? []) daemon.addTunnel(spec);
      for (const spec of options.ipc ?? []) await daemon.addIpc(spec);
      if (options.telemetry !== undefined) {
        const link = daemon.link;
        daemon.#telemetry = startTelemetry(
          options.telemetry,
          {
            connected: () => link.up,
            counters: daemon.sessions.counters,
            sessions: () => ({ tunnels: daemon.status().tunnels, ipc: daemon.status().ipc }),
            streams: () => daemon.sessions.streamCounters(),
          },
          options.log,
        );
      }
    } catch (err) {
      await daemon.close();
      throw err;
    }
    return daemon;
  }

  /** Resolves once connected to the server (at once if already). */
  connected(): Promise<void> {
    if (this.link.up) return Promise.resolve();
    return new Promise((resolve) => this.#upWaiters.push(resolve));
  }

  /**
   * Declares a tunnel and binds its port now. Throws StoaError "exists" (the channel is declared
   * here already), "in_use" (the port cannot be bound) or "too_large" (`MAX_CHANNELS`).
   */
  addTunnel(spec: TunnelSpec, origin: ChannelOrigin = "flag"): Tunnel {
    this.#checkNew(spec.channel);
    const tunnel = new Tunnel(spec, this.sessions, this.#log);
    try {
      tunnel.listen();
    } catch (err) {
      throw new StoaError("in_use", `tunnel ${spec.channel}: cannot listen on ${spec.host}:${spec.port}: ${String(err)}`, { cause: err });
    }
    this.#tunnels.set(spec.channel, tunnel);
    this.#origins.set(spec.channel, origin);
    return tunnel;
  }

  /** Declares an HLNK IPC channel and binds its socket; throws like `addTunnel`. */
  async addIpc(spec: IpcSpec, origin: ChannelOrigin = "flag"): Promise<IpcChannel> {
    this.#checkNew(spec.channel);
    const channel = new IpcChannel(spec, this.sessions, this.#log);
    // Declared before the await, so that a concurrent add of the same channel is refused.
    this.#ipc.set(spec.channel, channel);
    this.#origins.set(spec.channel, origin);
    try {
      await channel.listen();
    } catch (err) {
      if (this.#ipc.get(spec.channel) === channel) {
        this.#ipc.delete(spec.channel);
        this.#origins.delete(spec.channel);
      }
      throw err;
    }
    return channel;
  }

  #checkNew(channel: string): void {
    if (this.#tunnels.has(channel) || this.#ipc.has(channel)) {
      throw new StoaError("exists", `channel ${channel} is already declared on this daemon; close it first (stoa hotlink close ${channel})`);
    }
    if (this.#tunnels.size + this.#ipc.size >= MAX_CHANNELS) {
      throw new StoaError("too_large", `this daemon already serves ${MAX_CHANNELS} tunnels and channels; close some first`);
    }
  }

  /** Whether `channel` is a tunnel, an IPC channel, or not declared here. */
  channelKind(channel: string): "tunnel" | "ipc" | null {
    if (this.#tunnels.has(channel)) return "tunnel";
    if (this.#ipc.has(channel)) return "ipc";
    return null;
  }

  /** Removes a tunnel or IPC channel, ending its sessions. False if there was none. */
  async remove(channel: string): Promise<boolean> {
    const tunnel = this.#tunnels.get(channel);
    if (tunnel !== undefined) {
      this.#tunnels.delete(channel);
      this.#origins.delete(channel);
      tunnel.close("the tunnel was removed");
      return true;
    }
    const ipc = this.#ipc.get(channel);
    if (ipc !== undefined) {
      this.#ipc.delete(channel);
      this.#origins.delete(channel);
      await ipc.close("the channel was removed");
      return true;
    }
    return false;
  }

  tunnel(channel: string): Tunnel | undefined {
    return this.#tunnels.get(channel);
  }

  status(): DaemonStatus {
    const origin = (channel: string): ChannelOrigin => this.#origins.get(channel) ?? "flag";
    const c = this.sessions.counters;
    return {
      user: this.#options.user,
      server: this.#options.server,
      connected: this.link.up,
      relay_link: this.link.up ? this.link.transport : "",
      tunnels: [...this.#tunnels.values()].map((t) => ({ ...t.status(), port: t.port, origin: origin(t.spec.channel) })),
      ipc: [...this.#ipc.values()].map((ch) => ({ ...ch.status(), origin: origin(ch.spec.channel) })),
      sessions: { outgoing: this.sessions.outgoing.size, incoming: this.sessions.incoming.size },
      counters: {
        relay: { ...c.relay },
        direct: { ...c.direct },
        ice: { ...c.ice },
        turn: { ...c.turn },
        latency_us: { send_avg: c.send.avgUs, send_max: c.send.maxUs, write_avg: c.write.avgUs, write_max: c.write.maxUs },
        stream: this.sessions.streamCounters(),
      },
      rungs: [...(this.sessions.direct === null ? [] : ["tls" as const]), ...(this.sessions.ice === null ? [] : ["ice" as const])],
      ice_servers: (this.sessions.ice?.servers() ?? []).map(shownIceServer),
      link: { ...this.link.messages },
    };
  }

  async close(): Promise<void> {
    this.#telemetry?.stop();
    this.#telemetry = null;
    for (const t of this.#tunnels.values()) t.close("the daemon is stopping");
    for (const c of this.#ipc.values()) await c.close("the daemon is stopping");
    this.#tunnels.clear();
    this.#ipc.clear();
    this.#origins.clear();
    await this.sessions.closeSplicer();
    await this.link.close();
  }

  #dispatch(message: HotlinkMessage): void {
    const link = this.link;
    const table = this.sessions;
    switch (message.t) {
      case MessageType.Open: {
        const { sid, pth, frm, stm } = message;
        const tunnel = this.#tunnels.get(pth);
        const ipc = tunnel === undefined ? this.#ipc.get(pth) : undefined;
        let session: Incoming | string;
        if (table.incoming.has(sid)) session = `session ${sid} is already open here`;
        else if (tunnel !== undefined) session = tunnel.offer(sid, frm, stm === true);
        else if (ipc !== undefined) session = ipc.offer(sid, frm);
        else session = `no tunnel or channel ${pth} is declared on ${this.#options.user}'s daemon`;
        if (typeof session === "string") link.send({ t: MessageType.Reject, sid, rsn: session });
        else if (session.accept() && tunnel !== undefined) tunnel.accepted(session);
        return;
      }
      case MessageType.Data:
        // A session we already left is dropped here; the server knows we left.
        table.incoming.get(message.sid)?.onData(message);
        return;
      case MessageType.Close: {
        const s = table.incoming.get(message.sid);
        if (s !== undefined) s.onClose(message.rsn, message.lst);
        else table.outgoing.get(message.sid)?.onClose(message.rsn);
        return;
      }
      case MessageType.Accept:
        table.outgoing.get(message.sid)?.onAccept(message.frm, message.stm);
        return;
      case MessageType.Reject:
        table.outgoing.get(message.sid)?.onReject(message.rsn);
        return;
      case MessageType.Error:
        this.#log.warn("the relay server reported an error", { code: message.code, msg: message.msg, sid: message.sid });
        if (message.sid !== undefined) {
          table.outgoing.get(message.sid)?.onClose(`${message.code}: ${message.msg}`);
          table.incoming.get(message.sid)?.onClose(`${message.code}: ${message.msg}`, undefined);
        }
        return;
      case MessageType.Signal:
        // Direct upgrades (direct.ts): an offer is for a session we send on, an answer for one we receive.
        if (message.knd === "direct_offer") {
          const out = table.outgoing.get(message.sid);
          if (out !== undefined) out.onDirectOffer(message);
          else link.send({ t: MessageType.Signal, sid: message.sid, knd: "direct_answer", err: "no such session on the sending daemon" });
        } else if (message.knd === "direct_answer") {
          table.incoming.get(message.sid)?.onDirectAnswer(message.err);
        } else if (message.knd === "sdp_offer") {
          // ICE (ice.ts): the receiver offers, the sender answers; candidates and errors go to whichever side has the sid.
          const out = table.outgoing.get(message.sid);
          if (out !== undefined) out.onIceOffer(message);
          else link.send({ t: MessageType.Signal, sid: message.sid, knd: "webrtc_error", err: "no such session on the sending daemon" });
        } else if (message.knd === "sdp_answer") {
          table.incoming.get(message.sid)?.onIceSignal(message);
        } else {
          table.outgoing.get(message.sid)?.onIceSignal(message);
          table.incoming.get(message.sid)?.onIceSignal(message);
        }
        return;
      default:
        return;
    }
  }
}

/** The ICE servers a Welcome carries; a list this daemon cannot read is logged and ignored. */
function welcomeIceServers(text: string | undefined, log: Logger): IceServer[] {
  if (text === undefined) return [];
  try {
    return parseIceServers(text, "the relay server's ICE servers");
  } catch (err) {
    log.warn("ignored the relay server's ICE servers", { err });
    return [];
  }
}

/** Accepts ws://host:port, ws://host:port/ or the full ws://host:port/v1/hotlink. */
export function relayUrl(server: string): string {
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    throw new StoaError("usage", `--server ${JSON.stringify(server)} is not a URL; use ws://host:port or wss://host:port`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new StoaError("usage", `--server must be a ws:// or wss:// URL, got ${url.protocol}`);
  }
  if (url.pathname === "" || url.pathname === "/") url.pathname = "/v1/hotlink";
  return url.toString();
}
