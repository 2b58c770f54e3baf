/**
 * A data-plane worker process (`stoa supervisor worker --role data`, started by supervisor.ts):
 * one DataPlane (dataplane.ts) on one io_uring, in a loop that owns the whole process — it blocks
 * in io_uring_enter for at most LOOP_WAIT_MS at a time, so it never needs Bun's event loop except
 * for a moment every YIELD_EVERY_MS (stdio is flushed there).
 *
 * Commands: the supervisor writes a message on the stream, then the worker's eventfd (a copy was
 * sent with `hello`); the ring's READ on the eventfd completes, and between two batches the plane
 * calls `onCommand`, which reads every message that has arrived and applies it — rules change
 * between batches, never inside one. The stream is also read every STREAM_CHECK_MS without a
 * wake, so a supervisor that is gone (EOF) is noticed: the worker then stops.
 */
import type { Logger } from "../core/log.ts";
import { dupCloexec } from "../ffi/epoll.ts";
import { OwnedFd } from "../ffi/fdpass.ts";
import { DataPlane } from "./dataplane.ts";
import { type Rule, type ToWorker, codecs } from "./protocol.ts";
import type { MessageStream } from "./stream.ts";
import { dropTo, supervisorStream } from "./worker-common.ts";

/** The longest one io_uring_enter waits when nothing completes. */
const LOOP_WAIT_MS = 50;
/** The stream is read at least this often even without a wake (to notice EOF). */
const STREAM_CHECK_MS = 100;
/** The loop lets Bun's event loop run this often (stdio writes complete there). */
const YIELD_EVERY_MS = 100;

interface Pending {
  roles: string[];
  fds: OwnedFd[];
}

export async function runDataWorker(o: { index: number; user: string | undefined; log: Logger }): Promise<number> {
  const log = o.log;
  const stream = supervisorStream();
  let running = true;
  /** Sockets sent ahead of their rule's `add_rule` (a rule with more than MAX_FDS_PER_MESSAGE). */
  const pending = new Map<string, Pending>();
  let plane: DataPlane | undefined;

  const send = (message: Parameters<typeof codecs.fromWorker.encode>[0], fds: OwnedFd[] = []): void => {
    stream.send(codecs.fromWorker.encode(message), fds);
  };
  const report = (message: string): void => {
    log.error(message);
    send({ type: "error", error: { code: "internal", message: message.slice(0, 4000) } });
  };

  const addRule = (p: DataPlane, rule: Rule, roles: string[], fds: OwnedFd[]): void => {
    const before = pending.get(rule.rule_id);
    pending.delete(rule.rule_id);
    const allRoles = [...(before?.roles ?? []), ...roles];
    const allFds = [...(before?.fds ?? []), ...fds];
    const input = allRoles.indexOf("input");
    const outputs = rule.outputs.map((_, i) => allRoles.indexOf(`output ${i}`));
    const wellFormed = allRoles.length === allFds.length && outputs.every((at) => at >= 0) && new Set(allRoles).size === allRoles.length && allRoles.length === outputs.length + (input >= 0 ? 1 : 0);
    if (!wellFormed) {
      for (const fd of allFds) fd.close();
      report(`rule ${rule.rule_id} came with sockets [${allRoles.join(", ")}] for ${rule.outputs.length} outputs: not applied`);
      return;
    }
    try {
      p.addRule(rule, input >= 0 ? allFds[input]!.take() : undefined, outputs.map((at) => allFds[at]!.take()));
    } catch (err) {
      report(`rule ${rule.rule_id} not applied: ${err instanceof Error ? err.message : String(err)}`);
    }
  };

  const apply = (p: DataPlane, m: ToWorker, fds: OwnedFd[]): void => {
    switch (m.type) {
      case "add_rule":
        addRule(p, m.rule, m.fds, fds);
        return;
      case "fds": {
        const entry = pending.get(m.rule_id) ?? { roles: [], fds: [] };
        entry.roles.push(...m.fds);
        entry.fds.push(...fds);
        pending.set(m.rule_id, entry);
        return;
      }
      case "remove_rule":
        p.removeRule(m.rule_id);
        break;
      case "stats":
        send({ type: "stats", worker: { ...p.counters(), index: o.index, pid: process.pid }, rules: p.rules.stats() });
        break;
      case "health":
        send({ type: "health", seq: m.seq });
        break;
      case "sync":
        send({ type: "sync", seq: m.seq }); // everything before it was applied, in order
        break;
      case "shutdown":
        running = false;
        break;
      case "listen":
      case "answer":
        report(`a data worker got a "${m.type}" message, which only the control worker takes`);
        break;
    }
    for (const fd of fds) fd.close();
  };

  let lastCheck = performance.now();
  const drain = (p: DataPlane): void => {
    lastCheck = performance.now();
    const state = stream.receive((bytes, fds) => {
      const got = codecs.toWorker.safeDecode(bytes);
      if (!got.ok) {
        for (const fd of fds) fd.close();
        report(`a message from the supervisor that is not one: ${got.error.message}`);
        return;
      }
      apply(p, got.value, fds);
    });
    if (state !== "open") {
      if (state === "broken") log.error("the supervisor's stream broke; stopping", { problem: stream.problem });
      else if (running) log.info("the supervisor is gone; stopping");
      running = false;
    }
  };

  try {
    plane = new DataPlane({ onCommand: (p) => drain(p) });
    dropTo(o.user);
    send({ type: "hello", role: "data", index: o.index, pid: process.pid }, [new OwnedFd(dupCloexec(plane.eventFd), "a copy of the data plane's eventfd")]);
    log.debug("data-plane worker ready", { index: o.index, pid: process.pid });
    let lastYield = performance.now();
    while (running) {
      plane.runOnce(LOOP_WAIT_MS);
      if (stream.queued > 0) stream.flush();
      const now = performance.now();
      if (now - lastCheck >= STREAM_CHECK_MS) drain(plane);
      if (now - lastYield >= YIELD_EVERY_MS) {
        await Bun.sleep(0);
        lastYield = performance.now();
      }
    }
    return 0;
  } finally {
    for (const entry of pending.values()) for (const fd of entry.fds) fd.close();
    plane?.close();
    closeStream(stream);
  }
}

function closeStream(stream: MessageStream): void {
  stream.flush();
  stream.close();
}
