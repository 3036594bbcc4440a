// The action's own workflow-command writer (src/github/workflow-commands.ts) says exactly what @actions/core's
// command module says for the same command, properties and message.
import * as os from 'os';
import { issueCommand } from '@actions/core/lib/command';
import { commandText } from '../../src/github/workflow-commands';

function coreSays(name: string, props: Record<string, unknown>, message: unknown): string {
  const out: string[] = [];
  const spy = jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    out.push(String(s));
    return true;
  });
  try {
    issueCommand(name, props, message);
  } finally {
    spy.mockRestore();
  }
  return out.join('');
}

test.each<[string, Record<string, unknown>, unknown]>([
  ['error', {}, "Missing input 'endpoint': 100% sure\nsecond line\r"],
  ['warning', {}, 'a, b: c'],
  ['debug', {}, 'x::y'],
  ['add-mask', {}, 's3cr%t'],
  ['group', {}, 'Build Cloud: provision'],
  ['endgroup', {}, ''],
  ['error', { file: 'a,b:c.ts', line: 3, col: undefined }, 'm'],
  ['error', { title: '' }, 'all properties empty'],
  ['save-state', { name: 'k' }, '{"a":1}'],
  ['set-output', { name: 'o' }, { json: true }],
  ['', {}, 'no name']
])('%j %j %j', (name, props, message) => {
  expect(commandText(name, props, message)).toBe(coreSays(name, props, message));
});

test('a line ends with the platform line ending', () => {
  expect(commandText('debug', {}, 'x').endsWith(os.EOL)).toBe(true);
});
