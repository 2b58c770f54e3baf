/**
 * The reader of `ovs-ofctl monitor BR watch:` output (src/flows/ofmonitor.ts `MonitorParser`), on
 * what OVS 3.1 prints (copied from a private switch): flow updates without priority, drops
 * without actions, barriers, pauses; text split anywhere; limits.
 */
import { describe, expect, test } from "bun:test";
import { FlowSyntaxError } from "../../src/flows/ofctl.ts";
import { MAX_MONITOR_LINE_CHARS, type MonitorMessage, MonitorParser } from "../../src/flows/ofmonitor.ts";
import { REAL_MONITOR } from "./ofmonitor-corpus.ts";

const parse = (text: string): MonitorMessage[] => new MonitorParser().push(text);

describe("reading a flow monitor's output", () => {
  test("every update of a real session, in order, as printed", () => {
    const messages = parse(REAL_MONITOR);
    expect(messages.map((m) => (m.type === "flow" ? `${m.flow.event} ${m.flow.table} 0x${m.flow.cookie.toString(16)} [${m.flow.match}] [${m.flow.actions}]` : m.type))).toEqual([
      "ADDED 0 0x99 [tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80] [learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=0x57a0030000000001,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:2]",
      "MODIFIED 0 0x99 [tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80] [drop]",
      "DELETED 0 0x57a0020000000001 [tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80] [output:4]",
      "ADDED 0 0x57a0020000000002 [tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80] [output:5]",
      "MODIFIED 0 0x5 [in_port=1] [output:9]",
      "ADDED 1 0x57a0010000000001 [] [NORMAL]",
      "barrier",
      "DELETED 0 0x0 [] [NORMAL]",
      "paused",
      "ADDED 0 0x57a0020000000003 [udp,nw_dst=10.0.0.2,tp_dst=53] [output:3]",
      "resumed",
      "abbrev",
    ]);
    const first = messages[0];
    expect(first?.type === "flow" && [first.flow.idleTimeout, first.flow.hardTimeout]).toEqual([5, 0]);
  });

  test("text split at any point gives the same messages", () => {
    const whole = parse(REAL_MONITOR);
    for (let at = 0; at <= REAL_MONITOR.length; at += 7) {
      const parser = new MonitorParser();
      expect([...parser.push(REAL_MONITOR.slice(0, at)), ...parser.push(REAL_MONITOR.slice(at))]).toEqual(whole);
    }
  });

  test("lines of other messages are skipped; lines outside any message or unreadable updates are errors", () => {
    expect(parse("OFPT_ECHO_REQUEST (xid=0x0): 0 bytes of payload\n 00000000  01 02\n")).toEqual([]);
    expect(parse("ovs-ofctl: vconn_recv (End of file)\n")).toEqual([{ type: "fatal", text: "ovs-ofctl: vconn_recv (End of file)" }]);
    expect(() => parse("hello\n")).toThrow(FlowSyntaxError);
    expect(() => parse("NXST_FLOW_MONITOR reply (xid=0x0):\n event=ADDED table=999 cookie=0x1 actions=drop\n")).toThrow(/out of range/);
    expect(() => parse("NXST_FLOW_MONITOR reply (xid=0x0):\n event=ADDED table=0 cookie=0x1 a b actions=drop\n")).toThrow(/cannot read the flow update/);
    expect(() => parse("NXST_FLOW_MONITOR reply (xid=0x0):\n event=GONE table=0 cookie=0x1\n")).toThrow(/cannot read the flow update/);
  });

  test("a line over MAX_MONITOR_LINE_CHARS is refused, even before its end arrives", () => {
    const parser = new MonitorParser();
    parser.push("NXST_FLOW_MONITOR reply (xid=0x0):\n event=ADDED table=0 cookie=0x1 actions=");
    expect(() => parser.push("drop,".repeat(MAX_MONITOR_LINE_CHARS / 5))).toThrow(`longer than ${MAX_MONITOR_LINE_CHARS}`);
  });
});
