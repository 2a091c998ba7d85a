// The randomized comparison under a tiny block cache and dirty limit, with 64 KiB blocks and a
// short flush interval, so that cache eviction, background commits and writer back-pressure all
// happen during the run.
import test from 'ava';
import { randomSuite } from './_suites/random';
randomSuite(test, 'etcd', {
  seeds: [11, 12],
  formatArgs: ['--block-size', '64K'],
  mountArgs: ['--cache-size', '256K', '--max-dirty', '1M', '--flush-interval', '0.2'],
});
