/**
 * OpenFlow match and action text in one canonical form, so that a flow a user writes in
 * `ovs-ofctl add-flow` syntax and the same flow as `ovs-ofctl --no-names dump-flows` prints it
 * (OpenFlow 1.0 + NXM, what `ofctl.ts` reads) become equal strings.
 *
 * The canonical form:
 * - Match: the protocol first as OVS's shorthand (`ip`, `tcp`, `arp`, `tcp6`…; `dl_type=0x88cc`
 *   when there is none; `ip,nw_proto=47` when the protocol has no shorthand), then every other
 *   field under one name (`eth_dst`→`dl_dst`, `ip_src`→`nw_src`, `tcp_dst`/`udp_dst`→`tp_dst`;
 *   in ARP flows `nw_src`→`arp_spa`, in ICMP flows `tp_src`→`icmp_type`) in the order of
 *   `FIELDS` (flow-values.ts), unknown fields after them by name. Values are parsed and printed again:
 *   numbers in one base per field, a mask applied to its value and dropped when all ones (a field
 *   under an all-zero mask is dropped: it matches everything), `/24` for a prefix mask,
 *   lower-case MACs, compressed IPv6, port numbers (names looked up in the bridge's ports;
 *   `65534` is `LOCAL`), flag sets (`tcp_flags`, `ct_state`) as `+x-y` in bit order.
 * - Actions: OVS's OpenFlow 1.0 spelling: `output:3` (a bare `3` or port name too), `NORMAL`,
 *   `LOCAL`, `IN_PORT`, `FLOOD`, `ALL`, `CONTROLLER:65535`, `drop` for none, `resubmit(,1)` /
 *   `resubmit:3` / `resubmit(3,1)`, `strip_vlan` for `pop_vlan`, `set_field` on a field with an
 *   OpenFlow 1.0 action as that action (`mod_dl_src:…`) and on a register as `load:0x…->NXM_…[]`,
 *   subfields by their NXM name (`NXM_OF_ETH_DST[]`, `[]` for the whole field), load values in
 *   hex, and `learn(…)` with its options in one order, defaults left out (`table=1` kept: OVS
 *   always prints it), and its specs in the user's order with each one canonical. Actions stoa
 *   does not know are kept as written, name lower-cased.
 * - What OVS stores differently is written as it comes back: `mod_nw_ttl:N` as a load into
 *   `NXM_NX_IP_TTL[]`, a `note:` padded with zero bytes to OpenFlow's 8-byte action size, and
 *   `enqueue:P:Q` as `set_queue:Q,output:P,pop_queue`, which OVS turns it into when it arrives over
 *   OpenFlow 1.1+ (as every bundle does): equal either way.
 * - `goto_table` is refused: a dump over OpenFlow 1.0 shows it as `resubmit(,N)`, so the two could
 *   never be told apart and re-applying would rewrite one into the other.
 *
 * Field values are read and written by flow-values.ts. Every function here throws
 * `FlowSyntaxError` with what is wrong; `ofctl.ts` adds which flow.
 */
import {
  type Field,
  FIELD_BY_NAME,
  FIELD_ORDER,
  FlowSyntaxError,
  type Kind,
  type Ports,
  SUBFIELD_BY_NAME,
  fieldNamed,
  fieldValue,
  formatIpv4,
  formatMac,
  hex,
  looksLikeSubfield,
  ones,
  parseIpv4,
  parseMac,
  parseNumber,
  portName,
  subfield,
} from "./flow-values.ts";

/** Parentheses nest at most this deep (`ct(exec(…))`); deeper text is refused, not walked. */
const MAX_NESTING = 16;
/** Learned flows' defaults (OVS's learn action): table 1, priority 32768. */
const LEARN_DEFAULT_TABLE = 1n;
const DEFAULT_PRIORITY = 32768n;

/** Protocol shorthands: name → [dl_type, nw_proto?] (OVS's list; one spelling per meaning). */
const SHORTHANDS: readonly (readonly [string, number, number?])[] = [
  ["ip", 0x0800], ["ipv6", 0x86dd], ["arp", 0x0806], ["rarp", 0x8035], ["mpls", 0x8847], ["mplsm", 0x8848],
  ["icmp", 0x0800, 1], ["tcp", 0x0800, 6], ["udp", 0x0800, 17], ["sctp", 0x0800, 132],
  ["icmp6", 0x86dd, 58], ["tcp6", 0x86dd, 6], ["udp6", 0x86dd, 17], ["sctp6", 0x86dd, 132],
];
const SHORTHAND_BY_NAME = new Map(SHORTHANDS.map((s) => [s[0], s]));
const ARP_TYPES = new Set([0x0806, 0x8035]);
const ICMP_PROTOS = new Set([1, 58]);

/** Actions without an argument stoa knows by name: any other bare word is a port. */
const BARE_ACTIONS = new Set(["strip_vlan", "dec_ttl", "dec_mpls_ttl", "dec_nsh_ttl", "pop_queue", "ct_clear", "exit"]);
/** `set_field` on these is printed as the OpenFlow 1.0 action. */
const SET_FIELD_ACTIONS = new Map([
  ["dl_src", "mod_dl_src"], ["dl_dst", "mod_dl_dst"], ["nw_src", "mod_nw_src"], ["nw_dst", "mod_nw_dst"],
  ["tp_src", "mod_tp_src"], ["tp_dst", "mod_tp_dst"],
]);
const MOD_VALUE_KIND = new Map<string, Kind>([
  ["mod_dl_src", "mac"], ["mod_dl_dst", "mac"], ["mod_nw_src", "ipv4"], ["mod_nw_dst", "ipv4"],
  ["mod_tp_src", "dec"], ["mod_tp_dst", "dec"], ["mod_nw_tos", "dec"], ["mod_nw_ecn", "dec"],
  ["mod_vlan_vid", "dec"], ["mod_vlan_pcp", "dec"], ["set_queue", "dec"],
]);
const LEARN_NUMBERS = ["table", "idle_timeout", "hard_timeout", "fin_idle_timeout", "fin_hard_timeout", "priority", "cookie", "limit"];
const LEARN_FLAGS = ["send_flow_rem", "delete_learned"];

/** A flow's settings, which the caller reads before the match: never a match field. */
const NOT_MATCH_FIELDS = new Set(["actions", "cookie", "table", "priority", "idle_timeout", "hard_timeout", "importance"]);

/** Splits at top-level commas (and, for matches, blanks), refusing unbalanced or deep parentheses. */
export function splitItems(text: string, blanksSeparate: boolean): string[] {
  if (!text.includes("(") && !text.includes(")")) {
    return text.split(blanksSeparate ? /[,\s]/ : ",").map((item) => item.trim()).filter((item) => item !== "");
  }
  const items: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = text[i];
    if (c === "(") {
      if (++depth > MAX_NESTING) throw new FlowSyntaxError(`parentheses nest deeper than ${MAX_NESTING}`);
    } else if (c === ")") {
      if (--depth < 0) throw new FlowSyntaxError("a ')' without its '('");
    } else if (i === text.length || (depth === 0 && (c === "," || (blanksSeparate && (c === " " || c === "\t"))))) {
      const item = text.slice(start, i).trim();
      if (item !== "") items.push(item);
      start = i + 1;
    }
  }
  if (depth !== 0) throw new FlowSyntaxError("a '(' without its ')'");
  return items;
}

/** The canonical match for `items` (everything of a flow but cookie/table/priority/timeouts/actions). */
export function canonicalMatch(items: readonly string[], ports: Ports): string {
  const values = new Map<string, string>();
  const unknown = new Map<string, string>();
  let dlType: number | undefined;
  let nwProto: number | undefined;
  const setType = (t: number, p: number | undefined, item: string): void => {
    if ((dlType !== undefined && dlType !== t) || (p !== undefined && nwProto !== undefined && nwProto !== p)) {
      throw new FlowSyntaxError(`"${item}" contradicts the protocol already given`);
    }
    dlType = t;
    if (p !== undefined) nwProto = p;
  };
  const raw: [Field, string, string][] = [];
  for (const item of items) {
    const eq = item.indexOf("=");
    const key = (eq < 0 ? item : item.slice(0, eq)).trim().toLowerCase();
    const value = eq < 0 ? undefined : item.slice(eq + 1).trim();
    const short = SHORTHAND_BY_NAME.get(key);
    if (short !== undefined && value === undefined) {
      setType(short[1], short[2], item);
      continue;
    }
    const f = FIELD_BY_NAME.get(key);
    if (value === undefined || value === "") {
      throw new FlowSyntaxError(f === undefined && !/^[a-z_][a-z0-9_]*$/.test(key) ? `cannot read "${item}"` : `"${key}" needs a value`);
    }
    if (f === undefined) {
      if (!/^[a-z_][a-z0-9_]*$/.test(key) || NOT_MATCH_FIELDS.has(key)) throw new FlowSyntaxError(`cannot read "${item}"`);
      if (unknown.has(key)) throw new FlowSyntaxError(`${key} is given twice`);
      unknown.set(key, value);
    } else if (f.name === "dl_type") {
      setType(Number(parseNumber(value, key, ones(16))), undefined, item);
    } else if (f.name === "nw_proto") {
      raw.unshift([f, key, value]); // first once the type is known: in ARP flows it is the opcode
    } else {
      raw.push([f, key, value]);
    }
  }
  for (const [f, key, value] of raw) {
    let target = f;
    if (f.name === "nw_proto") {
      if (dlType === undefined || !ARP_TYPES.has(dlType)) {
        setType(dlType ?? 0x0800, Number(parseNumber(value, key, ones(8))), `${key}=${value}`);
        continue;
      }
      target = fieldNamed("arp_op");
    } else if (dlType !== undefined && ARP_TYPES.has(dlType) && (f.name === "nw_src" || f.name === "nw_dst")) {
      target = fieldNamed(f.name === "nw_src" ? "arp_spa" : "arp_tpa");
    } else if (nwProto !== undefined && ICMP_PROTOS.has(nwProto) && (f.name === "tp_src" || f.name === "tp_dst")) {
      target = fieldNamed(f.name === "tp_src" ? "icmp_type" : "icmp_code");
    }
    if (values.has(target.name)) throw new FlowSyntaxError(`${target.name} is given twice`);
    const canonical = fieldValue(target, value, ports);
    if (canonical !== null) values.set(target.name, canonical);
  }
  const out: string[] = [];
  if (dlType !== undefined) {
    const both = SHORTHANDS.find(([, t, p]) => t === dlType && p === nwProto && p !== undefined);
    const typeOnly = SHORTHANDS.find(([, t, p]) => t === dlType && p === undefined);
    if (both !== undefined) out.push(both[0]);
    else {
      out.push(typeOnly === undefined ? `dl_type=0x${dlType.toString(16).padStart(4, "0")}` : typeOnly[0]);
      if (nwProto !== undefined) out.push(`nw_proto=${nwProto}`);
    }
  }
  const named = [...values].sort(([a], [b]) => (FIELD_ORDER.get(a) ?? 0) - (FIELD_ORDER.get(b) ?? 0));
  for (const [name, v] of named) out.push(`${name}=${v}`);
  for (const [name, v] of [...unknown].sort(([a], [b]) => (a < b ? -1 : 1))) out.push(`${name}=${v}`);
  return out.join(",");
}

/**
 * The matches and action lists compile.ts writes, as a dump prints them back, are canonical as
 * they are: `compiledMatch` and `canonicalActions` return them without parsing (what parsing
 * them would give — test/flows/compile.test.ts checks it over many values), so a dump of
 * 20,000 compiled flows is not read field by field.
 */
const COMPILED_MATCH = /^(?:(?:tcp|udp),nw_dst=(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]),tp_dst=([1-9][0-9]{0,4})|in_port=([1-9][0-9]{0,4}))$/;
const COMPILED_ACTIONS = /^(?:learn\(table=1,hard_timeout=300,priority=110,delete_learned,cookie=0x[1-9a-f][0-9a-f]{0,15},NXM_OF_ETH_DST\[\]=NXM_OF_ETH_SRC\[\],output:NXM_OF_IN_PORT\[\]\),output:([1-9][0-9]{0,4})|resubmit\(,1\)|NORMAL)$/;
/** Ports from here up are reserved (printed by name) in OpenFlow 1.0. */
const FIRST_RESERVED_PORT = 0xfff8;
const MAX_TP_PORT = 0xffff;

/** `text` (a match without priority) when it is one of compile.ts's shapes, already canonical; else null. */
export function compiledMatch(text: string): string | null {
  const m = COMPILED_MATCH.exec(text);
  if (m === null) return null;
  if (m[1] !== undefined && Number(m[1]) > MAX_TP_PORT) return null;
  if (m[2] !== undefined && Number(m[2]) >= FIRST_RESERVED_PORT) return null;
  return text;
}

/**
 * Canonical actions of dumped flows, by their text: a bridge's flows share a few action lists
 * (`output:N`, the compiler's learn), and canonicalizing them is most of a dump's parse time.
 */
const dumpedActions = new Map<string, string>();
const MAX_CACHED_ACTIONS = 4096;

/** The canonical action list for the text after `actions=`. */
export function canonicalActions(text: string, ports: Ports): string {
  if (ports !== undefined) return actionList(text, ports);
  const compiled = COMPILED_ACTIONS.exec(text);
  if (compiled !== null && (compiled[1] === undefined || Number(compiled[1]) < FIRST_RESERVED_PORT)) return text;
  const cached = dumpedActions.get(text);
  if (cached !== undefined) return cached;
  const canonical = actionList(text, undefined);
  if (dumpedActions.size >= MAX_CACHED_ACTIONS) dumpedActions.clear();
  dumpedActions.set(text, canonical);
  return canonical;
}

function actionList(text: string, ports: Ports): string {
  const items = splitItems(text, false);
  if (items.length === 0) return "drop";
  const out = items.map((item) => action(item, ports));
  if (out.includes("drop")) {
    if (out.length > 1) throw new FlowSyntaxError("drop must be the only action");
  }
  return out.join(",");
}

function action(item: string, ports: Ports): string {
  const m = /^([a-z_][a-z0-9_]*)\s*(?:([:=])([^]*)|\(([^]*)\))?$/i.exec(item);
  if (m === null) {
    if (/^(0x[0-9a-f]+|[0-9]+)$/i.test(item)) return outputTo(item, ports);
    throw new FlowSyntaxError(`cannot read action "${item}"`);
  }
  const [, nameText = "", , colonArg, parenArg] = m;
  const name = nameText.toLowerCase();
  const arg = colonArg ?? parenArg;
  switch (name) {
    case "drop":
      if (arg !== undefined) throw new FlowSyntaxError("drop takes no argument");
      return "drop";
    case "output":
      if (arg === undefined) throw new FlowSyntaxError("output needs a port: output:PORT");
      if (parenArg !== undefined) return `output(${parenArg.trim()})`;
      return looksLikeSubfield(arg) && arg.includes("[") ? `output:${subfield(arg)}` : outputTo(arg, ports);
    case "controller":
      if (arg === undefined) return "CONTROLLER:65535";
      if (colonArg !== undefined) return `CONTROLLER:${parseNumber(colonArg, "controller", 0xffffn)}`;
      return `controller(${arg.trim()})`;
    case "enqueue": {
      const [port = "", queue = "", extra] = (arg ?? "").split(colonArg !== undefined ? ":" : ",");
      if (extra !== undefined || queue === "") throw new FlowSyntaxError("enqueue is enqueue:PORT:QUEUE");
      // What OVS stores for it from OpenFlow 1.1 on (bundles are OpenFlow 1.4), whatever the dump's version.
      return `set_queue:${parseNumber(queue, "enqueue", 0xffffffffn)},${outputTo(port, ports)},pop_queue`;
    }
    case "resubmit":
      return resubmit(colonArg, parenArg, ports);
    case "goto_table":
      throw new FlowSyntaxError(
        "goto_table cannot be told apart from resubmit in an OpenFlow 1.0 dump: write resubmit(,TABLE)",
      );
    case "pop_vlan":
    case "strip_vlan":
      if (arg !== undefined) throw new FlowSyntaxError(`${name} takes no argument`);
      return "strip_vlan";
    case "set_field":
      return setField(arg ?? "", ports);
    case "load":
      return load(arg ?? "", "load");
    case "move": {
      const [src = "", dst, extra] = (arg ?? "").split("->");
      if (dst === undefined || extra !== undefined) throw new FlowSyntaxError("move is move:SRC->DST");
      return `move:${subfield(src)}->${subfield(dst)}`;
    }
    case "mod_nw_ttl": // OpenFlow 1.0 has no such action: OVS keeps it as a load
      return `load:${hex(parseNumber(colonArg ?? "", "mod_nw_ttl", 255n))}->NXM_NX_IP_TTL[]`;
    case "note":
      return note(colonArg ?? "");
    case "learn":
      if (parenArg === undefined) throw new FlowSyntaxError("learn is learn(...)");
      return learn(parenArg, ports);
  }
  const kind = MOD_VALUE_KIND.get(name);
  if (kind !== undefined && colonArg !== undefined) {
    return `${name}:${modValue(kind, colonArg, name)}`;
  }
  if (arg === undefined) {
    if (BARE_ACTIONS.has(name)) return name;
    return outputTo(nameText, ports);
  }
  return colonArg !== undefined ? `${name}${m[2]}${colonArg.trim()}` : `${name}(${(parenArg ?? "").trim()})`;
}

/** OpenFlow actions are whole multiples of 8 bytes: a note's 10-byte header plus its bytes, zero-padded. */
const NOTE_HEADER_BYTES = 10;
const MAX_NOTE_BYTES = 1024;

/** `note:` bytes in hex, `.` between them, padded with zeros as OVS stores them. */
function note(arg: string): string {
  const digits = arg.replaceAll(".", "");
  if (!/^([0-9a-f]{2})*$/i.test(digits) || digits.length / 2 > MAX_NOTE_BYTES) {
    throw new FlowSyntaxError(`note:${arg}: a note is hex bytes, at most ${MAX_NOTE_BYTES} (note:01.02.ab)`);
  }
  const bytes: string[] = digits.toLowerCase().match(/../g) ?? [];
  const padded = Math.ceil((NOTE_HEADER_BYTES + bytes.length) / 8) * 8 - NOTE_HEADER_BYTES;
  while (bytes.length < padded) bytes.push("00");
  return `note:${bytes.join(".")}`;
}

function modValue(kind: Kind, text: string, what: string): string {
  switch (kind) {
    case "mac":
      return formatMac(parseMac(text.trim(), what));
    case "ipv4":
      return formatIpv4(parseIpv4(text.trim(), what));
    default:
      return parseNumber(text, what, 0xffffffffn).toString();
  }
}

/** `output:P` (or a bare P) as OVS prints it: `output:3`, or the reserved port's own action. */
function outputTo(text: string, ports: Ports): string {
  const p = portName(text, ports, "output");
  if (p === "CONTROLLER") return "CONTROLLER:65535";
  return /^[0-9]+$/.test(p) ? `output:${p}` : p;
}

/** The canonical action that outputs to ofport `ofport` (`output:3`, or `LOCAL` for 65534): what compile.ts emits without parsing. */
export function outputAction(ofport: number): string {
  return outputTo(String(ofport), undefined);
}

function portNumber(text: string, ports: Ports): string {
  return portName(text, ports, "port");
}

function resubmit(colonArg: string | undefined, parenArg: string | undefined, ports: Ports): string {
  if (colonArg !== undefined) return `resubmit:${portNumber(colonArg, ports)}`;
  const parts = (parenArg ?? "").split(",").map((s) => s.trim());
  const [portText = "", tableText, ...rest] = parts;
  if (parts.length > 3 || (rest[0] !== undefined && rest[0] !== "ct")) throw new FlowSyntaxError(`cannot read resubmit(${parenArg})`);
  const port = portText === "" ? "" : portNumber(portText, ports);
  const inPort = port === "" || port === "IN_PORT" ? "" : port;
  if (tableText === undefined || tableText === "") {
    if (inPort === "") throw new FlowSyntaxError("resubmit needs a port or a table");
    return `resubmit:${inPort}`;
  }
  const table = parseNumber(tableText, "resubmit table", 254n);
  return `resubmit(${inPort},${table}${rest.length > 0 ? ",ct" : ""})`;
}

function setField(arg: string, ports: Ports): string {
  const [valueText = "", dst, extra] = arg.split("->");
  if (dst === undefined || extra !== undefined) throw new FlowSyntaxError("set_field is set_field:VALUE->FIELD");
  const f = FIELD_BY_NAME.get(dst.trim().toLowerCase());
  if (f !== undefined && !valueText.includes("/")) {
    const mod = SET_FIELD_ACTIONS.get(f.name);
    if (mod !== undefined) return `${mod}:${fieldValue(f, valueText.trim(), ports)}`;
    const sub = SUBFIELD_BY_NAME.get(f.name);
    if (sub !== undefined && (f.kind === "hex" || f.kind === "dec")) {
      return `load:${hex(parseNumber(valueText, f.name, ones(sub.bits)))}->${sub.nxm}[]`;
    }
  }
  return `set_field:${valueText.trim()}->${dst.trim().toLowerCase()}`;
}

/** `load:VALUE->DST` (or, in learn, `load:SRC[]->DST`), value in hex. */
function load(arg: string, what: string): string {
  const [src = "", dst, extra] = arg.split("->");
  if (dst === undefined || extra !== undefined) throw new FlowSyntaxError(`${what} is ${what}:VALUE->DST`);
  const from = looksLikeSubfield(src.trim()) ? subfield(src) : hex(parseNumber(src, what, ones(128)));
  return `load:${from}->${subfield(dst)}`;
}

/** `learn(...)`: options in one order without their defaults, then the specs as given, each canonical. */
function learn(args: string, ports: Ports): string {
  const numbers = new Map<string, bigint>([["table", LEARN_DEFAULT_TABLE]]);
  const flags = new Set<string>();
  let resultDst: string | undefined;
  const specs: string[] = [];
  for (const item of splitItems(args, false)) {
    const eq = item.indexOf("=");
    const colon = item.indexOf(":");
    const key = (eq < 0 ? item : item.slice(0, eq)).trim().toLowerCase();
    const value = eq < 0 ? "" : item.slice(eq + 1).trim();
    if (colon >= 0 && (eq < 0 || colon < eq)) {
      const verb = item.slice(0, colon).trim().toLowerCase();
      if (verb === "load") specs.push(load(item.slice(colon + 1), "learn load"));
      else if (verb === "output") specs.push(`output:${subfield(item.slice(colon + 1))}`);
      else throw new FlowSyntaxError(`learn: cannot read "${item}"`);
    } else if (LEARN_NUMBERS.includes(key) && eq >= 0) {
      numbers.set(key, parseNumber(value, `learn ${key}`, key === "cookie" ? ones(64) : 0xffffffffn));
    } else if (LEARN_FLAGS.includes(key) && eq < 0) {
      flags.add(key);
    } else if (key === "result_dst" && eq >= 0) {
      resultDst = subfield(value);
    } else if (eq < 0) {
      specs.push(subfield(item));
    } else if (looksLikeSubfield(value)) {
      const dst = subfield(item.slice(0, eq));
      const src = subfield(value);
      specs.push(dst === src ? dst : `${dst}=${src}`);
    } else {
      const f = FIELD_BY_NAME.get(key);
      if (f === undefined) specs.push(`${subfield(item.slice(0, eq))}=${hex(parseNumber(value, "learn", ones(128)))}`);
      else {
        const v = fieldValue(f, value, ports);
        if (v === null) throw new FlowSyntaxError(`learn: ${item} matches everything under its mask: leave it out`);
        specs.push(`${f.name}=${v}`);
      }
    }
  }
  // OVS's order: the numbers up to priority, the flags, then cookie and limit.
  const out: string[] = [];
  for (const key of LEARN_NUMBERS) {
    if (key === "cookie") for (const flag of LEARN_FLAGS) if (flags.has(flag)) out.push(flag);
    const n = numbers.get(key);
    if (n === undefined || (key !== "table" && n === 0n) || (key === "priority" && n === DEFAULT_PRIORITY)) continue;
    out.push(key === "cookie" ? `cookie=${hex(n)}` : `${key}=${n}`);
  }
  if (resultDst !== undefined) out.push(`result_dst=${resultDst}`);
  return `learn(${[...out, ...specs].join(",")})`;
}
