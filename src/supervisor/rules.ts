/**
 * Rules on both sides of the worker stream.
 *
 * `RuleSet` is the supervisor's: the one true list, validated (protocol.ts `Rule` and
 * `ruleProblems`), ids made for rules added without one (`r1`, `r2`, … never reused in a run),
 * and — with `--rules FILE` — written to that file on every change (core/atomicfile.ts: a
 * reader never sees half a file), so a restart starts with them. A file that does not read as a
 * list of rules is refused at start with the reason (nothing is overwritten).
 *
 * `MatchTable` is a data-plane worker's: (input interface, destination address, port) → the rule
 * and its counters — two Map lookups per packet, the second by the integer key of packet-wire.ts
 * `matchKey` — so one group:port may be relayed from several interfaces by different rules.
 * Changes arrive between batches, so a lookup never sees a half-applied rule.
 */
import { existsSync } from "node:fs";
import { z } from "zod";
import { writeFileAtomic } from "../core/atomicfile.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { readSmallFile } from "../core/smallfile.ts";
import { ipv4ToNumber, matchKey } from "./packet-wire.ts";
import { MAX_RULES, NewRule, Rule, ruleProblems, type RuleStats } from "./protocol.ts";

/** A rules file is at most this large (MAX_RULES rules of a few hundred bytes each fit). */
const MAX_RULES_FILE_BYTES = 16 * 1024 * 1024;

export class RuleSet {
  #rules = new Map<string, Rule>();
  #next = 1;
  #file: string | undefined;
  #interfaceExists: (name: string) => boolean;

  /** Rules from `file` when it exists (a missing file is an empty set, created at the first change). */
  constructor(o: { file?: string; interfaceExists: (name: string) => boolean }) {
    this.#file = o.file;
    this.#interfaceExists = o.interfaceExists;
    if (o.file !== undefined && existsSync(o.file)) {
      const text = readSmallFile(o.file, { maxBytes: MAX_RULES_FILE_BYTES, what: "rules file", fix: "give --rules a JSON list of rules (stoa supervisor list-rules --json writes one)" });
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch (err) {
        throw new StoaError("config", `rules file ${o.file} is not JSON: ${describeError(err)}`);
      }
      const parsed = z.array(Rule).max(MAX_RULES).safeParse(json);
      if (!parsed.success) {
        const first = parsed.error.issues[0];
        throw new StoaError("config", `rules file ${o.file} is not a list of rules: ${first?.path.join(".") ?? ""}: ${first?.message ?? ""}`);
      }
      for (const rule of parsed.data) {
        if (this.#rules.has(rule.rule_id)) throw new StoaError("config", `rules file ${o.file} lists rule ${rule.rule_id} twice`);
        this.#rules.set(rule.rule_id, rule);
      }
      for (const id of this.#rules.keys()) {
        const n = /^r(\d+)$/.exec(id)?.[1];
        if (n !== undefined) this.#next = Math.max(this.#next, Number(n) + 1);
      }
    }
  }

  list(): Rule[] {
    return [...this.#rules.values()];
  }

  get(id: string): Rule | undefined {
    return this.#rules.get(id);
  }

  /** Adds (or replaces, by id) a rule after every check; answers the stored rule. One line per problem in the error. */
  add(input: NewRule): Rule {
    return this.put(this.check(input));
  }

  /**
   * Every check of `add`, and the id, without storing anything: the supervisor opens the rule's
   * sockets between `check` and `put`, so a rule whose sockets cannot be opened is never stored.
   */
  check(input: NewRule): Rule {
    const parsed = NewRule.safeParse(input);
    if (!parsed.success) throw new StoaError("usage", parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("\n"));
    let id = parsed.data.rule_id;
    while (id === undefined || (parsed.data.rule_id === undefined && this.#rules.has(id))) id = `r${this.#next++}`;
    const checked = Rule.safeParse({ ...parsed.data, rule_id: id });
    if (!checked.success) throw new StoaError("usage", checked.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("\n"));
    if (this.#rules.size >= MAX_RULES && !this.#rules.has(id)) throw new StoaError("too_large", `the supervisor holds ${MAX_RULES} rules already: remove one first`);
    const problems = ruleProblems(checked.data, { interfaceExists: this.#interfaceExists, rules: this.list() });
    if (problems.length > 0) throw new StoaError("usage", problems.join("\n"));
    return checked.data;
  }

  /** Stores a rule `check` answered (replacing one with its id) and rewrites the file. */
  put(rule: Rule): Rule {
    this.#rules.set(rule.rule_id, rule);
    this.#save();
    return rule;
  }

  /** Removes a rule; an unknown id is a not_found error. */
  remove(id: string): void {
    if (!this.#rules.delete(id)) throw new StoaError("not_found", `no rule ${id}: stoa supervisor list-rules shows the rules`);
    this.#save();
  }

  #save(): void {
    if (this.#file === undefined) return;
    writeFileAtomic(this.#file, `${JSON.stringify(this.list(), null, 2)}\n`, { mode: 0o600 });
  }
}

/** A rule as a worker holds it, with its counters. */
export interface LiveRule {
  rule: Rule;
  packets: number;
  bytes: number;
}

export class MatchTable {
  /** Input interface → (matchKey → rule). */
  #byInput = new Map<string, Map<number, LiveRule>>();
  #byId = new Map<string, LiveRule>();
  /** The counters at the last `stats()`, for the rates. */
  #last = new Map<string, { packets: number; bytes: number; at: number }>();

  /** Puts a rule in (replacing one with its id); its counters start at 0. */
  set(rule: Rule): void {
    this.remove(rule.rule_id);
    const live: LiveRule = { rule, packets: 0, bytes: 0 };
    this.#byId.set(rule.rule_id, live);
    let keys = this.#byInput.get(rule.input_interface);
    if (keys === undefined) this.#byInput.set(rule.input_interface, (keys = new Map()));
    keys.set(matchKey(ipv4ToNumber(rule.input_group), rule.input_port), live);
  }

  remove(id: string): boolean {
    const live = this.#byId.get(id);
    if (live === undefined) return false;
    this.#byId.delete(id);
    const keys = this.#byInput.get(live.rule.input_interface)!;
    keys.delete(matchKey(ipv4ToNumber(live.rule.input_group), live.rule.input_port));
    if (keys.size === 0) this.#byInput.delete(live.rule.input_interface);
    this.#last.delete(id);
    return true;
  }

  /** The rule for a packet to (dst, port) that arrived on `input`, or undefined. */
  match(input: string, dst: number, port: number): LiveRule | undefined {
    return this.#byInput.get(input)?.get(matchKey(dst, port));
  }

  get size(): number {
    return this.#byId.size;
  }

  /** Counters and rates (since the previous call) of every rule. */
  stats(now = performance.now()): RuleStats[] {
    const out: RuleStats[] = [];
    for (const [id, live] of this.#byId) {
      const last = this.#last.get(id);
      const seconds = last === undefined ? 0 : (now - last.at) / 1000;
      const pps = seconds > 0 ? (live.packets - last!.packets) / seconds : 0;
      const bps = seconds > 0 ? ((live.bytes - last!.bytes) * 8) / seconds : 0;
      this.#last.set(id, { packets: live.packets, bytes: live.bytes, at: now });
      out.push({ rule_id: id, packets: live.packets, bytes: live.bytes, pps: Math.max(0, pps), bps: Math.max(0, bps) });
    }
    return out;
  }
}
