/**
 * What reconcile.ts's engine remembers of one bridge between dumps (`BridgeMemory`): its flows by
 * place (plan.ts `BridgeFlows`: stoa's as planned, the others as the last dump showed them),
 * kept true by the bridge's flow monitor (ofmonitor.ts), and the updates stoa's own last bundle
 * will still cause.
 *
 * - Stoa's own updates: after a bundle the memory expects exactly the updates it makes
 *   (`expectedUpdates`: an add is a flow there, a modify the flow there with its new actions, a
 *   delete the flow gone), compared by everything but the priority (updates do not carry it);
 *   each one seen is crossed off. Until all are, any other update (not a learned flow's) is one
 *   that cannot be ordered against them: the memory is given up.
 * - Someone else's, afterwards (`follow`): one of stoa's flows deleted or modified by hand is
 *   found by everything but its priority and the memory follows (the next reconcile puts it
 *   back without a dump); when that flow is not unique, or the update adds a flow of stoa's
 *   cookie the memory lacks, it is given up. A foreign flow's update always gives it up: the
 *   foreign places must be exact (priority included) for plan.ts to refuse replacing one, and
 *   only a dump has them. Learned flows (kinds 3, 5) are OVS's and ignored.
 * Given up means the engine drops the bridge's memory: its next reconcile dumps it.
 */
import { cookieKind, isLearnedCookie } from "./model.ts";
import { printedFlow, type Flow } from "./ofctl.ts";
import type { FlowEvent, FlowMessage } from "./ofmonitor.ts";
import type { BridgeFlows, BridgePlan } from "./plan.ts";

type Unplaced = Omit<Flow, "priority">;

/**
 * A flow update as a comparable string: the flow is there now (ADDED, MODIFIED; after a pause an
 * update comes as an ADDED: ofmonitor.ts) or gone (DELETED), and the flow but for its priority.
 */
function updateKey(event: FlowEvent["event"], f: Unplaced): string {
  return `${event === "DELETED" ? "gone" : "there"} ${f.table} ${f.cookie} ${f.idleTimeout} ${f.hardTimeout} ${f.match} ${f.actions}`;
}

/** An update's flow in canonical form (the one the memory holds), or null when it cannot be read. */
function canonical(e: FlowEvent): Unplaced | null {
  try {
    const { match, actions } = printedFlow(e.match, e.actions);
    return { cookie: e.cookie, table: e.table, idleTimeout: e.idleTimeout, hardTimeout: e.hardTimeout, match, actions };
  } catch {
    return null;
  }
}

/** The updates the monitor reports for a plan that took `current` to `after` (plan.ts planAgainst's cases), by `updateKey`. */
export function expectedUpdates(current: BridgeFlows, after: BridgeFlows, plan: BridgePlan): Map<string, number> {
  const out = new Map<string, number>();
  if (plan.mods.length === 0) return out;
  const expect = (event: FlowEvent["event"], f: Flow): void => {
    const key = updateKey(event, f);
    out.set(key, (out.get(key) ?? 0) + 1);
  };
  for (const [place, flow] of after.ours) {
    const now = current.ours.get(place);
    if (now === flow) continue;
    if (now === undefined) expect("ADDED", flow);
    else if (now.cookie !== flow.cookie || now.idleTimeout !== flow.idleTimeout || now.hardTimeout !== flow.hardTimeout) {
      expect("DELETED", now);
      expect("ADDED", flow);
    } else if (now.actions !== flow.actions) expect("MODIFIED", flow);
  }
  if (plan.deletes > 0) for (const [place, now] of current.ours) if (!after.ours.has(place)) expect("DELETED", now);
  return out;
}

/** Follows someone else's update of one of stoa's flows in `flows`; false when it cannot (this file's header). */
function follow(flows: BridgeFlows, e: FlowEvent): boolean {
  if (cookieKind(e.cookie) === null) return false;
  const f = canonical(e);
  if (f === null) return false;
  const same: [string, Flow][] = []; // stoa's flows the update may be about
  for (const entry of flows.ours) {
    const g = entry[1];
    if (g.table === f.table && g.cookie === f.cookie && g.match === f.match && g.idleTimeout === f.idleTimeout && g.hardTimeout === f.hardTimeout) same.push(entry);
  }
  const alike = same.filter(([, g]) => g.actions === f.actions);
  if (e.event === "ADDED") return alike.length > 0; // the same again; a new one's priority is unknown
  if (e.event === "DELETED") {
    if (alike.length > 1) return false;
    if (alike.length === 1) flows.ours.delete(alike[0]![0]);
    return true;
  }
  if (same.length !== 1) return false;
  const [place, g] = same[0]!;
  if (g.actions !== f.actions) flows.ours.set(place, { ...g, actions: f.actions });
  return true;
}

/** One bridge as the engine remembers it (this file's header). */
export class BridgeMemory {
  /** The bridge's flows now, as far as the monitor has told. */
  readonly flows: BridgeFlows;
  readonly #expected: Map<string, number>;
  #left: number;
  readonly #settled = Promise.withResolvers<void>();

  /** `flows` once the bundle that makes `expected` (expectedUpdates) is applied. */
  constructor(flows: BridgeFlows, expected: Map<string, number>) {
    this.flows = flows;
    this.#expected = expected;
    this.#left = [...expected.values()].reduce((n, c) => n + c, 0);
    if (this.#left === 0) this.#settled.resolve();
  }

  /** True once every update of stoa's bundle has been seen. */
  get settled(): boolean {
    return this.#left === 0;
  }

  /** Resolves once `settled` (never, if the updates never come: race it with a barrier). */
  whenSettled(): Promise<void> {
    return this.#settled.promise;
  }

  /** Takes an update from the bridge's monitor; false when the memory cannot follow it and must be given up. */
  take(m: FlowMessage): boolean {
    if (m.type !== "flow") return false;
    if (isLearnedCookie(m.flow.cookie)) return true;
    if (this.#left === 0) return follow(this.flows, m.flow);
    const f = canonical(m.flow);
    const key = f === null ? "" : updateKey(m.flow.event, f);
    const count = this.#expected.get(key) ?? 0;
    if (count === 0) return false;
    this.#expected.set(key, count - 1);
    if (--this.#left === 0) this.#settled.resolve();
    return true;
  }
}
