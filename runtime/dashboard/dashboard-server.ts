// `caravan dashboard`'s web server: the page, the run's snapshot as JSON, and
// (with a trace file) the pipeline timeline of the last few steps. Read-only:
// GET and HEAD only. It binds to loopback unless told otherwise: the page
// shows host names and slots, and has no login of its own.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readSpanFile, type SpanRecord } from '../telemetry/span-file.ts';
import { buildTimeline, timelineHtml } from '../telemetry/timeline.ts';
import { dashboardHtml } from './dashboard-page.ts';
import type { RunWatch } from './run-watch.ts';

export interface DashboardServer {
  readonly url: string;
  close(): Promise<void>;
}

/** How many of the latest steps the timeline draws: enough to see the steady state, few enough to read. */
const TIMELINE_STEPS = 3;

export async function serveDashboard(o: { watch: RunWatch; run: string; port: number; host: string; traceFile?: string }): Promise<DashboardServer> {
  const page = dashboardHtml(o.run);
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://dashboard').pathname;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('the dashboard is read-only\n');
      return;
    }
    const send = (status: number, type: string, body: string) => {
      res.writeHead(status, { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (path === '/') send(200, 'text/html', page);
    else if (path === '/snapshot.json') send(200, 'application/json', JSON.stringify(o.watch.snapshot()));
    else if (path === '/timeline') {
      if (!o.traceFile) { send(404, 'text/plain', 'no trace file: start the dashboard with --trace-file (the file caravan train --trace-file writes)\n'); return; }
      recentTimeline(o.traceFile, o.run).then((html) => send(200, 'text/html', html), (err: Error) => send(200, 'text/html', `<p>No timeline yet: ${err.message.replace(/[&<>"]/g, '')}</p>`));
    } else send(404, 'text/plain', `no such page: ${path}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`the dashboard cannot listen on ${o.host}:${o.port}: ${err.code ?? err.message}`)));
    server.listen(o.port, o.host, resolve);
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}/`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

/** The timeline of the run's last TIMELINE_STEPS steps in the trace file. */
async function recentTimeline(file: string, run: string): Promise<string> {
  const spans = await readSpanFile(file, { growing: true });
  const stepOf = (s: SpanRecord) => Number(s.attributes['caravan.step']);
  const steps = spans.map(stepOf).filter(Number.isFinite);
  if (!steps.length) throw new Error(`${file} holds no step spans yet`);
  const last = Math.max(...steps);
  const recent = spans.filter((s) => stepOf(s) > last - TIMELINE_STEPS);
  return timelineHtml(buildTimeline(recent), `${run}: steps ${Math.max(0, last - TIMELINE_STEPS + 1)}–${last}`);
}
