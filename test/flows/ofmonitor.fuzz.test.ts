/**
 * Fuzzing the flow monitor's reader (src/flows/ofmonitor.ts `MonitorParser`): mutated real
 * monitor output, cut into random pieces, gives messages or a FlowSyntaxError — never another
 * exception, never a hang — and the same messages however it is cut.
 */
import { describe, expect, test } from "bun:test";
import { FlowSyntaxError, printedFlow } from "../../src/flows/ofctl.ts";
import { type MonitorMessage, MonitorParser } from "../../src/flows/ofmonitor.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";
import { REAL_MONITOR } from "./ofmonitor-corpus.ts";

const ITERATIONS = 100_000;
/** About 3 s on an idle machine, several times that on a loaded 2-core one. */
const FUZZ_TIMEOUT_MS = 120_000;
/** One parse of an input this small taking longer than this is a hang (backtracking, a loop). */
const SLOW_PARSE_MS = 250;
const MAX_FUZZ_INPUT_CHARS = 4096;

const LINES = REAL_MONITOR.split("\n").filter((l) => l !== "");
const TOKENS = [
  " ", "\n", "\r\n", "=", ",", " event=", "ADDED", "DELETED", "MODIFIED", "ABBREV", " reason=delete", " table=", "255", "254", "99999",
  " idle_timeout=", " hard_timeout=", " cookie=", "0x", "0", "ffffffffffffffffff", " actions=", "actions=", "drop", "NORMAL",
  "NXST_FLOW_MONITOR reply (xid=0x0):\n", "OFPT_BARRIER_REPLY (xid=0x5):\n", "NXT_FLOW_MONITOR_PAUSED (xid=0x0):\n",
  "NXT_FLOW_MONITOR_RESUMED (xid=0x0):\n", "OFPT_ECHO_REQUEST (xid=0x0): 0 bytes of payload\n", "ovs-ofctl: ", "xid=0x1f", "é", "\u0000", "\t",
];

function mutated(rng: Prng): string {
  const lines = ["NXST_FLOW_MONITOR reply (xid=0x0):"];
  for (let n = 1 + rng.int(6); n > 0; n--) {
    let line = rng.pick(LINES);
    switch (rng.int(12)) {
      default:
        break;
      case 0:
        line = new TextDecoder().decode(mutate(rng, new TextEncoder().encode(line)));
        break;
      case 1:
        for (let k = 1 + rng.int(3); k > 0; k--) {
          const at = rng.int(line.length + 1);
          line = line.slice(0, at) + rng.pick(TOKENS) + line.slice(at + (rng.int(4) === 0 ? rng.int(8) : 0));
        }
    }
    lines.push(line);
  }
  return `${lines.join("\n")}\n`.slice(0, MAX_FUZZ_INPUT_CHARS);
}

/** The messages of `pieces` pushed one by one into one parser, or the FlowSyntaxError's message; anything else fails the test. */
function read(pieces: string[]): MonitorMessage[] | string {
  const start = performance.now();
  try {
    const parser = new MonitorParser();
    return pieces.flatMap((p) => parser.push(p));
  } catch (err) {
    if (!(err instanceof FlowSyntaxError)) throw new Error(`not a FlowSyntaxError for ${JSON.stringify(pieces.join(""))}: ${String(err)}`);
    return "error";
  } finally {
    const took = performance.now() - start;
    if (took > SLOW_PARSE_MS) throw new Error(`${took.toFixed(0)} ms for ${JSON.stringify(pieces.join(""))}`);
  }
}

function cut(rng: Prng, text: string): string[] {
  const pieces: string[] = [];
  for (let at = 0; at < text.length; ) {
    const len = 1 + rng.int(rng.int(2) === 0 ? 8 : 200);
    pieces.push(text.slice(at, at + len));
    at += len;
  }
  return pieces;
}

describe("MonitorParser under fuzzing", () => {
  test(
    `${ITERATIONS} mutated outputs: messages or a FlowSyntaxError, the same however the text is cut`,
    () => {
      const rng = prng(fuzzSeed(0x0f_a0_71));
      let updates = 0;
      for (let i = 0; i < ITERATIONS; i++) {
        const input = mutated(rng);
        const whole = read([input]);
        expect({ input, messages: read(cut(rng, input)) }).toEqual({ input, messages: whole });
        if (typeof whole === "string") continue;
        for (const m of whole) {
          if (m.type !== "flow") continue;
          updates++;
          expect(m.flow.table).toBeLessThanOrEqual(254);
          expect(m.flow.cookie).toBeLessThanOrEqual(0xffff_ffff_ffff_ffffn);
          // What the engine does next with an update: canonical, or a FlowSyntaxError it treats as unreadable.
          try {
            printedFlow(m.flow.match, m.flow.actions);
          } catch (err) {
            if (!(err instanceof FlowSyntaxError)) throw err;
          }
        }
      }
      console.log(`MonitorParser: ${updates} flow updates read from ${ITERATIONS} mutated outputs (seed ${rng.seed})`);
      expect(updates).toBeGreaterThan(ITERATIONS / 4);
    },
    FUZZ_TIMEOUT_MS,
  );

  test("random text is messages or a FlowSyntaxError, never anything else", () => {
    const rng = prng(fuzzSeed(0x7e_57_0f));
    for (let i = 0; i < 20_000; i++) {
      let input = "";
      for (let n = rng.int(30); n > 0; n--) input += rng.pick(TOKENS);
      read(cut(rng, input));
    }
  });
});
