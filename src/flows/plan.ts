/**
 * The plan of one bridge (model.ts's header has the rules): desired flows against the bridge's
 * current ones, both canonical (ofctl.ts), as the flow-mod lines one `ovs-ofctl --bundle
 * add-flows BR -` transaction takes. Pure, so every case is tested without a switch. The current
 * flows come as a dump (`planBridge`) or by place (`planAgainst`, `BridgeFlows`: what the
 * engine of reconcile.ts remembers from its last plan).
 */
import { StoaError } from "../core/errors.ts";
import { flowKey, flowModLine, flowText, type Flow } from "./ofctl.ts";
import { cookieHex, cookieKind, isLearnedCookie } from "./model.ts";

export interface OwnedFlow {
  flow: Flow;
  /** What it belongs to, for messages (compile.ts DesiredFlow.owner). */
  owner: string;
}

export interface BridgePlan {
  bridge: string;
  adds: number;
  modifies: number;
  deletes: number;
  /** The transaction, in order: deletes, then modifies, then adds. */
  mods: string[];
}

/**
 * A bridge's flows by place (`flowKey`: table, priority, match) — stoa's, and the others' that
 * a desired flow may not replace; learned flows are left out (OVS adds and expires them). What a
 * dump gives (`indexFlows`), and what a plan leaves behind once applied (`PlannedBridge.after`):
 * reconcile.ts's engine keeps it between reconciles instead of dumping the bridge each time.
 */
export interface BridgeFlows {
  ours: Map<string, Flow>;
  foreign: Map<string, Flow>;
}

/** `current` (every flow of a bridge, any cookie) by place. */
export function indexFlows(current: readonly Flow[]): BridgeFlows {
  const ours = new Map<string, Flow>();
  const foreign = new Map<string, Flow>();
  for (const flow of current) {
    if (isLearnedCookie(flow.cookie)) continue;
    (cookieKind(flow.cookie) === null ? foreign : ours).set(flowKey(flow), flow);
  }
  return { ours, foreign };
}

export interface PlannedBridge {
  plan: BridgePlan;
  /** The bridge's flows once `plan.mods` are applied: stoa's are the desired ones, the others as they were. */
  after: BridgeFlows;
}

/** Places of flows already seen: compile.ts hands the same Flow objects to every plan while they do not change. */
const keys = new WeakMap<Flow, string>();
function placeOf(flow: Flow): string {
  let key = keys.get(flow);
  if (key === undefined) {
    key = flowKey(flow);
    keys.set(flow, key);
  }
  return key;
}

/**
 * What turns `current` (every flow on the bridge, any cookie) into `desired` without touching
 * a flow stoa does not own. A desired flow that would take the place of a foreign one, or two
 * desired flows at one place, is a configuration error (the state cannot be applied as it is).
 */
export function planBridge(bridge: string, desired: readonly OwnedFlow[], current: readonly Flow[]): BridgePlan {
  return planAgainst(bridge, desired, indexFlows(current)).plan;
}

/** `planBridge` against a bridge's flows by place; `current` is not changed. */
export function planAgainst(bridge: string, desired: readonly OwnedFlow[], current: BridgeFlows): PlannedBridge {
  const { ours, foreign } = current;
  const after = new Map<string, Flow>(); // the desired flows by place
  const deletes: string[] = [];
  const modifies: string[] = [];
  const adds: string[] = [];
  let kept = 0; // flows of ours that are wanted: when all are, there is nothing to delete
  for (const d of desired) {
    const key = placeOf(d.flow);
    const size = after.size;
    if (after.set(key, d.flow).size === size) {
      const twin = desired.find((x) => flowKey(x.flow) === key)!;
      throw new StoaError("config", `bridge ${bridge}: ${d.owner} and ${twin.owner} both want the flow at table ${d.flow.table}, priority ${d.flow.priority}, match "${d.flow.match}": give one of them another priority or match`);
    }
    const other = foreign.size === 0 ? undefined : foreign.get(key);
    if (other !== undefined) {
      throw new StoaError("config", `bridge ${bridge}: ${d.owner}'s flow (table ${d.flow.table}, priority ${d.flow.priority}, match "${d.flow.match}") would replace a flow stoa does not own (cookie ${cookieHex(other.cookie)}: ${flowText(other)}): change its priority, or remove that flow yourself`);
    }
    const now = ours.get(key);
    if (now === undefined) {
      adds.push(flowModLine("add", d.flow));
      continue;
    }
    kept++;
    if (now === d.flow) continue; // the same flow a compile made before (compile.ts keeps them)
    if (now.cookie !== d.flow.cookie || now.idleTimeout !== d.flow.idleTimeout || now.hardTimeout !== d.flow.hardTimeout) {
      // A flow-mod cannot change a flow's cookie or timeouts: replace it in the same transaction.
      deletes.push(flowModLine("delete_strict", now));
      adds.push(flowModLine("add", d.flow));
    } else if (now.actions !== d.flow.actions) {
      modifies.push(flowModLine("modify_strict", d.flow));
    }
  }
  if (ours.size > kept) {
    for (const [key, now] of ours) if (!after.has(key)) deletes.push(flowModLine("delete_strict", now));
  }
  const plan = { bridge, adds: adds.length, modifies: modifies.length, deletes: deletes.length, mods: [...deletes, ...modifies, ...adds] };
  return { plan, after: { ours: after, foreign } };
}
