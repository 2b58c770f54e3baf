/**
 * README.md's quick start and the walkthroughs ("A first stream", "A first tunnel", "A first circle",
 * "A first relay", "Many hosts" — with redis-server installed —, "A first service mesh" — after starting
 * Open vSwitch the way its service does), taken
 * from the file and run as printed, pasted one after the other into one `sh -e` — the way a new
 * user tries them. They run as root with the defaults they print (/run/stoa, /var/lib/stoa,
 * ports 8081-8083, 8090, 8470), so the script gets a private mount namespace (tmpfs on those
 * two dirs), network namespace (lo only) and pid namespace (everything it started dies with it).
 * The quick start's `./scripts/test` line is left out (it is this suite). Only three things are
 * added around the blocks: the quick start runs in the checkout (it is
 * `./install.sh`, with PREFIX in a temp dir that goes first on PATH) under the build lock,
 * the walkthroughs in a scratch dir, and after them a check of the tunnel's promise.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../helpers/stoa.ts";

const BUILD_LOCK = "/tmp/stoa-build.lock";

/** The first ```sh block after the heading `## title`. */
function block(readme: string, title: string): string {
  const at = readme.indexOf(`\n## ${title}\n`);
  if (at < 0) throw new Error(`README.md has no section "## ${title}"`);
  const next = readme.indexOf("\n## ", at + 1);
  const section = readme.slice(at, next < 0 ? undefined : next);
  const m = section.match(/```sh\n([^]*?)```/);
  if (m?.[1] === undefined) throw new Error(`section "## ${title}" of README.md has no sh block`);
  return m[1];
}

/** The quick start without its `./scripts/test` line, which must be there. */
function quickStart(text: string): string {
  const lines = text.split("\n");
  const tests = lines.filter((l) => /^\.\/scripts\/test(\s|$)/.test(l));
  if (tests.length !== 1) throw new Error("README.md's quick start must end with the ./scripts/test line");
  return lines.filter((l) => !tests.includes(l)).join("\n");
}

const canRun = process.getuid?.() === 0 && Bun.which("unshare") !== null && Bun.which("flock") !== null && Bun.which("socat") !== null;
const haveOvs = existsSync("/usr/sbin/ovs-vswitchd") && Bun.which("ovs-vsctl") !== null;
const haveRedis = Bun.which("redis-server") !== null && Bun.which("curl") !== null;
if (canRun && !haveRedis) console.warn("readme.test.ts leaves out 'Many hosts': redis-server or curl is not installed (apt install redis-server curl)");
if (canRun && !haveOvs) console.warn("readme.test.ts leaves out 'A first service mesh': Open vSwitch is not installed (apt install openvswitch-switch)");
if (!canRun) console.warn("readme.test.ts needs root, unshare, flock and socat (apt install socat)");

describe.if(canRun)("README.md as a script", () => {
  test(
    "the quick start, 'A first stream', 'A first tunnel', 'A first circle', 'A first relay', 'Many hosts' and 'A first service mesh' pasted as one script all succeed and do what the README says",
    async () => {
      const readme = readFileSync(join(ROOT, "README.md"), "utf8");
      const work = mkdtempSync(join(tmpdir(), "stoa-readme-"));
      try {
        const prefix = join(work, "prefix");
        const scratch = join(work, "scratch");
        mkdirSync(scratch);
        mkdirSync(join(work, "home"));
        const script = [
          "set -e",
          "mkdir -p /run/stoa /var/lib/stoa && mount -t tmpfs tmpfs /run/stoa && mount -t tmpfs tmpfs /var/lib/stoa",
          // /run/netns too: `ip netns add` (the relay's and the mesh's) leaves a file there on the host's disk otherwise.
          "mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns",
          "ip link set lo up",
          `cd '${ROOT}'`,
          // The quick start builds dist/stoa: under the lock every build here takes. The lock is
          // released on its open file (stoa up, started meanwhile, inherits only the descriptor).
          `exec 9>'${BUILD_LOCK}'; flock 9`,
          // Every line but `./scripts/test`: that is this test suite itself (CI runs it as printed).
          quickStart(block(readme, "Quick start")),
          "flock -u 9; exec 9>&-",
          "echo '--- quick start done'",
          `cd '${scratch}'`,
          block(readme, "A first stream"),
          "echo '--- stream done'",
          block(readme, "A first tunnel"),
          "echo '--- tunnel done'",
          `'${process.execPath}' '${join(ROOT, "test/fixtures/readme-tunnel.ts")}' 10001 10002`,
          block(readme, "A first circle"),
          "echo '--- circle done'",
          block(readme, "A first relay"),
          "sleep 0.2", // socat's output in the sink namespace, written as the datagram arrives
          "echo '--- relay done'",
          ...(haveRedis ? [block(readme, "Many hosts"), "echo '--- many hosts done'"] : []),
          // Open vSwitch as the openvswitch-switch service runs it, on its default paths (private
          // tmpfs), with the userspace datapath the walkthrough names (no kernel module here).
          ...(haveOvs
            ? [
                "mkdir -p /run/openvswitch /etc/openvswitch /var/log/openvswitch",
                "for d in /run/openvswitch /etc/openvswitch /var/log/openvswitch; do mount -t tmpfs tmpfs $d; done",
                "ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema",
                "/usr/sbin/ovsdb-server /etc/openvswitch/conf.db --remote=punix:/run/openvswitch/db.sock --pidfile --detach --log-file",
                "ovs-vsctl --no-wait init && ovs-vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true",
                "/usr/sbin/ovs-vswitchd --pidfile --detach --log-file",
                block(readme, "A first service mesh"),
                "echo '--- mesh done'",
              ]
            : []),
        ].join("\n");
        const file = join(work, "readme.sh");
        writeFileSync(file, script);
        const proc = Bun.spawn(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "sh", file], {
          cwd: work,
          env: {
            PATH: `${join(prefix, "bin")}:${process.env.PATH ?? "/usr/bin:/bin"}`,
            PREFIX: prefix,
            HOME: join(work, "home"),
          },
          stdin: "ignore",
          stdout: "pipe",
          stderr: "pipe",
        });
        const timer = setTimeout(() => proc.kill("SIGKILL"), 150_000);
        const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
        clearTimeout(timer);
        const context = `stdout:\n${out}\nstderr:\n${err}`;
        expect({ code, context }).toEqual({ code: 0, context });
        const [, stream = "", tunnel = ""] = out.split(/^--- (?:quick start|stream) done$/m);
        // Quick start: stoa up's banner says loopback only; status reported healthy.
        expect(out).toContain("loopback only");
        expect(out).toMatch(/^healthy$/m);
        // A first stream: three times from --count 3, then the latest as JSON.
        const times = stream.match(/^\d\d:\d\d:\d\d$/gm) ?? [];
        expect(times.length).toBeGreaterThanOrEqual(3);
        const json = stream.split("\n").find((l) => l.startsWith("{"));
        expect(json).toBeDefined();
        expect(JSON.stringify(JSON.parse(json ?? "{}").value)).toMatch(/\d\d:\d\d:\d\d/);
        // A first tunnel: both daemons on the relay (status healthy after them), bytes both ways.
        // The relay offers its framed link (--link-listen) and the daemons took it.
        expect(tunnel).toMatch(/alice via ws:\/\/127\.0\.0\.1:8470: connected \(framed TCP link\)/);
        expect(tunnel).toMatch(/bob via ws:\/\/127\.0\.0\.1:8470: connected \(framed TCP link\)/);
        expect(out).toContain("tunnel ok");
        // A first circle: 42, alpha's own db value, and nothing of it in beta's db.
        const circle = out.split(/^tunnel ok$/m)[1] ?? "";
        expect(circle).toMatch(/^42\n(?:.*\n)*?from [0-9a-f]{6}\n(?:.*\n)*?null\n(?:.*\n)*?--- circle done$/m);
        // A first relay: the rule's id, the datagram at the receiver, counted on one worker and the rule.
        const relay = (out.split(/^--- circle done$/m)[1] ?? "").split(/^--- relay done$/m)[0] ?? "";
        expect(relay).toMatch(/^r1$/m);
        expect(relay).toMatch(/^hello, relay$/m);
        expect(relay).toMatch(/^WORKER +PID +RECEIVED +MATCHED +SENT/m);
        expect(relay).toMatch(/^r1 +1 +13 /m);
        // Many hosts: registered through h1, two values found through h2, live on h2.
        if (haveRedis) {
          const many = (out.split(/^--- relay done$/m)[1] ?? "").split(/^--- many hosts done$/m)[0] ?? "";
          expect(many.match(/^\d\d:\d\d:\d\d$/gm)?.length).toBe(2);
          expect(many).toMatch(/^"state":"live"$/m);
        }
        // A first service mesh: the query, the client's request through the flows, the seed's create.
        if (haveOvs) {
          const mesh = out.split(/^--- relay done$/m)[1] ?? "";
          expect(mesh).toContain("vector-db 10.0.0.103:6333/tcp on node1 (container vector-db)\n");
          expect(mesh).toMatch(/^<!DOCTYPE HTML>/m);
          expect(mesh).toContain('"ipv4_address":"10.0.0.2/24"');
          expect(mesh).toContain("xray-vless 10.0.0.2:443/tcp on node1 (container xray)\n");
          expect(mesh).toMatch(/--- mesh done$/m);
        }
        // Clients say nothing on stderr in normal operation (daemons log their start at info).
        expect(err).not.toMatch(/\b(ERROR|WARN) +(pub|sub|status):/);
      } finally {
        rmSync(work, { recursive: true, force: true });
      }
    },
    180_000,
  );
});
