/*
 * The byte layout of a struct a map's keys or values are made of, as user space encodes it, and
 * the same struct as a BTF dump describes it: what the lifecycle compares before it reuses a
 * pinned map (map-layout.ts), and what the codec tests hold against a compiled object.
 */

export interface MemberLayout {
  name: string;
  /** Byte offset in the struct. */
  offset: number;
  /** Byte size. */
  size: number;
}

export interface StructLayout {
  name: string;
  size: number;
  members: readonly MemberLayout[];
}

interface BtfType {
  id: number;
  kind: string;
  name?: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: { name: string; type_id: number; bits_offset: number }[];
}

/**
 * The layout of struct `name` in `bpftool -j btf dump` output, or undefined if the BTF has no
 * such struct. Member sizes resolve through typedefs and qualifiers to the sized type.
 */
export function structLayoutFromBtf(btfDump: unknown, name: string): StructLayout | undefined {
  const types = (btfDump as { types?: BtfType[] } | null)?.types;
  if (!Array.isArray(types)) throw new Error('not a `bpftool -j btf dump` document (no "types" array)');
  const byId = new Map(types.map((t) => [t.id, t]));
  const sizeOf = (id: number, depth = 0): number => {
    for (let t = byId.get(id), hops = 0; t && hops < 32; t = byId.get(t.type_id ?? -1), hops++) {
      if (typeof t.size === 'number') return t.size;
      // An array (the tuple key's pad[3]) is nr_elems of its element type.
      if (t.kind === 'ARRAY' && typeof t.nr_elems === 'number' && t.type_id !== undefined && depth < 8) return t.nr_elems * sizeOf(t.type_id, depth + 1);
      if (!['TYPEDEF', 'CONST', 'VOLATILE', 'RESTRICT', 'TYPE_TAG'].includes(t.kind)) break;
    }
    throw new Error(`BTF type ${id} (a member of struct ${name}) has no size this codec understands`);
  };
  const s = types.find((t) => t.kind === 'STRUCT' && t.name === name);
  if (!s || typeof s.size !== 'number') return undefined;
  return {
    name,
    size: s.size,
    members: (s.members ?? []).map((m) => {
      if (m.bits_offset % 8 !== 0) throw new Error(`struct ${name} member ${m.name} is a bitfield; the codec needs whole bytes`);
      return { name: m.name, offset: m.bits_offset / 8, size: sizeOf(m.type_id) };
    }),
  };
}

/** Why `actual` differs from `expected`, or undefined if they are the same layout. */
export function layoutMismatch(expected: StructLayout, actual: StructLayout | undefined): string | undefined {
  if (!actual) return `struct ${expected.name} not found`;
  const show = (l: StructLayout) => `${l.size} bytes {${l.members.map((m) => `${m.name}@${m.offset}:${m.size}`).join(', ')}}`;
  return show(expected) === show(actual) ? undefined : `struct ${expected.name}: expected ${show(expected)}, found ${show(actual)}`;
}
