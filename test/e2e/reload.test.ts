/**
 * SIGHUP really reloads (core/daemon.ts, cli/common.ts `reloadConfigOnHangup`): a TLS gateway
 * serves a replaced certificate to new clients on every router while open connections go on; a
 * bad replacement keeps the old one; the `--config` file's log level applies at once and a
 * changed port is logged as needing a restart.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { newToken, tokenDigest } from "../../src/core/token.ts";
import { type Proc, Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";
import { rawEcho } from "../fixtures/gateway-helpers.ts";
import { stoa } from "../helpers/stoa.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
const closers: (() => unknown)[] = [];
afterAll(async () => {
  for (const close of closers) await close();
  await scope.cleanup();
});

const openssl = Bun.which("openssl");

/** A fresh self-signed pair in `dir` as `<name>.crt`/`<name>.key`; returns their paths and SHA-256. */
function makePair(dir: string, name: string): { cert: string; key: string; sha256: string } {
  if (openssl === null) throw new Error("reload.test.ts needs openssl (apt-get install openssl)");
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  const made = Bun.spawnSync(
    [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", `/CN=${name}`],
    { stderr: "pipe" },
  );
  if (made.exitCode !== 0) throw new Error(`openssl: ${made.stderr.toString()}`);
  return { cert, key, sha256: new X509Certificate(readFileSync(cert)).fingerprint256 };
}

/** A routed TLS connection to the echo publisher: the certificate it got, and an echo check. */
interface Echo {
  sha256: string;
  echo(text: string): Promise<string>;
  close(): void;
}

async function tlsEcho(port: number): Promise<Echo> {
  const sock: TLSSocket = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    sock.once("secureConnect", () => resolve());
    sock.once("error", reject);
  });
  const sha256 = sock.getPeerCertificate().fingerprint256;
  sock.write("STOA1 echo\n");
  return {
    sha256,
    echo: (text) =>
      new Promise((resolve, reject) => {
        let got = "";
        const onData = (d: Buffer) => {
          got += d.toString();
          if (got.length >= text.length) {
            sock.off("data", onData);
            resolve(got);
          }
        };
        sock.on("data", onData);
        sock.once("error", reject);
        sock.write(text);
      }),
    close: () => sock.destroy(),
  };
}

/** Count of `routed` debug lines per router in `text` (router 0 logs without a router field). */
function routers(text: string): Set<string> {
  const seen = new Set<string>();
  for (const line of text.split("\n")) {
    if (!line.includes("DEBUG gateway: routed ")) continue;
    seen.add(/ router=(\d+)/.exec(line)?.[1] ?? "0");
  }
  return seen;
}

/** Opens routed connections until both routers served at least one (the kernel spreads them by hash). */
async function onEveryRouter(gw: Proc, port: number, from: number): Promise<Echo[]> {
  const conns: Echo[] = [];
  for (let i = 0; i < 64; i++) {
    const c = await tlsEcho(port);
    conns.push(c);
    expect(await c.echo(`hi ${i}`)).toBe(`hi ${i}`); // routed: its debug line is written by now
    if (conns.length >= 4 && (await eventually("routed lines", () => routers(gw.err.slice(from)).size >= 2, { timeoutMs: 2_000 }).catch(() => false))) break;
  }
  expect([...routers(gw.err.slice(from))].sort()).toEqual(["0", "1"]);
  return conns;
}

async function hangUp(p: Proc, re: RegExp): Promise<void> {
  const from = p.err.length;
  p.proc.kill("SIGHUP");
  await eventually(`${re} after SIGHUP`, () => re.test(p.err.slice(from)), { timeoutMs: 10_000 });
  expect(p.running).toBe(true);
}

describe.skipIf(openssl === null)("SIGHUP on a TLS gateway", () => {
  test("new clients on every router get the replaced certificate; open connections go on; a bad replacement keeps it", async () => {
    requireBinary();
    const dir = scope.tempDir();
    const runDir = scope.tempDir();
    const a = makePair(dir, "a");
    const b = makePair(dir, "b");
    const [cert, key] = [join(dir, "cert.pem"), join(dir, "key.pem")];
    copyFileSync(a.cert, cert);
    copyFileSync(a.key, key);
    const echo = await rawEcho(publisherSocketPath(runDir, "echo", "string"));
    closers.push(() => echo.close());
    const [service, string, ping] = freePorts(3) as [number, number, number];
    const gw = scope.stoa("gateway", [
      "gateway", "--listen", "127.0.0.1", "--ports", `${service},${string},${ping}`, "--run-dir", runDir,
      "--workers", "2", "--tls-cert", cert, "--tls-key", key, "--log-level", "debug",
    ]);
    await gw.waitFor("out", /^gateway: .*\(TLS\)/m);

    const before = await onEveryRouter(gw, string, 0);
    for (const c of before) expect(c.sha256).toBe(a.sha256);

    copyFileSync(b.cert, cert);
    copyFileSync(b.key, key);
    await hangUp(gw, /reloaded reason=SIGHUP reloaded="tls \(new certificate sha256 [0-9A-F:]+\)"/);
    expect(gw.err).toContain(`TLS certificate reloaded: new connections get it, open ones keep theirs cert=${cert} sha256=${b.sha256}`);
    expect(gw.err).toMatch(/sha256=[0-9A-F:]+ not_after=\d{4}-\d\d-\d\dT[\d:.]+Z subject="CN=b" routers=2/);

    // Established connections, on both routers, still carry bytes.
    for (const [i, c] of before.entries()) expect(await c.echo(`still ${i}`)).toBe(`still ${i}`);
    const mark = gw.err.length;
    const after = await onEveryRouter(gw, string, mark);
    for (const c of after) expect(c.sha256).toBe(b.sha256);

    // A broken certificate, then a key of another pair: logged, and b stays in use.
    writeFileSync(cert, "not a certificate\n");
    await hangUp(gw, /reload failed; keeping what was loaded before what=tls error=".*not a PEM certificate/);
    copyFileSync(b.cert, cert);
    copyFileSync(a.key, key);
    await hangUp(gw, /reload failed; keeping what was loaded before what=tls error="the key .* does not belong to the certificate/);
    const kept = await onEveryRouter(gw, string, gw.err.length);
    for (const c of kept) expect(c.sha256).toBe(b.sha256);
    for (const c of [...before, ...after, ...kept]) c.close();
    gw.proc.kill("SIGTERM");
    expect(await gw.exitWithin(15_000)).toBe(0);
  }, 60_000);
});

/** One raw GET on a TCP port: the status code, or 0 when the connection fails. */
function rawStatus(port: number, path: string): Promise<number> {
  return new Promise((resolve) => {
    const sock = tcpConnect({ host: "127.0.0.1", port }, () => sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`));
    let text = "";
    sock.on("data", (d) => {
      text += d.toString("latin1");
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (m) {
        resolve(Number(m[1]));
        sock.destroy();
      }
    });
    sock.on("error", () => resolve(0));
    sock.on("close", () => resolve(0));
  });
}

describe("SIGHUP re-reads --config", () => {
  test("stoa gateway: the log level goes from info to debug; a changed port is logged as needing a restart and the port stays", async () => {
    requireBinary();
    const [service, string, ping, other] = freePorts(4) as [number, number, number, number];
    const file = join(scope.tempDir(), "gateway.json");
    writeFileSync(file, JSON.stringify({ logLevel: "info", ports: `${service},${string},${ping}`, listen: ["127.0.0.1"] }));
    const gw = scope.stoa("gateway", ["gateway", "--config", file, "--run-dir", scope.tempDir(), "--workers", "2"]);
    await gw.waitFor("out", /^gateway: /m);
    // A refused request logs a debug line ("rejected"), on whichever router took it.
    for (let i = 0; i < 6; i++) expect(await rawStatus(service, "/pub/nobody")).toBe(404);
    expect(gw.err).not.toContain("DEBUG");

    writeFileSync(file, JSON.stringify({ logLevel: "debug", ports: `${other},${string},${ping}`, listen: ["127.0.0.1"] }));
    await hangUp(gw, /reloaded reason=SIGHUP reloaded="config \(.*gateway\.json: applied log-level; needs restart: ports\)"/);
    expect(gw.err).toMatch(/WARN  gateway: config: changed settings that need a restart; still running with the old values file=\S+ needs_restart=ports/);
    const mark = gw.err.length;
    for (let i = 0; i < 8; i++) expect(await rawStatus(service, "/pub/nobody")).toBe(404);
    await eventually("debug lines", () => /DEBUG gateway: rejected .*error=unknown_pub_id/.test(gw.err.slice(mark)));
    // The port stays; the new one is not bound.
    expect(await rawStatus(service, "/ready")).toBe(200);
    expect(await rawStatus(other, "/ready")).toBe(0);

    // A broken file changes nothing: still debug, still the old port.
    writeFileSync(file, "{ not json");
    await hangUp(gw, /reload failed; keeping what was loaded before what=config error=".*not valid JSON/);
    writeFileSync(file, JSON.stringify({ logLevel: "loud" }));
    await hangUp(gw, /reload failed; keeping what was loaded before what=config error=".*config file \S+ key \\"logLevel\\"/);
    const mark2 = gw.err.length;
    expect(await rawStatus(service, "/pub/nobody")).toBe(404);
    await eventually("debug lines", () => /DEBUG gateway: rejected /.test(gw.err.slice(mark2)));
    gw.proc.kill("SIGTERM");
    expect(await gw.exitWithin(15_000)).toBe(0);
  }, 60_000);

  test("stoa meta: a new --tokens-file in the config takes effect; the listen address needs a restart", async () => {
    const [port, other] = freePorts(2) as [number, number];
    const dir = scope.tempDir();
    const file = join(dir, "meta.json");
    const writers = join(dir, "writers.txt");
    const token = newToken("stm_");
    const digest = tokenDigest(token).toString("hex");
    writeFileSync(writers, `sha256:${digest} host-a\n`);
    writeFileSync(file, JSON.stringify({ listen: `127.0.0.1:${port}`, db: ":memory:", stateDir: dir }));
    const meta = scope.stoa("meta", ["meta", "--config", file]);
    await meta.waitFor("out", /metaserver/);
    const write = async () =>
      (await fetch(`http://127.0.0.1:${port}/v1/publishers`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: "{}" })).status;
    expect(await write()).toBe(401);
    writeFileSync(file, JSON.stringify({ listen: `127.0.0.1:${other}`, db: ":memory:", stateDir: dir, tokensFile: writers, logFormat: "json" }));
    await hangUp(meta, /"msg":"reloaded".*"reloaded":"config \(.*applied log-format,tokens-file; needs restart: listen\), writer tokens \(1 from /);
    expect(await write()).toBe(400);
    expect(meta.err).toMatch(/"level":"warn","name":"meta","msg":"config: changed settings that need a restart; still running with the old values".*"needs_restart":"listen"/);
    meta.proc.kill("SIGTERM");
    expect(await meta.exitWithin(10_000)).toBe(0);
  }, 30_000);

  test("stoa up: the log level reaches the gateway's routers; a changed metaserver address needs a restart", async () => {
    const [service, string, ping, metaPort, other] = freePorts(5) as [number, number, number, number, number];
    const dir = scope.tempDir();
    const file = join(dir, "up.json");
    const base = { listen: ["127.0.0.1"], ports: `${service},${string},${ping}`, stateDir: dir, runDir: scope.tempDir() };
    writeFileSync(file, JSON.stringify({ ...base, metaListen: `127.0.0.1:${metaPort}` }));
    const up = scope.stoa("up", ["up", "--config", file]);
    await up.waitFor("out", /^stoa up: /m);
    expect(await rawStatus(service, "/pub/nobody")).toBe(404);
    writeFileSync(file, JSON.stringify({ ...base, metaListen: `127.0.0.1:${other}`, logLevel: "debug" }));
    await hangUp(up, /reloaded reason=SIGHUP reloaded="config \(\S+up\.json: applied log-level; needs restart: meta-listen\), writer tokens \(none\)"/);
    const mark = up.err.length;
    for (let i = 0; i < 4; i++) expect(await rawStatus(service, "/pub/nobody")).toBe(404);
    await eventually("debug lines", () => /DEBUG up: rejected .*part=gateway/.test(up.err.slice(mark)));
    expect((await fetch(`http://127.0.0.1:${metaPort}/v1/health`)).status).toBe(200);
    up.proc.kill("SIGTERM");
    expect(await up.exitWithin(15_000)).toBe(0);
  }, 30_000);

  test("stoa hotlink serve: a new --users path in the config is read, and only through the config", async () => {
    const [port] = freePorts(1) as [number];
    const dir = scope.tempDir();
    const [one, two, file] = [join(dir, "one.json"), join(dir, "two.json"), join(dir, "relay.json")];
    for (const [users, names] of [[one, ["alice"]], [two, ["bob", "carol"]]] as const) {
      for (const name of names) expect(stoa(["hotlink", "user", "add", name, "--users", users]).code).toBe(0);
    }
    writeFileSync(file, JSON.stringify({ listen: `127.0.0.1:${port}`, users: one }));
    const relay = scope.stoa("hotlink", ["hotlink", "serve", "--config", file]);
    await relay.waitFor("out", /^hotlink: /m);
    writeFileSync(file, JSON.stringify({ listen: `127.0.0.1:${port}`, users: two }));
    await hangUp(relay, /reloaded reason=SIGHUP reloaded="config \(\S+relay\.json: applied users\), users and acl \(with the config\)"/);
    expect(relay.err).toMatch(/INFO  hotlink: reloaded users=2 rules=0 revoked=0 ok=true/);
    // A users path that does not exist: logged, the two users stay.
    writeFileSync(file, JSON.stringify({ listen: `127.0.0.1:${port}`, users: join(dir, "missing.json") }));
    await hangUp(relay, /reload failed; keeping what was loaded before what=config/);
    writeFileSync(file, JSON.stringify({ listen: `127.0.0.1:${port}`, users: two }));
    await hangUp(relay, /INFO  hotlink: reloaded users=2 /);
    relay.proc.kill("SIGTERM");
    expect(await relay.exitWithin(10_000)).toBe(0);
  }, 30_000);
});
