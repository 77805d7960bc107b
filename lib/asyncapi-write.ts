/** `npm run asyncapi`: writes the event catalogue (lib/asyncapi.ts) to docs/asyncapi.json. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { ASYNCAPI_FILE, asyncApiText } from './asyncapi.js';

mkdirSync(dirname(ASYNCAPI_FILE), { recursive: true });
writeFileSync(ASYNCAPI_FILE, asyncApiText());
process.stdout.write(`wrote ${ASYNCAPI_FILE}\n`);
