/**
 * The real environment of a process driver (src/replication/env.ts): node timers, TCP/TLS for the
 * channel, the worker-thread Vcpu, the TCP client service. Wired by the CLI (src/cli/run-cmds.ts).
 */
import { probeLiveness } from '../channel/liveness.js';
import { tcpChannelTransport, type ChannelSecurity } from '../channel/transport.js';
import { Vcpu } from '../machine/vcpu.js';
import type { NodeEnv } from '../replication/env.js';
import { ClientService } from '../service/clients.js';
import { realClock } from './real-clock.js';

export { realClock } from './real-clock.js';

export function realNodeEnv(security: ChannelSecurity): NodeEnv {
  return {
    clock: realClock,
    transport: tcpChannelTransport(security),
    probeLiveness: (addr) => probeLiveness(addr),
    newVcpu: (spec) => new Vcpu(spec),
    newService: (o) => new ClientService(o),
  };
}
