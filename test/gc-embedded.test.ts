import test from 'ava';
import { gcSuite } from './_suites/repair';
gcSuite(test, 'embedded');
