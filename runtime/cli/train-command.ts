// `caravan train`: a pipeline-parallel run over NATS JetStream — an embedded
// nats-server with the coordinator and one host per stage as child processes,
// or `--nats URL` for a real server — or `--in-process`, the stages chained in
// memory (the reference the pipeline must equal bit for bit).
import cliProgress from 'cli-progress';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { BridgeConfig, RunConfig } from '../../schemas/run-config.ts';
import { loadRunConfig } from '../config/load-run-config.ts';
import { createLogger, LOG_LEVELS } from '../log.ts';
import { PRESETS } from '../config/presets.ts';
import { trainDistributed, type Progress } from '../train/train-distributed.ts';
import { trainLocal } from '../train/train-local.ts';
import type { TokenizerName } from '../data/index.ts';
import { writeHfModel } from '../export/hf-llama.ts';
import { startSpanFileReceiver } from '../telemetry/span-file.ts';
import { statesFromRun } from '../export/run-stage-states.ts';
import { stitchStageStates, type StageStateBlob } from '../export/stitch-stages.ts';
import { auditRate, compressionOverrides, withCompressionOptions, withScheduleOptions, nonNegativeInt, positiveInt, positiveNumber, type RunShapeFlags } from './options.ts';

interface TrainFlags extends RunShapeFlags {
  seed?: number;
  stageLayers?: number[];
  auditRate?: number;
  lr?: number;
  tokenizer?: 'byte' | 'gpt2';
  data?: string;
  nats?: string;
  run?: string;
  standbys?: number;
  hostsPerProcess?: number;
  inProcess?: boolean;
  valEvery: number;
  checkpointDir?: string;
  checkpointEvery?: number;
  nonFinite?: 'stop' | 'skip-step';
  resume?: boolean;
  fromStates?: string;
  json?: boolean;
  progress: boolean;
  logLevel?: string;
  export?: string;
  traceFile?: string;
  device: 'cpu' | 'cuda';
  gpu: number;
  syncEvery?: number;
  outer?: 'nesterov' | 'average';
  outerLr?: number;
  outerMomentum?: number;
  bridgePayload?: 'mxint8' | 'fp32' | 'topk';
  topkFraction?: number;
  quorum?: number;
  syncTimeout?: number;
  startReplicas?: number;
  retireVacant?: number;
  resplitGain?: number;
}

function fraction(flag: string) {
  return (value: string): number => {
    const x = Number(value);
    if (!(x >= 0 && x < 1)) throw new InvalidArgumentError(`${flag} must be in [0, 1), got '${value}'`);
    return x;
  };
}

/** The Bridge settings given as flags (merged over a config file's training.bridge). */
function bridgeOverride(flags: TrainFlags): BridgeConfig | undefined {
  const given = { syncEvery: flags.syncEvery, outer: flags.outer, outerLr: flags.outerLr, outerMomentum: flags.outerMomentum, payload: flags.bridgePayload, topkFraction: flags.topkFraction, quorum: flags.quorum, timeoutMs: flags.syncTimeout, startReplicas: flags.startReplicas, retireVacantMs: flags.retireVacant };
  return Object.values(given).some((v) => v !== undefined) ? (given as BridgeConfig) : undefined;
}

async function exportModel(dir: string, blobs: StageStateBlob[], tokenizer: TokenizerName, run: string | undefined, log: (line: string) => void): Promise<void> {
  const sha = await writeHfModel(dir, stitchStageStates(blobs), { tokenizer, run });
  log(`exported the model to ${dir} (params sha256 ${sha.slice(0, 16)}…): try caravan generate --model ${dir} --prompt "Call me"`);
}

function progressReporter(config: RunConfig, flags: TrainFlags) {
  const steps = config.training.steps;
  const bar = flags.progress && process.stderr.isTTY && !flags.json
    ? new cliProgress.SingleBar({ format: 'step {value}/{total} |{bar}| loss {loss} | {tps} tok/s', hideCursor: true }, cliProgress.Presets.shades_classic)
    : undefined;
  const log = (line: string) => { if (!flags.json) process.stderr.write(`${line}\n`); };
  return {
    start: () => bar?.start(steps, 0, { loss: '-', tps: '-' }),
    step: (step: number, loss: number, tps: number) => {
      if (bar) bar.update(step + 1, { loss: loss.toFixed(4), tps: Math.round(tps) });
      else log(`step ${step + 1}/${steps} loss ${loss.toFixed(4)} ${Math.round(tps)} tok/s`);
    },
    pause: () => bar?.stop(),
    resume: (step: number) => bar?.start(steps, step, { loss: '-', tps: '-' }),
    stop: () => bar?.stop(),
    log,
  };
}

export function trainCommand(program: Command): void {
  withScheduleOptions(withCompressionOptions(program.command('train')))
    .description('train a model: over NATS JetStream with one host process per stage (embedded server by default), or --in-process')
    .option('--config <file>', 'run config (YAML, TOML or JSON): preset, model, optim, training')
    .addOption(new Option('--preset <name>', 'base settings').choices(Object.keys(PRESETS)))
    .option('--batch <n>', 'sequences per microbatch', positiveInt('--batch'))
    .option('--seq <n>', 'tokens per sequence', positiveInt('--seq'))
    .option('--seed <n>', 'seed for weights and data order', nonNegativeInt('--seed'))
    .option('--lr <x>', 'peak learning rate', positiveNumber('--lr'))
    .addOption(new Option('--tokenizer <name>', 'tokenizer for the bundled corpus').choices(['byte', 'gpt2']))
    .option('--data <file>', 'train on an llm.c / nanoGPT token shard instead of the bundled corpus')
    .addOption(new Option('--device <kind>', 'where the stages compute: cpu, or cuda (an NVIDIA GPU; every host, or the in-process run, uses --gpu)').choices(['cpu', 'cuda']).default('cpu'))
    .option('--gpu <n>', 'GPU index with --device cuda', nonNegativeInt('--gpu'), 0)
    .option('--nats <url>', 'use this NATS server or cluster instead of an embedded one')
    .option('--run <id>', 'run id (default: a new one)')
    .option('--standbys <n>', 'extra host processes that wait as standbys', nonNegativeInt('--standbys'))
    .option('--hosts-per-process <n>', '(NATS) hosts that share one process, each whole on the wire (`caravan host --count`); the weights do not depend on it', positiveInt('--hosts-per-process'))
    .option('--sync-every <n>', 'the Bridge: every n steps, each stage is synchronised across the replicas, all stages at once (DiLoCo)', positiveInt('--sync-every'))
    .addOption(new Option('--outer <kind>', "the Bridge's outer step: nesterov (SGD with Nesterov momentum on the mean pseudo-gradient) or average").choices(['nesterov', 'average']))
    .option('--outer-lr <x>', 'outer learning rate (default 0.7)', positiveNumber('--outer-lr'))
    .option('--outer-momentum <x>', 'outer Nesterov momentum, below 1 (default 0.9)', fraction('--outer-momentum'))
    .addOption(new Option('--bridge-payload <kind>', 'what replicas send: mxint8 pseudo-gradients (8 bits, a scale per 32), fp32 parameters, or topk: the largest pseudo-gradient entries with error feedback').choices(['mxint8', 'fp32', 'topk']))
    .option('--topk-fraction <x>', 'with --bridge-payload topk: the fraction of entries sent (default 0.01)', positiveNumber('--topk-fraction'))
    .option('--quorum <n>', 'fewest replicas a sync goes ahead with once --sync-timeout has passed (default: all that start)', positiveInt('--quorum'))
    .option('--sync-timeout <ms>', 'how long a sync waits past the first contribution for the rest (default 30000)', positiveInt('--sync-timeout'))
    .option('--start-replicas <n>', '(NATS, with the Bridge) replicas that start the run (default: all); each other replica joins at an outer step once its hosts wait as standbys (`caravan host --nats URL --run ID`)', positiveInt('--start-replicas'))
    .option('--retire-vacant <ms>', '(NATS, with the Bridge) retire a replica one of whose slots stays vacant this long (no standby, no host joined), so the others\' syncs stop waiting for it (default: wait for a host)', positiveInt('--retire-vacant'))
    .option('--in-process', 'chain the stages in this process, without NATS')
    .option('--val-every <n>', '(in-process) steps between validation passes', positiveInt('--val-every'), 50)
    .option('--checkpoint-dir <dir>', '(in-process) write stage checkpoints (safetensors) here')
    .option('--resplit-gain <x>', '(NATS; one replica, or several with the Bridge) once every holder has reported its speed, re-split the running run as those speeds call for if its slowest stage would get x times faster (training.resplitGain; default: never)', positiveNumber('--resplit-gain'))
    .option('--stage-layers <list>', 'layers per stage, comma-separated (training.stageLayers; default: as even as possible); the weights do not depend on it', (v: string) => v.split(',').map((x) => Number(x.trim())))
    .option('--checkpoint-every <n>', 'steps between stage checkpoints (to the Object Store; in-process to --checkpoint-dir); 0: none', nonNegativeInt('--checkpoint-every'))
    .addOption(new Option('--non-finite <policy>', 'a step whose gradients or loss are NaN/Inf: stop the run naming where they came from, or skip the step on every stage (default stop)').choices(['stop', 'skip-step']))
    .option('--resume', '(in-process) continue from the checkpoints in --checkpoint-dir')
    .option('--from-states <dir>', "(NATS) start from these stage states of one moment, from any split (an in-process run's checkpoints, `caravan repartition`'s output): re-sharded for this run's split, trained from their optimizer step on")
    .addOption(new Option('--log-level <level>', "child processes' log level on stderr").choices([...LOG_LEVELS]))
    .option('--trace-file <file>', "trace every microbatch into this file (JSON lines of spans) for `caravan timeline`; hosts export OTLP to this process")
    .option('--export <dir>', "at the end, export replica 0's model there (as `caravan export` does: transformers' Llama layout and ONNX)")
    .option('--audit-rate <x>', 'audit this fraction of each slot\'s checkpoint intervals by exact replay (training.audit; docs/security.md)', auditRate)
    .option('--json', 'print one JSON summary line at the end')
    .option('--no-progress', 'no progress bar')
    .action(async (flags: TrainFlags) => {
      let tokenizerVocab: number | undefined;
      if (flags.tokenizer === 'gpt2') tokenizerVocab = 50257;
      const compression = compressionOverrides(flags);
      const config = await loadRunConfig({
        file: flags.config,
        preset: flags.preset,
        compression: compression.compression,
        overrides: {
          model: tokenizerVocab ? { vocabSize: tokenizerVocab } : undefined,
          optim: { lr: flags.lr },
          training: {
            steps: flags.steps, stages: flags.stages, replicas: flags.replicas, microbatches: flags.microbatches, schedule: flags.schedule, stageLayers: flags.stageLayers, resplitGain: flags.resplitGain,
            batchSize: flags.batch, seqLen: flags.seq, seed: flags.seed, tokenizer: flags.tokenizer, dataFile: flags.data,
            checkpointEvery: flags.checkpointEvery, nonFinite: flags.nonFinite, bridge: bridgeOverride(flags), ...compression.training,
            ...(flags.auditRate !== undefined ? { audit: { rate: flags.auditRate } } : {}),
          },
        },
      });
      const t = config.training;
      const ui = progressReporter(config, flags);
      if (flags.inProcess) {
        if (flags.resume && !flags.checkpointDir) throw new Error('--resume needs --checkpoint-dir');
        if (flags.fromStates) throw new Error('--from-states starts a NATS run; in process, continue with --checkpoint-dir DIR --resume (`caravan repartition` re-shards for another split)');
        if (t.replicas > 1) throw new Error('--in-process trains one replica; use the NATS pipeline for --replicas > 1');
        if (t.bridge) throw new Error('--in-process has no Bridge: it runs with the NATS pipeline (leave out --in-process)');
        if (flags.traceFile) throw new Error('--trace-file traces the hosts of a NATS run; --in-process has none');
        ui.log(`caravan train (in process): ${config.model.nLayers} layers d=${config.model.dModel} V=${config.model.vocabSize} in ${t.stages} stages, ${t.steps} steps of ${t.microbatches}×${t.batchSize}×${t.seqLen} tokens`);
        ui.start();
        const summary = await trainLocal({
          ...config, valEvery: flags.valEvery, checkpointDir: flags.checkpointDir, resume: flags.resume, on: { device: flags.device, gpu: flags.gpu },
          onStep: (step, r, tps) => ui.step(step, r.loss, tps),
          onValidation: (step, loss) => { ui.pause(); ui.log(`validation at step ${step}: loss ${loss.toFixed(4)}`); if (step < t.steps) ui.resume(step); },
          onFinished: flags.export ? (stages) => exportModel(flags.export!, stages.map((s, i) => ({ source: `stage ${i}`, bytes: s.state() })), t.tokenizer, undefined, ui.log) : undefined,
        });
        ui.stop();
        const out = { steps: summary.steps, losses: summary.losses, final_loss: summary.finalLoss, val_loss: summary.valLoss, tokens_per_s: summary.tokensPerSecond, params_sha256: summary.paramsSha256, stages: t.stages, replicas: 1, mode: 'in-process' };
        if (flags.json) process.stdout.write(`${JSON.stringify(out)}\n`);
        else ui.log(`done: loss ${summary.firstLoss.toFixed(3)} → ${summary.finalLoss.toFixed(3)} (ln V = ${summary.lnVocab.toFixed(3)}), validation ${summary.valLoss.toFixed(3)}, ${Math.round(summary.tokensPerSecond)} tok/s, params sha256 ${summary.paramsSha256.slice(0, 16)}…`);
        return;
      }
      ui.log(`caravan train: ${config.model.nLayers} layers d=${config.model.dModel} V=${config.model.vocabSize} in ${t.stages} stages × ${t.replicas} replica(s)${t.bridge && t.bridge.startReplicas < t.replicas ? ` (${t.bridge.startReplicas} starting; the others join once ${t.stages} hosts each wait as standbys)` : ''} over NATS (${flags.nats ?? 'embedded nats-server'}), ${t.steps} steps of ${t.microbatches}×${t.batchSize}×${t.seqLen} tokens`);
      let started = false;
      const receiver = flags.traceFile ? await startSpanFileReceiver(flags.traceFile) : undefined;
      if (receiver) {
        // The host processes inherit these: every microbatch is traced, to this process.
        // The file takes traces only: the coordinator's metrics stay off.
        Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_TRACES_SAMPLER_ARG: '1', OTEL_METRICS_EXPORTER: 'none' });
        delete process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
      }
      const summary = await trainDistributed({
        config, nats: flags.nats, run: flags.run, standbys: flags.standbys, hostsPerProcess: flags.hostsPerProcess, childLogLevel: flags.logLevel, device: flags.device, gpu: flags.gpu, fromStates: flags.fromStates,
        log: createLogger('caravan-train', 'warn'),
        onProgress: (p: Progress) => {
          if (p.replica !== 0) return;
          if (!started) { ui.start(); started = true; }
          ui.step(p.step, p.loss ?? NaN, p.tokensPerSecond);  // null: not finite (a skipped step)
        },
        onFinished: flags.export
          ? async ({ url, run }) => exportModel(flags.export!, (await statesFromRun(url, run, 0)).blobs, t.tokenizer, run, (line) => { ui.stop(); ui.log(line); })
          : undefined,
      });
      ui.stop();
      if (receiver) {
        await receiver.close();
        ui.log(`${receiver.spans()} spans in ${flags.traceFile}: caravan timeline --trace-file ${flags.traceFile} --out timeline.html`);
      }
      if (flags.json) process.stdout.write(`${JSON.stringify({ ...summary, mode: 'nats' })}\n`);
      else ui.log(`done: loss ${(summary.losses[0] ?? NaN).toFixed(3)} → ${(summary.final_loss ?? NaN).toFixed(3)}, ${Math.round(summary.tokens_per_s)} tok/s, ${summary.dead_letters} dead-lettered frames, params sha256 ${summary.params_sha256.slice(0, 16)}… (run ${summary.run})`);
    });
}
