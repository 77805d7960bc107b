/**
 * The agent's effective capabilities and CPU features, for the Probe: CRIU runs with the agent's
 * capabilities, and preflight compares what the tree needs with what both hosts have.
 */
import { readFile } from 'node:fs/promises';

/** Capability names by bit number (include/uapi/linux/capability.h). */
const CAPABILITY_NAMES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN',
  'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG', 'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ',
  'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
];

/** Names of the capabilities set in a /proc/PID/status Cap* mask (hex); unknown bits as CAP_<n>. */
export function capabilityNames(hexMask: string): string[] {
  const mask = BigInt(`0x${hexMask.trim() || '0'}`);
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) out.push(CAPABILITY_NAMES[bit] ?? `CAP_${bit}`);
  return out;
}

/** This process's effective capabilities. */
export async function effectiveCapabilities(): Promise<string[]> {
  const status = await readFile('/proc/self/status', 'utf8');
  return capabilityNames(/^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '0');
}

/**
 * The CPU's feature flags: /proc/cpuinfo's first "flags" line, or the words of `overrideFile`
 * (the agent's --cpu-features: a test gives a host a CPU that lacks something, and an operator
 * can pin a fleet to a common baseline).
 */
export async function cpuFeatures(overrideFile?: string): Promise<string[]> {
  if (overrideFile) return (await readFile(overrideFile, 'utf8')).split(/\s+/).filter(Boolean);
  const info = await readFile('/proc/cpuinfo', 'utf8');
  return (/^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? '').split(/\s+/).filter(Boolean);
}
