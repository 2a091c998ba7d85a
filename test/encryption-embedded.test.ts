// Encryption at rest on the embedded store: the shared encryption suite (test/_suites/encryption.ts).
import test from 'ava';
import { encryptionSuite } from './_suites/encryption';

encryptionSuite(test, 'embedded');
