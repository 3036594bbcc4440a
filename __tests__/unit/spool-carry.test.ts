// Unsent usage records ride the Actions cache between jobs, and @actions/cache (dist/github/spool-cache.js) is
// loaded only when the cache service is there to ask and, when saving, only when records are pending.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

jest.mock('../../src/github/spool-cache', () => ({
  restoreFromCache: jest.fn(async () => 'buildcloud-metering-spool-1-build-1-1'),
  saveToCache: jest.fn(async () => undefined)
}));
import * as cacheSide from '../../src/github/spool-cache';
import { cacheServiceOffered, restoreSpool, saveSpool } from '../../src/github/spool-carry';

const restoreFromCache = cacheSide.restoreFromCache as jest.Mock;
const saveToCache = cacheSide.saveToCache as jest.Mock;
let out: string[];
let base: string;
const saved = { ...process.env };

beforeEach(() => {
  jest.clearAllMocks();
  out = [];
  // The module object itself (an import would be a copy): the writer reads writeSync from it at each call.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  jest.spyOn(require('fs') as typeof fs, 'writeSync').mockImplementation(((fd: number, s: string) => (fd === 1 ? out.push(s) : 0)) as typeof fs.writeSync);
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-carry-'));
  delete process.env.ACTIONS_CACHE_URL;
  delete process.env.ACTIONS_RESULTS_URL;
});
afterEach(() => {
  jest.restoreAllMocks();
  process.env = { ...saved };
  fs.rmSync(base, { recursive: true, force: true });
});

function pending(n: number): void {
  fs.mkdirSync(path.join(base, 'acme'), { recursive: true });
  for (let i = 0; i < n; i++) fs.writeFileSync(path.join(base, 'acme', `r${i}.json`), '{}');
}

test.each<[NodeJS.ProcessEnv, boolean]>([
  [{}, false],
  [{ ACTIONS_CACHE_URL: 'https://cache.example/' }, true],
  [{ ACTIONS_RESULTS_URL: 'https://results.example/' }, true],
  [{ ACTIONS_CACHE_URL: '' }, false]
])('cache service offered by %j: %s', (env, offered) => {
  expect(cacheServiceOffered(env)).toBe(offered);
});

test('nothing pending: the cache client is not loaded to save', async () => {
  process.env.ACTIONS_CACHE_URL = 'https://cache.example/';
  await saveSpool(base);
  expect(saveToCache).not.toHaveBeenCalled();
  expect(out.join('')).toBe('');
});

test('records pending but no cache service: a warning names them and where they stay', async () => {
  pending(2);
  await saveSpool(base);
  expect(saveToCache).not.toHaveBeenCalled();
  expect(out.join('')).toMatch(/^::warning::Build Cloud metering: 2 usage records are unsent and stay in /);
});

test('records pending and a cache service: saved with their count', async () => {
  pending(3);
  process.env.ACTIONS_RESULTS_URL = 'https://results.example/';
  await saveSpool(base);
  expect(saveToCache).toHaveBeenCalledWith(base, 3);
});

test('no cache service: nothing is asked on restore', async () => {
  await restoreSpool(base);
  expect(restoreFromCache).not.toHaveBeenCalled();
});

test('a cache service: restored records are counted in the log', async () => {
  process.env.ACTIONS_CACHE_URL = 'https://cache.example/';
  restoreFromCache.mockImplementationOnce(async (b: string) => {
    fs.mkdirSync(path.join(b, 'acme'), { recursive: true });
    fs.writeFileSync(path.join(b, 'acme', 'old.json'), '{}');
    return 'buildcloud-metering-spool-7-build-1-1';
  });
  await restoreSpool(base);
  expect(out.join('')).toContain('Build Cloud: restored 1 unsent usage record from an earlier job (buildcloud-metering-spool-7-build-1-1)');
});

test('a cache client that cannot load only warns', async () => {
  process.env.ACTIONS_CACHE_URL = 'https://cache.example/';
  restoreFromCache.mockImplementationOnce(async () => {
    throw new Error('Cannot find module ./spool-cache.js');
  });
  await expect(restoreSpool(base)).resolves.toBeUndefined();
  expect(out.join('')).toMatch(/::warning::Build Cloud metering: could not restore unsent usage records: Cannot find module/);
});
