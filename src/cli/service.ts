import { bool, defineCommand, defineGroup } from "./command.ts";
import { selfArgv } from "../core/self.ts";
import { renderGatewaySocket, renderUnit, SOCKET_UNIT, UNIT_NAMES, type UnitName, unitFileName } from "../service/units.ts";

/** How systemd should start this stoa: the compiled binary's real path, or bun + the source. */
function execLine(): string {
  return selfArgv().join(" ");
}

const unit = defineCommand({
  name: "unit",
  summary: "print a systemd unit file for a daemon",
  description:
    "Prints a Type=notify unit for NAME (up, gateway, meta, hotlink-serve) with ExecStart on this\n" +
    "binary's real path, ExecReload sending SIGHUP, Restart=on-failure, a watchdog, the run and\n" +
    "state dirs as RuntimeDirectory=stoa and StateDirectory=stoa, and hardening (ProtectSystem=strict,\n" +
    "NoNewPrivileges, …). --user prints one for 'systemctl --user'. NAME gateway.socket prints\n" +
    "stoa-gateway.socket: systemd holds the ports 8081-8083 and passes them to the gateway\n" +
    "(socket activation), so a restart refuses no connection.",
  flags: { user: bool("a unit for the user's service manager (systemctl --user)") },
  positionals: [{ name: "NAME", description: "up, gateway, gateway.socket, meta or hotlink-serve", required: true, choices: [...UNIT_NAMES, SOCKET_UNIT] }],
  examples: [
    "stoa service unit gateway | sudo tee /etc/systemd/system/stoa-gateway.service && sudo systemctl enable --now stoa-gateway",
    "stoa service unit up --user > ~/.config/systemd/user/stoa-up.service && systemctl --user enable --now stoa-up",
    "sudo systemctl reload stoa-gateway   # SIGHUP: re-read TLS files, never a restart",
    "stoa service unit gateway.socket | sudo tee /etc/systemd/system/stoa-gateway.socket && sudo systemctl enable --now stoa-gateway.socket",
  ],
  run({ flags, args }) {
    if (args[0] === SOCKET_UNIT) {
      process.stdout.write(renderGatewaySocket(flags.user));
      if (process.stdout.isTTY) process.stderr.write("# save as stoa-gateway.socket\n");
      return;
    }
    const name = args[0] as UnitName;
    process.stdout.write(renderUnit(name, execLine(), flags.user));
    if (process.stdout.isTTY) process.stderr.write(`# save as ${unitFileName(name)}\n`);
  },
});

export default defineGroup({
  name: "service",
  summary: "systemd integration: unit files for stoa's daemons",
  description:
    "stoa's daemons (up, gateway, meta, hotlink serve) speak systemd's notify protocol: READY=1\n" +
    "once serving, STOPPING=1 at shutdown, WATCHDOG=1 when WatchdogSec is set, logs without\n" +
    "timestamps under journald, SIGHUP to reload. 'stoa service unit NAME' writes their units.",
  examples: ["stoa service unit gateway", "stoa service unit up --user"],
  subcommands: [unit],
});
