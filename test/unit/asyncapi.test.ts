/**
 * The event catalogue cannot drift from the code: docs/asyncapi.json is what lib/asyncapi.ts
 * generates now, every subject of lib/subjects.ts is in it, and every example fits its schema.
 * (test/integration/automation.test.ts checks events captured from a real migration too.)
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { API_SERVICES, ASYNCAPI_FILE, asyncApiDocument, asyncApiText } from '../../lib/asyncapi.js';
import { REPO_ROOT } from '../../lib/rpc.js';
import { EVENT_CHANNELS, SUBJECT_CATALOGUE } from '../../lib/subject-catalogue.js';
import { SUBJECTS } from '../../lib/subjects.js';

type Doc = { channels: Record<string, { address: string | null }> };
const doc = asyncApiDocument() as Doc;
const addresses = Object.values(doc.channels).map((c) => c.address).filter((a): a is string => a !== null);

/** Does a concrete subject fit a channel address ("godwit.hosts.{host}.heartbeat")? */
const fits = (subject: string, address: string) => new RegExp(`^${address.replace(/\./g, '\\.').replace(/\{[^}]+\}/g, '[^.]+')}$`).test(subject);
/** Does a NATS wildcard subscription ("godwit.hosts.*.heartbeat", "godwit.events.>") cover a channel address? */
const covers = (wildcard: string, address: string) =>
  new RegExp(`^${wildcard.replace(/\./g, '\\.').replace(/\*/g, '[^.]+').replace(/>$/, '.+')}$`).test(address.replace(/\{[^}]+\}/g, 'x'));

describe('event catalogue (AsyncAPI)', () => {
  it('docs/asyncapi.json is the generated document (run `npm run asyncapi` after changing subjects, events or protos)', () => {
    expect(readFileSync(ASYNCAPI_FILE, 'utf8')).toBe(asyncApiText());
  });

  it('has every subject of lib/subjects.ts', () => {
    for (const key of Object.keys(SUBJECTS) as (keyof typeof SUBJECTS)[]) {
      const entry = SUBJECT_CATALOGUE[key];
      expect(entry, key).toBeDefined();
      const value = SUBJECTS[key];
      const args = entry.kind === 'api' ? ['Migrate'] : ['x1', 'DUMP'];
      const subject = typeof value === 'function' ? (value as (...a: string[]) => string)(...args) : value;
      if (entry.kind === 'event') expect(fits(subject, entry.address), `${key}: ${subject} in ${entry.address}`).toBe(true);
      if (entry.kind === 'event' || entry.kind === 'api') expect(addresses.some((a) => fits(subject, a)), `${key}: ${subject} has a channel`).toBe(true);
      if (entry.kind === 'wildcard') {
        const of = entry.of === 'api' ? addresses.filter((a) => a.startsWith('godwit.api.v1.') && a !== SUBJECTS.apiStreamCancel) : [EVENT_CHANNELS[entry.of].address];
        for (const a of of) expect(covers(subject, a), `${key}: ${subject} covers ${a}`).toBe(true);
      }
    }
  });

  it('has a request channel for every gRPC method the controller serves', () => {
    for (const { definition } of API_SERVICES) for (const method of Object.keys(definition)) expect(addresses).toContain(SUBJECTS.apiRequest(method));
  });

  it("gives examples that fit their channel's schema", () => {
    for (const [key, c] of Object.entries(EVENT_CHANNELS)) {
      const r = c.payload.safeParse(c.example);
      expect(r.success, `${key}: ${r.error?.message}`).toBe(true);
    }
  });

  it('publishes on no subject spelt outside lib/subjects.ts', () => {
    const literal = /\.publish\(\s*['"`]/;
    for (const dir of ['lib', 'agent', 'controller'])
      for (const f of readdirSync(join(REPO_ROOT, dir), { recursive: true }) as string[]) {
        if (!f.endsWith('.ts')) continue;
        expect(literal.test(readFileSync(join(REPO_ROOT, dir, f), 'utf8')), `${dir}/${f} publishes on a literal subject`).toBe(false);
      }
  });
});
