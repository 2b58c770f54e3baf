/**
 * Scripts and CI drive stoa: what they need to know when it is ready, and clients that wait for
 * what they need and stay quiet. Each test runs one shell script on a private "host": its own
 * network namespace (lo only, so the default ports are free), mount namespace (tmpfs on
 * /run/stoa and /var/lib/stoa, the defaults as root) and pid namespace (all it started dies
 * with it).
 */
import { describe, expect, test } from "bun:test";
import { STOA } from "../helpers/stoa.ts";
import { requireBinary } from "../fixtures/e2e-helpers.ts";

const canRun = process.getuid?.() === 0 && Bun.which("unshare") !== null;
if (!canRun) console.warn("readiness.test.ts needs root and unshare");

/** Runs `script` (sh -e, `$S` is dist/stoa) on a private host; its exit code and output. */
async function onPrivateHost(script: string, timeoutMs = 40_000): Promise<{ code: number; out: string; err: string }> {
  requireBinary();
  const full = [
    "set -e",
    "mkdir -p /run/stoa /var/lib/stoa && mount -t tmpfs tmpfs /run/stoa && mount -t tmpfs tmpfs /var/lib/stoa",
    "ip link set lo up",
    `S='${STOA}'`,
    "cd /run/stoa",
    script,
  ].join("\n");
  const proc = Bun.spawn(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", full], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: "/run/stoa" },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  clearTimeout(timer);
  return { code, out, err };
}

/** What the script printed between the line `--- name` and the next line starting with `--- `. */
function SECTION(out: string, name: string): string {
  const lines = out.split("\n");
  const start = lines.indexOf(`--- ${name}`);
  if (start < 0) return `(no section ${name} in: ${out})`;
  const end = lines.findIndex((l, i) => i > start && l.startsWith("--- "));
  return lines.slice(start + 1, end < 0 ? undefined : end).join("\n");
}

describe.if(canRun)("stoa status", () => {
  test("returns 0 after 'stoa up &' with --wait, and shows the gateway's ports and the publishers", async () => {
    const r = await onPrivateHost(`
      $S up > up.out 2> up.err &
      $S status --wait 10s; echo "--- status exit $?"
      echo x | $S pub demo/x --stay &
      $S sub demo/x --count 1 > /dev/null
      echo '--- json'; $S status --json
    `);
    expect(r.out).toContain("--- status exit 0");
    expect(r.out).toMatch(/^gateway +serving, .*ports service 8081, string 8082, ping 8083/m);
    const report = JSON.parse(SECTION(r.out, "json").trim()) as {
      healthy: boolean;
      gateway: { info: { ports: unknown }; routes: { pub_id: string }[] };
      meta: { publishers: { name: string; pub_id: string; state: string; urls: { service: string } }[] };
    };
    expect(report.healthy).toBe(true);
    expect(report.gateway.info.ports).toEqual({ service: 8081, string: 8082, ping: 8083 });
    const [pub] = report.meta.publishers;
    expect(pub?.name).toBe("demo/x");
    expect(pub?.state).toBe("live");
    expect(report.gateway.routes.map((e) => e.pub_id)).toContain(pub?.pub_id ?? "?");
  }, 60_000);

  test("exits non-zero with the reason when no gateway runs, after waiting --wait", async () => {
    const r = await onPrivateHost(`
      start=$(date +%s%N)
      if $S status --wait 1500ms; then echo "--- unexpected 0"; else echo "--- status exit $?"; fi
      echo "--- waited ms $(( ($(date +%s%N) - start) / 1000000 ))"
    `);
    expect(r.out).toContain("--- status exit 1");
    expect(r.out).toMatch(/^gateway +down: /m);
    expect(r.err).toMatch(/not healthy \(after waiting 1\.5s\): gateway: no gateway is running with control socket \/run\/stoa\/gateway\.sock/);
    // It did wait (generous: at least most of the 1.5 s).
    expect(Number(r.out.match(/--- waited ms (\d+)/)?.[1])).toBeGreaterThanOrEqual(1_200);
  }, 60_000);
});

describe.if(canRun)("clients wait for what they need (--wait)", () => {
  test("stoa pub started before stoa up waits for it and publishes; stoa sub started first waits for the name", async () => {
    const r = await onPrivateHost(`
      $S sub demo/early --count 1 > sub.out 2> sub.err & sub=$!
      (echo first; sleep 30) | $S pub demo/early > pub.out 2> pub.err & pub=$!
      sleep 2.5
      $S up > up.out 2> up.err &
      if wait $sub; then echo "--- sub exit 0"; else echo "--- sub exit $?"; fi
      echo "--- sub.out"; cat sub.out
      echo "--- pub running $(kill -0 $pub && echo yes)"
      echo "--- pub.err"; cat pub.err; echo "--- sub.err"; cat sub.err; echo "--- end"
    `);
    expect(r.out).toContain("--- sub exit 0");
    expect(SECTION(r.out, "sub.out")).toBe("first");
    expect(r.out).toContain("--- pub running yes");
    // A wait longer than a second is said once, as a warning; nothing else.
    const pubErr = SECTION(r.out, "pub.err");
    expect(pubErr.match(/waiting for the gateway/g)?.length ?? 0).toBe(1);
    expect(pubErr.split("\n").filter((l) => l !== "" && !/waiting for/.test(l))).toEqual([]);
  }, 60_000);

  test("without what it needs, pub fails after --wait with today's message", async () => {
    const r = await onPrivateHost(`
      echo x | $S pub demo/none --wait 300ms || echo "--- pub exit $?"
    `);
    expect(r.out).toContain("--- pub exit 1");
    expect(r.err).toContain("no gateway serves /run/stoa");
  }, 30_000);
});

describe.if(canRun)("quiet clients, loopback by default, ready files", () => {
  test("sub and pub print nothing on stderr in normal operation; -v shows what they do", async () => {
    const r = await onPrivateHost(`
      $S up > up.out 2> up.err &
      $S status --wait 10s > /dev/null
      (echo one; echo two; sleep 30) | $S pub demo/q 2> pub.err &
      $S sub demo/q --count 1 2> sub.err > sub.out
      $S sub demo/q --latest 2>> sub.err >> sub.out
      $S sub demo/q --count 1 -v 2> subv.err > /dev/null
      echo "--- sub.out"; cat sub.out; echo "--- pub.err"; cat pub.err; echo "--- sub.err"; cat sub.err
      echo "--- subv.err"; cat subv.err; echo "--- end"
    `);
    expect(SECTION(r.out, "sub.out").split("\n").length).toBe(2);
    expect(SECTION(r.out, "pub.err")).toBe("");
    expect(SECTION(r.out, "sub.err")).toBe("");
    expect(SECTION(r.out, "subv.err")).toMatch(/INFO +sub: subscribed/);
  }, 60_000);

  test("stoa up listens on loopback only by default and says so; --listen opens it", async () => {
    const r = await onPrivateHost(`
      ip link add v0 type veth peer name v1 && ip addr add 10.9.9.1/24 dev v0 && ip link set v0 up && ip link set v1 up
      $S up --ready-file /run/stoa/up.ready > up.out 2> up.err &
      while [ ! -e /run/stoa/up.ready ]; do sleep 0.05; done
      echo "--- banner"; head -2 up.out
      echo "--- json"; $S status --json
      echo "--- 10.9.9.1:8081 $(timeout 2 bash -c 'echo > /dev/tcp/10.9.9.1/8081' 2>/dev/null && echo open || echo closed)"
      echo "--- 127.0.0.1:8081 $(timeout 2 bash -c 'echo > /dev/tcp/127.0.0.1/8081' 2>/dev/null && echo open || echo closed)"
      echo "--- 10.9.9.1:8090 $(timeout 2 bash -c 'echo > /dev/tcp/10.9.9.1/8090' 2>/dev/null && echo open || echo closed)"
      echo "--- end"
    `);
    expect(SECTION(r.out, "banner")).toMatch(/gateway on ::1, 127\.0\.0\.1 .*loopback only; --listen :: for other hosts/);
    expect(SECTION(r.out, "banner")).toMatch(/metaserver http:\/\/\[::1\]:8090\/v1 \(loopback only/);
    const report = JSON.parse(SECTION(r.out, "json")) as { gateway: { info: { listen: string[] } } };
    expect(report.gateway.info.listen).toEqual(["::1", "127.0.0.1"]);
    expect(r.out).toContain("--- 10.9.9.1:8081 closed");
    expect(r.out).toContain("--- 127.0.0.1:8081 open");
    expect(r.out).toContain("--- 10.9.9.1:8090 closed");

    const open = await onPrivateHost(`
      ip link add v0 type veth peer name v1 && ip addr add 10.9.9.1/24 dev v0 && ip link set v0 up && ip link set v1 up
      $S up --listen :: --meta-listen [::]:8090 > up.out 2> up.err &
      $S status --wait 10s > /dev/null
      echo "--- banner"; head -2 up.out
      echo "--- 10.9.9.1:8081 $(timeout 2 bash -c 'echo > /dev/tcp/10.9.9.1/8081' 2>/dev/null && echo open || echo closed)"
      echo "--- end"
    `);
    expect(SECTION(open.out, "banner")).toContain("reachable from other hosts");
    expect(open.out).toContain("--- 10.9.9.1:8081 open");
  }, 60_000);

  test("--ready-file: stoa gateway and stoa up write it atomically once their ports answer, and remove it at exit", async () => {
    const r = await onPrivateHost(`
      $S gateway --run-dir /run/stoa/g --ready-file /run/stoa/g.ready > g.out 2> g.err & gw=$!
      while [ ! -e /run/stoa/g.ready ]; do sleep 0.01; done
      echo "--- answers $(bash -c 'echo > /dev/tcp/127.0.0.1/8083' 2>/dev/null && echo yes || echo no)"
      echo "--- g.ready"; cat /run/stoa/g.ready
      kill $gw; wait $gw || true
      echo "--- after exit $(test -e /run/stoa/g.ready && echo present || echo gone)"
      $S up --ports 9081,9082,9083 --meta-listen 127.0.0.1:9090 --ready-file /run/stoa/u.ready > u.out 2> u.err &
      while [ ! -e /run/stoa/u.ready ]; do sleep 0.01; done
      echo "--- meta answers $(bash -c 'echo > /dev/tcp/127.0.0.1/9090' 2>/dev/null && echo yes || echo no)"
      echo "--- u.ready"; cat /run/stoa/u.ready; echo "--- end"
    `);
    expect(r.out).toContain("--- answers yes");
    const g = JSON.parse(SECTION(r.out, "g.ready")) as { pid: number; ports: unknown; run_dir: string };
    expect(g.ports).toEqual({ service: 8081, string: 8082, ping: 8083 });
    expect(g.run_dir).toBe("/run/stoa/g");
    expect(r.out).toContain("--- after exit gone");
    expect(r.out).toContain("--- meta answers yes");
    const u = JSON.parse(SECTION(r.out, "u.ready")) as { ports: unknown; meta: string };
    expect(u.ports).toEqual({ service: 9081, string: 9082, ping: 9083 });
    expect(u.meta).toBe("http://127.0.0.1:9090");
  }, 60_000);
});

describe("help for a binary user", () => {
  test("no --help text of any command or subcommand points to a src/ file (a binary user has none)", () => {
    const seen: string[] = [];
    const walk = (path: string[]) => {
      const run = Bun.spawnSync([STOA, ...path, "--help"], { stdin: "ignore" });
      const text = run.stdout.toString();
      seen.push(path.join(" "));
      expect({ command: path.join(" "), src: text.match(/.*\bsrc\/.*/g) ?? [] }).toEqual({ command: path.join(" "), src: [] });
      const commands = text.split("\nCommands:\n")[1]?.split("\n\n")[0] ?? "";
      for (const line of commands.split("\n")) {
        const name = line.match(/^ {2}(\S+)/)?.[1];
        if (name !== undefined) walk([...path, name]);
      }
    };
    walk([]);
    expect(seen).toContain("hotlink serve");
    expect(seen).toContain("meta");
    expect(seen).toContain("status");
  });
});

describe.if(canRun)("a crashed publisher's directory", () => {
  test("is reclaimed by the gateway (here: at its start), not left in <run dir>/pub/ for ever", async () => {
    const r = await onPrivateHost(`
      $S up > up.out 2> up.err & up=$!
      $S status --wait 10s > /dev/null
      (echo x; sleep 60) | $S pub demo/crash > pub.out & pub=$!
      while ! grep -q '^publishing' pub.out 2>/dev/null; do sleep 0.05; done
      id=$(sed -n 's/^publishing [^ ]* as \\([^:]*\\):.*/\\1/p' pub.out)
      kill -KILL $pub
      sleep 0.2
      echo "--- left $(ls /run/stoa/pub/$id | tr '\\n' ' ')"
      kill $up; wait $up || true
      touch -d '1 minute ago' /run/stoa/pub/$id   # past the sweep's grace for a starting publisher
      $S gateway --ready-file /run/stoa/g.ready > g.out 2> g.err &
      while [ ! -e /run/stoa/g.ready ]; do sleep 0.02; done
      sleep 0.5
      echo "--- after $(test -e /run/stoa/pub/$id && echo present || echo gone)"
      echo "--- end"
    `);
    expect(r.out).toMatch(/--- left .*service\.sock/);
    expect(r.out).toContain("--- after gone");
  }, 60_000);
});
