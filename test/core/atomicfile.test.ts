import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_TEMP_ATTEMPTS, writeFileAtomic } from "../../src/core/atomicfile.ts";
import { StoaError } from "../../src/core/errors.ts";

const root = mkdtempSync(join(tmpdir(), "stoa-atomic-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
/** A fresh empty directory per test. */
function freshDir(): string {
  const dir = join(root, `t${n++}`);
  mkdirSync(dir);
  return dir;
}
const temps = (dir: string): string[] => readdirSync(dir).filter((name) => name.includes(".tmp-"));
/** The mode open(2) gives a new file asked for `mode` under this process's umask. */
const created = (mode: number): number => mode & ~process.umask();
const modeOf = (path: string): number => statSync(path).mode & 0o777;

function thrown(fn: () => void): StoaError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error("expected a StoaError");
}

describe("what lands", () => {
  test("the content and the mode land, for a new file and over an old one, and no temporary file is left", () => {
    const dir = freshDir();
    const file = join(dir, "f.json");
    writeFileAtomic(file, "first\n", { mode: 0o600 });
    expect(readFileSync(file, "utf8")).toBe("first\n");
    expect(modeOf(file)).toBe(created(0o600));

    const bytes = new Uint8Array(100_000).map((_, i) => i % 251);
    writeFileAtomic(file, bytes, { mode: 0o640 });
    expect(new Uint8Array(readFileSync(file))).toEqual(bytes);
    expect(modeOf(file)).toBe(created(0o640)); // the new file's mode, not the replaced one's
    expect(temps(dir)).toEqual([]);
  });

  test("replace: false creates a missing file, and refuses an existing one with 'exists', leaving it as it was", () => {
    const dir = freshDir();
    const file = join(dir, "token");
    writeFileAtomic(file, "mine\n", { mode: 0o600, replace: false });
    expect(readFileSync(file, "utf8")).toBe("mine\n");
    const err = thrown(() => writeFileAtomic(file, "theirs\n", { mode: 0o600, replace: false, what: "the token file" }));
    expect(err.code).toBe("exists");
    expect(err.message).toContain(`the token file ${file}`);
    expect(readFileSync(file, "utf8")).toBe("mine\n");
    expect(temps(dir)).toEqual([]);
  });
});

describe("symlinks are never followed", () => {
  test("a symlink at the target is replaced by the file, not written through", () => {
    const dir = freshDir();
    const victim = join(dir, "victim");
    writeFileSync(victim, "precious\n");
    const file = join(dir, "state.json");
    symlinkSync(victim, file);
    writeFileAtomic(file, "new\n", { mode: 0o600 });
    expect(readFileSync(victim, "utf8")).toBe("precious\n");
    expect(lstatSync(file).isSymbolicLink()).toBe(false);
    expect(readFileSync(file, "utf8")).toBe("new\n");
  });

  test("a symlink or file planted at the temporary name is left alone and another name is drawn", () => {
    const dir = freshDir();
    const file = join(dir, "users.json");
    const victim = join(dir, "victim");
    writeFileSync(victim, "precious\n");
    // One planted link points at an existing file, one dangles (open "w" would create its target).
    const through = join(dir, "created-through-a-link");
    symlinkSync(victim, `${file}.tmp-planted1`);
    symlinkSync(through, `${file}.tmp-planted2`);
    const suffixes = ["planted1", "planted2", "fresh"];
    writeFileAtomic(file, "new\n", { mode: 0o600, tempSuffix: () => suffixes.shift() ?? "exhausted" });
    expect(readFileSync(file, "utf8")).toBe("new\n");
    expect(readFileSync(victim, "utf8")).toBe("precious\n");
    expect(existsSync(through)).toBe(false);
    expect(readlinkSync(`${file}.tmp-planted1`)).toBe(victim); // not ours: not removed either
    expect(temps(dir).sort()).toEqual(["users.json.tmp-planted1", "users.json.tmp-planted2"]);
  });

  test(`after ${MAX_TEMP_ATTEMPTS} taken temporary names it gives up with an io error, the target untouched`, () => {
    const dir = freshDir();
    const file = join(dir, "f");
    writeFileSync(file, "old\n");
    symlinkSync(join(dir, "elsewhere"), `${file}.tmp-same`);
    let drawn = 0;
    const err = thrown(() =>
      writeFileAtomic(file, "new\n", {
        mode: 0o600,
        tempSuffix: () => {
          drawn++;
          return "same";
        },
      }),
    );
    expect(err.code).toBe("io");
    expect(err.message).toContain("temporary names");
    expect(drawn).toBe(MAX_TEMP_ATTEMPTS);
    expect(readFileSync(file, "utf8")).toBe("old\n");
    expect(existsSync(join(dir, "elsewhere"))).toBe(false);
  });
});

describe("a failure leaves the old file intact and no temporary file behind", () => {
  test("a write that cannot finish (file size limit: the first write is short, the next fails)", async () => {
    const dir = freshDir();
    const file = join(dir, "f");
    writeFileSync(file, "old\n");
    const script = join(dir, "writer.ts");
    writeFileSync(
      script,
      `import { writeFileAtomic } from ${JSON.stringify(join(import.meta.dir, "../../src/core/atomicfile.ts"))};
try {
  writeFileAtomic(${JSON.stringify(file)}, "x".repeat(1 << 20), { mode: 0o600 });
  console.log("written");
} catch (err) {
  console.log(JSON.stringify({ code: err.code, message: err.message }));
}
`,
    );
    // RLIMIT_FSIZE of 8 KiB; SIGXFSZ ignored, so the kernel answers a short write, then EFBIG.
    const proc = Bun.spawn(["sh", "-c", `trap '' XFSZ; ulimit -f 8; exec "$0" "$1"`, process.execPath, script], { stdout: "pipe", stderr: "inherit" });
    const out = (await new Response(proc.stdout).text()).trim();
    expect(await proc.exited).toBe(0);
    const result = JSON.parse(out) as { code: string; message: string };
    expect(result.code).toBe("io");
    expect(result.message).toContain(`cannot write ${file}`);
    expect(result.message).toContain("free space");
    expect(readFileSync(file, "utf8")).toBe("old\n");
    expect(temps(dir)).toEqual([]);
  });

  test("a rename that fails (a directory in the target's place)", () => {
    const dir = freshDir();
    const file = join(dir, "f");
    mkdirSync(file);
    writeFileSync(join(file, "inside"), "kept\n");
    const err = thrown(() => writeFileAtomic(file, "new\n", { mode: 0o600, what: "users file" }));
    expect(err.code).toBe("io");
    expect(err.message).toContain(`cannot write users file ${file}`);
    expect(readFileSync(join(file, "inside"), "utf8")).toBe("kept\n");
    expect(temps(dir)).toEqual([]);
  });

  test("a missing directory says to create it", () => {
    const dir = freshDir();
    const err = thrown(() => writeFileAtomic(join(dir, "absent", "f"), "x", { mode: 0o600 }));
    expect(err.code).toBe("io");
    expect(err.message).toContain(`create ${join(dir, "absent")} first`);
  });
});

describe("concurrent writers", () => {
  test("a reader only ever sees one writer's whole file, never a torn one", async () => {
    const dir = freshDir();
    const file = join(dir, "shared");
    const SIZE = 128 * 1024;
    const ROUNDS = 150;
    const WRITERS = 4;
    const script = join(dir, "writer.ts");
    writeFileSync(
      script,
      `import { writeFileAtomic } from ${JSON.stringify(join(import.meta.dir, "../../src/core/atomicfile.ts"))};
const fill = Number(process.argv[2]);
const data = new Uint8Array(${SIZE}).fill(fill);
for (let i = 0; i < ${ROUNDS}; i++) writeFileAtomic(${JSON.stringify(file)}, data, { mode: 0o644, durable: i % 10 === 0 });
`,
    );
    writeFileSync(file, new Uint8Array(SIZE).fill(0));
    let running = WRITERS;
    const procs = Array.from({ length: WRITERS }, (_, i) => {
      const proc = Bun.spawn([process.execPath, script, String(i + 1)], { stdout: "inherit", stderr: "inherit" });
      void proc.exited.then(() => running--);
      return proc;
    });
    let reads = 0;
    const seen = new Set<number>();
    const torn: string[] = [];
    while (running > 0) {
      for (let i = 0; i < 20; i++) {
        const bytes = readFileSync(file);
        reads++;
        const first = bytes[0] ?? -1;
        if (bytes.length !== SIZE || bytes.some((b) => b !== first)) torn.push(`read ${reads}: ${bytes.length} bytes starting ${first}`);
        seen.add(first);
      }
      await Bun.sleep(0);
    }
    expect(await Promise.all(procs.map((p) => p.exited))).toEqual(Array(WRITERS).fill(0));
    expect(torn).toEqual([]);
    expect(reads).toBeGreaterThan(10);
    expect(seen.size).toBeGreaterThan(1); // the reader did overlap the writers
    expect(temps(dir)).toEqual([]);
  }, 60_000);
});
