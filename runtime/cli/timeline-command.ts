// `caravan timeline`: the pipeline schedule of a traced run as one HTML page.
import { writeFile } from 'node:fs/promises';
import { Command } from 'commander';
import { readSpanFile } from '../telemetry/span-file.ts';
import { buildTimeline, timelineHtml } from '../telemetry/timeline.ts';

export function timelineCommand(program: Command): void {
  program
    .command('timeline')
    .description("draw a traced run's pipeline schedule (a row per replica and stage, a box per forward and backward, or its B and W halves) as a self-contained HTML page with the bubble fraction")
    .requiredOption('--trace-file <file>', 'spans written by caravan train --trace-file')
    .requiredOption('--out <file>', 'the HTML page to write')
    .option('--json', 'print one JSON line: bubble, the bound of the run\'s schedule, rows, boxes')
    .action(async (flags: { traceFile: string; out: string; json?: boolean }) => {
      const t = buildTimeline(await readSpanFile(flags.traceFile));
      await writeFile(flags.out, timelineHtml(t, `caravan timeline: ${flags.traceFile}`));
      const summary = {
        out: flags.out, rows: t.rows.length, boxes: t.boxes.filter((b) => b.kind !== 'queue' && !b.voided).length, transfers: t.transfers.length,
        span_ms: Math.round(t.spanMs), bubble: +t.bubble.toFixed(4), bubble_bound: +t.bubbleBound.toFixed(4), schedule: t.schedule, stages: t.stages, microbatches: t.microbatchesPerStep,
        voided_boxes: t.boxes.filter((b) => b.voided && b.kind !== 'queue').length,
      };
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else process.stderr.write(`wrote ${flags.out}: ${summary.rows} rows, ${summary.boxes} boxes, bubble ${(100 * t.bubble).toFixed(1)}% (${t.schedule} bound ${(100 * t.bubbleBound).toFixed(1)}%)\n`);
    });
}
