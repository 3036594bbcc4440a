// A durable spool of usage records (CloudEvents) on disk. A record is written and fsynced before anything is
// sent, and stays until the metering endpoint has answered for it, so a crash, a cancelled job or an endpoint
// that is down never loses it: what is left is sent by a later flush, in this job or (carried by the CI's cache
// or artifacts) in a later one.
//
// One file per record, named by a hash of its id, written under a temp name and renamed into place: rename is
// atomic, so concurrent processes sharing the directory (parallel jobs on one runner, a main and a post step)
// only ever see whole records, never need a lock, and the same id always lands on the same file (stored once).
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { dirname, join } from 'node:path';
import type { CloudEvent } from '../contract/cloudevents';
import { MAX_ID_LENGTH } from '../contract/cloudevents';

const RECORD = /^[0-9a-f]{64}\.json$/;
const TEMP_PREFIX = '.tmp-';
// A temp file older than this belongs to a writer that died between write and rename; its add() never returned,
// so nobody was told the record was safe. Younger ones may be a live writer in another process: leave them.
const STALE_TEMP_MS = 10 * 60 * 1000;

/** The file name of a record: ids may hold any character, a hex hash is safe on every file system. */
export function recordFileName(id: string): string {
  return `${createHash('sha256').update(id).digest('hex')}.json`;
}

const isCode = (err: unknown, ...codes: string[]) => codes.includes((err as NodeJS.ErrnoException)?.code ?? '');

function checkEvent(event: CloudEvent<object>): void {
  if (typeof event !== 'object' || event === null || typeof event.id !== 'string' || event.id.length === 0) {
    throw new TypeError('a usage record must be a CloudEvent with a non-empty string id');
  }
  if (event.id.length > MAX_ID_LENGTH) throw new TypeError(`a usage record id must be at most ${MAX_ID_LENGTH} characters`);
}

export interface ImportResult {
  added: number; // records new to this spool
  skipped: number; // entries of the file that were not usable records
}

export class MeteringSpool {
  private ready: Promise<void> | undefined;

  constructor(readonly dir: string) {}

  /** Stores a record durably (typed events as built by events.ts). Resolves once it is on disk; an id already stored is a no-op. */
  async add(event: CloudEvent<object>): Promise<void> {
    checkEvent(event);
    await this.init();
    const target = join(this.dir, recordFileName(event.id));
    // Keep the first copy: a record rebuilt after a crash has the same id and meaning, and leaving the file
    // alone avoids rewriting what another process may be reading.
    if (await exists(target)) return;
    await this.writeAtomic(target, JSON.stringify(event));
  }

  /** All records not yet acknowledged, oldest first. Temp files of unfinished writes are not records. */
  async pending(): Promise<CloudEvent[]> {
    const names = await this.list();
    const out: CloudEvent[] = [];
    for (const name of names) {
      const path = join(this.dir, name);
      let text: string;
      try {
        text = await fs.readFile(path, 'utf8');
      } catch (err) {
        if (isCode(err, 'ENOENT')) continue; // acked by another process since the listing
        throw err;
      }
      const event = parseRecord(text);
      // A file whose content does not match its name is not ours to send (or was damaged outside our writes):
      // set it aside instead of deleting it, so nothing is lost and it does not block every later flush.
      if (!event || recordFileName(event.id) !== name) {
        await fs.rename(path, `${path}.corrupt`).catch(() => undefined);
        continue;
      }
      out.push(event);
    }
    return out.sort((a, b) => (a.time ?? '').localeCompare(b.time ?? '') || a.id.localeCompare(b.id));
  }

  /** Forgets records the endpoint has answered for. Unknown or already acked ids are fine (another process). */
  async ack(ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.init();
    for (const id of new Set(ids)) {
      await fs.unlink(join(this.dir, recordFileName(id))).catch((err) => {
        if (!isCode(err, 'ENOENT')) throw err;
      });
    }
    await syncDir(this.dir);
  }

  /**
   * Writes every pending record to one JSON file (an array of events), for a CI wrapper to carry to a later job
   * through a cache or an artifact. Returns how many records it holds. The file is replaced atomically.
   */
  async exportTo(file: string): Promise<number> {
    const events = await this.pending();
    await this.writeAtomic(file, JSON.stringify(events));
    return events.length;
  }

  /** Adds the records of a file written by exportTo. A missing file is an empty one (nothing was carried). */
  async importFrom(file: string): Promise<ImportResult> {
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (err) {
      if (isCode(err, 'ENOENT')) return { added: 0, skipped: 0 };
      throw err;
    }
    let list: unknown;
    try {
      list = JSON.parse(text);
    } catch {
      list = null;
    }
    if (!Array.isArray(list)) return { added: 0, skipped: 1 };
    const known = new Set(await this.list());
    const result: ImportResult = { added: 0, skipped: 0 };
    for (const item of list) {
      const event = asEvent(item);
      if (!event) {
        result.skipped++;
        continue;
      }
      await this.add(event);
      const name = recordFileName(event.id);
      if (!known.has(name)) result.added++;
      known.add(name);
    }
    return result;
  }

  private init(): Promise<void> {
    this.ready ??= (async () => {
      await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
      // mkdir's mode is filtered by the umask and ignored for a directory that exists: set it explicitly.
      await fs.chmod(this.dir, 0o700);
    })();
    return this.ready;
  }

  private async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch (err) {
      if (isCode(err, 'ENOENT')) return []; // nothing was ever added
      throw err;
    }
    await this.removeStaleTemps(names.filter((n) => n.startsWith(TEMP_PREFIX)));
    return names.filter((n) => RECORD.test(n)).sort();
  }

  private async removeStaleTemps(temps: string[]): Promise<void> {
    const now = Date.now();
    for (const name of temps) {
      const path = join(this.dir, name);
      const st = await fs.stat(path).catch(() => null);
      if (st && now - st.mtimeMs > STALE_TEMP_MS) await fs.unlink(path).catch(() => undefined);
    }
  }

  // Write, fsync, rename, fsync the directory: after this resolves the record survives a power cut, and at no
  // moment can a reader see half of it.
  private async writeAtomic(target: string, content: string): Promise<void> {
    await this.init();
    const dir = dirname(target);
    await fs.mkdir(dir, { recursive: true }); // an export file may go to a directory not made yet
    const temp = join(dir, `${TEMP_PREFIX}${process.pid}-${randomBytes(6).toString('hex')}`);
    const fh = await fs.open(temp, 'wx', 0o600);
    try {
      await fh.writeFile(content, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await fs.chmod(temp, 0o600); // the open mode is filtered by the umask
      await fs.rename(temp, target);
    } catch (err) {
      await fs.unlink(temp).catch(() => undefined);
      throw err;
    }
    await syncDir(dir);
  }
}

function parseRecord(text: string): CloudEvent | null {
  try {
    return asEvent(JSON.parse(text));
  } catch {
    return null;
  }
}

function asEvent(v: unknown): CloudEvent | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const id = (v as { id?: unknown }).id;
  return typeof id === 'string' && id.length > 0 && id.length <= MAX_ID_LENGTH ? (v as CloudEvent) : null;
}

async function exists(path: string): Promise<boolean> {
  try {
    await fs.access(path);
    return true;
  } catch {
    return false;
  }
}

// A rename is only durable once its directory is synced. Some platforms (Windows) cannot open a directory
// for that; there the rename itself is what we get.
async function syncDir(dir: string): Promise<void> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(dir, 'r');
    await fh.sync();
  } catch {
    // best effort, see above
  } finally {
    await fh?.close().catch(() => undefined);
  }
}
