import test from 'ava';
import { posixSuite } from './_suites/posix';
posixSuite(test, 'embedded');
