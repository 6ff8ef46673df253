import { expect } from '@playwright/test';

/** A Machine as `GET /_local/machines` lists it. */
export interface LocalMachine {
  app: string;
  id: string;
  name: string;
  state: string;
  region: string;
  /** `warm` for a Machine a launcher keeps in its warm pool (its `flyby_pool` metadata). */
  pool?: string | null;
}

/** The app of the launchers, the public page with the button. */
export const LAUNCHER_APP = 'flyby';
/** The app visitors' Machines run in. */
export const EPHEMERAL_APP = 'flyby-machines';
/** The name of the Machines the suite itself creates as other visitors' (see `bystander`). */
export const BYSTANDER_PREFIX = 'e2e-bystander-';
/** The visitors' app's concierges, one per image: belong to nobody, never end (see
 * src/server/launcher/concierge.rs). */
export const CONCIERGE_PREFIX = 'flyby-concierge-';
/** A warm-pool Machine nobody has taken yet: it belongs to no visitor. */
export function waiting(m: LocalMachine): boolean {
  return m.pool === 'warm' && (m.state === 'created' || m.state === 'stopped');
}

/** The token flyby-local expects by default (the suite starts it without FLY_API_TOKEN). */
const API_TOKEN = 'flyby-local-token';

/**
 * The local platform's admin endpoint (on the Machines API address, see
 * src/local/machines_api.rs): what Machines exist, fault knobs, counters.
 */
export class LocalApi {
  constructor(readonly base: string) {}

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const headers: Record<string, string> = path.startsWith('/v1/') ? { authorization: `Bearer ${API_TOKEN}` } : {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${this.base}${path}`, {
      method,
      headers,
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

  /**
   * Whether every running launcher's last list of Machines reached Fly with its token accepted
   * (its /metrics, read through the admin endpoint from inside the platform's network). A page
   * sees the state of the one launcher its live map reached; a launch may go to another.
   */
  async everyLauncherReachesFly(): Promise<boolean> {
    const launchers = (await this.machines()).filter((m) => m.app === LAUNCHER_APP && m.state === 'started');
    for (const launcher of launchers) {
      const response = await fetch(`${this.base}/_local/machines/${launcher.id}/metrics`, {
        signal: AbortSignal.timeout(10_000),
      });
      const text = await response.text();
      if (!response.ok || !/^flyby_fly_unreachable_seconds 0$/m.test(text) || !/^flyby_fly_token_refused 0$/m.test(text)) {
        return false;
      }
    }
    return launchers.length > 0;
  }

  /** Visitors' Machines not destroyed yet (the suite's bystanders and the warm pool aside). */
  async alive(): Promise<LocalMachine[]> {
    return (await this.machines()).filter(
      (m) =>
        m.app === EPHEMERAL_APP &&
        m.state !== 'destroyed' &&
        !waiting(m) &&
        !m.name.startsWith(BYSTANDER_PREFIX) &&
        !m.name.startsWith(CONCIERGE_PREFIX),
    );
  }

  /**
   * Starts a Machine in the visitors' app that belongs to nobody: another visitor's Machine,
   * as far as the proxy and the affinity layer can tell. Created through the Machines API
   * with no flyby metadata, so the launchers' tracker (map, capacity, reaper) ignores it.
   */
  async startBystander(launcher: string): Promise<string> {
    const created = (await this.call('POST', `/v1/apps/${EPHEMERAL_APP}/machines`, {
      name: `${BYSTANDER_PREFIX}${Date.now().toString(36)}`,
      region: 'ams',
      config: {
        image: 'registry.fly.io/flyby:local',
        env: {
          FLYBY_ROLE: 'ephemeral',
          FLYBY_OWNER_HASH: '0'.repeat(64),
          FLYBY_CLAIM_SECS: '600',
          FLYBY_TTL_SECS: '3600',
          FLYBY_LAUNCHER_URL: launcher,
          LEPTOS_SITE_ADDR: '[::]:8080',
        },
        services: [{ protocol: 'tcp', internal_port: 8080, ports: [{ port: 80, handlers: ['http'] }] }],
        auto_destroy: true,
        restart: { policy: 'no' },
      },
    })) as { id: string };
    await this.call('GET', `/v1/apps/${EPHEMERAL_APP}/machines/${created.id}/wait?state=started&timeout=30`);
    return created.id;
  }

  /** How many Machines were ever created for visitors (the concierges aside). */
  async created(): Promise<number> {
    return (await this.machines()).filter((m) => !m.name.startsWith(CONCIERGE_PREFIX)).length;
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

  /** Closes the WebSockets the proxy tunnels to a Machine, and refuses new ones for `forMs`,
   * as a network blip would; the Machine itself is untouched. */
  async cutWebsockets(machine: string, forMs: number): Promise<void> {
    await this.fault({ kind: 'cut_websockets', machine, for_ms: forMs });
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
