// `caravan dashboard` as a user runs it: its own process, beside a real run
// over a real nats-server, its page open in headless Chromium while the run
// goes on. The loss curve grows, the slot table fills, a host SIGKILLed
// mid-run shows up as a lost host and a slot handed to the standby (the
// table's generation moves), the finished run's validation loss and the
// pipeline timeline of its last steps appear; then a screenshot. Without a
// run, or without NATS, the page says what it is showing.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { connect } from '@nats-io/transport-node';
import { chromium, type Page } from 'playwright-core';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { startSpanFileReceiver } from '../../runtime/telemetry/span-file.ts';
import { openExistingRun } from '../../runtime/transport/run-resources.ts';
import { readSlot } from '../../runtime/transport/slots.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { chromiumPath, HEADLESS_ARGS } from '../support/chromium.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
/** Guards against a hang, not speed limits: on a loaded 2-core machine a step of this run can take seconds. */
const PATIENCE_MS = 120_000;

interface Dashboard {
  readonly url: string;
  readonly proc: ChildProcess;
  stop(): Promise<void>;
}

/** `caravan dashboard` on a free port; resolves once it says where it serves. */
async function startDashboard(args: string[]): Promise<Dashboard> {
  const proc = spawn(process.execPath, ['--import=tsx', 'runtime/cli/bin.ts', 'dashboard', '--port', '0', ...args], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, CARAVAN_LOG_LEVEL: 'warn' } });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  let err = '';
  const url = await new Promise<string>((resolve, reject) => {
    proc.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = / at (http:\/\/\S+) /.exec(err);
      if (m) resolve(m[1]);
    });
    void exited.then(() => reject(new Error(`caravan dashboard exited: ${err.trim()}`)));
  });
  return { url, proc, stop: async () => { proc.kill('SIGTERM'); await exited; } };
}

async function openPage(url: string) {
  const browser = await chromium.launch({ executablePath: chromiumPath(), args: HEADLESS_ARGS.filter((a) => a !== '--headless') });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  await page.goto(url);
  return { browser, page };
}

const count = (page: Page, selector: string) => page.locator(selector).count();
const lossPoints = (page: Page) => page.evaluate(() => Number(document.querySelector('#loss-chart polyline.train')?.getAttribute('data-points') ?? 0));

/** SIGKILLs the host holding (replica, stage); returns its id. */
async function killHolder(url: string, run: string, replica: number, stage: number): Promise<string> {
  const nc = await connect({ servers: url });
  try {
    const slot = await readSlot((await openExistingRun(nc, run, url)).kv, replica, stage);
    process.kill(Number(/-(\d+)$/.exec(slot!.record.host)![1]), 'SIGKILL');
    return slot!.record.host;
  } finally {
    await nc.close();
  }
}

test.serial('the page follows a running run: curves, the slot table, a killed host and its replacement, validation loss and the timeline', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-dashboard-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // The hosts trace every microbatch into a span file, as `caravan train --trace-file` has them do.
  const spans = join(dir, 'spans.jsonl');
  const receiver = await startSpanFileReceiver(spans);
  t.teardown(() => receiver.close());
  Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_TRACES_SAMPLER_ARG: '1', OTEL_METRICS_EXPORTER: 'none' });

  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { microbatches: 2, seqLen: 32, batchSize: 2, steps: 40, stages: 2, replicas: 1, checkpointEvery: 4 } } });
  let dashboard: Dashboard | undefined;
  let browser: Awaited<ReturnType<typeof openPage>>['browser'] | undefined;
  t.teardown(async () => { await browser?.close(); await dashboard?.stop(); });
  let page!: Page;
  let watched: Promise<void> = Promise.resolve();
  let killed = '';
  let bannerAtEnd = true;
  const shot = process.env.CARAVAN_DASHBOARD_SCREENSHOT ?? join(dir, 'dashboard.png');

  const summary = await trainDistributed({
    config, run: 'watched', log: createLogger('test', 'silent'), standbys: 1, heartbeatTimeoutMs: 4000, hostsMayBeKilled: true,
    // Before any host starts: the dashboard is up and its page open.
    onReady: async ({ url, run }) => {
      dashboard = await startDashboard(['--nats', url, '--run', run, '--trace-file', spans, '--validate-batches', '2']);
      ({ browser, page } = await openPage(dashboard.url));
      // The run's streams and bucket exist (its coordinator has not started yet): the page shows it, with nothing to warn about.
      await page.waitForFunction(() => document.body.dataset.updated && document.getElementById('banner')?.style.display === 'none', undefined, { timeout: PATIENCE_MS });
      watched = (async () => {
        await page.waitForFunction(() => document.querySelectorAll('#slots tbody tr').length === 2, undefined, { timeout: PATIENCE_MS });
        await page.waitForFunction(() => Number(document.querySelector('#loss-chart polyline.train')?.getAttribute('data-points') ?? 0) >= 2, undefined, { timeout: PATIENCE_MS });
        const before = await lossPoints(page);
        killed = await killHolder(url, run, 0, 1);
        await page.waitForSelector('#events li[data-kind="host_lost"]', { timeout: PATIENCE_MS });
        await page.waitForSelector('#events li[data-kind="slot_reassigned"]', { timeout: PATIENCE_MS });
        await page.waitForFunction((p) => Number(document.querySelector('#loss-chart polyline.train')?.getAttribute('data-points') ?? 0) > p, before, { timeout: PATIENCE_MS });
      })();
    },
    onFinished: async () => {
      await watched;
      await page.waitForFunction(() => document.getElementById('status')?.textContent === 'finished', undefined, { timeout: PATIENCE_MS });
      await page.waitForSelector('#loss-chart circle.validation', { timeout: PATIENCE_MS });
      // The timeline redraws as the trace file grows: at the end it reaches the last step.
      await page.frameLocator('#timeline').locator(`rect[data-kind="forward"][data-step="${config.training.steps - 1}"]`).first().waitFor({ timeout: PATIENCE_MS });
      // While NATS is still up (it stops when the run's driver returns, and the page would say so).
      await page.waitForFunction(() => Date.now() - Number(document.body.dataset.updated) < 5_000, undefined, { timeout: PATIENCE_MS });
      bannerAtEnd = await page.locator('#banner').isVisible();
      await mkdir(dirname(shot), { recursive: true });
      await page.screenshot({ path: shot, fullPage: true });
    },
  });

  t.regex(killed, /-\d+$/, 'a host was killed');
  t.true(summary.recoveries.slots_reassigned >= 1, JSON.stringify(summary.recoveries));
  t.is(await lossPoints(page), 40, 'every committed step is on the curve');
  // The cells of every row in one read: the page redraws the table as the run's state changes, and a row read
  // after its redraw is detached (its innerText then runs the cells together, as a CI run once saw).
  const rows = await page.locator('#slots tbody').evaluate((body) => [...(body as HTMLTableSectionElement).rows].map((r) => [...r.cells].map((c) => c.textContent ?? '').join('\t')));
  t.is(rows.length, 2);
  t.regex(rows[1], /^0\t1\tvm-\d+\t2\t/, `stage 1 is held by its second generation: ${rows[1]}`);
  t.true(rows.every((r) => !r.includes(killed)), 'the killed host holds nothing');
  const events = await page.locator('#events li').allInnerTexts();
  t.true(events.some((e) => e.includes(`host ${killed} lost`) && e.includes('slot 0.1')), events.join('\n'));
  t.true((await count(page, '#event-axis circle.event.host_lost')) >= 1, 'the loss is on the time axis');
  t.true((await count(page, '#loss-chart circle.validation')) >= 1, 'validation loss after the run');
  t.regex(await page.locator('#stage-chart').innerHTML(), /stage-bar[\s\S]*stage-bar/, 'a bar per stage');
  t.regex(await page.locator('#bubble').innerText(), /bubble \d+\.\d% \(zb-h2 bound \d+\.\d%\), whole run/);
  t.false(bannerAtEnd, 'nothing to warn about while the run was there');
  t.log(`screenshot: ${shot}`);
});

test.serial('without the run, and without NATS, the page says what it is showing', async (t) => {
  const server = await startNatsServer();
  let nats: typeof server | undefined = server;
  t.teardown(() => nats?.stop());
  const dashboard = await startDashboard(['--nats', server.url, '--run', 'nobody', '--validate-batches', '0']);
  t.teardown(() => dashboard.stop());
  const { browser, page } = await openPage(dashboard.url);
  t.teardown(() => browser.close());
  await page.waitForFunction(() => /No run nobody on nats:\/\/.*waiting for it to be created/.test(document.getElementById('banner')?.textContent ?? ''), undefined, { timeout: PATIENCE_MS });
  t.is(await page.locator('#status').innerText(), 'no such run');
  const snapshot = await (await fetch(new URL('snapshot.json', dashboard.url))).json() as { known: boolean; nats: { error: string } };
  t.false(snapshot.known);
  t.regex(snapshot.nats.error, /no run 'nobody'/);
  // Read-only.
  t.is((await fetch(dashboard.url, { method: 'POST' })).status, 405);
  await server.stop();
  nats = undefined;
  await page.waitForFunction(() => /cannot reach NATS|No run nobody/.test(document.getElementById('banner')?.textContent ?? ''), undefined, { timeout: PATIENCE_MS });
  // The dashboard itself gone: the page keeps what it showed and says so.
  await dashboard.stop();
  await page.waitForFunction(() => /The dashboard server does not answer/.test(document.getElementById('banner')?.textContent ?? ''), undefined, { timeout: PATIENCE_MS });
  t.is(await page.locator('#status').innerText(), 'no such run', 'what it showed last stays');
});
