/**
 * The plan of one bridge (model.ts's header has the rules): desired flows against the bridge's
 * current ones, both canonical (ofctl.ts), as the flow-mod lines one `ovs-ofctl --bundle
 * add-flows BR -` transaction takes. Pure, so every case is tested without a switch.
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
 * What turns `current` (every flow on the bridge, any cookie) into `desired` without touching
 * a flow stoa does not own. A desired flow that would take the place of a foreign one, or two
 * desired flows at one place, is a configuration error (the state cannot be applied as it is).
 */
export function planBridge(bridge: string, desired: readonly OwnedFlow[], current: readonly Flow[]): BridgePlan {
  const ours = new Map<string, Flow>();
  const foreign = new Map<string, Flow>();
  for (const flow of current) {
    if (isLearnedCookie(flow.cookie)) continue;
    (cookieKind(flow.cookie) === null ? foreign : ours).set(flowKey(flow), flow);
  }
  const wanted = new Map<string, OwnedFlow>();
  for (const d of desired) {
    const key = flowKey(d.flow);
    const twin = wanted.get(key);
    if (twin !== undefined) {
      throw new StoaError("config", `bridge ${bridge}: ${d.owner} and ${twin.owner} both want the flow at table ${d.flow.table}, priority ${d.flow.priority}, match "${d.flow.match}": give one of them another priority or match`);
    }
    const other = foreign.get(key);
    if (other !== undefined) {
      throw new StoaError("config", `bridge ${bridge}: ${d.owner}'s flow (table ${d.flow.table}, priority ${d.flow.priority}, match "${d.flow.match}") would replace a flow stoa does not own (cookie ${cookieHex(other.cookie)}: ${flowText(other)}): change its priority, or remove that flow yourself`);
    }
    wanted.set(key, d);
  }
  const deletes: string[] = [];
  const modifies: string[] = [];
  const adds: string[] = [];
  for (const [key, d] of wanted) {
    const now = ours.get(key);
    if (now === undefined) {
      adds.push(flowModLine("add", d.flow));
    } else if (now.cookie !== d.flow.cookie || now.idleTimeout !== d.flow.idleTimeout || now.hardTimeout !== d.flow.hardTimeout) {
      // A flow-mod cannot change a flow's cookie or timeouts: replace it in the same transaction.
      deletes.push(flowModLine("delete_strict", now));
      adds.push(flowModLine("add", d.flow));
    } else if (now.actions !== d.flow.actions) {
      modifies.push(flowModLine("modify_strict", d.flow));
    }
  }
  for (const [key, now] of ours) if (!wanted.has(key)) deletes.push(flowModLine("delete_strict", now));
  return { bridge, adds: adds.length, modifies: modifies.length, deletes: deletes.length, mods: [...deletes, ...modifies, ...adds] };
}
