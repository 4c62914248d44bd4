// `caravan export`, `caravan eval` and `caravan generate`: from a run's stage
// states to one model in transformers' Llama layout, and what can be done
// with it here (validation loss, text from onnxruntime).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { TOKENIZER_NAMES, type TokenizerName } from '../data/index.ts';
import { evalExported } from '../export/eval-model.ts';
import { exportedFromStitched, readExportedModel, writeHfModel } from '../export/hf-llama.ts';
import { statesFromCheckpointDir, statesFromRun } from '../export/run-stage-states.ts';
import { stitchStageStates } from '../export/stitch-stages.ts';
import { validateRunId } from '../transport/subjects.ts';
import { nonNegativeInt, positiveInt } from './options.ts';

function fraction(flag: string, { open = false } = {}) {
  return (value: string): number => {
    const x = Number(value);
    if (!Number.isFinite(x) || x < 0 || (open ? x > 1 || x === 0 : false)) throw new InvalidArgumentError(`${flag} must be ${open ? 'in (0, 1]' : 'a non-negative number'}, got '${value}'`);
    return x;
  };
}

export function modelCommands(program: Command): void {
  program
    .command('export')
    .description("stitch a run's stage states into one model: model.safetensors + config.json that transformers loads as LlamaForCausalLM, and model.onnx (with a KV cache) for onnxruntime")
    .requiredOption('--out <dir>', 'directory to write')
    .option('--checkpoint-dir <dir>', 'an in-process run\'s checkpoints (stage-<a>-<b>.safetensors)')
    .option('--nats <url>', "a NATS run's server: its final states from the Object Store")
    .option('--run <id>', 'with --nats: the run id')
    .option('--replica <n>', 'with --nats: which replica', nonNegativeInt('--replica'), 0)
    .option('--nkey <file>', 'with --nats: authenticate as this nkey user (an observer seed from `caravan creds`)')
    .addOption(new Option('--tokenizer <name>', 'with --checkpoint-dir: the tokenizer the run used (a NATS run records its own)').choices([...TOKENIZER_NAMES]).default('byte'))
    .option('--json', 'print one JSON line: where, what, params_sha256')
    .action(async (flags: { out: string; checkpointDir?: string; nats?: string; run?: string; replica: number; nkey?: string; tokenizer: TokenizerName; json?: boolean }) => {
      if (!!flags.checkpointDir === !!flags.nats) throw new Error('give exactly one source: --checkpoint-dir DIR or --nats URL --run ID');
      let blobs, tokenizer = flags.tokenizer, run: string | undefined;
      if (flags.nats) {
        if (!flags.run) throw new Error('--nats needs --run ID');
        validateRunId(flags.run);
        const fromRun = await statesFromRun(flags.nats, flags.run, flags.replica, flags.nkey);
        blobs = fromRun.blobs;
        tokenizer = fromRun.config.training.tokenizer;
        run = flags.run;
      } else {
        blobs = await statesFromCheckpointDir(flags.checkpointDir!);
      }
      const stitched = stitchStageStates(blobs);
      const sha = await writeHfModel(flags.out, stitched, { tokenizer, run });
      const summary = { out: flags.out, layers: stitched.model.nLayers, stages: blobs.length, tensors: stitched.tensors.length, optimizer_step: stitched.optimizerStep, tokenizer, params_sha256: sha };
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else process.stderr.write(`exported ${summary.tensors} tensors of ${summary.layers} layers from ${summary.stages} stage(s) at step ${summary.optimizer_step} to ${flags.out} (params sha256 ${sha.slice(0, 16)}…)\n`);
    });

  program
    .command('eval')
    .description('validation loss and perplexity of an exported model, or of a run\'s checkpoints, on the held-out split of the bundled corpus or a token shard')
    .option('--model <dir>', 'an exported model directory')
    .option('--checkpoint-dir <dir>', 'instead: an in-process run\'s checkpoints (stage-<a>-<b>.safetensors)')
    .addOption(new Option('--tokenizer <name>', 'with --checkpoint-dir: the tokenizer the run used').choices([...TOKENIZER_NAMES]).default('byte'))
    .option('--data <file>', 'an llm.c / nanoGPT token shard instead of the bundled corpus')
    .option('--batches <n>', 'validation batches (at most what the split holds)', positiveInt('--batches'), 16)
    .option('--batch <n>', 'sequences per batch', positiveInt('--batch'), 8)
    .option('--seq <n>', 'tokens per sequence (default: the model\'s maximum, at most 128)', positiveInt('--seq'))
    .option('--json', 'print one JSON line')
    .action(async (flags: { model?: string; checkpointDir?: string; tokenizer: TokenizerName; data?: string; batches: number; batch: number; seq?: number; json?: boolean }) => {
      if (!!flags.model === !!flags.checkpointDir) throw new Error('give exactly one of --model DIR or --checkpoint-dir DIR');
      const exported = flags.model
        ? await readExportedModel(flags.model)
        : exportedFromStitched(stitchStageStates(await statesFromCheckpointDir(flags.checkpointDir!)), flags.tokenizer);
      const seqLen = flags.seq ?? Math.min(exported.model.maxSeqLen, 128);
      const r = await evalExported(exported, { dataFile: flags.data, batches: flags.batches, batchSize: flags.batch, seqLen });
      if (flags.json) process.stdout.write(`${JSON.stringify({ model: flags.model ?? flags.checkpointDir, ...r })}\n`);
      else process.stdout.write(`val loss ${r.loss.toFixed(4)} (perplexity ${r.perplexity.toFixed(2)}) over ${r.tokens} tokens in ${r.batches} batches\n`);
    });

  program
    .command('generate')
    .description('generate text from an exported model with onnxruntime, streaming it to the terminal')
    .requiredOption('--model <dir>', 'an exported model directory')
    .requiredOption('--prompt <text>', 'text to continue')
    .option('--max-tokens <n>', 'tokens to generate', positiveInt('--max-tokens'), 200)
    .option('--temperature <x>', 'softmax temperature; 0 is greedy', fraction('--temperature'), 0.8)
    .option('--top-k <n>', 'sample from the k most likely tokens (0: all)', nonNegativeInt('--top-k'), 0)
    .option('--top-p <p>', 'sample from the smallest set holding this probability', fraction('--top-p', { open: true }), 1)
    .option('--seed <n>', 'sampling seed: the same seed gives the same text', nonNegativeInt('--seed'), 1)
    .option('--json', 'print one JSON line at the end instead of streaming')
    .action(async (flags: { model: string; prompt: string; maxTokens: number; temperature: number; topK: number; topP: number; seed: number; json?: boolean }) => {
      const exported = await readExportedModel(flags.model);
      const onnx = await readFile(join(flags.model, 'model.onnx')).catch(() => undefined);  // built from the safetensors when absent
      if (!flags.json) process.stdout.write(flags.prompt);
      // onnxruntime loads only for this command: hosts and training never need it.
      const { generateText } = await import('../export/generate-text.ts');
      const g = await generateText(exported, flags.prompt, {
        maxTokens: flags.maxTokens, temperature: flags.temperature, topK: flags.topK, topP: flags.topP, seed: flags.seed,
        onText: flags.json ? undefined : (delta) => process.stdout.write(delta),
      }, onnx);
      if (flags.json) process.stdout.write(`${JSON.stringify({ prompt: flags.prompt, text: g.text, tokens: g.tokens.length, tokens_per_s: g.tokens.length / g.seconds, seed: flags.seed })}\n`);
      else process.stdout.write('\n');
    });
}
