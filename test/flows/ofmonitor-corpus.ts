/**
 * `ovs-ofctl --no-names monitor br0 watch:!initial` as OVS 3.1 printed it on a private switch
 * (test/fixtures/ovs.ts) for: add-flow of a foreign flow with idle_timeout=5, mod-flows of it to
 * drop, a bundle (delete_strict + add + modify_strict + add), a barrier, del-flows — then, written
 * after OVS's formats, a pause with its refresh and an ABBREV.
 */
export const REAL_MONITOR = `NXST_FLOW_MONITOR reply (xid=0x0):
 event=ADDED table=0 idle_timeout=5 cookie=0x99 tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80 actions=learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=0x57a0030000000001,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:2
NXST_FLOW_MONITOR reply (xid=0x0):
 event=MODIFIED table=0 idle_timeout=5 cookie=0x99 tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80
NXST_FLOW_MONITOR reply (xid=0x0):
 event=DELETED reason=delete table=0 cookie=0x57a0020000000001 tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80 actions=output:4
 event=ADDED table=0 cookie=0x57a0020000000002 tcp,in_port=3,nw_dst=10.0.0.1,tp_dst=80 actions=output:5
 event=MODIFIED table=0 cookie=0x5 in_port=1 actions=output:9
 event=ADDED table=1 cookie=0x57a0010000000001 actions=NORMAL
OFPT_BARRIER_REPLY (xid=0x5):
NXST_FLOW_MONITOR reply (xid=0x0):
 event=DELETED reason=delete table=0 cookie=0 actions=NORMAL
NXT_FLOW_MONITOR_PAUSED (xid=0x0):
NXST_FLOW_MONITOR reply (xid=0x0):
 event=ADDED table=0 cookie=0x57a0020000000003 udp,nw_dst=10.0.0.2,tp_dst=53 actions=output:3
NXT_FLOW_MONITOR_RESUMED (xid=0x0):
NXST_FLOW_MONITOR reply (xid=0x0):
 event=ABBREV xid=0x1f
`;
