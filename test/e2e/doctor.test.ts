import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { STOA, stoa } from "../helpers/stoa.ts";

interface Finding {
  name: string;
  status: "ok" | "warn";
  detail: string;
  fix?: string;
}

function doctor(args: string[] = []): { code: number; ok: boolean; checks: Finding[] } {
  const run = stoa(["doctor", "--json", ...args]);
  const parsed = JSON.parse(run.stdout) as { ok: boolean; checks: Finding[] };
  return { code: run.code, ...parsed };
}

describe("stoa doctor", () => {
  test("--json reports every check, and each problem says what to do", () => {
    const { code, ok, checks } = doctor();
    expect(code).toBe(0);
    const names = checks.map((c) => c.name);
    for (const name of ["kernel", "root", "cap_net_admin", "cap_net_raw", "io_uring", "port 8081", "port 8082", "port 8083", "run dir"]) {
      expect(names).toContain(name);
    }
    for (const c of checks) if (c.status !== "ok") expect(c.fix, c.name).toBeTruthy();
    expect(ok).toBe(checks.every((c) => c.status === "ok"));
  });

  test("tools are checked for the commands this stoa has (flows: ip, ovs-ofctl); --dev adds the tests' and benchmarks' tools", () => {
    const { checks } = doctor();
    const names = checks.map((c) => c.name);
    for (const tool of ["ip", "ovs-ofctl"]) expect(names).toContain(tool);
    expect(names).not.toContain("nginx");
    // Redis is optional for circles (only --redis-url needs it): a warning at most, saying so.
    const redis = checks.find((c) => c.name === "redis-server");
    expect(redis?.status === "ok" || redis?.detail.includes("--redis-url")).toBe(true);
    const dev = doctor(["--dev"]).checks.map((c) => c.name);
    expect(dev).toContain("ip");
    expect(dev).toContain("nginx");
    expect(dev).toContain("redis-server");
  });

  test.if(process.getuid?.() === 0)("ports held by this host's own gateway are ok, not 'in use'", async () => {
    // A private network namespace, so the default ports are this test's alone.
    const proc = Bun.spawn(
      [
        "unshare", "--net", "--pid", "--fork", "--kill-child", "sh", "-c",
        `ip link set lo up; d=$(mktemp -d); "${STOA}" gateway --run-dir "$d" --ready-file "$d/ready" >/dev/null 2>&1 &
         while [ ! -e "$d/ready" ]; do sleep 0.02; done; "${STOA}" doctor --json --run-dir "$d"; rm -rf "$d"`,
      ],
      { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
    );
    const [out] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    const { checks } = JSON.parse(out) as { checks: Finding[] };
    for (const port of [8081, 8082, 8083]) {
      const finding = checks.find((c) => c.name === `port ${port}`);
      expect(finding?.status).toBe("ok");
      expect(finding?.detail).toContain("in use by this host's stoa gateway");
    }
  }, 30_000);

  test("root and capabilities match this process's own view", () => {
    const { checks } = doctor();
    const root = checks.find((c) => c.name === "root");
    expect(root?.status).toBe(process.getuid?.() === 0 ? "ok" : "warn");
  });

  test("a taken gateway port is reported with how to find its owner, and --strict exits 1", () => {
    let listener: { stop(closeActive?: boolean): void } | undefined;
    try {
      listener = Bun.listen({ hostname: "::", port: 8082, socket: { data() {} } });
    } catch {
      // Someone else holds 8082 already: doctor must then report it all the same.
    }
    try {
      const { checks } = doctor();
      const port = checks.find((c) => c.name === "port 8082");
      expect(port?.status).toBe("warn");
      expect(port?.fix).toContain("ss -ltnp");
      expect(doctor(["--strict"]).code).toBe(1);
    } finally {
      listener?.stop(true);
    }
  });

  test("the run dir: publishers in pub/ are counted, an older stoa's <run_dir>/<pub_id>/ directories are named with how to remove them", () => {
    const runDir = mkdtempSync("/tmp/doc-");
    try {
      mkdirSync(join(runDir, "pub", "new1"), { recursive: true });
      mkdirSync(join(runDir, "hotlink"));
      writeFileSync(join(runDir, "hotlink", "ping.sock"), "");
      mkdirSync(join(runDir, "notapub"));
      expect(doctor(["--run-dir", runDir]).checks.find((c) => c.name === "run dir")).toEqual({
        name: "run dir",
        status: "ok",
        detail: `${runDir}: 1 publisher directory in ${join(runDir, "pub")}`,
      });
      mkdirSync(join(runDir, "old1"));
      writeFileSync(join(runDir, "old1", "service.sock"), "");
      const found = doctor(["--run-dir", runDir]).checks.find((c) => c.name === "run dir");
      expect(found?.status).toBe("warn");
      expect(found?.detail).toContain(join(runDir, "old1"));
      expect(found?.detail).not.toContain("hotlink");
      expect(found?.detail).not.toContain("notapub");
      expect(found?.fix).toContain(`rm -r ${join(runDir, "old1")}`);
    } finally {
      rmSync(runDir, { recursive: true, force: true });
    }
  });

  test("text output marks each check and ends with a summary", () => {
    const run = stoa(["doctor"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^ok {4}kernel/m);
    expect(run.stdout).toMatch(/(all checks passed|\d+ check\(s\) need attention)\n$/);
  });
});
