// A failure line's frames say where the error was made: for an error that a
// reader's prefix wrapped (`step control: …`), the frames of the one it wraps,
// with caravan's files named relative to the checkout.
import test from 'ava';
import { errorFrames } from '../../runtime/log.ts';
import { decodeStepControl } from '../../schemas/control-messages.ts';

test('errorFrames names where the innermost cause was made, caravan files relative to the checkout', (t) => {
  let inner: Error | undefined;
  try {
    decodeStepControl(new TextEncoder().encode('{"type":"open"}'), 'step control (control log seq 9)');
  } catch (err) {
    inner = err as Error;
  }
  t.truthy(inner, 'a step control without its step is refused');
  const wrapped = new Error(`step control: ${inner!.message}`, { cause: inner });
  const frames = errorFrames(wrapped);
  t.regex(frames, /^ \[at .*\(schemas\/[a-z-]+\.ts:\d+\)/, frames);
  t.is(frames, errorFrames(inner), 'the wrapper adds no frames of its own');
  t.is(errorFrames('not an error'), '');
});
