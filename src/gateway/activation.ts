/**
 * Socket activation for the gateway (rules in protocol.ts, "Socket activation"): systemd's
 * inherited listening sockets (core/daemon.ts `listenFds`) assigned to the three kinds.
 */
import type { ListenFd } from "../core/daemon.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { boundAddress } from "../ffi/sockets.ts";
import { KINDS, type Kind, type Ports } from "./protocol.ts";

/** Inherited sockets by kind, with what they are bound to. */
export interface ActivatedSockets {
  fds: Record<Kind, number[]>;
  ports: Ports;
  listen: string[];
}

/**
 * Sockets named `service`, `string`, `ping` (`FileDescriptorName=`; several per kind for
 * several addresses) go to their kind; otherwise exactly three sockets are service, string and
 * ping in their order (`ListenStream=` lines of one .socket unit). Each kind's sockets must
 * share one port. Throws `StoaError("config")` for anything else.
 */
export function assignActivatedSockets(inherited: readonly ListenFd[]): ActivatedSockets {
  const fds: Record<Kind, number[]> = { service: [], string: [], ping: [] };
  const named = inherited.every((s) => (KINDS as readonly string[]).includes(s.name));
  if (named) for (const s of inherited) fds[s.name as Kind].push(s.fd);
  else if (inherited.length === KINDS.length) KINDS.forEach((kind, i) => fds[kind].push(inherited[i]?.fd ?? -1));
  else {
    throw new StoaError(
      "config",
      `systemd passed ${inherited.length} socket(s) named ${inherited.map((s) => s.name).join(",")}: ` +
        "the gateway needs three ListenStream= in the order service, string, ping, or sockets named service, string and ping (FileDescriptorName=)",
    );
  }
  const ports = { service: 0, string: 0, ping: 0 };
  const listen = new Set<string>();
  for (const kind of KINDS) {
    if (fds[kind].length === 0) throw new StoaError("config", `systemd passed no socket for the ${kind} port`);
    for (const fd of fds[kind]) {
      let bound: { host: string; port: number };
      try {
        bound = boundAddress(fd);
      } catch (err) {
        throw new StoaError("config", `inherited socket ${fd} for the ${kind} port: ${describeError(err)}`);
      }
      if (ports[kind] !== 0 && ports[kind] !== bound.port) {
        throw new StoaError("config", `the ${kind} sockets systemd passed are on different ports (${ports[kind]}, ${bound.port})`);
      }
      ports[kind] = bound.port;
      listen.add(bound.host);
    }
  }
  return { fds, ports, listen: [...listen] };
}
