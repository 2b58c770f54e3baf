/**
 * ICE servers as a daemon is given them (`--ice-servers`, Welcome's `ice`, the seed's env
 * `SYFTBOX_HOTLINK_ICE_SERVERS`): a comma-separated list of
 *
 *   stun:HOST[:PORT]                  a STUN server (server-reflexive candidates)
 *   turn:USER:PASS@HOST[:PORT]        a TURN server over UDP with long-term credentials
 *                                     (relay candidates); USER and PASS percent-encoded when
 *                                     they hold ":", "@", "," or "%"
 *
 * HOST is a name, an IPv4 address or a bracketed IPv6 address; PORT defaults to 3478. Parsing is
 * a scanner over the text with limits (`MAX_ICE_SERVERS` entries, `MAX_ICE_SERVER_LENGTH`
 * characters each); a bad entry is a `StoaError("usage")` naming the entry (without its
 * password) and what is wrong. `formatIceServers` writes the list back in the same form.
 */
import { StoaError } from "../core/errors.ts";

export const MAX_ICE_SERVERS = 8;
export const MAX_ICE_SERVER_LENGTH = 512;
const DEFAULT_PORT = 3478;

export interface IceServer {
  kind: "stun" | "turn";
  /** A name, an IPv4 address, or an IPv6 address without brackets. */
  host: string;
  port: number;
  /** TURN only. */
  username?: string;
  credential?: string;
}

/** The environment variable the seed's clients read (a fallback for `--ice-servers`). */
export const ICE_SERVERS_ENV = "SYFTBOX_HOTLINK_ICE_SERVERS";

/** Parses a comma-separated list; "" is no servers. Throws StoaError("usage") on a bad entry. */
export function parseIceServers(text: string, what = "--ice-servers"): IceServer[] {
  const entries = text.split(",").map((e) => e.trim()).filter((e) => e !== "");
  if (entries.length > MAX_ICE_SERVERS) throw new StoaError("usage", `${what}: at most ${MAX_ICE_SERVERS} servers, got ${entries.length}`);
  return entries.map((entry) => parseEntry(entry, what));
}

/** Writes servers back as `parseIceServers` reads them. */
export function formatIceServers(servers: readonly IceServer[]): string {
  return servers
    .map((s) => {
      const host = s.host.includes(":") ? `[${s.host}]` : s.host;
      const auth = s.kind === "turn" ? `${encodeURIComponent(s.username ?? "")}:${encodeURIComponent(s.credential ?? "")}@` : "";
      return `${s.kind}:${auth}${host}:${s.port}`;
    })
    .join(",");
}

/** An entry as shown in errors and logs: the password is never shown. */
export function shownIceServer(s: IceServer): string {
  const host = s.host.includes(":") ? `[${s.host}]` : s.host;
  return s.kind === "turn" ? `turn:${s.username ?? ""}:***@${host}:${s.port}` : `stun:${host}:${s.port}`;
}

const NAME_CHAR = /[A-Za-z0-9.-]/;
const IPV6_CHAR = /[0-9A-Fa-f:.]/;
/** Characters of a credential as written (unreserved, sub-delims without "," and percent escapes). */
const CREDENTIAL_CHAR = /[A-Za-z0-9\-._~!$&'()*+;=%]/;

function parseEntry(entry: string, what: string): IceServer {
  const shown = entry.replace(/^(turn:[^:@]*:)[^@]*@/, "$1***@");
  const fail = (why: string): never => {
    throw new StoaError("usage", `${what}: ${JSON.stringify(shown.slice(0, 80))}: ${why}; use stun:HOST[:PORT] or turn:USER:PASS@HOST[:PORT]`);
  };
  if (entry.length > MAX_ICE_SERVER_LENGTH) fail(`longer than ${MAX_ICE_SERVER_LENGTH} characters`);
  let i = 0;
  const scheme = /^(stun|turn):/.exec(entry)?.[1] as "stun" | "turn" | undefined;
  if (scheme === undefined) return fail("the scheme must be stun: or turn:");
  i = scheme.length + 1;
  let username: string | undefined;
  let credential: string | undefined;
  if (scheme === "turn") {
    const user = scan(entry, i, CREDENTIAL_CHAR);
    if (entry[user] !== ":" || user === i) fail("a TURN server needs USER:PASS@ before its host");
    const pass = scan(entry, user + 1, CREDENTIAL_CHAR);
    if (entry[pass] !== "@" || pass === user + 1) fail("a TURN server needs USER:PASS@ before its host");
    username = decodeCredential(entry.slice(i, user), fail);
    credential = decodeCredential(entry.slice(user + 1, pass), fail);
    i = pass + 1;
  }
  let host: string;
  if (entry[i] === "[") {
    const end = scan(entry, i + 1, IPV6_CHAR);
    if (entry[end] !== "]" || end === i + 1) fail("an IPv6 host is written [ADDRESS]");
    host = entry.slice(i + 1, end);
    if (!host.includes(":")) fail(`${host} is not an IPv6 address`);
    i = end + 1;
  } else {
    const end = scan(entry, i, NAME_CHAR);
    if (end === i) fail("the host is missing or has a character a host name cannot have");
    host = entry.slice(i, end).toLowerCase();
    if (host.length > 253 || host.startsWith("-") || host.startsWith(".") || host.endsWith("-")) fail(`${host} is not a host name`);
    i = end;
  }
  let port = DEFAULT_PORT;
  let after = "host";
  if (entry[i] === ":") {
    after = "port";
    const end = scan(entry, i + 1, /[0-9]/);
    const digits = entry.slice(i + 1, end);
    port = Number(digits);
    if (digits === "" || digits.length > 5 || port < 1 || port > 65_535) fail("the port must be 1-65535");
    i = end;
  }
  if (i !== entry.length) fail(`unexpected ${JSON.stringify(entry[i])} after the ${after}`);
  return scheme === "turn" ? { kind: scheme, host, port, username, credential } : { kind: scheme, host, port };
}

/** The index of the first character at or after `from` that is not in `allowed`. */
function scan(text: string, from: number, allowed: RegExp): number {
  let i = from;
  while (i < text.length && allowed.test(text[i] ?? "")) i++;
  return i;
}

function decodeCredential(raw: string, fail: (why: string) => never): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    return fail("a credential has a malformed percent escape");
  }
}

/** The servers as an RTCPeerConnection's `iceServers`. */
export function rtcIceServers(servers: readonly IceServer[]): { urls: string; username?: string; credential?: string }[] {
  return servers.map((s) => {
    const host = s.host.includes(":") ? `[${s.host}]` : s.host;
    return s.kind === "turn"
      ? { urls: `turn:${host}:${s.port}?transport=udp`, username: s.username ?? "", credential: s.credential ?? "" }
      : { urls: `stun:${host}:${s.port}` };
  });
}
