/**
 * The command-line forms of a daemon's channels:
 *   --tunnel CHANNEL=HOST:PORT[@PEER]   e.g. alice/mpc/run1/0_to_1=127.0.0.1:10001@bob
 *   --ipc CHANNEL=unix:PATH             e.g. alice/bench/ipc=unix:/tmp/alice.sock
 * HOST is an IPv4 address, a name, or an IPv6 address in brackets. PEER is a user name (it may
 * contain "@", e.g. bob@example.org: the first "@" after the port starts it).
 */
import { StoaError } from "../core/errors.ts";
import { UNIX_PATH_MAX } from "../core/unixsock.ts";
import { pathProblem } from "./acl.ts";
import type { IpcSpec } from "./ipc.ts";
import type { TunnelSpec } from "./tunnel.ts";
import { userNameProblem } from "./users.ts";

function splitChannel(text: string, flag: string): [string, string] {
  const eq = text.indexOf("=");
  if (eq <= 0) throw new StoaError("usage", `${flag} ${JSON.stringify(text)}: expected CHANNEL=…`);
  const channel = text.slice(0, eq);
  const problem = pathProblem(channel);
  if (problem !== null) throw new StoaError("usage", `${flag} ${JSON.stringify(text)}: channel ${problem}`);
  return [channel, text.slice(eq + 1)];
}

/** Parses `CHANNEL=HOST:PORT[@PEER]`; StoaError "usage" saying what is wrong. */
export function parseTunnelSpec(text: string): TunnelSpec {
  const [channel, rest] = splitChannel(text, "--tunnel");
  const bad = (why: string) => new StoaError("usage", `--tunnel ${JSON.stringify(text)}: ${why}; expected CHANNEL=HOST:PORT[@PEER]`);
  let host: string;
  let after: string;
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0) throw bad("unclosed [ in the IPv6 address");
    host = rest.slice(1, close);
    after = rest.slice(close + 1);
    if (!after.startsWith(":")) throw bad("a port must follow the address");
    after = after.slice(1);
  } else {
    const colon = rest.indexOf(":");
    if (colon <= 0) throw bad("no HOST:PORT");
    host = rest.slice(0, colon);
    after = rest.slice(colon + 1);
  }
  const at = after.indexOf("@");
  const portText = at < 0 ? after : after.slice(0, at);
  const peer = at < 0 ? undefined : after.slice(at + 1);
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw bad(`bad port ${JSON.stringify(portText)}`);
  if (host.length === 0 || host.length > 255) throw bad("empty or overlong host");
  if (peer !== undefined) {
    const problem = userNameProblem(peer);
    if (problem !== null) throw bad(`peer ${problem}`);
  }
  return { channel, host, port: Number(portText), ...(peer === undefined ? {} : { peer }) };
}

/** Parses `CHANNEL=unix:PATH`. */
export function parseIpcSpec(text: string): IpcSpec {
  const [channel, rest] = splitChannel(text, "--ipc");
  if (!rest.startsWith("unix:") || rest.length === 5) {
    throw new StoaError("usage", `--ipc ${JSON.stringify(text)}: expected CHANNEL=unix:PATH`);
  }
  const path = rest.slice(5);
  if (Buffer.byteLength(path) > UNIX_PATH_MAX) {
    throw new StoaError("usage", `--ipc ${JSON.stringify(text)}: a Unix socket path is at most ${UNIX_PATH_MAX} bytes`);
  }
  return { channel, path };
}
