#!/usr/bin/env bun
/**
 * The plain Bun relay of scripts/bench/supervisor.ts (issue 14): what a user writes instead of
 * a relay — one `Bun.udpSocket` bound to 0.0.0.0:PORT that joins GROUP on the interface of
 * IFADDR, and every datagram it receives re-sent as is by a second socket connected to
 * DEST:DPORT. Prints "ready" once both sockets are up; SIGTERM/SIGINT close them and exit 0.
 *
 *   bun scripts/bench/lib/bun-udp-relay.ts GROUP PORT IFADDR DEST DPORT
 */
const [group, port, ifaddr, dest, dport] = process.argv.slice(2);
if (group === undefined || port === undefined || ifaddr === undefined || dest === undefined || dport === undefined) {
  console.error("usage: bun scripts/bench/lib/bun-udp-relay.ts GROUP PORT IFADDR DEST DPORT");
  process.exit(2);
}

const out = await Bun.udpSocket({ connect: { hostname: dest, port: Number(dport) } });
const input = await Bun.udpSocket({
  hostname: "0.0.0.0",
  port: Number(port),
  socket: {
    data(_socket, data) {
      out.send(data);
    },
  },
});
if (!input.addMembership(group, ifaddr)) {
  console.error(`bun-udp-relay: could not join ${group} on ${ifaddr}`);
  process.exit(1);
}
const stop = () => {
  input.close();
  out.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
console.log("ready");

export {};
