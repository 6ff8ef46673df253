import { expect } from '@playwright/test';

/** A Machine as `GET /_local/machines` lists it. */
export interface LocalMachine {
  app: string;
  id: string;
  name: string;
  state: string;
  region: string;
}

/** The app visitors' Machines run in. */
export const EPHEMERAL_APP = 'flyby-machines';

/**
 * The local platform's admin endpoint (on the Machines API address, see
 * src/local/machines_api.rs): what Machines exist, fault knobs, counters.
 */
export class LocalApi {
  constructor(readonly base: string) {}

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const response = await fetch(`${this.base}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await response.text();
    expect(response.ok, `${method} ${path}: ${response.status} ${text}`).toBe(true);
    return text ? JSON.parse(text) : null;
  }

  /** Every Machine the platform knows, destroyed ones included. */
  async machines(): Promise<LocalMachine[]> {
    return (await this.call('GET', '/_local/machines')) as LocalMachine[];
  }

  /** Visitors' Machines not destroyed yet. */
  async alive(): Promise<LocalMachine[]> {
    return (await this.machines()).filter((m) => m.app === EPHEMERAL_APP && m.state !== 'destroyed');
  }

  /** A Machine's state; `absent` if the platform never had it. */
  async state(id: string): Promise<string> {
    return (await this.machines()).find((m) => m.id === id)?.state ?? 'absent';
  }

  /** Arms a fault, e.g. `{kind: 'api', action: 'create', count: 50, status: 500}`. */
  async fault(fault: Record<string, unknown>): Promise<void> {
    await this.call('POST', '/_local/faults', fault);
  }

  async clearFaults(): Promise<void> {
    await this.call('DELETE', '/_local/faults');
  }

  /** Kills a Machine's process now, as a crash would. */
  async crash(machine: string): Promise<void> {
    await this.fault({ kind: 'crash', machine });
  }

  async counters(): Promise<Record<string, number>> {
    return ((await this.call('GET', '/_local/stats')) as { counters?: Record<string, number> }).counters ?? {};
  }

  /** Requests the proxy delivered to another Machine than the one it picked first. */
  async rerouted(): Promise<number> {
    const c = await this.counters();
    return (c['proxy.replays.delivered'] ?? 0) + (c['proxy.replay_cache.hits'] ?? 0);
  }
}
