// The node-redlock peer of keylock_bench_redis: `concurrency` concurrent loops in one Node
// process, each acquiring and releasing distinct keys through npm `redlock` over one ioredis
// client, for `ms` milliseconds. Prints lock + release pairs per second.
//
//   node redlock_bench.js PORT CONCURRENCY MS
'use strict';
const Redis = require('ioredis');
const Redlock = require('redlock').default;

const [port, concurrency, ms] = process.argv.slice(2).map(Number);
const client = new Redis({ host: '127.0.0.1', port });
// redlock's documented defaults for a single instance; keys are distinct, so no retries happen.
const redlock = new Redlock([client], { driftFactor: 0.01, retryCount: 10, retryDelay: 200, retryJitter: 200 });

let pairs = 0;
let stop = false;
async function loop(id) {
  for (let i = 0; !stop; ++i) {
    const lock = await redlock.acquire([`node-redlock-${id}-${i}`], 30000);
    await lock.release();
    ++pairs;
  }
}

client.once('ready', () => {
  const start = process.hrtime.bigint();
  setTimeout(() => { stop = true; }, ms);
  Promise.all(Array.from({ length: concurrency }, (_, id) => loop(id))).then(() => {
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    console.log(Math.round(pairs / secs));
    client.quit();
  }, (err) => {
    console.error(String(err));
    process.exit(1);
  });
});
