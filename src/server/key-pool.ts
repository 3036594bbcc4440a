// Key pairs for lease certificates, made ahead of time on a worker thread (issue 13). A provision needs a fresh
// P-256 key pair: made on the event loop (node:crypto's async keygen still exports both keys here, in JS, at about
// 0.3 ms a lease), key making and export were a quarter of the control plane's CPU per provision, and every
// provision waited its turn in libuv's thread pool. A worker keeps a small stock of keys, already encoded as the
// cert (SPKI DER) and the client (PKCS#8 PEM) need them, so a provision takes one without waiting and the main
// thread only signs. The worker runs on the other core; when it cannot start or dies, keys are made in this thread
// (slower, never wrong).
import { generateKeyPair } from 'node:crypto';
import { Worker } from 'node:worker_threads';

/** A lease's key pair: the public key as SubjectPublicKeyInfo (DER) and the private key as PKCS#8 (PEM). */
export interface LeaseKey {
  spkiDer: Buffer;
  keyPem: string;
}

const ENCODING = { publicKeyEncoding: { type: 'spki', format: 'der' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } } as const;

// The worker's whole program: it answers each `n` with `n` fresh key pairs, in one message.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { generateKeyPairSync } = require('node:crypto');
const enc = ${JSON.stringify(ENCODING)};
parentPort.on('message', (n) => {
  const keys = [];
  for (let i = 0; i < n; i++) {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256', ...enc });
    keys.push({ spkiDer: k.publicKey, keyPem: k.privateKey });
  }
  parentPort.postMessage(keys);
});
`;

/** One P-256 key pair made in this process (libuv's thread pool), encoded as LeaseKey. */
export function generateLeaseKey(): Promise<LeaseKey> {
  return new Promise((resolve, reject) =>
    generateKeyPair(
      'ec',
      { namedCurve: 'P-256', publicKeyEncoding: { type: 'spki', format: 'der' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } },
      (err, spkiDer, keyPem) => (err ? reject(err) : resolve({ spkiDer, keyPem }))
    )
  );
}

/**
 * A stock of `size` (default 256) lease key pairs kept full by a worker thread, in batches of `batch` (default 32),
 * one batch at a time. `take()` resolves at once while the stock lasts, else with the worker's
 * next batch. The worker does not keep the process alive; `close()` stops it. A key is handed out once.
 */
export class LeaseKeyPool {
  private readonly stock: LeaseKey[] = [];
  private readonly waiting: Array<{ resolve: (k: LeaseKey) => void; reject: (e: Error) => void }> = [];
  private worker: Worker | null = null;
  private failed = false;
  private asked = 0; // keys asked of the worker and not yet received
  private closed = false;

  constructor(
    private readonly size = 256,
    private readonly batch = 32
  ) {
    if (!(size >= 1 && batch >= 1)) throw new Error(`key pool size and batch must be at least 1, got ${size} and ${batch}`);
  }

  /** A key pair nobody else gets. Rejects only when the pool is closed or key generation itself fails. */
  take(): Promise<LeaseKey> {
    if (this.closed) return Promise.reject(new Error('key pool is closed'));
    const k = this.stock.shift();
    this.refill();
    if (k) return Promise.resolve(k);
    if (this.failed) return generateLeaseKey();
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.refill();
    });
  }

  /** Starts filling the stock now (serve calls it at start, so the first provisions find keys ready). */
  warm(): void {
    this.refill();
  }

  /** Stops the worker; later `take()` calls reject, waiting ones too. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.reject(new Error('key pool is closed'));
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }

  private refill(): void {
    // One batch at a time: a provision that finds the stock empty waits for one batch, not for a queue of them.
    if (this.closed || this.failed || this.asked > 0) return;
    const want = this.waiting.length + this.size - this.stock.length;
    if (want <= 0) return;
    const worker = this.start();
    if (!worker) return;
    const n = Math.min(this.batch, want);
    this.asked += n;
    worker.ref(); // a batch on its way keeps the process up, as any pending I/O does
    worker.postMessage(n);
  }

  private start(): Worker | null {
    if (this.worker) return this.worker;
    try {
      const w = new Worker(WORKER_SOURCE, { eval: true });
      w.on('message', (keys: Array<{ spkiDer: Uint8Array; keyPem: string }>) => {
        this.asked -= keys.length;
        this.worker?.unref(); // idle until the next batch is asked for
        for (const k of keys) {
          const key = { spkiDer: Buffer.from(k.spkiDer.buffer, k.spkiDer.byteOffset, k.spkiDer.byteLength), keyPem: k.keyPem };
          const w8 = this.waiting.shift();
          if (w8) w8.resolve(key);
          else this.stock.push(key);
        }
        this.refill();
      });
      w.on('error', () => this.fail());
      w.on('exit', () => {
        if (!this.closed) this.fail();
      });
      this.worker = w;
      return w;
    } catch {
      this.fail();
      return null;
    }
  }

  // The worker is gone: whoever waits gets a key made here, and so does everyone after.
  private fail(): void {
    this.failed = true;
    this.worker = null;
    this.asked = 0;
    for (const w of this.waiting.splice(0)) generateLeaseKey().then(w.resolve, w.reject);
  }
}
