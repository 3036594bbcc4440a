// `buildcloud admin` as an operator reads it: bucket list (with notes, used and left), org show, and the messages for
// a missing --org or an org that does not exist. Runs the real command over a real SQLite state dir.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { program } from '../../src/cli/index';
import { bucketLines, bucketViews, buildMinutes, count } from '../../src/cli/admin-text';
import { openSqliteStore } from '../../src/server/store/sqlite';
import { storeFile } from '../../src/server/server';
import type { BucketRow, LeaseRow } from '../../src/server/store/store';

let dir: string;
let out: string[];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bc-admin-'));
  out = [];
  jest.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  });
});
afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function run(...args: string[]): Promise<string> {
  out = [];
  await program().parseAsync(['node', 'buildcloud', 'admin', ...args, '--state-dir', dir]);
  return out.join('');
}

const today = () => new Date().toISOString().slice(0, 10);

// An ended lease billed `seconds` to the org, as the lease manager writes it.
async function bill(org: string, seconds: number): Promise<void> {
  const store = openSqliteStore(storeFile(dir));
  const now = Date.now();
  const lease: LeaseRow = {
    id: `l-${seconds}`,
    org,
    pipelineKey: 'p',
    jobId: 'j',
    scope: 'pipeline',
    platforms: ['linux/amd64'],
    builderIds: [],
    identity: { project: 'acme/app' },
    actor: 'ann',
    certFingerprint: 'f'.repeat(64),
    registryUser: 'u',
    registryPasswordHash: 'h',
    createdAt: now - seconds * 1000,
    lastActiveAt: now,
    endedAt: null,
    endReason: null,
    billedSeconds: null
  };
  await store.insertLease(lease);
  await store.endLease(lease.id, now, 'released', seconds);
  await store.close();
}

describe('plurals', () => {
  test.each([
    [1, '1 build minute'],
    [0, '0 build minutes'],
    [2, '2 build minutes'],
    [0.5, '0.5 build minutes'],
    [1.004, '1 build minute']
  ])('%p minutes → %p', (n, text) => expect(buildMinutes(n)).toBe(text));
  test('count', () => {
    expect(count(1, 'token')).toBe('1 token');
    expect(count(0, 'trust rule')).toBe('0 trust rules');
  });
});

describe('bucketViews: billed minutes are taken from the oldest bucket first', () => {
  const b = (id: number, minutes: number, note = ''): BucketRow => ({ id, org: 'acme', seconds: minutes * 60, note, createdAt: Date.UTC(2026, 10, id) });
  test('split across buckets, overdraft apart', () => {
    const v = bucketViews([b(2, 30, 'PO-2'), b(1, 60, 'invoice 1')], 100 * 60);
    expect(v.buckets.map((x) => [x.id, x.usedMinutes, x.leftMinutes, x.note])).toEqual([
      [1, 60, 0, 'invoice 1'],
      [2, 30, 0, 'PO-2']
    ]);
    expect(v.overdraftMinutes).toBe(10);
    expect(bucketLines('acme', v)).toEqual([
      "Org 'acme': 2 buckets, 0 build minutes left of 90 build minutes bought",
      "  #1  2026-11-01  60 build minutes: 60 used, 0 left  'invoice 1'",
      "  #2  2026-11-02  30 build minutes: 30 used, 0 left  'PO-2'",
      '  overdraft: 10 build minutes billed past the buckets'
    ]);
  });
  test('no buckets: says how to add one', () => {
    expect(bucketLines('acme', bucketViews([], 0))).toEqual([
      "Org 'acme': no buckets of minutes. Add one with `buildcloud admin bucket add --org acme --minutes N --note TEXT`."
    ]);
  });
});

describe('admin commands', () => {
  test('org create, bucket add --note, bucket list (text and JSON)', async () => {
    expect(await run('org', 'create', 'acme', '--minutes', '1')).toBe("Created org 'acme' with 1 build minute.\n");
    expect(await run('bucket', 'add', '--org', 'acme', '--minutes', '60', '--note', 'invoice 2026-114')).toBe(
      "Added bucket #2 of 60 build minutes to 'acme' with note 'invoice 2026-114' (61 build minutes bought in all).\n"
    );
    await bill('acme', 90); // 1.5 minutes: the first bucket's 1, then 0.5 of the second
    expect(await run('bucket', 'list', '--org', 'acme')).toBe(
      [
        "Org 'acme': 2 buckets, 59.5 build minutes left of 61 build minutes bought",
        `  #1  ${today()}  1 build minute: 1 used, 0 left  'initial bucket'`,
        `  #2  ${today()}  60 build minutes: 0.5 used, 59.5 left  'invoice 2026-114'`,
        ''
      ].join('\n')
    );
    const json = JSON.parse(await run('bucket', 'list', '--org', 'acme', '--json'));
    expect(json[0]).toMatchObject({ org: 'acme', overdraftMinutes: 0 });
    expect(json[0].buckets[1]).toMatchObject({ id: 2, minutes: 60, usedMinutes: 0.5, leftMinutes: 59.5, note: 'invoice 2026-114' });
  });

  test('bucket list without --org lists every org', async () => {
    await run('org', 'create', 'acme', '--minutes', '10');
    await run('org', 'create', 'beta');
    expect(await run('bucket', 'list')).toBe(
      [
        "Org 'acme': 1 bucket, 10 build minutes left of 10 build minutes bought",
        `  #1  ${today()}  10 build minutes: 0 used, 10 left  'initial bucket'`,
        "Org 'beta': no buckets of minutes. Add one with `buildcloud admin bucket add --org beta --minutes N --note TEXT`.",
        ''
      ].join('\n')
    );
  });

  test('org show --org: limits, buckets, protected branches, each trust rule and each token', async () => {
    await run('org', 'create', 'acme', '--minutes', '600');
    await run('org', 'set', '--org', 'acme', '--max-builders', '4', '--protected-branches', 'main,release/*');
    const admin = (await run('token', 'create', '--org', 'acme', '--json')) && JSON.parse(out.join('')).id;
    const ci = JSON.parse(await run('token', 'create', '--org', 'acme', '--label', 'pr jobs', '--project', 'acme/app', '--read-only', '--json')).id;
    await run('token', 'revoke', ci);
    await run('trust', 'add', '--org', 'acme', '--github-owner', 'acme');
    const text = await run('org', 'show', '--org', 'acme');
    // Exact but for the generated ids and today's date.
    expect(text.replace(admin, 'ID1').replace(ci, 'ID2').replaceAll(today(), 'DAY')).toBe(
      [
        "Org 'acme'",
        '  limits     max builders 4, max leases unlimited, overdraft 0 build minutes',
        '  minutes    600 build minutes left: 600 bought, 0 billed, 0 reserved by running leases',
        '  protected  main, release/*',
        '  trust      1 trust rule',
        '    #1  issuer https://token.actions.githubusercontent.com  aud buildcloud  repository_owner=acme',
        '  tokens     1 token (and 1 revoked)',
        "    ID1  'ci'  org-admin (any project, any branch)  created DAY",
        "    ID2  'pr jobs'  projects acme/app; branches any; read-only  created DAY  revoked DAY",
        '  buckets    1 bucket, 600 build minutes left of 600 build minutes bought',
        "    #1  DAY  600 build minutes: 0 used, 600 left  'initial bucket'",
        ''
      ].join('\n')
    );
    // The argument form still works and says the same.
    expect(await run('org', 'show', 'acme')).toBe(text);
    const json = JSON.parse(await run('org', 'show', '--org', 'acme', '--json'));
    expect(json).toMatchObject({
      org: 'acme',
      maxBuilders: 4,
      trustRules: [{ id: 1, issuer: 'https://token.actions.githubusercontent.com', audience: 'buildcloud', claim: 'repository_owner', value: 'acme' }],
      tokens: [
        { id: admin, label: 'ci', scope: null, revokedAt: null },
        { id: ci, label: 'pr jobs', scope: { projects: ['acme/app'], branches: null, readOnly: true } }
      ],
      protectedBranches: ['main', 'release/*'],
      minutesLeft: 600
    });
    expect(json.tokens[1].revokedAt).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  test("org show of a new org: the default protected branches, serve's builder share, and how to add trust and tokens", async () => {
    await run('org', 'create', 'beta');
    const text = await run('org', 'show', '--org', 'beta');
    expect(text).toContain(
      "  limits     max builders serve's --org-max-builders applies (default 3/4 of --max-builders), max leases unlimited, overdraft 0 build minutes\n"
    );
    expect(text).toContain('  protected  main, master (the default)\n');
    expect(text).toContain(
      '  trust      0 trust rules: add one with `buildcloud admin trust add --org beta --github-owner OWNER`\n  tokens     0 tokens: create one with `buildcloud admin token create --org beta`\n'
    );
    expect(await run('org', 'set', '--org', 'beta', '--max-leases', '3')).toBe(
      "Org 'beta': max builders serve's --org-max-builders applies (default 3/4 of --max-builders), max leases 3, overdraft 0 build minutes, protected branches main, master.\n"
    );
  });

  test('org create of an existing org says so in the house style', async () => {
    await run('org', 'create', 'acme');
    await expect(run('org', 'create', 'acme', '--minutes', '5')).rejects.toThrow(
      "Org 'acme' already exists: see it with `buildcloud admin org show acme`, or add minutes with `buildcloud admin bucket add --org acme --minutes N`."
    );
  });

  test('admin org --help says it creates, lists, shows and sets orgs', () => {
    const org = program()
      .commands.find((c) => c.name() === 'admin')
      ?.commands.find((c) => c.name() === 'org');
    expect(org?.description()).toBe('Create, list, show and set orgs (their limits).');
  });

  test.each([
    [['token', 'create']],
    [['token', 'list']],
    [['bucket', 'add', '--minutes', '5']],
    [['org', 'set', '--max-leases', '2']],
    [['org', 'show']],
    [['trust', 'add', '--github-owner', 'acme']]
  ])('admin %j without --org: "pass --org ORG"', async (args) => {
    await expect(run(...args)).rejects.toThrow('Missing --org: pass --org ORG, the org to act on (`buildcloud admin org list` lists the orgs).');
  });

  test.each([
    [['token', 'create', '--org', 'nope']],
    [['bucket', 'add', '--org', 'nope', '--minutes', '5']],
    [['bucket', 'list', '--org', 'nope']],
    [['org', 'show', '--org', 'nope']]
  ])('admin %j naming a missing org: "create it with"', async (args) => {
    await expect(run(...args)).rejects.toThrow(
      "Org 'nope' not found: create it with `buildcloud admin org create nope --minutes N` (`buildcloud admin org list` lists the orgs)."
    );
  });

  test('a note that spans lines or runs past 200 characters is refused, naming --note', async () => {
    await run('org', 'create', 'acme');
    await expect(run('bucket', 'add', '--org', 'acme', '--minutes', '5', '--note', 'a\nb')).rejects.toThrow(
      "Invalid --note (3 characters): expected at most 200 characters on one line, e.g. --note 'invoice 2026-114'."
    );
    await expect(run('bucket', 'add', '--org', 'acme', '--minutes', '5', '--note', 'x'.repeat(201))).rejects.toThrow('Invalid --note (201 characters)');
  });

  test('org show with two different orgs names both', async () => {
    await expect(run('org', 'show', 'acme', '--org', 'beta')).rejects.toThrow("Two orgs given: 'acme' and --org 'beta'. Pass one, e.g. --org beta.");
  });

  test('org list with no orgs says how to create one', async () => {
    expect(await run('org', 'list')).toBe('No orgs yet. Create one with `buildcloud admin org create ORG --minutes N`.\n');
  });
});

describe('admin cache quota', () => {
  test('refuses an org that does not exist (a typo would record a quota that never applies), then sets one that does', async () => {
    await run('org', 'create', 'acme', '--minutes', '10');
    await expect(run('cache', 'quota', '--org', 'acme-typo', '--max', '1GiB')).rejects.toThrow(
      "Org 'acme-typo' not found: create it with `buildcloud admin org create acme-typo --minutes N`"
    );
    expect(fs.existsSync(path.join(dir, 'cache-quotas.json'))).toBe(false);
    expect(await run('cache', 'quota', '--org', 'acme', '--max', '1GiB')).toContain("Org 'acme' org-cache quota: 1.0 GiB");
  });
});
