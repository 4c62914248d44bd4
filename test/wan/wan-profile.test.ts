// WAN profiles and plans, pure: the shipped us5 profile loads with every pair
// of datacenters; a plan gives each datacenter its namespace, veths and /24,
// and each non-hub datacenter a link at half its round trip to the hub; bad
// profiles and options are refused with a line naming what is wrong.
import test from 'ava';
import { loadWanProfile, planWan, rtt, validateWanProfile } from '../../runtime/wan/wan-profile.ts';

test('us5: five datacenters, symmetric round trips of a few tens of ms, Orion\'s access rates', async (t) => {
  const p = await loadWanProfile('us5');
  t.deepEqual(p.datacenters, ['us-east', 'us-central', 'us-west', 'us-south', 'us-la']);
  for (const a of p.datacenters) for (const b of p.datacenters) if (a !== b) {
    t.is(rtt(p, a, b), rtt(p, b, a));
    t.true(rtt(p, a, b) >= 10 && rtt(p, a, b) <= 100);
  }
  t.like(p, { hostUpMbit: 850, hostDownMbit: 1300 });
});

test('a plan: namespaces, veths and addresses per datacenter, a link to the hub at half the round trip', async (t) => {
  const plan = planWan(await loadWanProfile('us5'), { datacenters: 3, id: 'cv', subnet: 77, ports: [4222] });
  t.deepEqual(plan.datacenters.map((d) => [d.namespace, d.vethRoot, d.vethInside, d.rootIp, d.insideIp]), [
    ['cv-us-east', 'cv0r', 'cv0n', '10.77.0.1', '10.77.0.2'],
    ['cv-us-central', 'cv1r', 'cv1n', '10.77.1.1', '10.77.1.2'],
    ['cv-us-west', 'cv2r', 'cv2n', '10.77.2.1', '10.77.2.2'],
  ]);
  t.is(plan.hub, 'us-east');
  t.deepEqual(plan.links.map((l) => [l.from, l.listen.host, l.target.host, l.forward.delayMs]), [['us-central', '10.77.1.1', '10.77.0.2', 15], ['us-west', '10.77.2.1', '10.77.0.2', 35]]);
  t.deepEqual(plan.endpoints, { 'us-east': { 4222: '10.77.0.2:4222' }, 'us-central': { 4222: '10.77.1.1:4222' }, 'us-west': { 4222: '10.77.2.1:4222' } });
  t.is(planWan(await loadWanProfile('us5'), { datacenters: 3, id: 'cv', subnet: 77, ports: [4222], hub: 'us-west' }).links.length, 2);
});

test('bad profiles and options are refused naming what is wrong', async (t) => {
  const base = { name: 'x', datacenters: ['a', 'b', 'c'], rtt_ms: { a: { b: 10, c: 20 }, b: { c: 30 } }, jitter_ms: 0, host_up_mbit: 100, host_down_mbit: 100 };
  t.notThrows(() => validateWanProfile(base, 'x.yaml'));
  t.throws(() => validateWanProfile({ ...base, rtt_ms: { a: { b: 10, c: 20 } } }, 'x.yaml'), { message: 'WAN profile x.yaml: rtt_ms has no round-trip time for b–c' });
  t.throws(() => validateWanProfile({ ...base, rtt_ms: { ...base.rtt_ms, d: { a: 1 } } }, 'x.yaml'), { message: "WAN profile x.yaml: rtt_ms names 'd', which is not in datacenters" });
  t.throws(() => validateWanProfile({ ...base, rtt_ms: { a: { b: -1, c: 20 }, b: { c: 30 } } }, 'x.yaml'), { message: 'WAN profile x.yaml: rtt_ms.a.b must be a positive number of ms, got -1' });
  t.throws(() => validateWanProfile({ ...base, host_up_mbit: 0 }, 'x.yaml'), { message: 'WAN profile x.yaml: host_up_mbit must be a number >= 1, got 0' });
  t.throws(() => validateWanProfile({ ...base, datacenters: ['a', 'a'] }, 'x.yaml'), { message: 'WAN profile x.yaml: datacenters has a name twice' });
  await t.throwsAsync(loadWanProfile('nope'), { message: /WAN profile .*deploy\/wan\/nope\.yaml: no such file/ });
  const p = validateWanProfile(base, 'x.yaml');
  t.throws(() => planWan(p, { datacenters: 4, id: 'cv', subnet: 77, ports: [4222] }), { message: '--datacenters 4: profile x has 3 (1-3)' });
  t.throws(() => planWan(p, { datacenters: 2, id: 'Bad-Id', subnet: 77, ports: [4222] }), { message: /WAN id 'Bad-Id' must be 1-6 lowercase letters/ });
  t.throws(() => planWan(p, { datacenters: 2, id: 'cv', subnet: 300, ports: [4222] }), { message: /subnet 300 must be 0-255/ });
  t.throws(() => planWan(p, { datacenters: 2, id: 'cv', subnet: 77, ports: [4222], hub: 'c' }), { message: '--hub c is not one of a, b' });
});

test('a mesh plan (one NATS server per datacenter): a link from every datacenter to every other, each way at half the round trip, every datacenter rate-limited', async (t) => {
  const us5 = await loadWanProfile('us5');
  const plan = planWan(us5, { datacenters: 3, id: 'cv', subnet: 77, ports: [], mesh: [7222] });
  t.is(plan.links.length, 6, 'every ordered pair');
  t.true(plan.datacenters.every((d) => d.limited), 'no datacenter holds the one broker, so none is exempt');
  const eastToWest = plan.links.find((l) => l.from === 'us-east' && l.to === 'us-west')!;
  t.deepEqual(eastToWest.listen, { host: '10.77.0.1', port: 7222 + 1 + 2 });
  t.deepEqual(eastToWest.target, { host: '10.77.2.2', port: 7222 });
  t.is(eastToWest.forward.delayMs, rtt(us5, 'us-east', 'us-west') / 2);
  t.is(plan.peers['us-east']['us-west'][7222], '10.77.0.1:7225');
  t.is(plan.peers['us-west']['us-east'][7222], '10.77.2.1:7223');
  t.deepEqual(plan.endpoints['us-east'], {});
  t.throws(() => planWan(us5, { datacenters: 3, id: 'cv', subnet: 77, ports: [7224], mesh: [7222] }), { message: /mesh port 7222 listens on 7223-7225, which takes port 7224/ });
  const hubPlan = planWan(us5, { datacenters: 3, id: 'cv', subnet: 77, ports: [4222] });
  t.deepEqual(hubPlan.datacenters.map((d) => d.limited), [false, true, true], 'with one broker, its datacenter is not limited');
});
