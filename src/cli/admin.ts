// `buildcloud admin`: orgs, tokens, buckets of minutes and OIDC trust, written straight to the state store
// (SQLite in WAL mode, so this works while `serve` runs).
import type { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { defaultStateDir, parseIntFlag } from '../server/config';
import { StoreConflict, type Store } from '../server/store/store';
import { validateOrgName } from '../server/validate';
import { bucketLines, bucketViews, buildMinutes, maxBuildersText, orgShowText, orgView, scopeText } from './admin-text';
import { CliError } from './errors';
import { registerAdminCache } from './admin-cache';

async function withStore<T>(stateDir: string, fn: (store: Store) => Promise<T>): Promise<T> {
  const dir = path.resolve(stateDir);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const { openSqliteStore } = await import('../server/store/sqlite');
  const { storeFile } = await import('../server/server');
  const store = openSqliteStore(storeFile(dir));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

async function requireOrg(store: Store, name: string): Promise<void> {
  orgName(name);
  if (!(await store.getOrg(name))) throw new CliError(orgNotFound(name));
}

/** The message for an org the state does not hold, naming the command that creates it. */
export function orgNotFound(name: string): string {
  return `Org '${name}' not found: create it with \`buildcloud admin org create ${name} --minutes N\` (\`buildcloud admin org list\` lists the orgs).`;
}

/** The message for a command run without --org. */
export const MISSING_ORG = 'Missing --org: pass --org ORG, the org to act on (`buildcloud admin org list` lists the orgs).';

// --org is checked here rather than by commander's requiredOption, whose message names no value to give.
function needOrg(o: { org?: unknown }): string {
  if (typeof o.org !== 'string' || !o.org) throw new CliError(MISSING_ORG);
  return orgName(o.org);
}

function orgName(name: string): string {
  try {
    return validateOrgName(name, 'org name');
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}

/** A bucket's note: up to 200 characters on one line (an invoice number, an order), shown by `admin bucket list`. */
export function bucketNote(v: unknown): string {
  const note = String(v ?? '').trim();
  // eslint-disable-next-line no-control-regex
  if (note.length > 200 || /[\u0000-\u001f\u007f]/.test(note)) {
    throw new CliError(`Invalid --note (${note.length} characters): expected at most 200 characters on one line, e.g. --note 'invoice 2026-114'.`);
  }
  return note;
}

function minutes(v: string): number {
  return parseIntFlag(v, '--minutes', 0, 100_000_000);
}

// A per-org cap: a whole number of at least 1, or 'unlimited' (stored as null).
function limit(v: string, flag: string): number | null {
  if (String(v).trim() === 'unlimited') return null;
  return parseIntFlag(v, flag, 1, 1_000_000);
}

function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? JSON.stringify(value) + '\n' : text + '\n');
}

export function registerAdmin(program: Command): void {
  const admin = program.command('admin').description('Manage orgs, tokens, buckets of minutes and OIDC trust in the control plane state.');
  const stateOpt = ['--state-dir <dir>', 'state directory of the control plane (env BUILDCLOUD_STATE_DIR)', defaultStateDir()] as const;
  registerAdminCache(admin, stateOpt);

  const org = admin.command('org').description('Create, list, show and set orgs (their limits).');
  org
    .command('create <name>')
    .description('Create an org, optionally with a first bucket of minutes.')
    .option('--minutes <n>', 'build minutes in the first bucket', '0')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (name: string, o) => {
      orgName(name);
      const n = minutes(o.minutes);
      await withStore(o.stateDir, async (store) => {
        const now = Date.now();
        const row = await store.createOrg(name, now).catch((err: unknown) => {
          if (err instanceof StoreConflict) {
            throw new CliError(
              `Org '${name}' already exists: see it with \`buildcloud admin org show ${name}\`, or add minutes with \`buildcloud admin bucket add --org ${name} --minutes N\`.`
            );
          }
          throw err;
        });
        if (n > 0) await store.addBucket(name, n * 60, 'initial bucket', now);
        print(o.json, { org: row.name, minutes: n }, `Created org '${name}' with ${buildMinutes(n)}.`);
      });
    });
  org
    .command('list')
    .description('List orgs with their minutes left.')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      await withStore(o.stateDir, async (store) => {
        const rows = [];
        for (const r of await store.listOrgs()) {
          const bought = await store.bucketSeconds(r.name);
          const used = await store.billedSeconds(r.name);
          rows.push({ org: r.name, minutesBought: bought / 60, minutesUsed: +(used / 60).toFixed(2) });
        }
        print(
          o.json,
          rows,
          rows.map((r) => `${r.org}\t${r.minutesUsed} of ${buildMinutes(r.minutesBought)} used`).join('\n') ||
            'No orgs yet. Create one with `buildcloud admin org create ORG --minutes N`.'
        );
      });
    });

  org
    .command('set')
    .description("Set an org's limits: concurrent builders and leases (so one org cannot starve the others), and its overdraft.")
    .option('--org <name>', 'the org')
    .option(
      '--max-builders <n>',
      "builders the org's leases may hold at once, or 'unlimited' (default: none of its own: serve's --org-max-builders applies, 3/4 of --max-builders)"
    )
    .option('--max-leases <n>', "active leases the org may hold at once, or 'unlimited' (default: unlimited)")
    .option('--overdraft-minutes <n>', 'minutes leases may run past the bucket, taken from the next bucket (default 0: prepaid only)')
    .option(
      '--protected-branches <patterns>',
      "branches whose cache only a lease proven to run on them may write, e.g. 'main,release/*', or 'default' (main, master)"
    )
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const patch = {
        maxBuilders: o.maxBuilders === undefined ? undefined : limit(o.maxBuilders, '--max-builders'),
        maxLeases: o.maxLeases === undefined ? undefined : limit(o.maxLeases, '--max-leases'),
        overdraftSeconds: o.overdraftMinutes === undefined ? undefined : parseIntFlag(o.overdraftMinutes, '--overdraft-minutes', 0, 100_000_000) * 60,
        protectedBranches:
          o.protectedBranches === undefined ? undefined : o.protectedBranches === 'default' ? null : await patterns(o.protectedBranches, '--protected-branches')
      };
      if (Object.values(patch).every((v) => v === undefined)) {
        throw new CliError('Nothing to set. Give --max-builders, --max-leases, --overdraft-minutes or --protected-branches.');
      }
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, needOrg(o));
        const r = await store.setOrgLimits(o.org, patch, Date.now());
        const { DEFAULT_PROTECTED_BRANCHES } = await import('../server/scope');
        const prot = r.protectedBranches ?? DEFAULT_PROTECTED_BRANCHES;
        const out = { org: r.org, maxBuilders: r.maxBuilders, maxLeases: r.maxLeases, overdraftMinutes: r.overdraftSeconds / 60, protectedBranches: prot };
        const show = (n: number | null) => (n === null ? 'unlimited' : String(n));
        print(
          o.json,
          out,
          `Org '${r.org}': max builders ${maxBuildersText(r.maxBuilders)}, max leases ${show(r.maxLeases)}, overdraft ${buildMinutes(out.overdraftMinutes)}, protected branches ${prot.join(', ')}.`
        );
      });
    });
  org
    .command('show [name]')
    .description('Show an org: limits, buckets of minutes (bought, used, left, notes), protected branches, its trust rules and its tokens.')
    .option('--org <name>', 'the org (or give it as the argument)')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (name: string | undefined, o) => {
      if (name && o.org && name !== o.org) throw new CliError(`Two orgs given: '${name}' and --org '${o.org}'. Pass one, e.g. --org ${o.org}.`);
      const which = needOrg({ org: name ?? o.org });
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, which);
        const { DEFAULT_PROTECTED_BRANCHES } = await import('../server/scope');
        const view = orgView(
          which,
          await store.getOrgLimits(which),
          DEFAULT_PROTECTED_BRANCHES,
          await store.listBuckets(which),
          await store.billedSeconds(which),
          await store.reservedSeconds(which),
          await store.listTrust(which),
          await store.listTokens(which)
        );
        print(o.json, view, orgShowText(view));
      });
    });

  const token = admin.command('token').description('Create, list and revoke org tokens.');
  token
    .command('create')
    .description('Create an org token. It is printed once and stored only as a hash.')
    .option('--org <name>', 'the org the token acts for')
    .option('--label <text>', 'what the token is for', 'ci')
    .option(
      '--project <pattern>',
      "a project it may provision for, e.g. acme/app or 'acme/*' (repeatable; without any: every project, the org-admin token)",
      collect,
      []
    )
    .option(
      '--branches <patterns>',
      "branches it may provision for, e.g. 'main,release/*' or '*,!main'; a protected branch's cache is written only when named without a wildcard"
    )
    .option('--read-only', 'its leases read the org cache and never write it (pull requests, untrusted pipelines)', false)
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const { createOrgToken } = await import('../server/auth');
      const projects: string[] = o.project.length ? await patterns(o.project.join(','), '--project') : [];
      const branches = o.branches === undefined ? null : await patterns(o.branches, '--branches');
      const scoped = projects.length > 0 || branches !== null || o.readOnly === true;
      const scope = scoped ? { projects: projects.length ? projects : null, branches, readOnly: o.readOnly === true } : null;
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, needOrg(o));
        const { token: secret, row } = await createOrgToken(store, o.org, String(o.label).slice(0, 100), Date.now(), scope);
        print(o.json, { id: row.id, org: row.org, token: secret, scope: row.scope }, secret);
      });
    });
  token
    .command('list')
    .description("List an org's tokens (ids and labels, never secrets).")
    .option('--org <name>', 'the org')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, needOrg(o));
        const rows = (await store.listTokens(o.org)).map((t) => ({
          id: t.id,
          label: t.label,
          createdAt: new Date(t.createdAt).toISOString(),
          revoked: t.revokedAt !== null,
          scope: t.scope
        }));
        print(
          o.json,
          rows,
          rows.map((t) => `${t.id}\t${t.label}\t${t.createdAt}\t${scopeText(t.scope)}${t.revoked ? '\trevoked' : ''}`).join('\n') || '(no tokens)'
        );
      });
    });
  token
    .command('revoke <id>')
    .description('Revoke a token by its id.')
    .option(...stateOpt)
    .action(async (id: string, o) => {
      await withStore(o.stateDir, async (store) => {
        if (!(await store.revokeToken(id, Date.now()))) throw new CliError(`Token '${id}' not found or already revoked.`);
        process.stdout.write(`Revoked token ${id}.\n`);
      });
    });

  const bucket = admin.command('bucket').description('Buckets of prepaid build minutes.');
  bucket
    .command('list')
    .description("List buckets of minutes: per bucket the minutes bought, used (billed, oldest bucket first), left, and its note. Without --org: every org's.")
    .option('--org <name>', 'only this org')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      await withStore(o.stateDir, async (store) => {
        let orgs: string[];
        if (o.org !== undefined) {
          await requireOrg(store, needOrg(o));
          orgs = [o.org];
        } else orgs = (await store.listOrgs()).map((r) => r.name);
        const out = [];
        for (const name of orgs) out.push({ org: name, ...bucketViews(await store.listBuckets(name), await store.billedSeconds(name)) });
        const text = out.flatMap((v) => bucketLines(v.org, v)).join('\n') || 'No orgs yet. Create one with `buildcloud admin org create ORG --minutes N`.';
        print(o.json, out, text);
      });
    });
  bucket
    .command('add')
    .description('Add a bucket of minutes to an org.')
    .option('--org <name>', 'the org')
    .requiredOption('--minutes <n>', 'build minutes to add')
    .option('--note <text>', 'what the bucket is, e.g. an invoice number (shown by `admin bucket list`)', '')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const n = minutes(o.minutes);
      if (n <= 0) throw new CliError(`Invalid --minutes '${o.minutes}'. Expected a whole number of at least 1.`);
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, needOrg(o));
        const row = await store.addBucket(o.org, n * 60, bucketNote(o.note), Date.now());
        const total = (await store.bucketSeconds(o.org)) / 60;
        const note = row.note ? ` with note '${row.note}'` : '';
        print(
          o.json,
          { org: o.org, bucket: row.id, added: n, note: row.note, totalMinutes: total },
          `Added bucket #${row.id} of ${buildMinutes(n)} to '${o.org}'${note} (${buildMinutes(total)} bought in all).`
        );
      });
    });

  registerTrust(admin, stateOpt);
}

function registerTrust(admin: Command, stateOpt: readonly [string, string, string]): void {
  const trust = admin.command('trust').description('OIDC trust: which CI tokens may act for an org (exchanged for short-lived access tokens).');
  trust
    .command('add')
    .description(
      'Trust a CI identity provider for an org. Give one of --github-owner, --gitlab-namespace, --circleci-org-id, or --issuer with --claim and --value.'
    )
    .option('--org <name>', 'the org')
    .option('--github-owner <owner>', 'GitHub: tokens whose repository_owner is this user or organization')
    .option('--gitlab-namespace <path>', 'GitLab: tokens whose namespace_path is exactly this group path')
    .option('--circleci-org-id <uuid>', 'CircleCI: tokens of this organization id')
    .option(
      '--issuer <url>',
      'the token issuer (GitHub Enterprise Server: https://HOSTNAME/_services/token; GitLab: your instance URL, default https://gitlab.com; CircleCI: default https://oidc.circleci.com/org/<uuid>)'
    )
    .option('--claim <name>', 'claim to check (with --issuer and --value for a custom rule)')
    .option('--value <value>', 'value the claim must equal')
    .option('--audience <aud>', 'required aud (default: buildcloud; CircleCI: the org id)')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const { trustPreset } = await import('../server/trust-presets');
      const chosen = [o.githubOwner, o.gitlabNamespace, o.circleciOrgId].filter(Boolean).length;
      if (chosen > 1) throw new CliError('Give only one of --github-owner, --gitlab-namespace, --circleci-org-id.');
      let rule;
      try {
        // --issuer goes to every preset: GHES and CircleCI server issue tokens from their own URLs.
        if (o.githubOwner) rule = trustPreset('github', { owner: o.githubOwner, issuer: o.issuer, audience: o.audience });
        else if (o.gitlabNamespace) rule = trustPreset('gitlab', { namespace: o.gitlabNamespace, issuer: o.issuer, audience: o.audience });
        else if (o.circleciOrgId) rule = trustPreset('circleci', { orgId: o.circleciOrgId, issuer: o.issuer, audience: o.audience });
        else {
          if (!o.issuer || !o.claim || !o.value)
            throw new CliError('Missing rule. Give --github-owner, --gitlab-namespace or --circleci-org-id, or --issuer, --claim and --value together.');
          rule = { issuer: String(o.issuer).replace(/\/+$/, ''), claim: o.claim, value: o.value, audience: o.audience || 'buildcloud' };
        }
      } catch (err) {
        throw new CliError((err as Error).message);
      }
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, needOrg(o));
        const row = await store.addTrust({ ...rule, org: o.org, createdAt: Date.now() });
        print(o.json, row, `Trusted for '${o.org}': tokens from ${row.issuer} with ${row.claim} = ${row.value} (aud ${row.audience}); rule id ${row.id}.`);
      });
    });
  trust
    .command('list')
    .description('List trust rules.')
    .option('--org <name>', 'only this org')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      await withStore(o.stateDir, async (store) => {
        const rows = await store.listTrust(o.org || undefined);
        print(o.json, rows, rows.map((r) => `${r.id}\t${r.org}\t${r.issuer}\t${r.claim}=${r.value}\taud=${r.audience}`).join('\n') || '(no trust rules)');
      });
    });
  trust
    .command('remove <id>')
    .description('Remove a trust rule by its id.')
    .option(...stateOpt)
    .action(async (id: string, o) => {
      await withStore(o.stateDir, async (store) => {
        if (!(await store.removeTrust(parseIntFlag(id, 'id', 1, Number.MAX_SAFE_INTEGER)))) throw new CliError(`Trust rule ${id} not found.`);
        process.stdout.write(`Removed trust rule ${id}.\n`);
      });
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

// Pattern lists of --project, --branches and --protected-branches (src/server/scope.ts parsePatterns).
async function patterns(raw: string, flag: string): Promise<string[]> {
  const { parsePatterns } = await import('../server/scope');
  try {
    return parsePatterns(raw, flag);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
}
