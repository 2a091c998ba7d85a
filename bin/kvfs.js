#!/usr/bin/env node
// The kvfs command. The TypeScript sources in bin/ and lib/ are compiled to dist/ by `npm ci`
// (the "prepare" script) or `npm run build`.
'use strict';
let cli;
try {
  cli = require('../dist/bin/cli.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && /dist[\\/]bin[\\/]cli/.test(err.message)) {
    console.error('kvfs: not built yet; run npm ci (or npm run build) in ' + require('path').resolve(__dirname, '..'));
    process.exit(1);
  }
  throw err;
}
cli.main(process.argv.slice(2));
