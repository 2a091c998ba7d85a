import test from 'ava';
import { randomSuite } from './_suites/random';
randomSuite(test, 'embedded');
