// Run configs: a preset, a YAML, TOML or JSON file over it, flags over both,
// and one clear line for anything wrong.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { preset } from '../../runtime/config/presets.ts';

async function withFile(name: string, text: string, f: (path: string) => Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-config-'));
  try {
    await writeFile(join(dir, name), text);
    await f(join(dir, name));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('YAML, TOML and JSON files override the preset, and flags override the file', async (t) => {
  const yaml = 'preset: tiny\nmodel: { nLayers: 8 }\ntraining: { stages: 4, steps: 30 }\noptim: { lr: 0.002 }\n';
  const toml = 'preset = "tiny"\n[model]\nnLayers = 8\n[training]\nstages = 4\nsteps = 30\n[optim]\nlr = 0.002\n';
  const json = JSON.stringify({ preset: 'tiny', model: { nLayers: 8 }, training: { stages: 4, steps: 30 }, optim: { lr: 0.002 } });
  for (const [name, text] of [['run.yaml', yaml], ['run.toml', toml], ['run.json', json]] as const) {
    await withFile(name, text, async (file) => {
      const c = await loadRunConfig({ file, overrides: { training: { steps: 12 } } });
      t.is(c.model.nLayers, 8, name);
      t.is(c.model.dModel, preset('tiny').model.dModel, `${name}: the rest comes from the preset`);
      t.is(c.training.stages, 4);
      t.is(c.training.steps, 12, 'the flag wins');
      t.is(c.optim.lr, 0.002);
      t.is(c.optim.totalSteps, 12, 'the schedule ends with the run');
    });
  }
});

test('bad configs fail with one line naming the problem', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    ['bad.yaml', 'training: { stages: 9 }', /training\.stages 9 exceeds model\.nLayers 4/],
    ['bad2.yaml', 'training: { steps: -3 }', /training\.steps must be a positive integer, got -3/],
    ['bad3.yaml', 'model: { nHeads: 5 }', /dModel 128 is not divisible by nHeads 5/],
    ['bad4.yaml', 'trainign: { steps: 3 }', /unknown section trainign/],
    ['bad5.toml', 'preset = ', /is not valid TOML/],
    ['bad6.yaml', 'preset: huge', /unknown preset 'huge'/],
    ['bad7.yaml', 'training: { tokenizer: bpe }', /training\.tokenizer must be 'byte' or 'gpt2'/],
  ];
  for (const [name, text, message] of cases) {
    await withFile(name, text, async (file) => {
      const err = await t.throwsAsync(loadRunConfig({ file }));
      t.regex(err!.message, message, name);
      t.false(err!.message.includes('\n'), 'one line');
    });
  }
  await t.throwsAsync(loadRunConfig({ file: '/nonexistent/run.yaml' }), { message: /cannot read config \/nonexistent\/run\.yaml: ENOENT/ });
});
