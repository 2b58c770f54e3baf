/**
 * io_uring through libc `syscall()`. For now: whether this kernel lets this process create a
 * ring at all (the supervisor's ingress needs one). The ring itself lives with its user.
 */
import { ptr } from "bun:ffi";
import { Errno, errno, libc, strerror } from "./libc.ts";

/** io_uring_setup(2): the same number on x86_64 and aarch64 (unified syscall table, ≥ 425). */
const SYS_io_uring_setup = 425;
/** sizeof(struct io_uring_params) in linux/io_uring.h: 10 u32 fields + two 40-byte offset structs. */
const IO_URING_PARAMS_SIZE = 120;

type IoUringProbe = { ok: true } | { ok: false; errno: number; reason: string };

/** Creates and closes a 1-entry ring. */
export function probeIoUring(): IoUringProbe {
  const params = new Uint8Array(IO_URING_PARAMS_SIZE);
  const fd = Number(libc().syscall(SYS_io_uring_setup, 1, ptr(params), 0, 0, 0, 0));
  if (fd >= 0) {
    libc().close(fd);
    return { ok: true };
  }
  const code = errno();
  const reason =
    code === Errno.ENOSYS
      ? "this kernel has no io_uring (needs Linux ≥ 5.1 built with CONFIG_IO_URING)"
      : code === Errno.EPERM || code === Errno.EACCES
        ? "io_uring is disabled for this process (kernel.io_uring_disabled, seccomp or a container policy)"
        : strerror(code);
  return { ok: false, errno: code, reason };
}
