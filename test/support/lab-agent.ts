/**
 * A test's handle on a lab agent's API, as the controller: only the controller's certificate may
 * call an agent (lib/authz.ts), and the test process is otherwise the lab's admin client.
 */
import { AgentHandle } from '../../controller/agent-client.js';
import type { Lab } from '../../lab/lab.js';
import { INSECURE, withSecurity } from '../../lib/tls.js';

export function agentAsController(lab: Pick<Lab, 'pki'>, host: string, address: string): AgentHandle {
  return withSecurity(lab.pki ? lab.pki.security('controller') : INSECURE, () => new AgentHandle(host, address));
}
