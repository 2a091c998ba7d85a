import test from 'ava';
import { cliSuite } from './_suites/posix';
cliSuite(test, 'embedded');
