#!/usr/bin/env bun
/**
 * flows benchmark (issue 13, spec flows.md): one reconcile of --services (10,000) containers
 * with one exposed TCP service each — 2 flows per container plus the table-1 default, 20,001
 * flows on one bridge (compile.ts) — against a real Open vSwitch, side by side in one run with
 * the tools it is measured against:
 *   (a) stoa's engine, in-process — `Reconciler` (reconcile.ts), the path `stoa flows serve`
 *       takes: ports from its OVSDB monitor (started once before the rounds; that start is
 *       printed under setup), each bridge's flows remembered from the last reconcile. Each
 *       figure is one `engine.apply(state)`:
 *         full — the bridge emptied and the memory forgotten (`forget()`, as on the first
 *           reconcile or a verify): ensureBridge, compile, dump (empty), plan, one
 *           `ovs-ofctl --bundle add-flows` of 20,001 adds;
 *         no-op — the same state again: compile and a diff against the memory, no dump, nothing
 *           sent (checked: report.changes === 0 and no dump ran);
 *         one change — one container's service port changed: compile, diff, one bundle of a
 *           delete_strict + an add;
 *         verify — `forget()` then the changed state again: the periodic check the server runs
 *           every VERIFY_MS (dump of 20,001 flows, parse, plan; sends nothing);
 *       the goals are judged on full, no-op and one change;
 *   (a') stoa one-shot, `applyState(state, {ovsdb, env, ensurePorts: false})` — the CLI's
 *       `stoa flows apply --state` (ports from `ovs-ofctl dump-ports-desc`, every bridge dumped
 *       every time): full from an empty bridge, no-op, one change; its no-op and change are
 *       bounded below by the dump of the bridge, as replace-flows' are;
 *   (b) `ovs-ofctl --bundle replace-flows BR FILE` of the same flows (the lines stoa's full
 *       apply sent, "add " stripped; checked equal to them) from an empty bridge — the limit of
 *       this path, one process that reads the flows, dumps the bridge and sends one bundle —
 *       and, as references, the same file again (its no-op) and the file of the changed state;
 *   (c) one `ovs-ofctl add-flow BR FLOW` process per flow for the first --add-flows (1,000)
 *       flows, from an empty bridge (what the seed did): the time per 1,000 and, extrapolated
 *       linearly, for the whole set;
 *   (d) where the engine's time goes: the steps of (a) timed one by one by calling
 *       reconcile.ts's building blocks (ensureBridge, the monitor's ports, compile, ownedFlows,
 *       the dump when nothing is remembered, planAgainst, applyFlowMods) the way
 *       `Reconciler.apply` calls them, for full, no-op and one change; and what the one-shot
 *       path adds on the same bridge (bridges(), dump-ports-desc, dump-flows, parseDumpFlows,
 *       indexFlows).
 * The switch is a private ovsdb-server + ovs-vswitchd (lib/ovs.ts): a `dummy`-datapath bridge
 * whose --services ports are patch ports created in one OVSDB transaction (the time that takes
 * is printed; it is not part of any figure). The bridge is emptied (`ovs-ofctl del-flows`, not
 * timed) before every case that starts from an empty bridge.
 *
 * After one untimed warm-up of (a) and (a'), the cases run interleaved in --runs rounds, in an order
 * rotated every round, so that a slow spell of this VM falls on every case alike; a full
 * collection runs (untimed) before each case. Each figure printed is the median over the rounds,
 * [lowest–highest round] next to it. Goals, each computed from this run's figures of (a): full
 * reconcile ≤ 2 s and ≤ 1.5× replace-flows from empty; no-op ≤ 200 ms; one change ≤ 100 ms.
 *
 *   bun scripts/bench/flows.ts [--json] [--services 10000] [--runs 5] [--add-flows 1000]
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { compile, ownedFlows } from "../../src/flows/compile.ts";
import { parseState, type State } from "../../src/flows/model.ts";
import { applyFlowMods, dumpFlows, dumpPorts, flowKey, flowText, parseDumpFlows, type Flow } from "../../src/flows/ofctl.ts";
import { OvsdbClient } from "../../src/flows/ovsdb.ts";
import { indexFlows, planAgainst, type BridgeFlows } from "../../src/flows/plan.ts";
import { Reconciler, applyState, type Report } from "../../src/flows/reconcile.ts";
import { type BenchOvs, addPatchPorts, benchOvsMissing, run, startBenchOvs } from "./lib/ovs.ts";

const { values } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    services: { type: "string", default: "10000" },
    runs: { type: "string", default: "5" },
    "add-flows": { type: "string", default: "1000" },
  },
});
const services = Math.max(2, Math.floor(Number(values.services) / 2) * 2); // patch ports come in pairs
const runs = Math.max(1, Number(values.runs));
const addFlowSample = Math.max(1, Number(values["add-flows"]));

const BRIDGE = "br0";
const DATAPATH = "dummy";
const SERVICE_PORT = 8000;
const CHANGED_PORT = 9000;
/** An OVSDB request may take this long (a select of 10,000 interfaces, the transaction that creates them). */
const OVSDB_TIMEOUT_MS = 120_000;
/** A one-service port change replaces one flow: a delete_strict and an add. */
const ONE_CHANGE_MODS = 2;
const GOAL = { fullMs: 2000, fullVsReplace: 1.5, noopMs: 200, changeMs: 100 };

/** --services containers c1…cN, veth vI, one exposed TCP service sI each, on BRIDGE. */
function makeState(n: number, changed: boolean): State {
  const containers = Array.from({ length: n }, (_, i) => {
    const a = i + 256; // 10.0.1.0 on: no 10.0.0.0
    return {
      container_id: `c${i + 1}`,
      veth: `v${i + 1}`,
      bridge: BRIDGE,
      ipv4_address: `10.${(a >> 16) & 255}.${(a >> 8) & 255}.${a & 255}/8`,
      services: [{ name: `s${i + 1}`, protocol: "tcp", port: changed && i === 0 ? CHANGED_PORT : SERVICE_PORT }],
    };
  });
  return parseState({ node: "bench", bridges: [{ name: BRIDGE, datapath_type: DATAPATH }], containers }, "the benchmark's state");
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? Number.NaN) + (s[mid] ?? Number.NaN)) / 2;
}

async function timed<T>(f: () => Promise<T> | T): Promise<[T, number]> {
  const t0 = performance.now();
  const out = await f();
  return [out, performance.now() - t0];
}

/** One reconcile's steps, ms each (d). */
type Steps = Record<string, number>;

/** Reconciler.apply (reconcile.ts), step by step, on the bridge as it is, against `memory` (null: forgotten, so it dumps). */
async function steppedEngine(ovs: BenchOvs, ovsdb: OvsdbClient, engine: Reconciler, state: State, memory: BridgeFlows | null): Promise<{ steps: Steps; after: BridgeFlows }> {
  const steps: Steps = {};
  const step = async <T>(name: string, f: () => Promise<T> | T): Promise<T> => {
    const [out, ms] = await timed(f);
    steps[name] = ms;
    return out;
  };
  await step("ovsdb: ensureBridge", () => ovsdb.ensureBridge(BRIDGE, { datapathType: DATAPATH }));
  const ports = await step("ports: the monitor's copy (no request)", () => engine.ports);
  const compiled = await step("compile (canonical flows, no parse)", () => compile(state, ports, []));
  const owned = await step("ownedFlows (static flows parsed: none here)", () => ownedFlows(BRIDGE, compiled.bridges.get(BRIDGE) ?? [], ports));
  const current = memory ?? (await step("dump: dump-flows + parse + index (forgotten)", async () => indexFlows(await dumpFlows(BRIDGE, { cookie: 0n, mask: 0n, env: ovs.env }))));
  const planned = await step("planAgainst (memory or dump)", () => planAgainst(BRIDGE, owned, current));
  await step(`applyFlowMods (${planned.plan.mods.length} mods)`, () => applyFlowMods(BRIDGE, planned.plan.mods, { env: ovs.env }));
  return { steps, after: planned.after };
}

/** What the one-shot path (applyState) reads besides, on the bridge as it is. */
async function steppedOneShot(ovs: BenchOvs, ovsdb: OvsdbClient): Promise<Steps> {
  const steps: Steps = {};
  const step = async <T>(name: string, f: () => Promise<T> | T): Promise<T> => {
    const [out, ms] = await timed(f);
    steps[name] = ms;
    return out;
  };
  await step("ovsdb: bridges", () => ovsdb.bridges());
  await step("ports: ovs-ofctl dump-ports-desc + parse", () => dumpPorts(BRIDGE, { env: ovs.env }));
  const text = await step("ovs-ofctl dump-flows (process)", () => ovs.ofctl(["--no-names", "dump-flows", BRIDGE, "cookie=0x0/0x0"]));
  const flows = await step("parseDumpFlows", () => parseDumpFlows(text));
  await step("indexFlows", () => indexFlows(flows));
  return steps;
}

interface Figures {
  full: number;
  noop: number;
  change: number;
  verify: number;
  cliFull: number;
  cliNoop: number;
  cliChange: number;
  replaceFull: number;
  replaceNoop: number;
  replaceChange: number;
  addFlowSample: number;
  breakdown: { full: Steps; noop: Steps; change: Steps; oneShotFull: Steps };
}

interface Checks {
  flows: number;
  fullChanges: number[];
  noopChanges: number[];
  /** Dumps the engine ran in its no-op and one-change reconciles (none: both planned against its memory). */
  noopDumps: number[];
  changeChanges: number[];
  verifyChanges: number[];
  cliNoopChanges: number[];
  /** The replace-flows file is the lines stoa's full apply sent ("add " stripped). */
  fileMatchesApply: boolean;
  /** After the rounds, a verify (dump) of the engine finds the bridge exactly as it remembers it. */
  memoryMatchesSwitch: boolean;
  /** A no-op that sent something: its first mod, and the flow on the switch with the same key. */
  noopDiff: { mod: string; onSwitch: string | null } | null;
}

async function main(): Promise<{ setup: Record<string, number>; rounds: Figures[]; checks: Checks }> {
  const missing = benchOvsMissing();
  if (missing !== null) throw new Error(missing);
  const setup: Record<string, number> = {};
  const [ovs, startMs] = await timed(() => startBenchOvs());
  setup["start ovsdb-server + ovs-vswitchd"] = startMs;
  const work = mkdtempSync(join(tmpdir(), "stoa-bench-flows-"));
  const ovsdb = await OvsdbClient.connect(ovs.db, { timeoutMs: OVSDB_TIMEOUT_MS });
  let engine: Reconciler | undefined;
  try {
    await ovsdb.ensureBridge(BRIDGE, { datapathType: DATAPATH });
    const names = Array.from({ length: services }, (_, i) => `v${i + 1}`);
    const [ofports, portsMs] = await timed(() => addPatchPorts(ovsdb, BRIDGE, names));
    setup[`${ofports.size} patch ports (one transaction, until numbered)`] = portsMs;
    const [started, engineMs] = await timed(() => Reconciler.start({ ovsdb, env: ovs.env }));
    engine = started;
    setup["engine start: the ports monitor's first copy of the tables"] = engineMs;
    const state = makeState(services, false);
    const changed = makeState(services, true);
    const access = { ovsdb, env: ovs.env, ensurePorts: false };
    const emptyBridge = () => ovs.ofctl(["del-flows", BRIDGE]);
    const fromEmpty = async (): Promise<void> => {
      await emptyBridge();
      engine!.forget();
    };

    // Warm-up (untimed), which also gives the flows of both files.
    await fromEmpty();
    const first = await engine.apply(state);
    const warmNoop = await engine.apply(state);
    const fullLines = first.bridges[0]?.mods ?? [];
    const flows = fullLines.length;
    const changedReport = await engine.apply(changed);
    await applyState(state, access);
    await applyState(state, access);
    await fromEmpty();
    const changedLines = (await engine.apply(changed)).bridges[0]?.mods ?? [];
    const strip = (lines: string[]) => lines.map((l) => l.replace(/^add /, ""));
    const fullFile = join(work, "full.flows");
    const changedFile = join(work, "changed.flows");
    writeFileSync(fullFile, `${strip(fullLines).join("\n")}\n`);
    writeFileSync(changedFile, `${strip(changedLines).join("\n")}\n`);
    // The file against what is on the switch: dump the flows stoa installed, in add-flow syntax.
    await emptyBridge();
    await ovs.ofctl(["--bundle", "replace-flows", BRIDGE, fullFile]);
    const viaFile = await dumpFlows(BRIDGE, { cookie: 0n, mask: 0n, env: ovs.env });
    await fromEmpty();
    await engine.apply(state);
    const viaStoa = await dumpFlows(BRIDGE, { cookie: 0n, mask: 0n, env: ovs.env });
    const canon = (fs: Flow[]) => fs.map((f) => flowText(f)).sort().join("\n");
    const checks: Checks = {
      flows,
      fullChanges: [first.changes],
      noopChanges: [warmNoop.changes],
      noopDumps: [],
      changeChanges: [changedReport.changes],
      verifyChanges: [],
      cliNoopChanges: [],
      fileMatchesApply: fullLines.every((l) => l.startsWith("add ")) && canon(viaFile) === canon(viaStoa),
      memoryMatchesSwitch: false,
      noopDiff: null,
    };
    const noteNoop = async (report: Report): Promise<void> => {
      checks.noopChanges.push(report.changes);
      const mod = report.bridges[0]?.mods[0];
      if (report.changes === 0 || checks.noopDiff !== null || mod === undefined) return;
      const onSwitch = await dumpFlows(BRIDGE, { cookie: 0n, mask: 0n, env: ovs.env });
      const body = mod.replace(/^\S+ /, "").replace(/^cookie=[^,]*,/, "");
      const key = body.split(",actions=")[0] ?? body;
      const twin = onSwitch.find((f) => flowKey(f) === key);
      checks.noopDiff = { mod, onSwitch: twin === undefined ? null : flowText(twin) };
    };
    await noteNoop(warmNoop);

    const cases: [string, (f: Partial<Figures>) => Promise<void>][] = [
      [
        "stoa engine",
        async (f) => {
          await fromEmpty();
          Bun.gc(true);
          const [full, fullMs] = await timed(() => engine!.apply(state));
          const dumps = engine!.dumps;
          Bun.gc(true);
          const [noop, noopMs] = await timed(() => engine!.apply(state));
          Bun.gc(true);
          const [change, changeMs] = await timed(() => engine!.apply(changed));
          checks.noopDumps.push(engine!.dumps - dumps);
          Bun.gc(true);
          engine!.forget();
          const [verify, verifyMs] = await timed(() => engine!.apply(changed));
          checks.fullChanges.push(full.changes);
          await noteNoop(noop);
          checks.changeChanges.push(change.changes);
          checks.verifyChanges.push(verify.changes);
          Object.assign(f, { full: fullMs, noop: noopMs, change: changeMs, verify: verifyMs });
        },
      ],
      [
        "stoa one-shot",
        async (f) => {
          await fromEmpty();
          Bun.gc(true);
          const [, full] = await timed(() => applyState(state, access));
          Bun.gc(true);
          const [noop, noopMs] = await timed(() => applyState(state, access));
          Bun.gc(true);
          const [, change] = await timed(() => applyState(changed, access));
          checks.cliNoopChanges.push(noop.changes);
          Object.assign(f, { cliFull: full, cliNoop: noopMs, cliChange: change });
        },
      ],
      [
        "replace-flows",
        async (f) => {
          await emptyBridge();
          Bun.gc(true);
          const [, full] = await timed(() => ovs.ofctl(["--bundle", "replace-flows", BRIDGE, fullFile]));
          const [, noop] = await timed(() => ovs.ofctl(["--bundle", "replace-flows", BRIDGE, fullFile]));
          const [, change] = await timed(() => ovs.ofctl(["--bundle", "replace-flows", BRIDGE, changedFile]));
          Object.assign(f, { replaceFull: full, replaceNoop: noop, replaceChange: change });
        },
      ],
      [
        "add-flow",
        async (f) => {
          await emptyBridge();
          Bun.gc(true);
          const sample = strip(fullLines).slice(0, addFlowSample);
          const [, ms] = await timed(async () => {
            for (const flow of sample) await run(["/usr/bin/ovs-ofctl", "add-flow", BRIDGE, flow], ovs.env);
          });
          f.addFlowSample = ms;
        },
      ],
      [
        "breakdown",
        async (f) => {
          await fromEmpty();
          Bun.gc(true);
          const full = await steppedEngine(ovs, ovsdb, engine!, state, null);
          Bun.gc(true);
          const noop = await steppedEngine(ovs, ovsdb, engine!, state, full.after);
          Bun.gc(true);
          const change = await steppedEngine(ovs, ovsdb, engine!, changed, noop.after);
          Bun.gc(true);
          const oneShotFull = await steppedOneShot(ovs, ovsdb);
          f.breakdown = { full: full.steps, noop: noop.steps, change: change.steps, oneShotFull };
        },
      ],
    ];
    const rounds: Figures[] = [];
    for (let round = 0; round < runs; round++) {
      const f: Partial<Figures> = {};
      for (let i = 0; i < cases.length; i++) {
        const [, measure] = cases[(round + i) % cases.length] as (typeof cases)[number];
        await measure(f);
      }
      rounds.push(f as Figures);
      if (!values.json) process.stderr.write(`round ${round + 1}/${runs}: full ${f.full?.toFixed(0)} ms, no-op ${f.noop?.toFixed(0)} ms, change ${f.change?.toFixed(0)} ms, replace-flows ${f.replaceFull?.toFixed(0)} ms\n`);
    }
    // The engine's memory against the switch: from what it remembers (the changed state, applied
    // last by its own reconcile), a verify plans nothing.
    await fromEmpty();
    await engine.apply(changed);
    const remembered = await engine.apply(changed);
    engine.forget();
    const verified = await engine.apply(changed);
    checks.memoryMatchesSwitch = remembered.changes === 0 && verified.changes === 0;
    return { setup, rounds, checks };
  } finally {
    engine?.close();
    ovsdb.close();
    await ovs.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

interface Goal {
  what: string;
  value: string;
  goal: string;
  met: boolean;
}

function goals(m: Record<string, number>): Goal[] {
  const ratio = m.full! / m.replaceFull!;
  const ms = (x: number) => `${x.toFixed(0)} ms`;
  return [
    { what: "full reconcile", value: ms(m.full!), goal: `≤ ${GOAL.fullMs} ms`, met: m.full! <= GOAL.fullMs },
    { what: "full reconcile ÷ replace-flows from empty", value: `${ratio.toFixed(2)}×`, goal: `≤ ${GOAL.fullVsReplace}×`, met: ratio <= GOAL.fullVsReplace },
    { what: "no-op re-apply", value: ms(m.noop!), goal: `≤ ${GOAL.noopMs} ms`, met: m.noop! <= GOAL.noopMs },
    { what: "one-service change", value: ms(m.change!), goal: `≤ ${GOAL.changeMs} ms`, met: m.change! <= GOAL.changeMs },
  ];
}

const result = await main();
const { rounds, checks, setup } = result;
const keys = ["full", "noop", "change", "verify", "cliFull", "cliNoop", "cliChange", "replaceFull", "replaceNoop", "replaceChange", "addFlowSample"] as const;
const med: Record<string, number> = {};
const spreadOf: Record<string, [number, number]> = {};
for (const k of keys) {
  const xs = rounds.map((r) => r[k]);
  med[k] = median(xs);
  spreadOf[k] = [Math.min(...xs), Math.max(...xs)];
}
const perFlowAddFlow = med.addFlowSample! / Math.min(addFlowSample, checks.flows);
const addFlowPer1000 = perFlowAddFlow * 1000;
const addFlowWhole = perFlowAddFlow * checks.flows;
const PHASES = ["full", "noop", "change", "oneShotFull"] as const;
const breakdown: Record<(typeof PHASES)[number], Record<string, number>> = { full: {}, noop: {}, change: {}, oneShotFull: {} };
for (const phase of PHASES) {
  for (const step of Object.keys(rounds[0]?.breakdown[phase] ?? {})) breakdown[phase][step] = median(rounds.map((r) => r.breakdown[phase][step] ?? Number.NaN));
}
const goalRows = goals(med);

if (values.json) {
  console.log(JSON.stringify({ services, flows: checks.flows, runs, addFlowSample, setupMs: setup, medianMs: med, rangeMs: spreadOf, addFlow: { per1000Ms: addFlowPer1000, wholeSetMs: addFlowWhole }, breakdownMs: breakdown, goals: goalRows, checks, rounds }));
} else {
  const ms = (x: number) => (x < 10 ? x.toFixed(2) : x.toFixed(0));
  const range = (k: string) => `[${ms(spreadOf[k]![0])}–${ms(spreadOf[k]![1])}]`;
  const line = (label: string, k: string, base?: string) => {
    const vs = base === undefined ? "" : `   ${(med[k]! / med[base]!).toFixed(2)}× replace-flows (${ms(med[base]!)} ms)`;
    console.log(`  ${label.padEnd(52)} ${ms(med[k]!).padStart(8)} ms ${range(k).padEnd(15)}${vs}`);
  };
  console.log(`flows benchmark — ${services.toLocaleString("en-US")} containers × 1 exposed service → ${checks.flows.toLocaleString("en-US")} flows on one bridge (${DATAPATH} datapath, patch ports)`);
  console.log(`cases interleaved in ${runs} round${runs > 1 ? "s" : ""}, order rotated every round; medians over the rounds, [lowest–highest round]`);
  console.log("\nsetup (not timed in any figure)");
  for (const [what, t] of Object.entries(setup)) console.log(`  ${what.padEnd(52)} ${ms(t).padStart(8)} ms`);
  console.log("\nstoa's engine (Reconciler.apply, in-process: the server's path), beside ovs-ofctl --bundle replace-flows of the same flows");
  line("full: empty bridge, memory forgotten → all flows", "full", "replaceFull");
  line("no-op: the same state again (from memory, no dump)", "noop", "replaceNoop");
  line("one change: one service's port (from memory)", "change", "replaceChange");
  line("verify: forget() + the same state (dump, sends nothing)", "verify", "replaceNoop");
  console.log("\nstoa one-shot (applyState: the CLI's apply --state; dumps every time, so its no-op is bounded by the dump)");
  line("full: empty bridge → all flows", "cliFull", "replaceFull");
  line("no-op: the same state again", "cliNoop", "replaceNoop");
  line("one change: one service's port", "cliChange", "replaceChange");
  console.log("\nreferences");
  line("replace-flows, empty bridge → all flows", "replaceFull");
  line("replace-flows, same file again", "replaceNoop");
  line("replace-flows, file with the one change", "replaceChange");
  const n = Math.min(addFlowSample, checks.flows);
  line(`add-flow ×${n} (one process per flow)`, "addFlowSample");
  console.log(`  ${"add-flow per 1,000 flows".padEnd(52)} ${ms(addFlowPer1000).padStart(8)} ms`);
  console.log(`  ${`add-flow extrapolated to ${checks.flows.toLocaleString("en-US")} flows`.padEnd(52)} ${ms(addFlowWhole).padStart(8)} ms   stoa full is ${(addFlowWhole / med.full!).toFixed(1)}× faster`);
  console.log("\nwhere the engine's time goes (Reconciler.apply's steps called one by one; medians over the rounds)");
  const titles = { full: "full (empty bridge, forgotten)", noop: "no-op (from memory)", change: "one change (from memory)", oneShotFull: "what the one-shot path reads besides, on the full bridge" };
  for (const phase of PHASES) {
    const steps = breakdown[phase];
    const total = Object.values(steps).reduce((a, b) => a + b, 0);
    console.log(`  ${titles[phase]}: ${ms(total)} ms in all`);
    for (const [step, t] of Object.entries(steps)) console.log(`    ${step.padEnd(50)} ${ms(t).padStart(8)} ms ${`${((t / total) * 100).toFixed(0)}%`.padStart(5)}`);
  }
  console.log("\nchecks");
  const all = (xs: number[], want: (x: number) => boolean) => (xs.every(want) ? "ok" : "WRONG");
  console.log(`  full sends every flow (${checks.flows}): ${checks.fullChanges.join(", ")} — ${all(checks.fullChanges, (x) => x === checks.flows)}`);
  console.log(`  no-op sends nothing: ${checks.noopChanges.join(", ")} — ${all(checks.noopChanges, (x) => x === 0)}`);
  console.log(`  engine's no-op and one change dump nothing: ${checks.noopDumps.join(", ")} — ${all(checks.noopDumps, (x) => x === 0)}`);
  console.log(`  one change sends ${ONE_CHANGE_MODS} mods: ${checks.changeChanges.join(", ")} — ${all(checks.changeChanges, (x) => x === ONE_CHANGE_MODS)}`);
  console.log(`  verify after the change sends nothing: ${checks.verifyChanges.join(", ")} — ${all(checks.verifyChanges, (x) => x === 0)}`);
  console.log(`  one-shot no-op sends nothing: ${checks.cliNoopChanges.join(", ")} — ${all(checks.cliNoopChanges, (x) => x === 0)}`);
  console.log(`  replace-flows file installs what stoa's apply installs: ${checks.fileMatchesApply ? "ok" : "WRONG"}`);
  console.log(`  the engine's memory is what a dump finds: ${checks.memoryMatchesSwitch ? "ok" : "WRONG"}`);
  if (checks.noopDiff !== null) console.log(`  first no-op mod: ${checks.noopDiff.mod}\n  on the switch:   ${checks.noopDiff.onSwitch ?? "(no flow with that key)"}`);
  console.log(`\n  ${"goal (this run's figures of the engine)".padEnd(52)} ${"measured".padStart(9)}  ${"goal".padEnd(10)}`);
  for (const g of goalRows) console.log(`  ${g.what.padEnd(52)} ${g.value.padStart(9)}  ${g.goal.padEnd(10)} ${g.met ? "met" : "MISSED"}`);
}
