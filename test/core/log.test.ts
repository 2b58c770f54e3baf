import { describe, expect, test } from "bun:test";
import { fstatSync } from "node:fs";
import { createLogger, journalStderr, LogFormat, LogLevel, type LoggerOptions, reconfigureLogger, type Logger } from "../../src/core/log.ts";

function capture(options: Omit<LoggerOptions, "stream"> = {}) {
  const lines: string[] = [];
  const log = createLogger({
    ...options,
    stream: {
      write(chunk: string) {
        lines.push(chunk);
      },
    },
  });
  return { log, lines };
}

const TS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /;

describe("text format", () => {
  test("writes timestamp, padded level, message and logfmt fields on one line", () => {
    const { log, lines } = capture({ level: "debug" });
    log.info("listening", { port: 8081, path: "/run/stoa.sock", ok: true });
    expect(lines).toHaveLength(1);
    const line = lines[0] ?? "";
    expect(line).toMatch(TS);
    expect(line.slice(25)).toBe("INFO  listening port=8081 path=/run/stoa.sock ok=true\n");
  });

  test("quotes values with spaces, quotes, equals signs, backslashes or newlines", () => {
    const { log, lines } = capture();
    log.warn("odd values", {
      a: "two words",
      b: 'say "hi"',
      c: "k=v",
      d: "line1\nline2",
      e: "",
      f: "C:\\dir",
    });
    expect(lines[0]?.slice(25)).toBe(
      'WARN  odd values a="two words" b="say \\"hi\\"" c="k=v" d="line1\\nline2" e="" f="C:\\\\dir"\n',
    );
  });

  test("renders errors as their message, bigints as digits, omits undefined, JSON for objects", () => {
    const { log, lines } = capture();
    log.error("failed", {
      err: new Error("connection refused"),
      n: 12345678901234567890n,
      gone: undefined,
      nil: null,
      list: [1, 2],
    });
    expect(lines[0]?.slice(25)).toBe(
      'ERROR failed err="connection refused" n=12345678901234567890 nil=null list=[1,2]\n',
    );
  });

  test("keeps a multi-line message on one line", () => {
    const { log, lines } = capture();
    log.info("first\nsecond");
    expect(lines[0]?.slice(25)).toBe("INFO  first\\nsecond\n");
  });

  test("writes the logger name before the message", () => {
    const { log, lines } = capture({ name: "gateway" });
    log.info("up");
    expect(lines[0]?.slice(25)).toBe("INFO  gateway: up\n");
  });
});

describe("json format", () => {
  test("writes one parseable object per line with ts, level, msg first", () => {
    const { log, lines } = capture({ format: "json", name: "meta" });
    log.info("registered", { id: 7, err: new Error("boom"), big: 2n ** 70n });
    expect(lines).toHaveLength(1);
    const line = lines[0] ?? "";
    expect(line.endsWith("\n")).toBe(true);
    expect(line.indexOf("\n")).toBe(line.length - 1);
    const entry = JSON.parse(line) as Record<string, unknown>;
    expect(Object.keys(entry)).toEqual(["ts", "level", "name", "msg", "id", "err", "big"]);
    expect(entry).toMatchObject({
      level: "info",
      name: "meta",
      msg: "registered",
      id: 7,
      err: "boom",
      big: "1180591620717411303424",
    });
    expect(String(entry.ts)).toMatch(/^\d{4}-\d\d-\d\dT.*Z$/);
  });

  test("does not let a field overwrite a reserved key", () => {
    const { log, lines } = capture({ format: "json" });
    log.warn("real", { msg: "forged", level: "debug" });
    const entry = JSON.parse(lines[0] ?? "") as Record<string, unknown>;
    expect(entry).toMatchObject({ level: "warn", msg: "real", _msg: "forged", _level: "debug" });
  });

  test("survives a circular value and keeps the other fields", () => {
    const { log, lines } = capture({ format: "json" });
    const loop: Record<string, unknown> = {};
    loop.self = loop;
    log.info("cycle", { loop, ok: 1 });
    const entry = JSON.parse(lines[0] ?? "") as Record<string, unknown>;
    expect(entry).toMatchObject({ msg: "cycle", loop: "[unserializable]", ok: 1 });
  });
});

describe("levels", () => {
  test("drops entries below the threshold", () => {
    const { log, lines } = capture({ level: "warn" });
    log.debug("d");
    log.info("i");
    log.warn("w");
    log.error("e");
    expect(lines.map((l) => l.slice(25, 30))).toEqual(["WARN ", "ERROR"]);
    expect(log.enabled("info")).toBe(false);
    expect(log.enabled("error")).toBe(true);
  });

  test("does not touch the fields of a disabled entry", () => {
    const { log, lines } = capture({ level: "error" });
    const fields = {
      get expensive(): string {
        throw new Error("must not be read");
      },
    };
    log.debug("skipped", fields);
    expect(lines).toHaveLength(0);
  });

  test("defaults to info and text", () => {
    const { log, lines } = capture();
    log.debug("hidden");
    log.info("shown");
    expect(log.level).toBe("info");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(TS);
  });

  test("exports the level and format enums for the command line", () => {
    expect(LogLevel.options).toEqual(["debug", "info", "warn", "error"]);
    expect(LogFormat.options).toEqual(["text", "json"]);
    expect(LogLevel.safeParse("verbose").success).toBe(false);
  });
});

describe("changing level and format at run time (SIGHUP)", () => {
  test("a new level applies to the logger, its parent and every child, made before or after", () => {
    const { log, lines } = capture({ level: "info" });
    const child = log.child({ part: "gateway" });
    child.debug("hidden");
    expect(reconfigureLogger(child, { level: "debug" })).toBe(true);
    child.debug("now shown");
    log.debug("parent too");
    log.child({ late: 1 }).debug("and a new child");
    expect(log.level).toBe("debug");
    expect(child.enabled("debug")).toBe(true);
    expect(lines.map((l) => l.slice(25))).toEqual([
      "DEBUG now shown part=gateway\n",
      "DEBUG parent too\n",
      "DEBUG and a new child late=1\n",
    ]);
    reconfigureLogger(log, { level: "error" });
    child.warn("dropped");
    expect(lines).toHaveLength(3);
    expect(child.enabled("warn")).toBe(false);
  });

  test("a disabled level stays bound to the no-op it had at creation (one call, nothing read)", () => {
    const { log } = capture({ level: "debug" });
    const fresh = capture({ level: "info" }).log;
    reconfigureLogger(log, { level: "info" });
    expect(log.debug).toBe(fresh.debug);
    expect(log.debug).not.toBe(log.info);
  });

  test("a new format applies to the next entries", () => {
    const { log, lines } = capture({ format: "text" });
    const child = log.child({ c: 1 });
    reconfigureLogger(log, { format: "json" });
    child.info("as json");
    expect(JSON.parse(lines[0] ?? "")).toMatchObject({ level: "info", msg: "as json", c: 1 });
  });

  test("refuses a logger it did not make, changing nothing", () => {
    const other: Logger = { ...createLogger({ level: "warn" }) };
    expect(reconfigureLogger(other, { level: "debug" })).toBe(false);
    expect(other.level).toBe("warn");
  });
});

describe("child loggers", () => {
  test("add their fields to every entry, call fields winning on a clash", () => {
    const { log, lines } = capture();
    const child = log.child({ peer: "a", conn: 1 }).child({ conn: 2 });
    child.info("hello", { extra: "x" });
    child.info("again", { conn: 3 });
    log.info("parent");
    expect(lines.map((l) => l.slice(25))).toEqual([
      "INFO  hello peer=a conn=2 extra=x\n",
      "INFO  again peer=a conn=3\n",
      "INFO  parent\n",
    ]);
  });

  test("inherit level and format", () => {
    const { log, lines } = capture({ level: "warn", format: "json" });
    const child = log.child({ c: 1 });
    child.info("no");
    child.warn("yes");
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0] ?? "")).toMatchObject({ msg: "yes", c: 1 });
  });
});

describe("a broken sink", () => {
  test("does not make logging throw", () => {
    const log = createLogger({
      stream: {
        write() {
          throw new Error("EPIPE");
        },
      },
    });
    expect(() => log.error("still fine")).not.toThrow();
  });
});

describe("under journald", () => {
  test("journal lines have no timestamp and start with the syslog priority of their level", () => {
    const { log, lines } = capture({ level: "debug", journal: true, name: "gateway" });
    log.debug("a");
    log.info("b", { port: 1 });
    log.warn("c");
    log.error("d");
    expect(lines).toEqual(["<7>DEBUG gateway: a\n", "<6>INFO  gateway: b port=1\n", "<4>WARN  gateway: c\n", "<3>ERROR gateway: d\n"]);
  });

  test("json lines keep their ts field", () => {
    const { log, lines } = capture({ journal: true, format: "json" });
    log.info("x");
    expect(JSON.parse(lines[0] ?? "{}")).toHaveProperty("ts");
  });

  test("JOURNAL_STREAM counts only when it names the stderr we write to", () => {
    const st = fstatSync(2);
    expect(journalStderr({ JOURNAL_STREAM: `${st.dev}:${st.ino}` })).toBe(true);
    expect(journalStderr({ JOURNAL_STREAM: `${st.dev}:${st.ino + 1}` })).toBe(false);
    expect(journalStderr({})).toBe(false);
  });
});
