/**
 * The one module that talks to NATS (core, JetStream, KV). Everything else sees JSON messages,
 * subjects from lib/subjects.ts and a small KV interface.
 */
import { connect, Events, JSONCodec, RetentionPolicy, type KV, type NatsConnection, type Subscription } from 'nats';
import { EVENTS_STREAM, SUBJECTS } from './subjects.js';

const json = JSONCodec();

export interface BusOptions {
  servers: string;
  name: string;
}

export interface KvEntry<T> {
  value: T;
  revision: number;
}

/** A bucket of JSON values with compare-and-set by revision. */
export interface JsonKv<T> {
  get(key: string): Promise<KvEntry<T> | undefined>;
  /** Fails if the key exists. Returns the new revision. */
  create(key: string, value: T): Promise<number>;
  /** Fails (lost the race) if the key's revision is not `revision`. Returns the new revision. */
  update(key: string, value: T, revision: number): Promise<number>;
  keys(): Promise<string[]>;
  /**
   * The key's latest value first (if it has one), then every later value, as they are written.
   * JetStream's ordered consumer under it re-creates itself after a reconnect or a server
   * restart, so the watcher catches up by itself. Deletes are skipped.
   */
  watch(key: string): Promise<KvWatch<T>>;
}

/** A running watch: iterate it for the values; stop() ends the iteration. */
export interface KvWatch<T> extends AsyncIterable<KvEntry<T>> {
  stop(): void;
}

export class Bus {
  private readonly reconnectListeners = new Set<() => void>();

  private constructor(private readonly nc: NatsConnection) {
    void (async () => {
      for await (const s of nc.status()) if (s.type === Events.Reconnect) for (const fn of this.reconnectListeners) fn();
    })();
  }

  static async connect(opts: BusOptions): Promise<Bus> {
    // Keep reconnecting forever: an agent outlives a NATS restart.
    const nc = await connect({ servers: opts.servers, name: opts.name, maxReconnectAttempts: -1, reconnectTimeWait: 500 });
    return new Bus(nc);
  }

  publish(subject: string, message: unknown): void {
    this.nc.publish(subject, json.encode(message));
  }

  /** Calls `onMessage` for each message until the returned function is called. */
  subscribe<T>(subject: string, onMessage: (message: T, subject: string) => void): () => void {
    const sub: Subscription = this.nc.subscribe(subject);
    void (async () => {
      for await (const m of sub) {
        try {
          onMessage(json.decode(m.data) as T, m.subject);
        } catch {
          // A malformed message from someone else must not stop the subscription.
        }
      }
    })();
    return () => sub.unsubscribe();
  }

  /** The stream that keeps every godwit event (idempotent). */
  async ensureEventStream(maxAgeMs = 24 * 3600_000): Promise<void> {
    const jsm = await this.nc.jetstreamManager();
    const config = { name: EVENTS_STREAM, subjects: [SUBJECTS.allEvents], retention: RetentionPolicy.Limits, max_age: maxAgeMs * 1_000_000 };
    try {
      await jsm.streams.info(EVENTS_STREAM);
      await jsm.streams.update(EVENTS_STREAM, config);
    } catch {
      await jsm.streams.add(config);
    }
  }

  async kv<T>(bucket: string): Promise<JsonKv<T>> {
    const kv: KV = await this.nc.jetstream().views.kv(bucket, { history: 5 });
    return {
      async get(key) {
        const e = await kv.get(key);
        if (!e || e.operation !== 'PUT') return undefined;
        return { value: json.decode(e.value) as T, revision: e.revision };
      },
      create: (key, value) => kv.create(key, json.encode(value)),
      update: (key, value, revision) => kv.update(key, json.encode(value), revision),
      async keys() {
        const out: string[] = [];
        for await (const k of await kv.keys()) out.push(k);
        return out;
      },
      watch: (key) => this.watchKey<T>(kv, key),
    };
  }

  /**
   * The ordered consumer under a KV watch notices a lost server only after its idle heartbeats
   * go missing (about 10 s measured after a NATS restart); so on every reconnect the watch is
   * made anew, which delivers the key's latest value first: a watcher is current again as soon
   * as the connection is. A value may then come twice; values are whole states, so that is harmless.
   */
  private async watchKey<T>(kv: KV, key: string): Promise<KvWatch<T>> {
    const open = () => kv.watch({ key, ignoreDeletes: true });
    let current = await open();
    let stopped = false;
    const renew = async () => {
      for (let delayMs = 100; !stopped; delayMs = Math.min(delayMs * 2, 2_000)) {
        try {
          const next = await open();
          if (stopped) {
            next.stop();
            return;
          }
          const old = current;
          current = next;
          old.stop();
          return;
        } catch {
          // JetStream may need a moment after the server comes back.
          await new Promise((r) => setTimeout(r, delayMs));
        }
      }
    };
    const onReconnect = () => void renew();
    this.reconnectListeners.add(onReconnect);
    return {
      stop: () => {
        stopped = true;
        this.reconnectListeners.delete(onReconnect);
        current.stop();
      },
      async *[Symbol.asyncIterator]() {
        while (!stopped) {
          const it = current;
          try {
            for await (const e of it) {
              if (e.operation !== 'PUT') continue;
              yield { value: json.decode(e.value) as T, revision: e.revision };
            }
          } catch {
            // The consumer failed (its stream went away, say): made anew below.
          }
          // Ended: stopped, replaced by renew() (then `current` is the new one), or by itself.
          if (!stopped && current === it) await renew();
        }
      },
    };
  }

  async flush(): Promise<void> {
    await this.nc.flush();
  }

  async close(): Promise<void> {
    await this.nc.drain();
  }
}
