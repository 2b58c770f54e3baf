/**
 * What both kinds of worker do as they start (protocol.ts's diagram): take the supervisor's
 * stream from fd 3 — refusing to run when fd 3 is not a SEQPACKET socket, i.e. when a user
 * started `stoa supervisor worker` by hand — with its doorbell, a byte on stdout (a pipe the
 * supervisor reads; stream.ts), and drop privileges to `--user` for good.
 */
import { StoaError } from "../core/errors.ts";
import { OwnedFd } from "../ffi/fdpass.ts";
import { AF_PACKET, F_SETFL, O_NONBLOCK, SOCK_RAW, SOCK_SEQPACKET, SOL_SOCKET, errno, libc, strerror } from "../ffi/libc.ts";
import { dropPrivileges, lookupUser } from "../ffi/privileges.ts";
import { MessageStream } from "./stream.ts";

/** Where Bun.spawn's fourth stdio entry puts the worker's end of its stream. */
const STREAM_FD = 3;
/** stdout: a pipe to the supervisor, the worker's doorbell. */
const DOORBELL_FD = 1;

const SO_TYPE = 3;

/**
 * The supervisor's stream on fd 3 (made non-blocking), ringing the supervisor's doorbell on fd 1
 * after each flush, or a usage error for a worker started by hand.
 */
export function supervisorStream(): MessageStream {
  const type = new Int32Array(1);
  const length = new Uint32Array([4]);
  if (libc().getsockopt(STREAM_FD, SOL_SOCKET, SO_TYPE, type, length) !== 0 || type[0] !== SOCK_SEQPACKET) {
    throw new StoaError("usage", "stoa supervisor worker runs only as a child of stoa supervisor run (it needs the supervisor's stream on fd 3); start stoa supervisor run instead");
  }
  if (libc().fcntl(STREAM_FD, F_SETFL, O_NONBLOCK) !== 0) throw new StoaError("io", `fcntl O_NONBLOCK on fd 3: ${strerror(errno())}`);
  // Never block on the doorbell: a full pipe means the supervisor has wake-ups waiting already.
  if (libc().fcntl(DOORBELL_FD, F_SETFL, O_NONBLOCK) !== 0) throw new StoaError("io", `fcntl O_NONBLOCK on fd 1: ${strerror(errno())}`);
  const bell = new Uint8Array([1]);
  return new MessageStream(new OwnedFd(STREAM_FD, "the supervisor's stream"), "the supervisor", () => void libc().write(DOORBELL_FD, bell, 1));
}

/**
 * Becomes `user` (libc setgroups/setresgid/setresuid, every thread checked), then proves it: a
 * new AF_PACKET socket must be refused, or the worker refuses to go on. No `user`: nothing changes.
 */
export function dropTo(user: string | undefined): void {
  if (user === undefined) return;
  const account = lookupUser(user);
  dropPrivileges(account);
  if (account.uid === 0) return;
  const fd = libc().socket(AF_PACKET, SOCK_RAW, 0);
  if (fd >= 0) {
    libc().close(fd);
    throw new StoaError("internal", `still able to open an AF_PACKET socket after dropping to ${account.name}: refusing to run with privileges`);
  }
}
