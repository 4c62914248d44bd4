// Where the browser tests find Chromium: on the PATH, where `npm test`'s
// set-up installs it (scripts/setup.sh --test).
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export function chromiumPath(): string {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    for (const name of ['chromium', 'chromium-browser']) if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  throw new Error('no chromium on the PATH: npm test installs it (scripts/setup.sh --test), or apt-get install chromium');
}

/** Chromium's flags for a closed machine: no sandbox (root in CI), no GPU, and none of its own network traffic. */
export const HEADLESS_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
