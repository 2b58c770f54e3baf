/**
 * `stoa doctor`: what this host offers stoa's subsystems, each finding with what to do when
 * something is missing. Checks only read and probe: nothing is changed or left behind (a ring
 * or a listener opened to test is closed at once).
 */
import { readFile } from "node:fs/promises";
import { release } from "node:os";
import { defaultRunDir } from "../core/paths.ts";
import { probeIoUring } from "../ffi/io_uring.ts";
import { controlRequest } from "../gateway/control.ts";
import { runDirFinding } from "./rundir.ts";
import { describeError, errnoCode } from "../core/errors.ts";

type Status = "ok" | "warn";

export interface Finding {
  name: string;
  status: Status;
  detail: string;
  /** What to do, present when status is not ok. */
  fix?: string;
}

/** Capability bit numbers from linux/capability.h. */
const CAP_NET_ADMIN = 12;
const CAP_NET_RAW = 13;

/** The gateway's fixed ports (service, string, ping). */
const GATEWAY_PORTS = [8081, 8082, 8083] as const;

/**
 * External tools, the Debian package that has each, and who needs it: a command (checked only
 * when this stoa has that command, so a tool of a later issue's command is no warning today), or
 * the checkout's tests and benchmarks (checked with --dev).
 */
const TOOLS: readonly { bin: string; pkg: string; why: string; command?: string }[] = [
  { bin: "ip", pkg: "iproute2", why: "`stoa flows container` makes network namespaces and veths with it", command: "flows" },
  { bin: "ovs-ofctl", pkg: "openvswitch-switch", why: "`stoa flows` reads and programs Open vSwitch's flows with it", command: "flows" },
  { bin: "redis-server", pkg: "redis-server", why: "`stoa circles --redis-url` uses Redis as its queue", command: "circles" },
  { bin: "nginx", pkg: "nginx", why: "the gateway benchmark compares against nginx's stream proxy" },
];

interface CheckOptions {
  runDir?: string;
  /** The commands this stoa has (its command table): tools are checked for these only. */
  commands?: readonly string[];
  /** Also the tools the checkout's tests and benchmarks use. */
  dev?: boolean;
}

/** Parses the effective capability mask out of /proc/<pid>/status text. */
function effectiveCaps(status: string): bigint | undefined {
  const hex = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status)?.[1];
  return hex === undefined ? undefined : BigInt(`0x${hex}`);
}

function hasCap(mask: bigint | undefined, bit: number): boolean {
  return mask !== undefined && (mask & (1n << BigInt(bit))) !== 0n;
}

async function portFree(port: number): Promise<{ free: true } | { free: false; reason: string }> {
  try {
    const listener = Bun.listen({ hostname: "::", port, socket: { data() {} } });
    listener.stop(true);
    return { free: true };
  } catch (err) {
    const code = errnoCode(err);
    return { free: false, reason: code === "EADDRINUSE" ? "in use" : describeError(err) };
  }
}

export async function runChecks(options: CheckOptions = {}): Promise<Finding[]> {
  const runDir = options.runDir ?? defaultRunDir();
  const findings: Finding[] = [];
  findings.push({ name: "kernel", status: "ok", detail: `Linux ${release()} ${process.arch}` });

  const uid = process.getuid?.() ?? -1;
  findings.push(
    uid === 0
      ? { name: "root", status: "ok", detail: "running as root (uid 0)" }
      : {
          name: "root",
          status: "warn",
          detail: `running as uid ${uid}`,
          fix: "addr, flows and supervisor need root or the capabilities below; run them with sudo",
        },
  );

  const caps = effectiveCaps(await readFile("/proc/self/status", "utf8").catch(() => ""));
  const setcap = "run as root, or: sudo setcap cap_net_admin,cap_net_raw+ep \"$(command -v stoa)\"";
  for (const [name, bit, why] of [
    ["cap_net_admin", CAP_NET_ADMIN, "addresses and routes over rtnetlink (stoa addr)"],
    ["cap_net_raw", CAP_NET_RAW, "raw and packet sockets (stoa supervisor)"],
  ] as const) {
    findings.push(
      hasCap(caps, bit)
        ? { name, status: "ok", detail: `${name.toUpperCase()} is effective` }
        : { name, status: "warn", detail: `${name.toUpperCase()} is missing: needed for ${why}`, fix: setcap },
    );
  }

  const ring = probeIoUring();
  const disabled = (await readFile("/proc/sys/kernel/io_uring_disabled", "utf8").catch(() => "")).trim();
  findings.push(
    ring.ok
      ? { name: "io_uring", status: "ok", detail: "io_uring rings can be created" }
      : {
          name: "io_uring",
          status: "warn",
          detail: `cannot create an io_uring ring: ${ring.reason}`,
          fix:
            disabled !== "" && disabled !== "0"
              ? `kernel.io_uring_disabled is ${disabled}: sudo sysctl -w kernel.io_uring_disabled=0`
              : "stoa supervisor's io_uring ingress needs it; use a kernel and container policy that allow io_uring",
        },
  );

  const shipped = new Set(options.commands ?? []);
  for (const tool of TOOLS.filter((t) => (t.command === undefined ? options.dev === true : shipped.has(t.command)))) {
    const path = Bun.which(tool.bin, { PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` });
    findings.push(
      path
        ? { name: tool.bin, status: "ok", detail: `found at ${path}` }
        : {
            name: tool.bin,
            status: "warn",
            detail: `not installed: ${tool.why}`,
            fix: `sudo apt-get install ${tool.pkg}`,
          },
    );
  }

  // A port held by this host's own gateway is in use as it should be, not a conflict.
  const own = await controlRequest(runDir, { type: "info" }, { timeoutMs: 2_000 }).catch(() => null);
  const ownPorts = new Set(own === null ? [] : [own.ports.service, own.ports.string, own.ports.ping]);
  for (const port of GATEWAY_PORTS) {
    const result = await portFree(port);
    findings.push(
      result.free
        ? { name: `port ${port}`, status: "ok", detail: "free for stoa gateway" }
        : own !== null && ownPorts.has(port)
          ? { name: `port ${port}`, status: "ok", detail: `in use by this host's stoa gateway (pid ${own.pid}, run dir ${runDir})` }
          : {
            name: `port ${port}`,
            status: "warn",
            detail: `cannot listen on [::]:${port}: ${result.reason}`,
            fix: `find the owner with: ss -ltnp 'sport = :${port}' — stop it, or give stoa gateway other --ports`,
          },
    );
  }
  findings.push(runDirFinding(runDir));
  return findings;
}
