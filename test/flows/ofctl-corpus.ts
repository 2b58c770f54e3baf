/**
 * Flows as users write them (the spellings `ovs-ofctl add-flow` accepts) and real `ovs-ofctl
 * --no-names dump-flows` output of OVS 3.1, for ofctl.test.ts (against a real switch) and
 * ofctl.fuzz.test.ts (mutations of both).
 */

/** The bridge's ports the corpus names (internal ports in the test). */
export const PORT_NAMES = ["nm0", "to-socket", "from-mesh", "warp0", "vethA", "p1", "p2"];

/** Flows in users' spellings: each is added with ovs-ofctl, dumped, and must canonicalize alike. */
export const CORPUS = [
  // the seed's static flows
  "priority=100,in_port=nm0,actions=output:to-socket",
  "priority=1,actions=drop",
  "priority=10,actions=normal",
  // the compiler's shapes
  "priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333,actions=learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=0x7,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:vethA",
  "priority=90,in_port=vethA,actions=resubmit(,1)",
  "table=1,priority=0,actions=NORMAL",
  "cookie=0x1a2b,priority=100,in_port=from-mesh,actions=output:warp0",
  "cookie=0xfffffffffffffffe,table=3,priority=5,actions=LOCAL",
  // protocols: shorthands and their dl_type/nw_proto spellings
  "ip,nw_dst=10.0.0.3/32,actions=output:2",
  "dl_type=0x0800,nw_proto=6,actions=vethA",
  "dl_type=2048,nw_proto=17,tp_src=53,actions=LOCAL",
  "ip,nw_proto=47,actions=drop",
  "dl_type=0x88cc,actions=drop",
  "arp,nw_src=10.0.0.1,actions=normal",
  "arp,arp_tpa=10.0.0.1,arp_op=1,actions=flood",
  "arp,dl_dst=ff:ff:ff:ff:ff:ff,arp_sha=00:00:5E:00:53:01,actions=NORMAL",
  "ipv6,ipv6_src=2001:DB8:0:0::1/128,actions=normal",
  "ipv6,ipv6_dst=2001:db8:0:0:0:0:0:0/64,actions=normal",
  "ipv6,ipv6_src=2001:db8::1:0:0:1,actions=drop",
  "ipv6,ipv6_dst=::ffff:10.0.0.1,actions=drop",
  "tcp6,tp_dst=80,actions=output:p1",
  "udp6,udp_dst=53,actions=drop",
  "icmp,icmp_type=8,actions=normal",
  "icmp,tp_src=8,tp_dst=0,actions=normal",
  "icmp6,icmp_type=135,nd_target=FE80::1,actions=normal",
  "sctp,tp_dst=9,actions=CONTROLLER:100",
  // masks, bases, aliases, case
  "priority=200,ip,nw_src=10.0.0.5/24,actions=p1,p2",
  "ip,nw_src=10.1.0.0/255.255.0.0,actions=drop",
  "ip,nw_dst=10.0.0.0/255.0.255.0,actions=drop",
  "ip,nw_src=0.0.0.0/0,nw_dst=10.0.0.1,actions=drop",
  "dl_src=AA:BB:CC:DD:EE:FF,actions=normal",
  "eth_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=drop",
  "tcp,tp_dst=0x1F90,actions=normal",
  "tcp,tcp_dst=8080,ip_src=192.168.1.1,actions=normal",
  "tcp,tp_dst=0x50/0xfff0,actions=drop",
  "udp,udp_src=68,udp_dst=67,actions=controller",
  "tcp,tcp_flags=+syn-ack,actions=normal",
  "tcp,tcp_flags=0x012/0x0ff,actions=drop",
  "ct_state=+trk+est,tcp,actions=normal",
  "nw_tos=0x10,ip,actions=normal",
  "ip,nw_ttl=5,ip_ecn=1,actions=normal",
  "ip,nw_frag=later,actions=drop",
  "dl_vlan=10,actions=strip_vlan,normal",
  "vlan_tci=0x1000/0x1000,actions=pop_vlan,output:p2",
  "priority=60,in_port=p2,dl_vlan=5,dl_vlan_pcp=3,actions=mod_vlan_vid:7,output:p1",
  "reg0=5,actions=normal",
  "reg1=0x5/0xff,actions=resubmit:vethA",
  "metadata=0x10,tun_id=0x5,actions=normal",
  "pkt_mark=0x10/0xff,actions=drop",
  "in_port=LOCAL,actions=output:in_port",
  "in_port=65534,actions=output:65534",
  // timeouts, cookies, tables
  "idle_timeout=10,hard_timeout=20,priority=5,actions=normal",
  "cookie=0x1234,table=2,priority=7,ip,actions=resubmit(,3)",
  // actions
  "priority=8,actions=resubmit(1,2)",
  "priority=9,actions=resubmit(vethA)",
  "ip,actions=mod_dl_src:00:11:22:33:44:55,mod_nw_dst:10.1.1.1,output:1",
  "tcp,actions=mod_nw_src:10.0.0.1,mod_tp_dst:80,output:LOCAL",
  "actions=set_field:00:11:22:33:44:AA->eth_src,normal",
  "actions=load:1->NXM_NX_REG0[],load:0x2->reg1[0..7],normal",
  "actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],in_port",
  "actions=controller,flood,all",
  "actions=set_field:5->reg0,resubmit(,3)",
  "ip,actions=dec_ttl,set_queue:1,enqueue:p1:2",
  "actions=",
  // learn, as the compiler and as users write it
  "priority=7,tcp,nw_dst=10.0.0.3,tp_dst=6333,actions=learn(table=1,idle_timeout=5,hard_timeout=300,fin_idle_timeout=2,priority=110,delete_learned,cookie=0x7,dl_type=0x0800,eth_dst[]=eth_src[],NXM_OF_IP_DST[]=NXM_OF_IP_SRC[],nw_proto=6,in_port=p1,load:NXM_NX_REG0[0..3]->NXM_NX_REG1[4..7],load:0x5->reg2[],output:NXM_OF_IN_PORT[]),LOCAL",
  "priority=12,actions=learn(dl_dst=AA:bb:cc:dd:ee:ff,NXM_NX_REG1[0..31]=NXM_NX_REG2[],NXM_OF_IN_PORT[0..15],NXM_OF_VLAN_TCI[0..11])",
  "priority=13,actions=learn(table=2,priority=32768,limit=10,result_dst=reg0[0],send_flow_rem,eth_dst=eth_src)",
  // actions stoa keeps as written (in OVS's own spelling)
  "ct_state=-trk,tcp,actions=ct(table=1)",
  "ct_state=+trk+new,tcp,actions=ct(commit,zone=5),NORMAL",
  "priority=20,ip,actions=note:01.02.03,output:p1",
  "priority=21,ip,nw_src=10.0.0.1,actions=conjunction(7,1/2)",
  "priority=22,conj_id=7,ip,actions=output:p2",
  "priority=23,ip,actions=mod_nw_tos:16,mod_nw_ttl:9,output:p1",
  "priority=24,actions=output:NXM_NX_REG0[0..15]",
  "priority=25,actions=push:NXM_NX_REG0[],pop:NXM_NX_REG1[]",
  // separators users type
  "priority=50 udp nw_dst=10.0.0.7 tp_dst=53 actions=output:p2",
  "priority=51, ip, nw_src=10.9.0.0/16, actions=drop",
];

/** Real dumps (OVS 3.1.0): OpenFlow 1.0 + NXM, then OpenFlow 1.3 with its flags before the match. */
export const REAL_DUMP = `NXST_FLOW reply (xid=0x4):
 cookie=0x0, duration=0.065s, table=0, n_packets=0, n_bytes=0, idle_age=0, ipv6,ipv6_dst=2001:db8::/64 actions=load:0x5->NXM_NX_REG0[],resubmit(,3)
 cookie=0x0, duration=0.039s, table=0, n_packets=0, n_bytes=0, idle_age=0, ct_state=+est+trk,tcp,tcp_flags=+syn-ack actions=mod_dl_src:00:11:22:33:44:55,output:2
 cookie=0x0, duration=0.023s, table=0, n_packets=0, n_bytes=0, idle_age=0, dl_vlan=10,dl_src=aa:bb:cc:00:00:00/ff:ff:ff:00:00:00 actions=strip_vlan,CONTROLLER:100
 cookie=0x5, duration=0.121s, table=0, n_packets=0, n_bytes=0, idle_age=0, priority=100,tcp,nw_dst=10.0.0.3,tp_dst=6333 actions=learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=0x7,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),LOCAL
 cookie=0x5, duration=0.109s, table=0, n_packets=0, n_bytes=0, idle_age=0, priority=90,in_port=1 actions=resubmit(,1)
 cookie=0x0, duration=0.080s, table=0, n_packets=0, n_bytes=0, idle_timeout=10, hard_timeout=20, idle_age=0, priority=5,arp,arp_tpa=10.0.0.1,arp_op=1 actions=FLOOD
 cookie=0x0, duration=0.011s, table=0, n_packets=0, n_bytes=0, idle_age=0, priority=1 actions=drop
 cookie=0x5, duration=0.093s, table=1, n_packets=0, n_bytes=0, idle_age=0, priority=0 actions=NORMAL
 cookie=0x0, duration=0.133s, table=0, n_packets=0, n_bytes=0, idle_age=0, actions=resubmit:1
`;

export const REAL_DUMP_OF13 = `OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x0, duration=0.079s, table=0, n_packets=0, n_bytes=0, reset_counts ipv6,ipv6_dst=2001:db8::/64 actions=load:0x5->NXM_NX_REG0[],resubmit(,3)
 cookie=0x0, duration=0.053s, table=0, n_packets=0, n_bytes=0, reset_counts ct_state=+est+trk,tcp,tcp_flags=+syn-ack actions=set_field:00:11:22:33:44:55->eth_src,output:2
 cookie=0x0, duration=0.156s, table=0, n_packets=0, n_bytes=0, reset_counts actions=resubmit:1
 cookie=0x5, duration=0.140s, table=0, n_packets=0, n_bytes=0, idle_timeout=10, hard_timeout=20, send_flow_rem check_overlap reset_counts priority=5,ip actions=NORMAL
`;
