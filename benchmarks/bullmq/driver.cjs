#!/usr/bin/env node
// The BullMQ anchor of jobq's benchmark suite, driven through BullMQ's own API.
//
//   node driver.cjs control                      one JSON command per stdin line, one JSON answer
//                                                per stdout line (see COMMANDS below)
//   node driver.cjs worker --concurrency C [--latency]
//                                                a BullMQ Worker running a no-op job; prints
//                                                READY once connected, and on SIGTERM closes and
//                                                prints STOPPED with the latencies it saw
//
// Redis is on 127.0.0.1:$BULLMQ_REDIS_PORT (the benchmark starts its own redis-server).
// Times are Unix seconds with sub-millisecond digits (performance.timeOrigin + now(): Date.now()
// has whole milliseconds), the clock the benchmark's Python side reads too.
'use strict';

const readline = require('node:readline');
const { Queue, Worker } = require('bullmq');

const QUEUE = 'bench';
const READY = 'bullmq-worker ready';
const STOPPED = 'bullmq-worker stopped';

function connection() {
  const port = Number(process.env.BULLMQ_REDIS_PORT);
  if (!port) throw new Error('BULLMQ_REDIS_PORT is not set');
  // A Worker's blocking connection needs maxRetriesPerRequest null.
  return { host: '127.0.0.1', port, maxRetriesPerRequest: null };
}

const seconds = () => (performance.timeOrigin + performance.now()) / 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function addInBatches(queue, count, batch) {
  for (let done = 0; done < count; done += batch) {
    const size = Math.min(batch, count - done);
    await queue.addBulk(Array.from({ length: size }, () => ({ name: 'noop', data: {} })));
  }
}

const COMMANDS = {
  // Everything of the queue removed: the emptied tables of the PostgreSQL systems.
  async obliterate(queue) {
    await queue.obliterate({ force: true });
    return {};
  },
  // `n` jobs in addBulk calls of `batch`; timed.
  async bulk(queue, { n, batch }) {
    const started = seconds();
    await addInBatches(queue, n, batch);
    return { seconds: seconds() - started };
  },
  // `n` jobs, one `add` after the other, from this one client; timed.
  async single(queue, { n }) {
    const started = seconds();
    for (let i = 0; i < n; i++) await queue.add('noop', {});
    return { seconds: seconds() - started };
  },
  // `n` jobs one by one at `rate` per second on a fixed schedule, each carrying the time just
  // before its `add` (the worker subtracts it from its own start time).
  async arrive(queue, { n, rate }) {
    const started = seconds();
    for (let i = 0; i < n; i++) {
      const delay = started + i / rate - seconds();
      if (delay > 0) await sleep(delay * 1000);
      await queue.add('noop', { t: seconds() });
    }
    return { seconds: seconds() - started };
  },
  async pause(queue) {
    await queue.pause();
    return {};
  },
  // The start signal of a drain: the time just before the resume.
  async resume(queue) {
    const at = seconds();
    await queue.resume();
    return { at };
  },
  async counts(queue) {
    return queue.getJobCounts('completed', 'failed', 'active', 'waiting', 'paused',
      'delayed', 'prioritized');
  },
  // When the last job finished (its finishedOn, written by the worker that completed it).
  async last_finished(queue) {
    const [job] = await queue.getJobs(['completed'], 0, 0, false);
    return { at: job ? job.finishedOn / 1000 : null };
  },
};

async function control() {
  const queue = new Queue(QUEUE, { connection: connection() });
  await queue.waitUntilReady();
  const answer = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
  answer({ ready: true });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.op === 'quit') break;
    const run = COMMANDS[command.op];
    try {
      if (!run) throw new Error(`unknown command ${command.op}`);
      answer({ ok: true, ...(await run(queue, command)) });
    } catch (error) {
      answer({ ok: false, error: String((error && error.stack) || error) });
    }
  }
  await queue.close();
  process.exit(0);
}

async function worker(args) {
  const at = args.indexOf('--concurrency');
  const concurrency = at >= 0 ? Number(args[at + 1]) : 1;
  const latency = args.includes('--latency');
  const latencies = [];
  const handler = latency
    ? async (job) => { latencies.push(seconds() - job.data.t); }
    : async () => {};
  const w = new Worker(QUEUE, handler, { connection: connection(), concurrency });
  w.on('error', (error) => console.error('worker error:', error));
  await w.waitUntilReady();
  console.log(READY);
  let stopping = false;
  process.on('SIGTERM', async () => {
    if (stopping) return;
    stopping = true;
    await w.close();
    console.log(STOPPED, JSON.stringify({ latencies }));
    process.exit(0);
  });
}

const [mode, ...rest] = process.argv.slice(2);
const main = { control, worker }[mode];
if (!main) {
  console.error('usage: node driver.cjs control | worker --concurrency C [--latency]');
  process.exit(2);
}
main(rest).catch((error) => {
  console.error((error && error.stack) || error);
  process.exit(1);
});
