/**
 * `stoa supervisor run`: the supervisor process (spec/supervisor.md, "Processes"; protocol.ts
 * has the diagram of who holds which fd). It holds the privileges, the rules and the lifecycle;
 * its workers — this same binary started again (`stoa supervisor worker`) — do the work: one
 * control-plane worker (control-worker.ts) that serves the control socket, and N data-plane
 * workers (data-worker.ts), one io_uring loop each.
 *
 * Lifecycle of a worker slot:
 *
 *   starting ──hello──▶ running ──exit / no health answer──▶ restarting ──backoff──▶ starting
 *       │                  │                                     (250 ms doubling to 16 s,
 *       └──no hello in HELLO_TIMEOUT_MS: killed                   reset after a clean 30 s run)
 *   any ──stop()──▶ stopping ──exit──▶ stopped
 *
 * A starting worker gets, after its `hello`, what it needs: a data worker every current rule with
 * freshly opened sockets (`add_rule`); the control worker a copy of the listening control socket
 * (`listen`) — at the first start only once every data worker runs, so no request is answered
 * before the relay can relay. Rule changes go to every data worker that said hello — and are answered
 * once each has confirmed (`sync`) that it applied them; one still starting gets them with the
 * rest once it does. Health: every HEALTH_EVERY_MS each running worker is sent
 * `health`; one that has not answered for HEALTH_TIMEOUT_MS is killed (and so restarted).
 *
 * The streams are non-blocking; each direction has a doorbell (stream.ts): a worker writes a byte
 * to its stdout pipe after it sent something, which wakes the supervisor to read that stream; the
 * supervisor writes a data worker's eventfd (sent with its `hello`) or a byte to the control
 * worker's stdin pipe. Idle, nothing runs but the health check.
 *
 * Stopping (SIGTERM, SIGINT, or the `shutdown` request): `shutdown` to every worker, then
 * SHUTDOWN_GRACE_MS for them to exit, then SIGKILL for the rest; then the control socket is
 * closed and its file removed. Nothing is left: no process, no fd, no socket file.
 */
import type { Subprocess } from "bun";
import { StoaError, describeError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { selfArgv } from "../core/self.ts";
import { type UnixBinding, bindUnix } from "../core/unixsock.ts";
import { dupCloexec, signalEventfd } from "../ffi/epoll.ts";
import { MAX_FDS_PER_MESSAGE, OwnedFd, socketPair } from "../ffi/fdpass.ts";
import { AF_UNIX, SOCK_CLOEXEC, SOCK_STREAM, errno, libc, strerror } from "../ffi/libc.ts";
import { interfaceIndex } from "../ffi/netlink.ts";
import {
  type ControlAnswer,
  type ControlRequest,
  type FromWorker,
  HEALTH_EVERY_MS,
  RESTART_FIRST_MS,
  RESTART_MAX_MS,
  RESTART_RESET_MS,
  type Rule,
  type RuleStats,
  SHUTDOWN_GRACE_MS,
  type ToWorker,
  type WorkerInfo,
  type WorkerStats,
  codecs,
} from "./protocol.ts";
import { RuleSet } from "./rules.ts";
import { fanoutIdOf, openOutputSocket, openPacketSocket } from "./sockets.ts";
import { MessageStream, STREAM_RETRY_MS } from "./stream.ts";

/** A running worker that has not answered `health` for this long is killed and restarted. */
const HEALTH_TIMEOUT_MS = 2_000;
/** The byte a doorbell pipe carries (its value means nothing: any byte is a wake-up). */
const DOORBELL = new Uint8Array([1]);
/** A started worker that has not said hello within this is killed and restarted. */
const HELLO_TIMEOUT_MS = 10_000;
/** How long add-rule and remove-rule wait for each data worker to confirm it applied the change. */
const SYNC_TIMEOUT_MS = 2_000;
/** How long `get_stats` waits for each data worker's counters. */
const STATS_TIMEOUT_MS = 1_000;
/** Data-plane workers: at least one, at most this many. */
export const MAX_DATA_WORKERS = 64;

export interface SupervisorOptions {
  /** Data-plane workers. */
  workers: number;
  /** The control socket's path. */
  controlPath: string;
  /** The account workers drop to (undefined: they keep the supervisor's). */
  user: string | undefined;
  /** The rules file (`--rules`), or none. */
  rulesFile: string | undefined;
  /** Flags passed on to every worker (log level and format). */
  workerFlags: string[];
  log: Logger;
}

type State = WorkerInfo["state"];

interface Slot {
  readonly role: "control" | "data";
  readonly index: number;
  state: State;
  pid: number;
  proc: Subprocess | undefined;
  stream: MessageStream | undefined;
  /** A data worker's eventfd (from its hello): written after each message sent to it. */
  eventfd: OwnedFd | undefined;
  helloed: boolean;
  restarts: number;
  /** When the current process started (or the slot's state last changed, when none runs). */
  since: number;
  backoffMs: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  healthSeq: number;
  /** When the unanswered `health` was sent (0: none outstanding). */
  healthSentAt: number;
  /** Interface → the rules of this worker reading it (a data worker's ingress sockets). */
  readonly inputs: Map<string, Set<string>>;
  /** Waiting `sync`s by seq. */
  readonly syncWaiting: Map<number, () => void>;
  syncSeq: number;
  /** Waiting `stats` requests, answered in order. */
  readonly statsWaiting: ((answer: Extract<FromWorker, { type: "stats" }> | undefined) => void)[];
  exited: Promise<void> | undefined;
}

/** A listening Unix socket made with libc, so its fd can be passed to the control worker. */
interface FdListener {
  readonly fd: OwnedFd;
  stop(): void;
}

function listenFd(path: string): FdListener {
  const BACKLOG = 128;
  const fd = libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new StoaError("io", `socket(AF_UNIX) for the control socket: ${strerror(errno())}`);
  const owned = new OwnedFd(fd, "the control socket");
  // struct sockaddr_un { u16 sun_family; char sun_path[108]; }
  const name = Buffer.from(path);
  const addr = new Uint8Array(2 + 108);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(name, 2);
  if (libc().bind(fd, addr, 2 + name.length + 1) !== 0 || libc().listen(fd, BACKLOG) !== 0) {
    const message = `bind and listen on ${path}: ${strerror(errno())}`;
    owned.close();
    throw new StoaError("io", message);
  }
  return { fd: owned, stop: () => owned.close() };
}

export class Supervisor {
  readonly #o: SupervisorOptions;
  readonly #log: Logger;
  readonly #rules: RuleSet;
  readonly #slots: Slot[] = [];
  readonly #started = Date.now();
  /** Interface → its PACKET_FANOUT group id (made by the kernel for the first socket). */
  readonly #fanout = new Map<string, number>();
  #control: UnixBinding<FdListener> | undefined;
  /** A quick retry while some stream has pieces the socket did not take yet. */
  #retry: ReturnType<typeof setTimeout> | undefined;
  #health: ReturnType<typeof setInterval> | undefined;
  #stopping: Promise<void> | undefined;
  readonly #ready = Promise.withResolvers<void>();
  #isReady = false;
  #onStopRequest: (() => void) | undefined;

  private constructor(o: SupervisorOptions, rules: RuleSet) {
    this.#o = o;
    this.#log = o.log;
    this.#rules = rules;
  }

  /**
   * Loads the rules, binds the control socket and starts the workers; resolves once every worker
   * said hello and got what it needs (the control socket serves, the rules are in place).
   */
  static async start(o: SupervisorOptions): Promise<Supervisor> {
    if (!Number.isInteger(o.workers) || o.workers < 1 || o.workers > MAX_DATA_WORKERS) {
      throw new StoaError("usage", `--workers must be 1-${MAX_DATA_WORKERS}, got ${o.workers}`);
    }
    const rules = new RuleSet({ file: o.rulesFile, interfaceExists: interfaceExistsHere });
    const s = new Supervisor(o, rules);
    s.#control = await bindUnix(o.controlPath, listenFd);
    try {
      s.#slots.push(s.#slot("control", 0));
      for (let i = 0; i < o.workers; i++) s.#slots.push(s.#slot("data", i));
      s.#health = setInterval(() => {
        s.#pollStreams(); // the safety net: every stream read without a doorbell too
        s.#checkHealth();
      }, HEALTH_EVERY_MS);
      for (const slot of s.#slots) s.#spawn(slot);
      await s.#ready.promise;
    } catch (err) {
      await s.stop();
      throw err;
    }
    return s;
  }

  get controlPath(): string {
    return this.#control?.path ?? this.#o.controlPath;
  }

  /** Called when a client asks for `shutdown` (the CLI runs the process's shutdown from it). */
  onStopRequest(fn: () => void): void {
    this.#onStopRequest = fn;
  }

  workers(): WorkerInfo[] {
    const now = Date.now();
    return this.#slots.map((s) => ({ index: s.index, role: s.role, pid: s.pid, state: s.state, restarts: s.restarts, since_ms: Math.max(0, now - s.since) }));
  }

  /** Stops every worker (Shutdown, SHUTDOWN_GRACE_MS, SIGKILL) and closes the control socket. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    clearInterval(this.#health);
    for (const slot of this.#slots) {
      clearTimeout(slot.timer);
      slot.timer = undefined;
      if (slot.proc !== undefined) {
        slot.state = "stopping";
        this.#send(slot, { type: "shutdown" });
      } else slot.state = "stopped";
    }
    const exits = this.#slots.flatMap((s) => (s.exited === undefined || s.proc === undefined ? [] : [s.exited]));
    const grace = Bun.sleep(SHUTDOWN_GRACE_MS).then(() => "late" as const);
    if ((await Promise.race([Promise.all(exits).then(() => "done" as const), grace])) === "late") {
      for (const slot of this.#slots) {
        if (slot.proc === undefined) continue;
        this.#log.warn("worker did not stop in time; killing it", { role: slot.role, index: slot.index, pid: slot.pid, grace_ms: SHUTDOWN_GRACE_MS });
        slot.proc.kill("SIGKILL");
      }
      await Promise.all(exits);
    }
    clearTimeout(this.#retry);
    for (const slot of this.#slots) this.#release(slot);
    await this.#control?.close();
    this.#ready.reject(new StoaError("closed", "the supervisor stopped before its workers were ready"));
    this.#ready.promise.catch(() => {});
  }

  #slot(role: "control" | "data", index: number): Slot {
    return {
      role,
      index,
      state: "starting",
      pid: 0,
      proc: undefined,
      stream: undefined,
      eventfd: undefined,
      helloed: false,
      restarts: 0,
      since: Date.now(),
      backoffMs: RESTART_FIRST_MS,
      timer: undefined,
      healthSeq: 0,
      healthSentAt: 0,
      inputs: new Map(),
      statsWaiting: [],
      syncWaiting: new Map(),
      syncSeq: 0,
      exited: undefined,
    };
  }

  #spawn(slot: Slot): void {
    if (this.#stopping !== undefined) return;
    const [mine, theirs] = socketPair({ nonBlocking: true });
    const control = slot.role === "control";
    const argv = [...selfArgv(), "supervisor", "worker", "--role", slot.role, "--index", String(slot.index), "--control", this.controlPath, ...this.#o.workerFlags];
    if (this.#o.user !== undefined) argv.push("--user", this.#o.user);
    let proc: Subprocess;
    try {
      // stdout: the worker's doorbell to us; stdin: ours to the control worker (a data worker has its eventfd).
      proc = Bun.spawn(argv, {
        stdio: [control ? "pipe" : "ignore", "pipe", "inherit", theirs.fd],
        onExit: (_p, code, signal) => this.#exited(slot, proc, code, signal),
      });
    } catch (err) {
      mine.close();
      theirs.close();
      this.#log.error("cannot start a worker", { role: slot.role, index: slot.index, err });
      this.#scheduleRestart(slot);
      return;
    }
    theirs.close(); // the child has its own copy as fd 3 (see protocol.ts)
    slot.proc = proc;
    slot.pid = proc.pid;
    const stdin = control ? (proc.stdin as import("bun").FileSink) : undefined;
    const ring = (): void => {
      if (slot.proc !== proc) return;
      if (stdin !== undefined) {
        try {
          stdin.write(DOORBELL);
          void stdin.flush();
        } catch {
          // The pipe is closed: the worker is going; its exit is handled on its own.
        }
      } else if (slot.eventfd !== undefined) signalEventfd(slot.eventfd.fd);
    };
    slot.stream = new MessageStream(mine, `${slot.role} worker ${slot.index} (pid ${proc.pid})`, ring);
    void (async () => {
      for await (const _ of proc.stdout as ReadableStream<Uint8Array>) if (slot.proc === proc) this.#pollSlot(slot);
    })().catch(() => {});
    slot.state = "starting";
    slot.since = Date.now();
    slot.helloed = false;
    slot.healthSentAt = 0;
    slot.exited = proc.exited.then(() => {});
    slot.timer = setTimeout(() => {
      if (slot.proc === proc && !slot.helloed) {
        this.#log.warn("worker did not say hello in time; killing it", { role: slot.role, index: slot.index, pid: proc.pid, timeout_ms: HELLO_TIMEOUT_MS });
        proc.kill("SIGKILL");
      }
    }, HELLO_TIMEOUT_MS);
    this.#log.debug("worker started", { role: slot.role, index: slot.index, pid: proc.pid });
  }

  #exited(slot: Slot, proc: Subprocess, code: number | null, signal: number | NodeJS.Signals | null): void {
    if (slot.proc !== proc) return;
    // What it sent before it went is still read (an error message, a last answer).
    this.#pollSlot(slot);
    this.#release(slot);
    slot.proc = undefined;
    if (this.#stopping !== undefined) {
      slot.state = "stopped";
      slot.since = Date.now();
      return;
    }
    if (!this.#isReady) {
      // At start a worker that fails is a setup problem (a bad --user, no io_uring): say so and stop.
      this.#ready.reject(new StoaError("io", `the ${slot.role} worker ${slot.index} (pid ${slot.pid}) exited ${signal === null ? `with code ${code}` : `on ${String(signal)}`} before it was ready; its error is above`));
      slot.state = "stopped";
      return;
    }
    this.#log.warn("worker exited; restarting it", { role: slot.role, index: slot.index, pid: slot.pid, code, signal, restart_in_ms: this.#nextBackoff(slot) });
    this.#scheduleRestart(slot);
  }

  /** The backoff the next restart of `slot` waits (reset after a clean run). */
  #nextBackoff(slot: Slot): number {
    if (Date.now() - slot.since >= RESTART_RESET_MS) slot.backoffMs = RESTART_FIRST_MS;
    return slot.backoffMs;
  }

  #scheduleRestart(slot: Slot): void {
    const delay = this.#nextBackoff(slot);
    slot.backoffMs = Math.min(slot.backoffMs * 2, RESTART_MAX_MS);
    slot.state = "restarting";
    slot.since = Date.now();
    clearTimeout(slot.timer);
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      slot.restarts++;
      this.#spawn(slot);
    }, delay);
  }

  /** Closes what the supervisor holds for the slot's process (its stream end, its eventfd copy). */
  #release(slot: Slot): void {
    clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.stream?.close();
    slot.stream = undefined;
    slot.eventfd?.close();
    slot.eventfd = undefined;
    slot.helloed = false;
    slot.inputs.clear();
    for (const waiting of slot.statsWaiting.splice(0)) waiting(undefined);
    for (const done of slot.syncWaiting.values()) done();
    slot.syncWaiting.clear();
  }

  /** Resolves once every data worker that said hello has applied what was sent to it before (or is gone, or SYNC_TIMEOUT_MS passed). */
  #syncAll(): Promise<void> {
    const slots = this.#slots.filter((s) => s.role === "data" && s.helloed);
    return Promise.all(
      slots.map(
        (slot) =>
          new Promise<void>((resolve) => {
            const seq = ++slot.syncSeq;
            const timer = setTimeout(() => {
              slot.syncWaiting.delete(seq);
              this.#log.warn("a data worker did not confirm a rule change in time", { index: slot.index, pid: slot.pid, timeout_ms: SYNC_TIMEOUT_MS });
              resolve();
            }, SYNC_TIMEOUT_MS);
            slot.syncWaiting.set(seq, () => {
              clearTimeout(timer);
              resolve();
            });
            if (!this.#send(slot, { type: "sync", seq })) slot.syncWaiting.get(seq)?.();
          }),
      ),
    ).then(() => {});
  }

  #send(slot: Slot, message: ToWorker, fds: OwnedFd[] = []): boolean {
    const stream = slot.stream;
    if (stream === undefined) {
      for (const fd of fds) fd.close();
      return false;
    }
    const sent = stream.send(codecs.toWorker.encode(message), fds);
    if (stream.queued > 0) this.#retrySoon();
    return sent;
  }

  /** Flushes again in STREAM_RETRY_MS while any stream has pieces waiting for room. */
  #retrySoon(): void {
    if (this.#retry !== undefined) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      for (const slot of this.#slots) slot.stream?.flush();
      if (this.#slots.some((s) => (s.stream?.queued ?? 0) > 0)) this.#retrySoon();
    }, STREAM_RETRY_MS);
  }

  #pollStreams(): void {
    for (const slot of this.#slots) this.#pollSlot(slot);
  }

  #pollSlot(slot: Slot): void {
    const stream = slot.stream;
    if (stream === undefined) return;
    if (stream.queued > 0) stream.flush();
    const state = stream.receive((bytes, fds) => {
      try {
        this.#onMessage(slot, bytes, fds);
      } catch (err) {
        for (const fd of fds) fd.close();
        this.#log.error("handling a worker's message failed", { role: slot.role, index: slot.index, err });
      }
    });
    if (state === "broken" && slot.proc !== undefined) {
      this.#log.error("a worker broke its stream's protocol; killing it", { role: slot.role, index: slot.index, pid: slot.pid, problem: stream.problem });
      slot.proc.kill("SIGKILL");
    }
  }

  #onMessage(slot: Slot, bytes: Uint8Array, fds: OwnedFd[]): void {
    const got = codecs.fromWorker.safeDecode(bytes);
    if (!got.ok) {
      for (const fd of fds) fd.close();
      throw new StoaError("decode", `a message that is not one: ${got.error.message}`);
    }
    const m = got.value;
    if (m.type === "hello") {
      this.#hello(slot, m, fds);
      return;
    }
    for (const fd of fds) fd.close();
    switch (m.type) {
      case "health":
        if (m.seq === slot.healthSeq) slot.healthSentAt = 0;
        return;
      case "sync": {
        const done = slot.syncWaiting.get(m.seq);
        slot.syncWaiting.delete(m.seq);
        done?.();
        return;
      }
      case "stats":
        slot.statsWaiting.shift()?.(m);
        return;
      case "request":
        if (slot.role !== "control") throw new StoaError("decode", "a data worker sent a control request");
        {
          // The answer goes to the process that asked: ids are per control-worker process, and
          // a slow answer (get_stats) may outlive it — its successor must never get it.
          const asker = slot.stream;
          void this.#answer(m.request).then((answer) => {
            if (slot.stream === asker) this.#send(slot, { type: "answer", id: m.id, answer });
          });
        }
        return;
      case "error":
        this.#log.error("worker reports an error", { role: slot.role, index: slot.index, code: m.error.code, message: m.error.message });
        return;
    }
  }

  #hello(slot: Slot, m: Extract<FromWorker, { type: "hello" }>, fds: OwnedFd[]): void {
    const expected = slot.role === "data" ? 1 : 0;
    if (slot.helloed || m.role !== slot.role || m.index !== slot.index || m.pid !== slot.pid || fds.length !== expected) {
      for (const fd of fds) fd.close();
      throw new StoaError("decode", `an unexpected hello (${m.role} ${m.index}, pid ${m.pid}, ${fds.length} fds)`);
    }
    slot.helloed = true;
    clearTimeout(slot.timer);
    slot.timer = undefined;
    if (slot.role === "data") {
      slot.eventfd = fds[0];
      for (const rule of this.#rules.list()) {
        try {
          this.#sendRule(slot, rule);
        } catch (err) {
          this.#log.error("cannot give a rule to a data worker", { index: slot.index, rule_id: rule.rule_id, err });
        }
      }
    }
    slot.state = "running";
    this.#log.info("worker running", { role: slot.role, index: slot.index, pid: slot.pid, restarts: slot.restarts });
    // The control socket is served only once every data worker runs: an add-rule answered before
    // would have no worker to read its input yet, and a script's next packet would be lost. A
    // client that comes early waits in the listening socket's backlog (or retries, --wait).
    if (this.#isReady) {
      if (slot.role === "control") this.#listen(slot);
    } else if (this.#slots.every((s) => s.state === "running")) {
      this.#isReady = true;
      for (const s of this.#slots) if (s.role === "control") this.#listen(s);
      this.#ready.resolve();
    }
  }

  /** Hands the control worker its copy of the listening control socket. */
  #listen(slot: Slot): void {
    const listener = this.#control;
    if (listener === undefined) throw new StoaError("closed", "the control socket is closed");
    this.#send(slot, { type: "listen" }, [new OwnedFd(dupCloexec(listener.server.fd.fd), "a copy of the control socket")]);
  }

  /** Opens `rule`'s sockets for one data worker and sends them with it (see protocol.ts). */
  #sendRule(slot: Slot, rule: Rule): void {
    const { roles, fds } = this.#openSockets(slot, rule);
    this.#sendRuleWith(slot, rule, roles, fds);
  }

  #sendRuleWith(slot: Slot, rule: Rule, roles: string[], fds: OwnedFd[]): void {
    let at = 0;
    for (; roles.length - at > MAX_FDS_PER_MESSAGE; at += MAX_FDS_PER_MESSAGE) {
      this.#send(slot, { type: "fds", rule_id: rule.rule_id, fds: roles.slice(at, at + MAX_FDS_PER_MESSAGE) }, fds.slice(at, at + MAX_FDS_PER_MESSAGE));
    }
    this.#send(slot, { type: "add_rule", rule, fds: roles.slice(at) }, fds.slice(at));
    for (const [iface, ids] of slot.inputs) {
      ids.delete(rule.rule_id);
      if (ids.size === 0) slot.inputs.delete(iface);
    }
    const ids = slot.inputs.get(rule.input_interface) ?? new Set<string>();
    ids.add(rule.rule_id);
    slot.inputs.set(rule.input_interface, ids);
  }

  /** The sockets a data worker needs for `rule`: "input" when it reads that interface for no rule yet, one per output. */
  #openSockets(slot: Slot, rule: Rule): { roles: string[]; fds: OwnedFd[] } {
    const roles: string[] = [];
    const fds: OwnedFd[] = [];
    try {
      // A rule replacing one on the same interface keeps that interface's socket in the worker.
      if ((slot.inputs.get(rule.input_interface)?.size ?? 0) === 0) {
        fds.push(new OwnedFd(this.#packetSocket(rule.input_interface), `${rule.input_interface}'s AF_PACKET socket for data worker ${slot.index}`));
        roles.push("input");
      }
      rule.outputs.forEach((o, i) => {
        fds.push(new OwnedFd(openOutputSocket(o.interface, o.group, o.port), `rule ${rule.rule_id}'s output ${i}`));
        roles.push(`output ${i}`);
      });
    } catch (err) {
      for (const fd of fds) fd.close();
      throw err;
    }
    return { roles, fds };
  }

  #packetSocket(iface: string): number {
    const known = this.#fanout.get(iface);
    const fd = openPacketSocket(iface, known ?? 0);
    if (known === undefined) {
      try {
        this.#fanout.set(iface, fanoutIdOf(fd));
      } catch (err) {
        libc().close(fd);
        throw err;
      }
    }
    return fd;
  }

  /** The answer to one control request (never throws: failures are error answers). */
  async #answer(request: ControlRequest): Promise<ControlAnswer> {
    try {
      return await this.#handle(request);
    } catch (err) {
      const e = err instanceof StoaError ? err : new StoaError("internal", describeError(err));
      if (!(err instanceof StoaError)) this.#log.error("control request failed", { type: request.type, err });
      return { type: "error", error: { code: e.code, message: e.message } };
    }
  }

  async #handle(request: ControlRequest): Promise<ControlAnswer> {
    switch (request.type) {
      case "add_rule": {
        if (this.#stopping !== undefined) throw new StoaError("closed", "the supervisor is stopping");
        const rule = this.#rules.check(request.rule);
        const ready = this.#slots.filter((s) => s.role === "data" && s.helloed);
        // Every worker's sockets first: a rule whose sockets cannot all be opened is not stored.
        const opened: { slot: Slot; roles: string[]; fds: OwnedFd[] }[] = [];
        try {
          for (const slot of ready) opened.push({ slot, ...this.#openSockets(slot, rule) });
        } catch (err) {
          for (const o of opened) for (const fd of o.fds) fd.close();
          throw err;
        }
        this.#rules.put(rule);
        for (const o of opened) this.#sendRuleWith(o.slot, rule, o.roles, o.fds);
        await this.#syncAll();
        this.#log.info("rule added", { rule_id: rule.rule_id, input: `${rule.input_group}:${rule.input_port}@${rule.input_interface}`, outputs: rule.outputs.length });
        return { type: "add_rule", rule_id: rule.rule_id };
      }
      case "remove_rule": {
        this.#rules.remove(request.rule_id);
        for (const slot of this.#slots) {
          if (slot.role !== "data" || !slot.helloed) continue;
          this.#send(slot, { type: "remove_rule", rule_id: request.rule_id });
          for (const [iface, ids] of slot.inputs) {
            ids.delete(request.rule_id);
            if (ids.size === 0) slot.inputs.delete(iface);
          }
        }
        await this.#syncAll();
        this.#log.info("rule removed", { rule_id: request.rule_id });
        return { type: "remove_rule", rule_id: request.rule_id };
      }
      case "list_rules":
        return { type: "list_rules", rules: this.#rules.list() };
      case "get_stats":
        return { type: "get_stats", ...(await this.#stats()) };
      case "list_workers":
        return { type: "list_workers", workers: this.workers() };
      case "ping":
        return { type: "ping", pid: process.pid, uptime_ms: Date.now() - this.#started };
      case "shutdown":
        setTimeout(() => (this.#onStopRequest ?? (() => void this.stop()))(), 0);
        return { type: "shutdown" };
    }
  }

  async #stats(): Promise<{ workers: WorkerStats[]; rules: RuleStats[] }> {
    const asked = this.#slots.filter((s) => s.role === "data" && s.helloed);
    const answers = await Promise.all(
      asked.map(
        (slot) =>
          new Promise<Extract<FromWorker, { type: "stats" }> | undefined>((resolve) => {
            const timer = setTimeout(() => resolve(undefined), STATS_TIMEOUT_MS);
            slot.statsWaiting.push((answer) => {
              clearTimeout(timer);
              resolve(answer);
            });
            if (!this.#send(slot, { type: "stats" })) slot.statsWaiting.shift()?.(undefined);
          }),
      ),
    );
    const rules = new Map<string, RuleStats>();
    for (const rule of this.#rules.list()) rules.set(rule.rule_id, { rule_id: rule.rule_id, packets: 0, bytes: 0, pps: 0, bps: 0 });
    const workers: WorkerStats[] = [];
    for (const answer of answers) {
      if (answer === undefined) continue;
      workers.push(answer.worker);
      for (const r of answer.rules) {
        const sum = rules.get(r.rule_id);
        if (sum === undefined) continue; // removed meanwhile
        sum.packets += r.packets;
        sum.bytes += r.bytes;
        sum.pps += r.pps;
        sum.bps += r.bps;
      }
    }
    return { workers, rules: [...rules.values()] };
  }

  #checkHealth(): void {
    const now = performance.now();
    for (const slot of this.#slots) {
      if (slot.state !== "running" || slot.proc === undefined) continue;
      if (slot.healthSentAt !== 0) {
        if (now - slot.healthSentAt > HEALTH_TIMEOUT_MS) {
          this.#log.warn("worker stopped answering health checks; killing it", { role: slot.role, index: slot.index, pid: slot.pid, timeout_ms: HEALTH_TIMEOUT_MS });
          slot.proc.kill("SIGKILL");
        }
        continue;
      }
      slot.healthSeq++;
      slot.healthSentAt = now;
      this.#send(slot, { type: "health", seq: slot.healthSeq });
    }
  }
}

function interfaceExistsHere(name: string): boolean {
  try {
    interfaceIndex(name);
    return true;
  } catch {
    return false;
  }
}
