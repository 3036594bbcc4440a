// `buildcloud admin`: orgs, tokens, buckets of minutes and OIDC trust, written straight to the state store
// (SQLite in WAL mode, so this works while `serve` runs).
import type { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { defaultStateDir, parseIntFlag } from '../server/config';
import type { Store } from '../server/store/store';
import { validateOrgName } from '../server/validate';
import { CliError } from './errors';

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
  if (!(await store.getOrg(name))) throw new CliError(`Org '${name}' not found. Create it with: buildcloud admin org create ${name} --minutes N`);
}

function orgName(name: string): string {
  try {
    return validateOrgName(name, 'org name');
  } catch (err) {
    throw new CliError((err as Error).message);
  }
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

  const org = admin.command('org').description('Create and list orgs.');
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
        const row = await store.createOrg(name, now);
        if (n > 0) await store.addBucket(name, n * 60, 'initial bucket', now);
        print(o.json, { org: row.name, minutes: n }, `Created org '${name}' with ${n} build minutes.`);
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
        print(o.json, rows, rows.map((r) => `${r.org}\t${r.minutesUsed} of ${r.minutesBought} minutes used`).join('\n') || '(no orgs)');
      });
    });

  org
    .command('set')
    .description("Set an org's limits: concurrent builders and leases (so one org cannot starve the others), and its overdraft.")
    .requiredOption('--org <name>', 'the org')
    .option('--max-builders <n>', "builders the org's leases may hold at once, or 'unlimited' (default: unlimited; --max-builders of serve still applies)")
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
        await requireOrg(store, o.org);
        const r = await store.setOrgLimits(o.org, patch, Date.now());
        const { DEFAULT_PROTECTED_BRANCHES } = await import('../server/scope');
        const prot = r.protectedBranches ?? DEFAULT_PROTECTED_BRANCHES;
        const out = { org: r.org, maxBuilders: r.maxBuilders, maxLeases: r.maxLeases, overdraftMinutes: r.overdraftSeconds / 60, protectedBranches: prot };
        const show = (n: number | null) => (n === null ? 'unlimited' : String(n));
        print(
          o.json,
          out,
          `Org '${r.org}': max builders ${show(r.maxBuilders)}, max leases ${show(r.maxLeases)}, overdraft ${out.overdraftMinutes} minutes, protected branches ${prot.join(', ')}.`
        );
      });
    });
  org
    .command('show <name>')
    .description("Show an org's limits and its bucket: bought, billed, reserved by running leases.")
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (name: string, o) => {
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, name);
        const r = await store.getOrgLimits(name);
        const out = {
          org: name,
          maxBuilders: r.maxBuilders,
          maxLeases: r.maxLeases,
          overdraftMinutes: r.overdraftSeconds / 60,
          minutesBought: (await store.bucketSeconds(name)) / 60,
          minutesBilled: +((await store.billedSeconds(name)) / 60).toFixed(2),
          minutesReserved: +((await store.reservedSeconds(name)) / 60).toFixed(2)
        };
        const show = (n: number | null) => (n === null ? 'unlimited' : String(n));
        print(
          o.json,
          out,
          `Org '${name}': max builders ${show(out.maxBuilders)}, max leases ${show(out.maxLeases)}, overdraft ${out.overdraftMinutes} minutes; ` +
            `${out.minutesBilled} of ${out.minutesBought} minutes billed, ${out.minutesReserved} reserved by running leases.`
        );
      });
    });

  const token = admin.command('token').description('Create, list and revoke org tokens.');
  token
    .command('create')
    .description('Create an org token. It is printed once and stored only as a hash.')
    .requiredOption('--org <name>', 'the org the token acts for')
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
        await requireOrg(store, o.org);
        const { token: secret, row } = await createOrgToken(store, o.org, String(o.label).slice(0, 100), Date.now(), scope);
        print(o.json, { id: row.id, org: row.org, token: secret, scope: row.scope }, secret);
      });
    });
  token
    .command('list')
    .description("List an org's tokens (ids and labels, never secrets).")
    .requiredOption('--org <name>', 'the org')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, o.org);
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

  admin
    .command('bucket')
    .description('Buckets of prepaid build minutes.')
    .command('add')
    .description('Add a bucket of minutes to an org.')
    .requiredOption('--org <name>', 'the org')
    .requiredOption('--minutes <n>', 'build minutes to add')
    .option('--note <text>', 'e.g. an invoice number', '')
    .option(...stateOpt)
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const n = minutes(o.minutes);
      if (n <= 0) throw new CliError(`Invalid --minutes '${o.minutes}'. Expected a whole number of at least 1.`);
      await withStore(o.stateDir, async (store) => {
        await requireOrg(store, o.org);
        await store.addBucket(o.org, n * 60, String(o.note).slice(0, 200), Date.now());
        const total = (await store.bucketSeconds(o.org)) / 60;
        print(o.json, { org: o.org, added: n, totalMinutes: total }, `Added ${n} minutes to '${o.org}' (${total} bought in all).`);
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
    .requiredOption('--org <name>', 'the org')
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
        await requireOrg(store, o.org);
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

function scopeText(scope: { projects: string[] | null; branches: string[] | null; readOnly: boolean } | null): string {
  if (!scope) return 'org-admin (any project, any branch)';
  return `projects ${scope.projects?.join(',') ?? 'any'}; branches ${scope.branches?.join(',') ?? 'any'}${scope.readOnly ? '; read-only' : ''}`;
}
