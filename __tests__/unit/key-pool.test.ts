import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import type { Worker } from 'node:worker_threads';
import { LeaseKeyPool, generateLeaseKey, type LeaseKey } from '../../src/server/key-pool';

/** The pair belongs together: what its private key signs, its public key verifies; both are P-256. */
function checkPair(k: LeaseKey): void {
  const priv = createPrivateKey(k.keyPem);
  const pub = createPublicKey({ key: k.spkiDer, format: 'der', type: 'spki' });
  expect(priv.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  expect(pub.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  const sig = sign('sha256', Buffer.from('lease'), priv);
  expect(verify('sha256', Buffer.from('lease'), pub, sig)).toBe(true);
  expect(k.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
}

describe('LeaseKeyPool', () => {
  test('hands out working P-256 pairs, each once, more than its stock holds', async () => {
    const pool = new LeaseKeyPool(8, 3);
    try {
      const keys = await Promise.all(Array.from({ length: 20 }, () => pool.take()));
      for (const k of keys) checkPair(k);
      expect(new Set(keys.map((k) => k.keyPem)).size).toBe(20);
      expect(new Set(keys.map((k) => k.spkiDer.toString('hex'))).size).toBe(20);
    } finally {
      await pool.close();
    }
  });

  test('after warm(), keys come from the stock: made before they were asked for', async () => {
    const pool = new LeaseKeyPool(4, 4);
    try {
      pool.warm();
      // The first batch arrives as one message; once it has, take() resolves without another round trip.
      await pool.take();
      const stock = (pool as unknown as { stock: LeaseKey[] }).stock;
      expect(stock.length).toBe(3);
      const next = pool.take();
      expect(stock.length).toBe(2); // taken synchronously, before any message from the worker
      checkPair(await next);
    } finally {
      await pool.close();
    }
  });

  test('a worker that dies is replaced by keys made in this thread: waiting and later takes still get keys', async () => {
    const pool = new LeaseKeyPool(2, 1);
    try {
      checkPair(await pool.take());
      const worker = (pool as unknown as { worker: Worker }).worker;
      await worker.terminate();
      const keys = await Promise.all([pool.take(), pool.take(), pool.take(), pool.take()]);
      for (const k of keys) checkPair(k);
      expect(new Set(keys.map((k) => k.keyPem)).size).toBe(4);
    } finally {
      await pool.close();
    }
  });

  test('close() rejects later takes', async () => {
    const pool = new LeaseKeyPool(2, 1);
    await pool.close();
    await expect(pool.take()).rejects.toThrow('key pool is closed');
  });

  test('refuses a size or batch below one', () => {
    expect(() => new LeaseKeyPool(0)).toThrow('key pool size and batch must be at least 1, got 0 and 32');
    expect(() => new LeaseKeyPool(4, 0)).toThrow('got 4 and 0');
  });

  test('generateLeaseKey makes one pair in this thread', async () => {
    checkPair(await generateLeaseKey());
  });
});
