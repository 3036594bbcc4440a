// Jest setup file (every test file). better-sqlite3's native addon is loaded once per process by Node's own
// require, so every test file in a Jest worker shares it, while each file gets a fresh module registry and
// global realm. The addon registers the SqliteError class only once (`addon.isInitialized`), so test files
// after the first one to open a database got SqliteErrors from that earlier file's realm: not
// `instanceof Error` here, so e.g. `rejects.toThrow(/CHECK constraint failed/)` said "did not throw".
// Clearing the flag makes this file's first `new Database()` register this realm's SqliteError.
const path = require('node:path');

const pkgDir = path.dirname(require.resolve('better-sqlite3/package.json'));
const bindings = require(require.resolve('bindings', { paths: [pkgDir] }));
bindings({ bindings: 'better_sqlite3.node', module_root: pkgDir }).isInitialized = false;
