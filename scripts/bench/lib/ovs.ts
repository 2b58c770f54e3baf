/**
 * A private Open vSwitch for benchmarks with many ports: an ovsdb-server and an ovs-vswitchd of
 * their own (fresh database from the installed schema, in a fresh temp dir), ovs-vswitchd started
 * with `--enable-dummy` so that a bridge can use the `dummy` datapath (no tap device, no kernel
 * module; its own port is `dummy-internal`). Ports are patch ports (`addPatchPorts`): OpenFlow
 * ports with an ofport like any other, but no datapath port and no network device — 10,000 of
 * them take ovs-vswitchd about 7 s, where 10,000 `type=dummy` interfaces (a datapath port each,
 * ~8 ms apiece and growing) were not all numbered after two minutes; veths would be heavier
 * still. Nothing of the machine's own OVS is used and no network device is created, so unlike
 * test/fixtures/ovs.ts this needs no network namespace.
 *
 * - Both daemons are foreground children (`Bun.spawn`); sockets, pid files, logs and the
 *   database are in `dir`, and `env` (OVS_RUNDIR/OVS_LOGDIR/OVS_DBDIR = dir) is what `ovs-ofctl`
 *   runs with to reach this switch's bridges (`dir/<bridge>.mgmt`).
 * - `addPatchPorts` puts N patch ports on a bridge in ONE OVSDB transaction and waits until
 *   ovs-vswitchd has given each its ofport.
 * - `stop()` ends both daemons (SIGTERM, SIGKILL after a grace period) and removes `dir`;
 *   idempotent. An exit hook and SIGINT/SIGTERM handlers do it for a benchmark that ends early.
 *
 * Needs root (ovs-vswitchd's mlockall and rundir) and the openvswitch-switch package.
 *
 * @example
 *   await using ovs = await startBenchOvs();
 *   await ovs.vsctl("add-br", "br0", "--", "set", "Bridge", "br0", "datapath_type=dummy");
 *   const ovsdb = await OvsdbClient.connect(ovs.db);
 *   await addPatchPorts(ovsdb, "br0", ["p1", "p2"]);
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { OvsdbClient } from "../../../src/flows/ovsdb.ts";

const OVSDB_SERVER = "/usr/sbin/ovsdb-server";
const OVS_VSWITCHD = "/usr/sbin/ovs-vswitchd";
const OVS_VSCTL = "/usr/bin/ovs-vsctl";
const OVS_OFCTL = "/usr/bin/ovs-ofctl";
const OVSDB_TOOL = "/usr/bin/ovsdb-tool";
const OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema";

/** How long a daemon may take to be ready. */
const READY_TIMEOUT_MS = 15_000;
/** ovs-vsctl's own deadline (seconds). */
const VSCTL_TIMEOUT_S = 30;
/** How often addPatchPorts reads the ofports back (a read of 10,000 rows is not free for ovsdb-server). */
const PORTS_POLL_MS = 500;
/** How long stop() waits after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 3_000;
/** How long ovs-vswitchd may take to number the ports of one addPatchPorts. */
const PORTS_TIMEOUT_MS = 120_000;
/** A command run by a helper is killed after this. */
const COMMAND_TIMEOUT_MS = 300_000;
const LOG_TAIL_LINES = 15;

/** Why this benchmark cannot run here, or null. */
export function benchOvsMissing(): string | null {
  const absent = [OVSDB_SERVER, OVS_VSWITCHD, OVS_VSCTL, OVS_OFCTL, OVSDB_TOOL, OVS_SCHEMA].filter((p) => !existsSync(p));
  if (absent.length > 0) return `Open vSwitch is not installed (missing ${absent.join(", ")}): apt-get install openvswitch-switch`;
  if (process.getuid?.() !== 0) return "a private ovs-vswitchd needs root: run the benchmark as root";
  return null;
}

export interface BenchOvs extends AsyncDisposable {
  readonly dir: string;
  /** `unix:<dir>/db.sock`. */
  readonly db: string;
  readonly env: Record<string, string>;
  /** `ovs-vsctl --db=<db> ARGS`: stdout, or throws with stderr. */
  vsctl(...args: string[]): Promise<string>;
  /** `ovs-ofctl ARGS` with `env` (and `stdin` if given): stdout, or throws with stderr. */
  ofctl(args: string[], stdin?: string): Promise<string>;
  stop(): Promise<void>;
}

/** What a finished command printed, failing with its stderr otherwise. */
export async function run(argv: string[], env: Record<string, string>, stdin?: string): Promise<string> {
  const proc = Bun.spawn(argv, {
    env,
    stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin),
    stdout: "pipe",
    stderr: "pipe",
    timeout: COMMAND_TIMEOUT_MS,
    killSignal: "SIGKILL",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) {
    const how = proc.signalCode ? `killed by ${proc.signalCode}` : `exit ${code}`;
    throw new Error(`${argv.slice(0, 4).join(" ")} … failed (${how}): ${stderr.trim() || stdout.trim()}`);
  }
  return stdout;
}

function tail(path: string): string {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-LOG_TAIL_LINES).join("\n");
  } catch {
    return "(no log)";
  }
}

class Daemon {
  #proc: Subprocess | null = null;

  constructor(
    readonly name: string,
    readonly argv: string[],
    readonly env: Record<string, string>,
    readonly dir: string,
  ) {}

  get running(): boolean {
    return this.#proc !== null && this.#proc.exitCode === null && this.#proc.signalCode === null;
  }

  start(): void {
    this.#proc = Bun.spawn(this.argv, { env: this.env, stdin: "ignore", stdout: "ignore", stderr: Bun.file(join(this.dir, `${this.name}.stderr`)) });
  }

  failure(): string | null {
    const proc = this.#proc;
    if (proc === null || this.running) return null;
    return `${this.name} exited (${proc.signalCode ?? proc.exitCode}): ${tail(join(this.dir, `${this.name}.stderr`))}\n${tail(join(this.dir, `${this.name}.log`))}`;
  }

  async stop(): Promise<void> {
    const proc = this.#proc;
    if (proc === null) return;
    if (this.running) {
      proc.kill("SIGTERM");
      const killer = setTimeout(() => proc.kill("SIGKILL"), STOP_GRACE_MS);
      await proc.exited;
      clearTimeout(killer);
    }
    await proc.exited;
  }

  killSync(): void {
    if (this.running) this.#proc?.kill("SIGKILL");
  }
}

async function waitFor(what: string, daemon: Daemon, ready: () => Promise<unknown>): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (await ready().then(() => true, () => false)) return;
    const failure = daemon.failure();
    if (failure !== null) throw new Error(`${what}: ${failure}`);
    if (Date.now() > deadline) throw new Error(`${what}: not ready within ${READY_TIMEOUT_MS} ms\n${tail(join(daemon.dir, `${daemon.name}.log`))}`);
    await Bun.sleep(20);
  }
}

/** Starts a private ovsdb-server + ovs-vswitchd --enable-dummy; see the module header. */
export async function startBenchOvs(): Promise<BenchOvs> {
  const missing = benchOvsMissing();
  if (missing !== null) throw new Error(missing);
  const dir = mkdtempSync(join(tmpdir(), "stoa-bench-ovs-"));
  const sock = join(dir, "db.sock");
  const db = `unix:${sock}`;
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) if (value !== undefined) env[key] = value;
  Object.assign(env, { OVS_RUNDIR: dir, OVS_LOGDIR: dir, OVS_DBDIR: dir });
  const server = new Daemon(
    "ovsdb-server",
    [OVSDB_SERVER, join(dir, "conf.db"), `--remote=punix:${sock}`, `--pidfile=${join(dir, "ovsdb-server.pid")}`, `--unixctl=${join(dir, "ovsdb-server.ctl")}`, `--log-file=${join(dir, "ovsdb-server.log")}`, "-vconsole:off"],
    env,
    dir,
  );
  const vswitchd = new Daemon(
    "ovs-vswitchd",
    [OVS_VSWITCHD, db, "--enable-dummy", `--pidfile=${join(dir, "ovs-vswitchd.pid")}`, `--unixctl=${join(dir, "ovs-vswitchd.ctl")}`, `--log-file=${join(dir, "ovs-vswitchd.log")}`, "-vconsole:off"],
    env,
    dir,
  );
  const vsctl = (...args: string[]) => run([OVS_VSCTL, `--db=${db}`, `--timeout=${VSCTL_TIMEOUT_S}`, ...args], env);

  const killSync = (): void => {
    vswitchd.killSync();
    server.killSync();
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    killSync();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.on("exit", killSync);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      process.off("exit", killSync);
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      await vswitchd.stop();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    })());

  try {
    await run([OVSDB_TOOL, "create", join(dir, "conf.db"), OVS_SCHEMA], env);
    server.start();
    await waitFor("ovsdb-server did not start", server, () => vsctl("--no-wait", "show"));
    await vsctl("--no-wait", "init");
    vswitchd.start();
    // Without --no-wait, ovs-vsctl returns once ovs-vswitchd has applied the change.
    await waitFor("ovs-vswitchd did not start", vswitchd, () => vsctl("set", "Open_vSwitch", ".", "external_ids:stoa-bench=ready"));
  } catch (err) {
    await stop();
    throw err;
  }
  return { dir, db, env, vsctl, ofctl: (args, stdin) => run([OVS_OFCTL, ...args], env, stdin), stop, [Symbol.asyncDispose]: stop };
}

/**
 * Puts `names` (an even number) on `bridge` as patch ports, in pairs that are each other's peer,
 * in one OVSDB transaction, then waits until every one has an ofport; returns name → ofport.
 */
export async function addPatchPorts(ovsdb: OvsdbClient, bridge: string, names: readonly string[]): Promise<Map<string, number>> {
  const ops: object[] = [];
  names.forEach((name, i) => {
    // Pairs: each port the other's peer (an odd last one is its own, which OVS refuses: ofport -1).
    const peer = names[i ^ 1] ?? name;
    ops.push({ op: "insert", table: "Interface", row: { name, type: "patch", options: ["map", [["peer", peer]]] }, "uuid-name": `i${i}` });
    ops.push({ op: "insert", table: "Port", row: { name, interfaces: ["named-uuid", `i${i}`] }, "uuid-name": `p${i}` });
  });
  const ports = names.map((_, i) => ["named-uuid", `p${i}`]);
  ops.push({ op: "mutate", table: "Bridge", where: [["name", "==", bridge]], mutations: [["ports", "insert", ["set", ports]]] });
  await ovsdb.transact(ops);
  const want = new Set(names);
  const deadline = Date.now() + PORTS_TIMEOUT_MS;
  for (;;) {
    const ofports = await ovsdb.ofports();
    const got = new Map([...ofports].filter(([name]) => want.has(name)));
    if (got.size === want.size) return got;
    if (Date.now() > deadline) throw new Error(`ovs-vswitchd numbered ${got.size} of ${want.size} patch ports on ${bridge} within ${PORTS_TIMEOUT_MS} ms`);
    await Bun.sleep(PORTS_POLL_MS);
  }
}
