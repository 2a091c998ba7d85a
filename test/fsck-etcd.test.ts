import test from 'ava';
import { fsckSuite } from './_suites/repair';
fsckSuite(test, 'etcd');
