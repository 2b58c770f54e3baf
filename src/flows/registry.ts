/**
 * The registry of `stoa flows serve`: the state file (node, bridges, peers, mesh_port and the
 * containers it lists) plus the containers registered through the API, kept in SQLite at
 * `<state-dir>/flows/registry.sqlite` so a restart keeps them; and what the peers said they
 * have. The desired state is the file's with the registered containers added, validated whole
 * (model.ts: unique ids, veths, addresses, service names) before any registration is stored.
 */
import { Database, type Statement } from "bun:sqlite";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import { StoaError } from "../core/errors.ts";
import { ContainerSchema, StateSchema, locations, type Container, type ServiceLocation, type State } from "./model.ts";

/** How long a peer's services count without a new word from it (its pushes and our pulls refresh it). */
export const PEER_TTL_MS = 30_000;

interface PeerEntry {
  services: ServiceLocation[];
  seenAt: number;
}

export class Registry {
  readonly path: string;
  #file: State;
  #db: Database;
  #all: Statement<{ json: string }, []>;
  #put: Statement<unknown, [string, string, number]>;
  #drop: Statement<unknown, [string]>;
  #registered: Container[];
  #peers = new Map<string, PeerEntry>();

  constructor(file: State, stateDir: string) {
    this.#file = file;
    const dir = join(stateDir, "flows");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.path = join(dir, "registry.sqlite");
    closeSync(openSync(this.path, "a", 0o600));
    this.#db = new Database(this.path, { strict: true });
    this.#db.run("PRAGMA journal_mode = WAL");
    this.#db.run("CREATE TABLE IF NOT EXISTS containers (id TEXT PRIMARY KEY, json TEXT NOT NULL, registered_at INTEGER NOT NULL)");
    this.#all = this.#db.query("SELECT json FROM containers ORDER BY registered_at, id");
    this.#put = this.#db.query("INSERT INTO containers (id, json, registered_at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET json = excluded.json");
    this.#drop = this.#db.query("DELETE FROM containers WHERE id = ?");
    this.#registered = this.#all.all().flatMap((row) => {
      const parsed = ContainerSchema.safeParse(JSON.parse(row.json));
      return parsed.success ? [parsed.data] : [];
    });
  }

  /** The desired state: the file's, with the registered containers. */
  get state(): State {
    return { ...this.#file, containers: [...this.#file.containers, ...this.#registered] };
  }

  get node(): string {
    return this.#file.node;
  }

  /** The file's state, replaced (SIGHUP): registrations stay; one that now conflicts is an error the caller logs. */
  replaceFile(file: State): void {
    this.#check({ ...file, containers: [...file.containers, ...this.#registered] });
    this.#file = file;
  }

  #check(state: State): void {
    const parsed = StateSchema.safeParse(state);
    if (!parsed.success) throw new StoaError("exists", parsed.error.issues.map((i) => i.message).join("; "));
  }

  /**
   * Registers (or replaces, by container_id) a container. A container of the state file cannot
   * be replaced through the API; one that clashes with another (veth, address, service name) is
   * refused with the reason.
   */
  register(container: Container): void {
    if (this.#file.containers.some((c) => c.container_id === container.container_id)) {
      throw new StoaError("exists", `container ${container.container_id} is in the state file: change it there`);
    }
    const others = this.#registered.filter((c) => c.container_id !== container.container_id);
    this.#check({ ...this.#file, containers: [...this.#file.containers, ...others, container] });
    this.#put.run(container.container_id, JSON.stringify(container), Date.now());
    this.#registered = [...others, container];
  }

  /** Removes a registered container: true when there was one. */
  unregister(id: string): boolean {
    if (this.#file.containers.some((c) => c.container_id === id)) throw new StoaError("exists", `container ${id} is in the state file: remove it there`);
    const before = this.#registered.length;
    this.#registered = this.#registered.filter((c) => c.container_id !== id);
    this.#drop.run(id);
    return this.#registered.length !== before;
  }

  container(id: string): Container | undefined {
    return this.state.containers.find((c) => c.container_id === id);
  }

  /** This node's exposed services: what peers are told. */
  localServices(): ServiceLocation[] {
    const exposed = new Set(this.state.containers.flatMap((c) => c.services.filter((s) => s.exposed).map((s) => `${c.container_id} ${s.name}`)));
    return locations(this.state).filter((l) => exposed.has(`${l.container_id} ${l.service}`));
  }

  /** A peer's whole list (each node is authoritative for its own): true when it changed. */
  setPeer(node: string, services: ServiceLocation[], now = Date.now()): boolean {
    const before = this.#peers.get(node);
    this.#peers.set(node, { services, seenAt: now });
    return before === undefined || JSON.stringify(before.services) !== JSON.stringify(services);
  }

  /** Forgets a peer at once (it left the mesh cleanly): true when it had services. */
  dropPeer(node: string): boolean {
    const entry = this.#peers.get(node);
    this.#peers.delete(node);
    return entry !== undefined && entry.services.length > 0;
  }

  /** Drops peers not heard of within PEER_TTL_MS: true when one went. */
  expirePeers(now = Date.now()): boolean {
    let changed = false;
    for (const [node, entry] of this.#peers) {
      if (now - entry.seenAt <= PEER_TTL_MS) continue;
      this.#peers.delete(node);
      changed = changed || entry.services.length > 0;
    }
    return changed;
  }

  /** Services of the other nodes. */
  remoteServices(): ServiceLocation[] {
    return [...this.#peers.entries()].filter(([node]) => node !== this.node).flatMap(([, entry]) => entry.services);
  }

  /** Where `name` runs: this node first, then the peers (by node name). */
  find(name: string): ServiceLocation | undefined {
    const local = locations(this.state).find((l) => l.service === name);
    if (local !== undefined) return local;
    return this.remoteServices()
      .filter((l) => l.service === name)
      .sort((a, b) => a.node.localeCompare(b.node))[0];
  }

  close(): void {
    this.#db.close();
  }
}
