import { z } from "zod";
import { bool, defineCommand, defineGroup, str, under } from "./command.ts";
import { runDirFlag } from "./flags.ts";
import { defaultRunDir } from "../core/paths.ts";
import { parseHostAddress, parsePrefix } from "../addr/ipv6.ts";
import {
  type AddressInfo,
  addOwnedAddress,
  addPrefix,
  collectGarbage,
  listAddresses,
  listPrefixes,
  removeAddress,
  removePrefix,
} from "../addr/manager.ts";

const recordsFlag = () => runDirFlag("where stoa records the addresses it added");
/** The interface an address goes on (or comes off). */
const devFlag = () => str("the interface", { placeholder: "IF", required: { example: "eth0" } });

const ownerFlag = str("record the address as owned by this process: 'stoa addr gc' deletes it once PID is gone (default: owned by nobody, never collected)", {
  placeholder: "pid",
  schema: z.coerce.number().int().positive().optional(),
});

const add = defineCommand({
  name: "add",
  summary: "add a /128 address to an interface",
  description:
    "Adds ADDR/128 to IF over rtnetlink, like 'ip -6 addr add ADDR/128 dev IF' but in microseconds.\n" +
    "The kernel then answers Neighbor Discovery for it, so other hosts reach a listener bound\n" +
    "there. --nodad makes it usable at once (no ~1 s duplicate address detection). Every add is\n" +
    "recorded in the run dir; with --owner PID, 'stoa addr gc' deletes it once PID has exited.\n" +
    "Needs CAP_NET_ADMIN.",
  flags: {
    dev: devFlag(),
    nodad: bool("skip duplicate address detection: usable at once"),
    owner: ownerFlag,
    runDir: recordsFlag(),
  },
  positionals: [{ name: "ADDR/128", description: "the IPv6 address, with /128", required: true }],
  examples: [
    "sudo stoa addr add fd00:1:2:3::10/128 --dev eth0 --nodad",
    "stoa addr add fd00:1:2:3::10/128 --dev eth0 --nodad --owner $$   # gc deletes it after this shell",
  ],
  run({ flags, args, path }) {
    under(path, () => parseHostAddress(args[0] ?? ""));
    const { dev } = flags;
    const owned = under(path, () =>
      addOwnedAddress({ addr: args[0] ?? "", dev, nodad: flags.nodad, runDir: flags.runDir ?? defaultRunDir(), owner: flags.owner ?? null }),
    );
    process.stdout.write(`added ${owned.addr}/128 on ${dev}${flags.nodad ? " (nodad)" : ""}\n`);
  },
});

const del = defineCommand({
  name: "del",
  summary: "delete a /128 address from an interface",
  description: "Deletes ADDR/128 from IF and forgets stoa's record of it. Needs CAP_NET_ADMIN.",
  flags: { dev: devFlag(), runDir: recordsFlag() },
  positionals: [{ name: "ADDR/128", description: "the IPv6 address, with /128", required: true }],
  examples: ["sudo stoa addr del fd00:1:2:3::10/128 --dev eth0"],
  run({ flags, args, path }) {
    under(path, () => parseHostAddress(args[0] ?? ""));
    const { dev } = flags;
    under(path, () => removeAddress({ addr: args[0] ?? "", dev, runDir: flags.runDir ?? defaultRunDir() }));
    process.stdout.write(`deleted ${args[0]} from ${dev}\n`);
  },
});

function ownerText(a: AddressInfo): string {
  if (a.owner === null) return "-";
  if (a.owner.pid === null) return "stoa";
  return `pid ${a.owner.pid}${a.owner.alive ? "" : " (gone)"}`;
}

const ls = defineCommand({
  name: "ls",
  summary: "list IPv6 addresses and the local prefixes stoa added",
  description:
    "Lists this network namespace's IPv6 addresses (RTM_GETADDR) with their flags and, for the ones\n" +
    "stoa added, the owner; then the local prefixes stoa routes to this host. OWNER is '-' for\n" +
    "addresses stoa did not add, 'stoa' for ones added without an owner, 'pid N' otherwise.",
  flags: {
    dev: str("only this interface", { placeholder: "IF" }),
    owned: bool("only the addresses stoa added"),
    json: bool("print one JSON object: {addresses: [{addr, prefixlen, dev, ifindex, scope, flags, owner}], prefixes: [{prefix, dev}]}"),
    runDir: recordsFlag(),
  },
  examples: ["stoa addr ls", "stoa addr ls --dev eth0 --owned", "stoa addr ls --json | jq -r '.addresses[] | select(.owner) | .addr'"],
  run({ flags, path }) {
    const warnings: string[] = [];
    const { addresses, prefixes } = under(path, () => {
      const all = listAddresses({ runDir: flags.runDir ?? defaultRunDir(), dev: flags.dev, warnings });
      const prefixes = listPrefixes().filter((p) => flags.dev === undefined || p.dev === flags.dev);
      return { addresses: flags.owned ? all.filter((a) => a.owner !== null) : all, prefixes };
    });
    for (const w of warnings) process.stderr.write(`${path}: warning: ${w}\n`);
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ addresses, prefixes })}\n`);
      return;
    }
    const rows = [
      ["ADDRESS", "DEV", "SCOPE", "FLAGS", "OWNER"],
      ...addresses.map((a) => [`${a.addr}/${a.prefixlen}`, a.dev, a.scope, a.flags.join(",") || "-", ownerText(a)]),
    ];
    const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
    for (const r of rows) process.stdout.write(`${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd()}\n`);
    if (prefixes.length > 0) {
      process.stdout.write("\nlocal prefixes (stoa addr prefix):\n");
      for (const p of prefixes) process.stdout.write(`  ${p.prefix} dev ${p.dev}\n`);
    }
  },
});

const prefixArg = [{ name: "PREFIX", description: "an IPv6 prefix, e.g. fd00:99::/64", required: true }];

const prefix = defineGroup({
  name: "prefix",
  summary: "route a whole prefix to this host (a local route on lo)",
  description:
    "'prefix add' makes every address of PREFIX this host's own, with no per-address work: a\n" +
    "route of type local in table local on lo (the 'AnyIP' trick), marked as stoa's (proto 83).\n" +
    "The prefix must not be the on-link one: peers reach it through a route via this host\n" +
    "(ip -6 route add PREFIX via <this host>, or a router announcing it). A listener on [::]\n" +
    "answers on every address of the prefix; to bind one address of it, set\n" +
    "net.ipv6.ip_nonlocal_bind=1 (IPv6 bind checks addresses, not local routes). Needs CAP_NET_ADMIN.",
  subcommands: [
    defineCommand({
      name: "add",
      summary: "add a local route for PREFIX on lo",
      flags: {},
      positionals: prefixArg,
      examples: ["sudo stoa addr prefix add fd00:99::/64", "ip -6 route add fd00:99::/64 via fd00:1:2:3::1   # on the peers"],
      run({ args, path }) {
        under(path, () => parsePrefix(args[0] ?? ""));
        const shown = under(path, () => addPrefix(args[0] ?? ""));
        process.stdout.write(`added local prefix ${shown} on lo\n`);
      },
    }),
    defineCommand({
      name: "del",
      summary: "delete the local route stoa added for PREFIX",
      flags: {},
      positionals: prefixArg,
      examples: ["sudo stoa addr prefix del fd00:99::/64"],
      run({ args, path }) {
        const shown = under(path, () => removePrefix(args[0] ?? ""));
        process.stdout.write(`deleted local prefix ${shown}\n`);
      },
    }),
  ],
  examples: ["sudo stoa addr prefix add fd00:99::/64", "sudo stoa addr prefix del fd00:99::/64"],
});

const gc = defineCommand({
  name: "gc",
  summary: "delete addresses whose owning process is gone",
  description:
    "Reads the addresses stoa recorded in the run dir and deletes those whose owner (the process\n" +
    "that added them, checked by pid and start time) has exited — e.g. a publisher that was\n" +
    "SIGKILLed. Records of addresses already gone are dropped. Addresses of live owners and ones\n" +
    "added without an owner are kept. Only this network namespace's records are acted on.",
  flags: {
    json: bool("print one JSON object: {removed: [{addr, dev, pid}], dropped: [{addr, dev, reason}], kept}"),
    runDir: recordsFlag(),
  },
  examples: ["sudo stoa addr gc", "stoa addr gc --json --run-dir /tmp/stoa"],
  run({ flags, path }) {
    const report = under(path, () => collectGarbage(flags.runDir ?? defaultRunDir()));
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(report)}\n`);
      return;
    }
    for (const r of report.removed) process.stdout.write(`removed ${r.addr}/128 from ${r.dev} (owner pid ${r.pid} is gone)\n`);
    for (const d of report.dropped) process.stdout.write(`forgot ${d.addr}/128 on ${d.dev} (${d.reason})\n`);
    process.stdout.write(`gc: ${report.removed.length} removed, ${report.dropped.length} forgotten, ${report.kept} kept\n`);
  },
});

export default defineGroup({
  name: "addr",
  summary: "IPv6 addresses over rtnetlink: /128s with nodad, local prefixes, gc",
  description:
    "Linux answers Neighbor Discovery only for addresses it owns: a listener bound (non-locally)\n" +
    "to a random address of the on-link /64 is unreachable from other hosts. 'add' puts that\n" +
    "exact address on the interface as /128 (with --nodad, usable at once); 'prefix add' makes a\n" +
    "whole routed prefix local instead. Changes need CAP_NET_ADMIN: run as root, or\n" +
    "sudo setcap cap_net_admin+ep $(command -v stoa).",
  subcommands: [add, del, ls, prefix, gc],
  examples: [
    "sudo stoa addr add fd00:1:2:3::10/128 --dev eth0 --nodad",
    "stoa addr ls --dev eth0",
    "sudo stoa addr del fd00:1:2:3::10/128 --dev eth0",
    "sudo stoa addr prefix add fd00:99::/64",
    "sudo stoa addr gc",
  ],
});
