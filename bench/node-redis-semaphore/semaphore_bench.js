// The redis-semaphore peer of keylock_bench_redis: `concurrency` concurrent loops in one Node
// process, each acquiring one permit of a limit-8 semaphore through npm `redis-semaphore`'s
// `Semaphore` over one ioredis client and releasing it at once, for `ms` milliseconds.
//   mode `distinct`: every acquisition on a key of its own (no waiting);
//   mode `one`: every loop on ONE key, so 8 hold and the rest wait (redis-semaphore polls every
//   `retryInterval` ms, its default 10 unless given).
// Prints acquire + release pairs per second, the acquisitions, and the Redis commands it sent per
// acquisition (EVALSHA of the acquire script, ZREM of the release, and every polling retry).
//
//   node semaphore_bench.js PORT CONCURRENCY MS distinct|one [RETRY_INTERVAL_MS]
'use strict';
const Redis = require('ioredis');
const { Semaphore } = require('redis-semaphore');

const [port, concurrency, ms] = process.argv.slice(2, 5).map(Number);
const mode = process.argv[5] || 'distinct';
const retry = process.argv[6] === undefined ? {} : { retryInterval: Number(process.argv[6]) };
const client = new Redis({ host: '127.0.0.1', port });
// Commands this client sends, counted as ioredis sends them: its release is a plain ZREM, which
// INFO commandstats cannot tell from the ZREMs scripts run inside the server.
let issued = 0;
let counting = false;
const send = client.sendCommand.bind(client);
client.sendCommand = (command, ...rest) => {
  if (counting) ++issued;
  return send(command, ...rest);
};

let pairs = 0;
let stop = false;
async function loop(id) {
  const options = { lockTimeout: 30000, acquireTimeout: 30000, ...retry };
  for (let i = 0; !stop; ++i) {
    const key = mode === 'one' ? 'rs-one' : `rs-${id}-${i}`;
    const sem = new Semaphore(client, key, 8, options);
    await sem.acquire();
    await sem.release();
    ++pairs;
  }
}

client.once('ready', async () => {
  // The scripts are loaded first, so that the counted window has no NOSCRIPT fall-backs.
  const warm = new Semaphore(client, 'rs-warm', 8);
  await warm.acquire();
  await warm.release();
  counting = true;
  const start = process.hrtime.bigint();
  setTimeout(() => { stop = true; }, ms);
  await Promise.all(Array.from({ length: concurrency }, (_, id) => loop(id)));
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  counting = false;
  console.log(`${Math.round(pairs / secs)} ${pairs} ${(issued / Math.max(pairs, 1)).toFixed(2)}`);
  client.quit();
}).on('error', (err) => {
  console.error(String(err));
  process.exit(1);
});
