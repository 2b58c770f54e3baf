/**
 * The metaserver's registrations in Redis (`stoa meta --store redis://HOST:PORT[/DB]`): any
 * number of metaservers over one Redis serve one registry. store.ts has the contract; Bun's
 * built-in client, core/redis.ts for the connection and the scripts.
 *
 * Keys, under a prefix P ("stoa:meta:" unless a test sets another):
 *
 *   P pub:<pub_id>        hash: name host ps pst pp state confirmed registered_at last_seen owner gen —
 *                         one key per registration; it expires by itself RETAIN + KEY_GRACE after
 *                         the last heartbeat (sooner if never confirmed), so a registry left with
 *                         no metaserver empties itself
 *   P names               sorted set, all scores 0: the names, for prefix ranges (ZRANGEBYLEX)
 *   P byname              hash name → pub_id
 *   P ix                  hash pub_id → "name\nowner": what removing a key that expired by itself needs
 *   P seen / P fresh      sorted sets pub_id → last_seen: all of them / those not stale
 *   P unconf              sorted set pub_id → registered_at: never confirmed (the pending expiry)
 *   P own:<owner>         set of pub_ids the owner holds; P ownu:<owner> those never confirmed (quotas)
 *   P st:<state>          set of pub_ids in that state (counts)
 *   P gen                 counter: each registration's generation
 *   P lease:<id>:<gen>    the confirmation lease: which metaserver pings it, PX the ping timeout + 1 s
 *   P admin               the admin token's owner key every metaserver on this Redis must share
 *   P events              pub/sub channel: JSON [type, row] for every change, published by the
 *                         script that made it — every metaserver hears every change once
 *
 * Every step is one Lua script (atomic: two metaservers registering one name → one wins, the other
 * gets 409), one round trip. Scripts take the metaserver's clock as an argument (tests move it):
 * keep the metaservers' clocks in sync (NTP). Scripts name keys from their arguments:
 * single-instance Redis, not Cluster.
 *
 * The sweeper of every metaserver removes expired registrations (with their "removed" event);
 * a key that expired by itself first (no metaserver ran) leaves index entries behind, which
 * every script that meets one removes, and the sweeper too. Counts for quotas may include such
 * entries until then — at most one sweep after a metaserver starts.
 *
 * Redis unreachable: every call rejects with 503 store_unavailable at once (no offline queue);
 * the connection comes back by itself. After an outage every TTL clock restarts (as opening the
 * SQLite store does): heartbeats could not be recorded meanwhile.
 */
import type { RedisClient } from "bun";
import { randomBytes } from "node:crypto";
import { describeError, StoaError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { LuaScripts, RedisLink, shownRedisUrl } from "../core/redis.ts";
import { ANYONE, DEFAULT_QUOTAS, notOwner, type Quotas, type QuotaBreach, quotaError, type Writer } from "./owners.ts";
import {
  DEFAULT_DEREGISTER_AFTER_MS,
  DEFAULT_TTL_MS,
  MAX_PUBLISHERS,
  MetaApiError,
  PENDING_EXPIRY_MS,
  type PublisherInfo,
  type PublisherState,
  publisherUrls,
  type Registration,
} from "./protocol.ts";
import {
  ancestorsOf,
  belowRange,
  EventFanout,
  InfoCache,
  type Page,
  ruleErrors,
  type Store,
  type StoreEvent,
  type StoredPublisher,
  type StoreOptions,
  type SweepResult,
} from "./store.ts";

/** The default key prefix. */
const KEY_PREFIX = "stoa:meta:";
/** How long after its removal deadline a key expires by itself (the sweeper normally comes first). */
const DEFAULT_KEY_GRACE_MS = 60_000;
/** Registrations one sweep script handles per list at most (the script blocks Redis meanwhile). */
const SWEEP_BATCH = 1_000;
/** A sweep runs its script again while a list filled its batch, this many times at most. */
const SWEEP_ROUNDS = 10;
/** A row read by name is answered from memory for at most this long (ms), while no event says otherwise. */
const LOOKUP_CACHE_MS = 1_000;
/** Rows kept for lookups by name at most. */
const LOOKUP_CACHE_MAX = 20_000;
/** How long opening the store waits for Redis to answer. */
const OPEN_WAIT_MS = 10_000;
/** Outages shorter than this do not restart the TTL clocks. */
const FORGIVE_AFTER_MS = 1_000;

/**
 * Shared by every script: ARGV[1] is the key prefix, ARGV[2] the clock (ms). A row is the hash's
 * fields in FIELDS order; `flat` is how rows leave the scripts (pub_id first).
 */
const LIB = `
local P = ARGV[1]
local F = {'name','host','ps','pst','pp','state','confirmed','registered_at','last_seen','owner','gen'}
local function key(id) return P .. 'pub:' .. id end
local function row(id)
  local v = redis.call('HMGET', key(id), unpack(F))
  if not v[1] then return nil end
  return {id=id, name=v[1], host=v[2], ps=v[3], pst=v[4], pp=v[5], state=v[6], confirmed=v[7],
          registered_at=v[8], last_seen=v[9], owner=v[10], gen=v[11]}
end
local function flat(r)
  return {r.id, r.name, r.host, r.ps, r.pst, r.pp, r.state, r.confirmed, r.registered_at, r.last_seen, r.owner, r.gen}
end
local function event(t, r) redis.call('PUBLISH', P .. 'events', cjson.encode({t, flat(r)})) end
local function unindex(id, name, owner)
  if name ~= '' and redis.call('HGET', P .. 'byname', name) == id then
    redis.call('HDEL', P .. 'byname', name)
    redis.call('ZREM', P .. 'names', name)
  end
  redis.call('HDEL', P .. 'ix', id)
  redis.call('ZREM', P .. 'seen', id)
  redis.call('ZREM', P .. 'fresh', id)
  redis.call('ZREM', P .. 'unconf', id)
  redis.call('SREM', P .. 'own:' .. owner, id)
  redis.call('SREM', P .. 'ownu:' .. owner, id)
  redis.call('SREM', P .. 'st:pending', id)
  redis.call('SREM', P .. 'st:live', id)
  redis.call('SREM', P .. 'st:stale', id)
end
local function drop(r)
  redis.call('DEL', key(r.id))
  unindex(r.id, r.name, r.owner)
end
-- An id in an index whose key expired by itself: its index entries go too.
local function cleanup(id)
  local ix = redis.call('HGET', P .. 'ix', id)
  local name, owner = '', ''
  if ix then
    local nl = string.find(ix, '\\n', 1, true)
    name = string.sub(ix, 1, nl - 1)
    owner = string.sub(ix, nl + 1)
  end
  unindex(id, name, owner)
end
-- Relative to the metaserver's clock (ARGV[2]), not Redis's: the two may differ (tests move theirs).
local function expire(r, retain, pending, grace)
  local at = tonumber(r.last_seen) + retain
  if r.confirmed == '0' then at = math.min(at, tonumber(r.registered_at) + pending) end
  redis.call('PEXPIRE', key(r.id), string.format('%d', math.max(1, at + grace - tonumber(ARGV[2]))))
end
local function mayWrite(owner, wo, enforce, admin)
  if enforce ~= '1' then return 'yes' end
  if string.sub(owner, 1, 2) ~= 't:' then
    if admin == '1' then return 'claim' end
    return 'no'
  end
  if admin == '1' or owner == wo then return 'yes' end
  return 'no'
end
local function claim(r, wo)
  redis.call('SREM', P .. 'own:' .. r.owner, r.id)
  redis.call('SADD', P .. 'own:' .. wo, r.id)
  if r.confirmed == '0' then
    redis.call('SREM', P .. 'ownu:' .. r.owner, r.id)
    redis.call('SADD', P .. 'ownu:' .. wo, r.id)
  end
  redis.call('HSET', key(r.id), 'owner', wo)
  redis.call('HSET', P .. 'ix', r.id, r.name .. '\\n' .. wo)
  r.owner = wo
end
local function setState(r, state)
  if r.state ~= state then
    redis.call('SREM', P .. 'st:' .. r.state, r.id)
    redis.call('SADD', P .. 'st:' .. state, r.id)
    r.state = state
  end
end
local function ok(r)
  local out = {'ok'}
  for _, v in ipairs(flat(r)) do table.insert(out, v) end
  return out
end
`;

const SCRIPTS = new LuaScripts({
  // ARGV: P now id name host ps pst pp | wo enforce admin adminOwner | maxPub wPubs wPending naPubs naPending | retain pending grace | ancestors…
  register: `${LIB}
local now = ARGV[2]
local id, name = ARGV[3], ARGV[4]
local wo, enf, adm, adminOwner = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local byId = row(id)
if byId and mayWrite(byId.owner, wo, enf, adm) == 'no' then return {'forbidden', byId.id, byId.name} end
if byId and byId.name ~= name then return {'duplicate_pub_id', byId.name} end
local byName = byId
if not byName then
  local hid = redis.call('HGET', P .. 'byname', name)
  if hid then
    byName = row(hid)
    if not byName then cleanup(hid) end
  end
end
local taken = nil
if byName and byName.id ~= id then
  if byName.state ~= 'stale' or mayWrite(byName.owner, wo, enf, adm) == 'no' then
    return {'duplicate_name', byName.id, byName.state, byName.last_seen}
  end
  taken = byName
end
for i = 21, #ARGV do
  local pid = redis.call('HGET', P .. 'byname', ARGV[i])
  if pid then
    if redis.call('EXISTS', key(pid)) == 1 then return {'parent_is_publisher', ARGV[i], pid} end
    cleanup(pid)
  end
end
local shown = {}
while true do
  local batch = redis.call('ZRANGEBYLEX', P .. 'names', '[' .. name .. '/', '(' .. name .. '0', 'LIMIT', 0, 4)
  if #batch == 0 then break end
  local dangling = false
  for _, n in ipairs(batch) do
    local bid = redis.call('HGET', P .. 'byname', n)
    if bid and redis.call('EXISTS', key(bid)) == 1 then table.insert(shown, n)
    elseif bid then cleanup(bid); dangling = true
    else redis.call('ZREM', P .. 'names', n); dangling = true end
  end
  if #shown > 0 or not dangling then break end
end
if #shown > 0 then
  local out = {'name_is_directory'}
  for _, n in ipairs(shown) do table.insert(out, n) end
  return out
end
local replaced = byName ~= nil and byName.id == id
local gone = {}
if taken then table.insert(gone, taken) end
if replaced then table.insert(gone, byName) end
local total = redis.call('ZCARD', P .. 'seen')
local allPending = redis.call('ZCARD', P .. 'unconf')
local mine = redis.call('SCARD', P .. 'own:' .. wo)
local minePending = redis.call('SCARD', P .. 'ownu:' .. wo)
local adminAll = redis.call('SCARD', P .. 'own:' .. adminOwner)
local adminPending = redis.call('SCARD', P .. 'ownu:' .. adminOwner)
for _, g in ipairs(gone) do
  total = total - 1
  if g.owner == wo then mine = mine - 1 end
  if g.owner == adminOwner then adminAll = adminAll - 1 end
  if g.confirmed == '0' then
    allPending = allPending - 1
    if g.owner == wo then minePending = minePending - 1 end
    if g.owner == adminOwner then adminPending = adminPending - 1 end
  end
end
local others, othersPending = total - adminAll, allPending - adminPending
if adm ~= '1' then
  if not replaced and mine >= tonumber(ARGV[14]) then return {'quota', 'writer', mine, ARGV[14]} end
  if minePending >= tonumber(ARGV[15]) then return {'quota', 'writer_pending', minePending, ARGV[15]} end
  if not replaced and others >= tonumber(ARGV[16]) then return {'quota', 'others', others, ARGV[16]} end
  if othersPending >= tonumber(ARGV[17]) then return {'quota', 'others_pending', othersPending, ARGV[17]} end
end
if not replaced and total >= tonumber(ARGV[13]) then return {'quota', 'full', total, ARGV[13]} end
if taken then drop(taken) end
local since = now
if replaced then
  if byName.confirmed == '0' then since = byName.registered_at end
  drop(byName)
end
local gen = string.format('%d', redis.call('INCR', P .. 'gen'))
local r = {id=id, name=name, host=ARGV[5], ps=ARGV[6], pst=ARGV[7], pp=ARGV[8], state='pending', confirmed='0',
           registered_at=since, last_seen=now, owner=wo, gen=gen}
redis.call('HSET', key(id), 'name', name, 'host', r.host, 'ps', r.ps, 'pst', r.pst, 'pp', r.pp, 'state', 'pending',
           'confirmed', '0', 'registered_at', since, 'last_seen', now, 'owner', wo, 'gen', gen)
redis.call('ZADD', P .. 'names', 0, name)
redis.call('HSET', P .. 'byname', name, id)
redis.call('HSET', P .. 'ix', id, name .. '\\n' .. wo)
redis.call('ZADD', P .. 'seen', now, id)
redis.call('ZADD', P .. 'fresh', now, id)
redis.call('ZADD', P .. 'unconf', since, id)
redis.call('SADD', P .. 'own:' .. wo, id)
redis.call('SADD', P .. 'ownu:' .. wo, id)
redis.call('SADD', P .. 'st:pending', id)
expire(r, tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20]))
if taken then event('removed', taken) end
event('registered', r)
local out = ok(r)
table.insert(out, replaced and '0' or '1')
return out`,

  // ARGV: P now id wo enforce admin
  authorize: `${LIB}
local r = row(ARGV[3])
if not r then return {'missing'} end
local may = mayWrite(r.owner, ARGV[4], ARGV[5], ARGV[6])
if may == 'no' then return {'forbidden', r.id, r.name} end
if may == 'claim' then claim(r, ARGV[4]) end
return ok(r)`,

  // ARGV: P now id wo enforce admin retain pending grace
  heartbeat: `${LIB}
local r = row(ARGV[3])
if not r then return {'missing'} end
local may = mayWrite(r.owner, ARGV[4], ARGV[5], ARGV[6])
if may == 'no' then return {'forbidden', r.id, r.name} end
if may == 'claim' then claim(r, ARGV[4]) end
local was = r.state
r.last_seen = ARGV[2]
if was == 'stale' then
  if r.confirmed == '1' then setState(r, 'live') else setState(r, 'pending') end
end
redis.call('HSET', key(r.id), 'last_seen', r.last_seen, 'state', r.state)
redis.call('ZADD', P .. 'seen', r.last_seen, r.id)
redis.call('ZADD', P .. 'fresh', r.last_seen, r.id)
expire(r, tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
if was == 'stale' then
  if r.state == 'live' then event('confirmed', r) else event('registered', r) end
end
return ok(r)`,

  // ARGV: P now id gen retain pending grace
  markLive: `${LIB}
local r = row(ARGV[3])
if not r or r.gen ~= ARGV[4] then return {'missing'} end
setState(r, 'live')
r.confirmed = '1'
r.last_seen = ARGV[2]
redis.call('HSET', key(r.id), 'state', 'live', 'confirmed', '1', 'last_seen', r.last_seen)
redis.call('ZADD', P .. 'seen', r.last_seen, r.id)
redis.call('ZADD', P .. 'fresh', r.last_seen, r.id)
redis.call('ZREM', P .. 'unconf', r.id)
redis.call('SREM', P .. 'ownu:' .. r.owner, r.id)
expire(r, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
event('confirmed', r)
return ok(r)`,

  // ARGV: P now id gen
  removeIf: `${LIB}
local r = row(ARGV[3])
if not r or r.gen ~= ARGV[4] then return {'missing'} end
drop(r)
event('removed', r)
return ok(r)`,

  // ARGV: P now id wo enforce admin
  remove: `${LIB}
local r = row(ARGV[3])
if not r then return {'missing'} end
local may = mayWrite(r.owner, ARGV[4], ARGV[5], ARGV[6])
if may == 'no' then return {'forbidden', r.id, r.name} end
drop(r)
event('removed', r)
return ok(r)`,

  // ARGV: P now name — the row, or {}
  byName: `${LIB}
local id = redis.call('HGET', P .. 'byname', ARGV[3])
if not id then return {} end
local r = row(id)
if not r then cleanup(id) return {} end
return flat(r)`,

  // ARGV: P now want exact lo hi — up to want rows: the exact name (when not ''), then the range
  page: `${LIB}
local want = tonumber(ARGV[3])
local out = {}
local function take(name)
  local id = redis.call('HGET', P .. 'byname', name)
  if not id then
    redis.call('ZREM', P .. 'names', name)
    return
  end
  local r = row(id)
  if r then table.insert(out, flat(r)) else cleanup(id) end
end
if ARGV[4] ~= '' and redis.call('HEXISTS', P .. 'byname', ARGV[4]) == 1 then take(ARGV[4]) end
local lo = ARGV[5]
while #out < want do
  local names = redis.call('ZRANGEBYLEX', P .. 'names', lo, ARGV[6], 'LIMIT', 0, want - #out)
  if #names == 0 then break end
  for _, n in ipairs(names) do take(n) end
  lo = '(' .. names[#names]
end
return out`,

  // ARGV: P now ttl deregisterAfter pending batch — {removed rows, expired rows, staled rows}
  sweep: `${LIB}
local now, ttl, after, pending, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local removed, expired, staled = {}, {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'seen', '-inf', string.format('%d', now - ttl - after), 'LIMIT', 0, batch)) do
  local r = row(id)
  if r then drop(r); event('removed', r); table.insert(removed, flat(r)) else cleanup(id) end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'unconf', '-inf', string.format('%d', now - pending), 'LIMIT', 0, batch)) do
  local r = row(id)
  if r then drop(r); event('removed', r); table.insert(expired, flat(r)) else cleanup(id) end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'fresh', '-inf', string.format('%d', now - ttl), 'LIMIT', 0, batch)) do
  local r = row(id)
  if r then
    redis.call('ZREM', P .. 'fresh', id)
    if r.state ~= 'stale' then
      setState(r, 'stale')
      redis.call('HSET', key(id), 'state', 'stale')
      event('stale', r)
      table.insert(staled, flat(r))
    end
  else cleanup(id) end
end
return {removed, expired, staled}`,

  // ARGV: P now retain pending grace batch — restarts the TTL clock of up to batch registrations heard from before now
  forgive: `${LIB}
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'seen', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[6]))) do
  local r = row(id)
  if r then
    r.last_seen = ARGV[2]
    redis.call('HSET', key(id), 'last_seen', r.last_seen)
    redis.call('ZADD', P .. 'seen', r.last_seen, id)
    if redis.call('ZSCORE', P .. 'fresh', id) then redis.call('ZADD', P .. 'fresh', r.last_seen, id) end
    expire(r, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
  else cleanup(id) end
  n = n + 1
end
return n`,

  // ARGV: P lease-key-without-P token — deletes the lease only if this metaserver holds it
  release: `
if redis.call('GET', ARGV[1] .. ARGV[2]) == ARGV[3] then redis.call('DEL', ARGV[1] .. ARGV[2]) end
return 0`,
});

type ScriptName = Parameters<typeof SCRIPTS.run>[1];

/** The scripts that change registrations (the lookup cache forgets what they touch). */
const WRITES: ReadonlySet<ScriptName> = new Set<ScriptName>(["register", "authorize", "heartbeat", "markLive", "removeIf", "remove", "sweep", "forgive"]);

/** A row as the scripts return it (`flat`): pub_id first, then the hash's fields in order. */
type FlatRow = string[];

export class RedisStore implements Store {
  readonly description: string;
  readonly pendingExpiryMs: number;
  readonly #prefix: string;
  readonly #now: () => number;
  readonly #maxPublishers: number;
  readonly #quotas: Quotas;
  readonly #adminOwner: string;
  readonly #retainMs: number;
  readonly #graceMs: number;
  readonly #log: Logger | undefined;
  readonly #events = new EventFanout();
  readonly #infos = new InfoCache();
  /** Rows read by name lately (`byName`), and when; forgotten at their name's next event. */
  readonly #lookups = new Map<string, { row: FlatRow; at: number }>();
  /** Events heard so far: a read that overlapped one is not kept. */
  #heardCount = 0;
  readonly #lost = new Set<() => void>();
  readonly #commands: RedisLink;
  readonly #subscriber: RedisLink;
  /** This metaserver's lease tokens: a lease it took is only given back by it. */
  readonly #token = randomBytes(8).toString("hex");
  /** When the command connection went down (null while up, or before the first connection). */
  #downSince: number | null = null;
  #forgiving: Promise<void> | null = null;

  private constructor(url: string, options: StoreOptions) {
    this.description = shownRedisUrl(url);
    this.#prefix = options.keyPrefix ?? KEY_PREFIX;
    this.#now = options.clock ?? Date.now;
    this.#maxPublishers = options.maxPublishers ?? MAX_PUBLISHERS;
    this.pendingExpiryMs = options.pendingExpiryMs ?? PENDING_EXPIRY_MS;
    this.#adminOwner = options.adminOwner ?? "";
    this.#quotas = { ...DEFAULT_QUOTAS, ...options.quotas };
    this.#retainMs = options.retainMs ?? DEFAULT_TTL_MS + DEFAULT_DEREGISTER_AFTER_MS;
    this.#graceMs = options.keyGraceMs ?? DEFAULT_KEY_GRACE_MS;
    this.#log = options.log;
    this.#commands = new RedisLink(url, {
      onUp: () => this.#up(),
      onDown: (reason) => {
        this.#downSince = Date.now();
        this.#log?.warn("the Redis store cannot be reached; requests answer 503 until it is back", { store: this.description, error: reason });
      },
    });
    this.#subscriber = new RedisLink(url, {
      onUp: async (client) => {
        await client.subscribe(`${this.#prefix}events`, (message) => this.#heard(message));
      },
      // Changes published while it is down are not heard: watchers must resync, lookups go to Redis.
      onDown: () => {
        this.#lookups.clear();
        for (const listener of this.#lost) {
          try {
            listener();
          } catch {
            // a watcher's failure is its own
          }
        }
      },
    });
  }

  /**
   * Connects (both connections: commands and the event subscription) and checks that every
   * metaserver on this Redis shares the admin token. Rejects with StoaError "io" when Redis
   * cannot be reached, "config" on another admin token.
   */
  static async open(url: string, options: StoreOptions = {}): Promise<RedisStore> {
    const store = new RedisStore(url, options);
    await Promise.all([store.#commands.start(), store.#subscriber.start()]);
    // Started with Redis in one script, or before it at boot: wait for it a while (the links
    // dial again every REDIS_RETRY_MS by themselves).
    const waitMs = options.connectWaitMs ?? OPEN_WAIT_MS;
    const deadline = Date.now() + waitMs;
    let said = false;
    for (;;) {
      const down = store.#commands.down ?? store.#subscriber.down;
      if (down === null) break;
      if (Date.now() >= deadline) {
        await store.close();
        throw new StoaError(
          "io",
          `cannot reach the Redis store ${store.description} within ${Math.round(waitMs / 1000)}s: ${down}; is redis-server running there, and is the URL right? ` +
            "(A Redis on an address other than loopback with no password closes every connection in protected mode: give it a password, redis://:PASSWORD@HOST:PORT, or --protected-mode no on a closed network.)",
        );
      }
      if (!said) store.#log?.warn("waiting for the Redis store", { store: store.description, up_to: `${Math.round(waitMs / 1000)}s`, error: down });
      said = true;
      await Bun.sleep(50);
    }
    try {
      await store.#checkAdmin();
    } catch (err) {
      await store.close();
      throw err;
    }
    return store;
  }

  async #checkAdmin(): Promise<void> {
    const client = this.#client();
    const key = `${this.#prefix}admin`;
    const mine = this.#adminOwner === "" ? "none" : this.#adminOwner;
    await client.send("SET", [key, mine, "NX"]);
    const theirs = await client.get(key);
    if (theirs !== mine) {
      const what = (v: string | null) => (v === "none" ? "no authentication (--no-auth)" : "another admin token");
      throw new StoaError(
        "config",
        `the metaservers already on ${this.description} use ${what(theirs)}, this one ${mine === "none" ? "--no-auth" : "its own admin token"}: ` +
          "every metaserver on one store must have the same --token-file (or all --no-auth), or a token accepted by one would be refused by another. " +
          `To change it on purpose, stop them all and delete the key ${key} (redis-cli DEL ${key})`,
      );
    }
  }

  async register(reg: Registration & { pub_id: string }, writer: Writer = ANYONE): Promise<{ info: PublisherInfo; created: boolean }> {
    const now = this.#now();
    const q = this.#quotas;
    const reply = await this.#run("register", [
      String(now),
      reg.pub_id,
      reg.name,
      reg.host,
      String(reg.ports.service),
      String(reg.ports.string),
      String(reg.ports.ping),
      ...this.#writerArgs(writer),
      this.#adminOwner,
      String(this.#maxPublishers),
      String(q.writerPublishers),
      String(q.writerPending),
      String(q.nonAdminPublishers),
      String(q.nonAdminPending),
      ...this.#expiryArgs(),
      ...ancestorsOf(reg.name),
    ]);
    const [status, ...rest] = reply;
    switch (status) {
      case "ok":
        return { info: this.#info(rest.slice(0, 12)), created: rest[12] === "1" };
      case "forbidden":
        throw notOwner(rest[0] ?? "", rest[1] ?? "");
      case "duplicate_pub_id":
        throw ruleErrors.duplicatePubId(reg.pub_id, rest[0] ?? "");
      case "duplicate_name":
        throw ruleErrors.duplicateName(reg.name, { pub_id: rest[0] ?? "", state: (rest[1] ?? "live") as PublisherState, lastSeen: Number(rest[2]) }, now);
      case "parent_is_publisher":
        throw ruleErrors.parentIsPublisher(reg.name, { name: rest[0] ?? "", pub_id: rest[1] ?? "" });
      case "name_is_directory":
        throw ruleErrors.nameIsDirectory(reg.name, rest);
      case "quota":
        throw quotaError(rest[0] as QuotaBreach, Number(rest[1]), Number(rest[2]));
      default:
        throw new StoaError("internal", `the register script answered ${String(status)}`);
    }
  }

  async get(pubId: string): Promise<StoredPublisher | null> {
    const client = this.#client();
    const values = await this.#call(() =>
      client.send("HMGET", [`${this.#prefix}pub:${pubId}`, "name", "host", "ps", "pst", "pp", "state", "confirmed", "registered_at", "last_seen", "owner", "gen"]),
    );
    const fields = values as (string | null)[];
    if (fields[0] === null || fields[0] === undefined) return null;
    const row = [pubId, ...fields.map((v) => v ?? "")];
    return { info: this.#info(row), generation: Number(row[11]), lastSeen: Number(row[9]), owner: row[10] ?? "" };
  }

  async authorize(pubId: string, writer: Writer): Promise<boolean> {
    return (await this.#owned("authorize", pubId, writer, [])) !== null;
  }

  async page(prefix: string, limit: number, after: string | null): Promise<Page> {
    const from = after ?? "";
    let exact = "";
    let lo: string;
    let hi: string;
    if (prefix === "") {
      lo = after === null ? "-" : `(${after}`;
      hi = "+";
    } else {
      if (prefix > from) exact = prefix;
      const [below, above] = belowRange(prefix);
      lo = from >= below ? `(${from}` : `[${below}`;
      hi = `(${above}`;
    }
    // limit + 1 rows say whether there is a next page.
    const rows = (await this.#run("page", [String(this.#now()), String(limit + 1), exact, lo, hi])) as unknown as FlatRow[];
    const more = rows.length > limit;
    const shown = (more ? rows.slice(0, limit) : rows).map(toInfo);
    return { publishers: shown, next: more ? (shown.at(-1)?.name ?? null) : null };
  }

  /**
   * Lookups by name are answered from memory when they can be (`LOOKUP_CACHE_MS`): a row read
   * here is kept until its name's next event, and used only while the subscription is up and no
   * event has arrived since the read began. So a lookup lags a change made through another
   * metaserver only by the time that change's event takes to arrive (under a millisecond on one
   * network), never by more than LOOKUP_CACHE_MS; through this one, not at all (its writes forget
   * the name at once). Misses are not kept.
   */
  async byName(name: string): Promise<PublisherInfo | null> {
    const hit = this.#lookups.get(name);
    if (hit !== undefined && this.eventsUp && performance.now() - hit.at < LOOKUP_CACHE_MS) return this.#info(hit.row);
    const heardBefore = this.#heardCount;
    const row = await this.#run("byName", [String(this.#now()), name]);
    if (row.length === 0) return null;
    if (this.#heardCount === heardBefore && this.eventsUp) {
      if (this.#lookups.size >= LOOKUP_CACHE_MAX) this.#lookups.clear();
      this.#lookups.set(name, { row, at: performance.now() });
    }
    return this.#info(row);
  }

  async heartbeat(pubId: string, writer: Writer = ANYONE): Promise<PublisherInfo | null> {
    const row = await this.#owned("heartbeat", pubId, writer, this.#expiryArgs());
    return row === null ? null : this.#info(row);
  }

  async lease(pubId: string, generation: number, ms: number): Promise<boolean> {
    const client = this.#client();
    const reply = await this.#call(() => client.send("SET", [this.#leaseKey(pubId, generation), this.#token, "NX", "PX", String(Math.max(1, Math.ceil(ms)))]));
    return reply === "OK";
  }

  async release(pubId: string, generation: number): Promise<void> {
    await this.#run("release", [this.#leaseKey(pubId, generation).slice(this.#prefix.length), this.#token]);
  }

  async markLive(pubId: string, generation: number): Promise<PublisherInfo | null> {
    const [status, ...row] = await this.#run("markLive", [String(this.#now()), pubId, String(generation), ...this.#expiryArgs()]);
    return status === "ok" ? this.#info(row) : null;
  }

  async removeIf(pubId: string, generation: number): Promise<boolean> {
    const [status] = await this.#run("removeIf", [String(this.#now()), pubId, String(generation)]);
    return status === "ok";
  }

  async remove(pubId: string, writer: Writer = ANYONE): Promise<PublisherInfo | null> {
    const row = await this.#owned("remove", pubId, writer, []);
    return row === null ? null : this.#info(row);
  }

  async sweep(ttlMs: number, deregisterAfterMs: number): Promise<SweepResult> {
    await this.#forgiving;
    const out: SweepResult = { staled: [], removed: [], expired: [] };
    for (let round = 0; round < SWEEP_ROUNDS; round++) {
      const reply = (await this.#run("sweep", [String(this.#now()), String(ttlMs), String(deregisterAfterMs), String(this.pendingExpiryMs), String(SWEEP_BATCH)])) as unknown as [
        FlatRow[],
        FlatRow[],
        FlatRow[],
      ];
      const [removed, expired, staled] = reply;
      out.removed.push(...removed.map(toInfo));
      out.expired.push(...expired.map(toInfo));
      out.staled.push(...staled.map(toInfo));
      if (removed.length < SWEEP_BATCH && expired.length < SWEEP_BATCH && staled.length < SWEEP_BATCH) break;
    }
    return out;
  }

  async counts(): Promise<Record<PublisherState, number>> {
    const client = this.#client();
    const [pending, live, stale] = await this.#call(() =>
      Promise.all((["pending", "live", "stale"] as const).map((state) => client.scard(`${this.#prefix}st:${state}`))),
    );
    return { pending: Number(pending), live: Number(live), stale: Number(stale) };
  }

  onEvent(listener: (event: StoreEvent) => void): () => void {
    return this.#events.add(listener);
  }

  get eventsUp(): boolean {
    return this.#subscriber.down === null;
  }

  onLost(listener: () => void): () => void {
    this.#lost.add(listener);
    return () => this.#lost.delete(listener);
  }

  async close(): Promise<void> {
    this.#commands.close();
    this.#subscriber.close();
  }

  /** An event from the channel (made through this metaserver or another): to the listeners. */
  #heard(message: string): void {
    let type: unknown;
    let row: unknown;
    try {
      [type, row] = JSON.parse(message) as [unknown, unknown];
    } catch {
      this.#log?.warn("an event on the Redis store's channel is not JSON; ignored", { store: this.description });
      return;
    }
    if ((type !== "registered" && type !== "confirmed" && type !== "stale" && type !== "removed") || !Array.isArray(row) || row.length !== 12) {
      this.#log?.warn("an event on the Redis store's channel is not one this metaserver knows; ignored", { store: this.description });
      return;
    }
    const strings = row.map(String);
    this.#heardCount++;
    this.#lookups.delete(strings[1] ?? "");
    this.#events.emit(type, this.#info(strings));
  }

  /** The command connection came (back): after an outage, every TTL clock restarts. */
  async #up(): Promise<void> {
    const since = this.#downSince;
    this.#downSince = null;
    if (since === null) return;
    const outage = Date.now() - since;
    this.#log?.info("the Redis store answers again", { store: this.description, down_ms: outage });
    if (outage < FORGIVE_AFTER_MS) return;
    this.#forgiving = (async () => {
      // This runs while the link finishes coming up: wait for it to be usable.
      for (let i = 0; i < 100 && this.#commands.client === null; i++) await Bun.sleep(10);
      try {
        for (let n = SWEEP_BATCH; n >= SWEEP_BATCH; ) {
          n = Number(await this.#run("forgive", [String(this.#now()), ...this.#expiryArgs(), String(SWEEP_BATCH)]));
        }
      } catch (err) {
        this.#log?.warn("could not restart the TTL clocks after the outage", { store: this.description, error: describeError(err) });
      } finally {
        this.#forgiving = null;
      }
    })();
  }

  /** The API's view of a script's row, built once per registration and state. */
  #info(row: readonly string[]): PublisherInfo {
    return this.#infos.of(Number(row[11]), row[6] as PublisherState, () => toInfo(row));
  }

  /** A script that checks the writer first: the row, null when missing; 403 when not the owner's. */
  async #owned(name: "authorize" | "heartbeat" | "remove", pubId: string, writer: Writer, extra: string[]): Promise<FlatRow | null> {
    const [status, ...rest] = await this.#run(name, [String(this.#now()), pubId, ...this.#writerArgs(writer), ...extra]);
    if (status === "missing") return null;
    if (status === "forbidden") throw notOwner(rest[0] ?? "", rest[1] ?? "");
    return rest;
  }

  #writerArgs(writer: Writer): string[] {
    return [writer.owner, writer.enforce ? "1" : "0", writer.admin ? "1" : "0"];
  }

  #expiryArgs(): string[] {
    return [String(this.#retainMs), String(this.pendingExpiryMs), String(this.#graceMs)];
  }

  #leaseKey(pubId: string, generation: number): string {
    return `${this.#prefix}lease:${pubId}:${generation}`;
  }

  async #run(name: ScriptName, args: string[]): Promise<string[]> {
    const client = this.#client();
    const write = WRITES.has(name);
    // A lookup that overlaps a write through this metaserver is not kept; the written name is
    // forgotten at once (its event comes later).
    if (write) this.#heardCount++;
    const reply = (await this.#call(() => SCRIPTS.run(client, name, [], [this.#prefix, ...args]))) as string[];
    if (write) {
      this.#heardCount++;
      if (name === "register") this.#lookups.delete(args[2] ?? "");
      else if (name === "sweep") {
        if ((reply as unknown as FlatRow[][]).some((rows) => rows.length > 0)) this.#lookups.clear();
      } else if (reply[0] === "ok") this.#lookups.delete(reply[2] ?? "");
    }
    return reply;
  }

  #client(): RedisClient {
    const client = this.#commands.client;
    if (client === null) throw this.#unavailable(this.#commands.down ?? "not connected");
    return client;
  }

  async #call<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (err) {
      throw this.#unavailable(describeError(err));
    }
  }

  #unavailable(why: string): MetaApiError {
    return new MetaApiError("store_unavailable", `the metaserver's store ${this.description} cannot be used right now (${why}); try again shortly`);
  }
}

/** A script's row as the API's view. */
function toInfo(row: readonly string[]): PublisherInfo {
  const [id = "", name = "", host = "", ps, pst, pp, state, , registeredAt] = row;
  const ports = { service: Number(ps), string: Number(pst), ping: Number(pp) };
  return {
    name,
    pub_id: id,
    host,
    ports,
    urls: publisherUrls(host, ports, id),
    state: state as PublisherState,
    registered_at: new Date(Number(registeredAt)).toISOString(),
  };
}
