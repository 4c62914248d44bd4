// Which JetStream errors a durable publish (and any retried JetStream
// operation) waits out, and which it passes on at once: the server's own
// wording, as nats.js reports it.
import test from 'ava';
import { isTransient } from '../../runtime/transport/durable-publish.ts';

const error = (message: string, name = 'Error') => Object.assign(new Error(message), { name });

test('a server or leader in transition is waited out', (t) => {
  for (const message of [
    'TIMEOUT', 'no responders', 'JetStream system temporarily unavailable', 'stream is offline: no leader',
    'jetstream is not enabled', 'insufficient resources', 'CONNECTION_CLOSED',
    // An earlier attempt under the same Nats-Msg-Id is still being stored (a 3-server chaos run failed on it after a
    // server's routes healed): the next attempt gets the duplicate's ack.
    'duplicate message id is in process',
    // A consumer made again under the name of one still being deleted (CI once failed a run on it).
    'error creating store for consumer',
  ]) t.true(isTransient(error(message)), message);
});

test('a refused message is passed on at once', (t) => {
  for (const message of ['message size exceeds maximum allowed', 'wrong last sequence: 4', 'Permissions Violation for Publish to "x"', 'maximum payload exceeded']) {
    t.false(isTransient(error(message)), message);
  }
});
