/**
 * D9's other half, found when the fix was attacked: `yes | stoa pub …`. A producer that never
 * pauses kept stdin readable forever, and reading it is all promise jobs, so the event loop never
 * turned: no heartbeat (the metaserver turned the publisher stale after its TTL and removed it
 * while it was still publishing), no ping answered, and SIGINT/SIGTERM never handled — the
 * process had to be killed with -9 and left its sockets. Now stdin reading gives the event loop a
 * turn every few milliseconds (src/stream/input.ts).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { MetaClient } from "../../src/meta/client.ts";
import { freePorts, requireBinary, Scope } from "../fixtures/e2e-helpers.ts";
import { STOA } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
afterAll(() => scope.cleanup());

describe("a publisher fed by a producer that never pauses (yes | stoa pub) — regression, found attacking issue 9 D9: starved heartbeats made it stale while publishing", () => {
  test("keeps its heartbeats, answers SIGTERM, deregisters and removes its sockets", async () => {
    requireBinary();
    const runDir = scope.tempDir();
    const stateDir = scope.tempDir();
    const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
    const metaUrl = `http://127.0.0.1:${m}`;
    const meta = scope.stoa("meta", ["meta", "--listen", `127.0.0.1:${m}`, "--state-dir", stateDir, "--ttl", "1s", "--deregister-after", "1s"]);
    await meta.waitFor("out", /^metaserver: /m, 15_000);
    const gw = scope.stoa("gateway", ["gateway", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--run-dir", runDir]);
    await eventually("the gateway's control socket", () => existsSync(join(runDir, "gateway.sock")), { timeoutMs: 15_000 });
    void gw;
    // The pipeline leads its own process group, as a shell job would.
    const script = `yes x | exec "$0" pub fast/yes --pub-id fastyes --meta "$1" --run-dir "$2" --state-dir "$3"`;
    const pub = scope.spawn("yes | pub", ["setsid", "sh", "-c", script, STOA, metaUrl, runDir, stateDir]);
    const client = new MetaClient(metaUrl);
    await eventually("the publisher to be live", async () => (await client.get("fastyes").catch(() => null))?.state === "live", { timeoutMs: 15_000, everyMs: 100 });
    // Three TTLs: starved heartbeats would have made it stale (and then removed it) by now.
    await Bun.sleep(3_000);
    expect((await client.get("fastyes")).state).toBe("live");
    const pid = Number((await Bun.$`pgrep -f -x ${`${STOA} pub fast/yes --pub-id fastyes --meta ${metaUrl} --run-dir ${runDir} --state-dir ${stateDir}`}`.text()).trim().split("\n")[0]);
    expect(pid).toBeGreaterThan(0);
    process.kill(pid, "SIGTERM");
    await eventually("the publisher to exit on SIGTERM", () => !existsSync(`/proc/${pid}`), { timeoutMs: 10_000, everyMs: 50 });
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(await client.get("fastyes").then(() => "still registered", (err: unknown) => (err as { status?: number }).status)).toBe(404);
    expect(readdirSync(join(runDir, "pub"))).toEqual([]);
    expect(pub.err).not.toContain("publisher fastyes is closed");
    try {
      process.kill(-pub.pid, "SIGTERM"); // the producer, if SIGPIPE has not ended it
    } catch {
      // gone already
    }
  }, 60_000);
});
