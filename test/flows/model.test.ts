import { describe, expect, test } from "bun:test";
import { COOKIE_PREFIX_MASK, cookieHex, cookieKind, cookieOf, isLearnedCookie, locations, parseState, StateSchema } from "../../src/flows/model.ts";
import { compile, type SwitchPort } from "../../src/flows/compile.ts";


/** The seed's container 103, on a state with its vmbr0 static flows. */
const seedState = () => ({
  node: "oo1424oo",
  bridges: [{ name: "vmbr0", flows: ["priority=100,in_port=from-mesh,actions=output:warp0", "priority=10,actions=normal"] }],
  containers: [
    { container_id: "103", veth: "veth103", bridge: "vmbr0", ipv4_address: "10.0.0.103/24", services: [{ name: "vector-db", protocol: "tcp", port: 6333, exposed: true }] },
    { container_id: "102", veth: "veth102", bridge: "vmbr0", ipv4_address: "10.0.0.102/24", services: [{ name: "xray-vless", protocol: "tcp", port: 443, exposed: true }, { name: "xray-vmess", protocol: "tcp", port: 8443, exposed: false }] },
  ],
  mesh_port: "from-mesh",
});
const ports = (entries: [string, string, number][]): Map<string, SwitchPort> => new Map(entries.map(([name, bridge, ofport]) => [name, { bridge, ofport }]));

describe("the desired state", () => {
  test("the seed's fields parse; exposed defaults to true, services and peers to none", () => {
    const state = parseState({ node: "n1", bridges: [{ name: "br0" }], containers: [{ container_id: "1", veth: "v1", bridge: "br0", ipv4_address: "10.0.0.1/24", services: [{ name: "s", protocol: "udp", port: 53 }] }] }, "test");
    expect(state.containers[0]!.services[0]!.exposed).toBe(true);
    expect(state.peers).toEqual([]);
    expect(state.bridges[0]!.flows).toEqual([]);
    expect(locations(state)).toEqual([{ service: "s", container_id: "1", node: "n1", ip: "10.0.0.1", port: 53, protocol: "udp" }]);
  });

  test("each problem is named with its path, several at once", () => {
    const bad = seedState() as Record<string, unknown> & ReturnType<typeof seedState>;
    bad.containers.push({ container_id: "103", veth: "veth102", bridge: "nope", ipv4_address: "10.0.0.103/24", services: [{ name: "vector-db", protocol: "tcp", port: 70000, exposed: true }] });
    let message = "";
    try {
      parseState(bad, "state.json");
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("state.json is not a valid flows state");
    expect(message).toContain("containers.2.services.0.port");
    const refined = StateSchema.safeParse({ ...seedState(), containers: [...seedState().containers, { container_id: "103", veth: "veth102", bridge: "nope", ipv4_address: "10.0.0.103", services: [{ name: "vector-db", protocol: "tcp", port: 1 }] }] });
    expect(refined.success).toBe(false);
    const messages = refined.error!.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    expect(messages).toContain('containers.2.bridge: container 103 is on bridge nope, which is not in "bridges"');
    expect(messages).toContain("containers.2.container_id: container id 103 is also container 103's");
    expect(messages).toContain("containers.2.veth: veth veth102 is also container 102's");
    expect(messages).toContain("containers.2.services.0.name: service vector-db is also offered by container 103");
  });

  test("names, addresses and URLs are checked", () => {
    for (const [field, value] of [["veth", "a-name-longer-than-15"], ["veth", "sp ace"], ["ipv4_address", "10.0.0.256/24"], ["ipv4_address", "10.0.0.1/33"], ["container_id", "-x"]] as const) {
      const state = seedState();
      (state.containers[0] as Record<string, unknown>)[field] = value;
      expect(StateSchema.safeParse(state).success).toBe(false);
    }
    expect(StateSchema.safeParse({ ...seedState(), peers: ["ftp://x"] }).success).toBe(false);
    expect(StateSchema.safeParse({ ...seedState(), peers: ["http://node2:9573"] }).success).toBe(true);
    expect(StateSchema.safeParse({ ...seedState(), bridges: [] }).success).toBe(false);
  });
});

describe("cookies", () => {
  test("each kind under stoa's prefix; learned kinds told apart; a foreign cookie is nobody's", () => {
    const container = cookieOf("container", "103");
    expect(container & COOKIE_PREFIX_MASK).toBe(0x57a0n << 48n);
    expect(cookieKind(container)).toBe("container");
    expect(cookieKind(cookieOf("learnedContainer", "103"))).toBe("learnedContainer");
    expect(cookieOf("learnedContainer", "103") & ((1n << 40n) - 1n)).toBe(container & ((1n << 40n) - 1n));
    expect(isLearnedCookie(cookieOf("learnedRemote", "node2"))).toBe(true);
    expect(isLearnedCookie(container)).toBe(false);
    expect(cookieKind(0n)).toBeNull();
    expect(cookieKind(0x57a0n << 48n)).toBeNull(); // kind 0 is no kind of stoa's
    expect(cookieOf("container", "103")).not.toBe(cookieOf("container", "102"));
    expect(cookieHex(0x57a0020000000001n)).toBe("0x57a0020000000001");
  });
});

describe("compile", () => {
  const state = () => parseState(seedState(), "test");
  const onSwitch = ports([["veth103", "vmbr0", 3], ["veth102", "vmbr0", 2], ["from-mesh", "vmbr0", 1], ["warp0", "vmbr0", 4]]);

  test("a service's inbound flow matches its container's address and port, learns the return path, outputs to the veth", () => {
    const flows = compile(state(), onSwitch).bridges.get("vmbr0")!.map((f) => f.spec);
    const c103 = cookieHex(cookieOf("container", "103"));
    const learned103 = cookieHex(cookieOf("learnedContainer", "103"));
    expect(flows).toContain(`cookie=${c103},table=0,priority=100,tcp,nw_dst=10.0.0.103,tp_dst=6333,actions=learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=${learned103},NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:3`);
    expect(flows).toContain(`cookie=${c103},table=0,priority=90,in_port=3,actions=resubmit(,1)`);
    expect(flows).toContain(`cookie=${cookieHex(cookieOf("static", "vmbr0"))},table=1,priority=0,actions=NORMAL`);
    // No flow matches a port alone, without the address (the seed's mistake).
    for (const f of flows) if (f.includes("tp_dst=")) expect(f).toMatch(/nw_dst=10\.0\.0\.10[23],/);
  });

  test("an unexposed service gets no flow; static flows are kept as written under the static cookie", () => {
    const flows = compile(state(), onSwitch).bridges.get("vmbr0")!.map((f) => f.spec);
    expect(flows.some((f) => f.includes("tp_dst=8443"))).toBe(false);
    expect(flows.some((f) => f.includes("tp_dst=443"))).toBe(true);
    expect(flows[0]).toBe(`cookie=${cookieHex(cookieOf("static", "vmbr0"))},priority=100,in_port=from-mesh,actions=output:warp0`);
  });

  test("a container whose veth has no ofport, or is on another bridge, waits and gets no flows", () => {
    const compiled = compile(state(), ports([["veth102", "other", 2]]));
    expect(compiled.waiting.map((w) => [w.container_id, w.reason])).toEqual([
      ["103", "veth103 is not a port of vmbr0 with an ofport yet"],
      ["102", "veth102 is a port of other, not of vmbr0"],
    ]);
    expect(compiled.bridges.get("vmbr0")!.length).toBe(2); // the static flows only
    expect(compile(state(), ports([["veth103", "vmbr0", -1]])).waiting[0]!.container_id).toBe("103");
  });

  test("a static flow that sets its own cookie is refused", () => {
    const s = seedState();
    s.bridges[0]!.flows.push("cookie=0x1,priority=5,actions=drop");
    expect(() => compile(parseState(s, "t"), onSwitch)).toThrow(/static flow 3 of bridge vmbr0 sets cookie=/);
  });

  test("remote services go out of mesh_port, with a return path from it; local addresses and this node's services are skipped", () => {
    const remote = [
      { service: "db", container_id: "7", node: "node2", ip: "10.0.0.7", port: 5432, protocol: "tcp" as const },
      { service: "dup", container_id: "8", node: "node3", ip: "10.0.0.103", port: 1, protocol: "tcp" as const },
      { service: "self", container_id: "9", node: "oo1424oo", ip: "10.0.0.9", port: 2, protocol: "tcp" as const },
    ];
    const compiled = compile(state(), onSwitch, remote);
    const flows = compiled.bridges.get("vmbr0")!.map((f) => f.spec);
    expect(flows).toContain(`cookie=${cookieHex(cookieOf("remote", "node2"))},table=0,priority=100,tcp,nw_dst=10.0.0.7,tp_dst=5432,actions=learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=${cookieHex(cookieOf("learnedRemote", "node2"))},NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:1`);
    expect(flows).toContain(`cookie=${cookieHex(cookieOf("static", "vmbr0"))},table=0,priority=90,in_port=1,actions=resubmit(,1)`);
    expect(compiled.unrouted.map((u) => u.service.service)).toEqual(["dup"]);
    expect(flows.some((f) => f.includes("10.0.0.9"))).toBe(false);
    const noMesh = compile(parseState({ ...seedState(), mesh_port: undefined }, "t"), onSwitch, remote);
    expect(noMesh.unrouted.map((u) => u.reason)).toEqual(["the state has no mesh_port", "the state has no mesh_port"]);
  });
});
