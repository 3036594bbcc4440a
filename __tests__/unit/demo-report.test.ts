import * as fs from 'fs';
import * as path from 'path';
import { untouchedSteps } from '../../harness/demo-report';

const app = fs.readFileSync(path.join(__dirname, '../../examples/app/Dockerfile'), 'utf8');

// What a change under src/ leaves untouched in examples/app: system (1 step) and deps (3 steps) of every target.
test.each(['api', 'worker', 'web', 'migrations'])('examples/app target %s: 4 steps come before COPY src/', (t) => {
  expect(untouchedSteps(app, t, 'src/')).toBe(4);
});

test.each([
  ['no copy of the changed path: every step is untouched', 'FROM x\nRUN a\nRUN b\n', 'src/', 2],
  ['the change is copied first: nothing is untouched', 'FROM x\nCOPY src/ /s\nRUN a\n', 'src/', 0],
  ['ADD counts like COPY, flags before the path', 'FROM x\nRUN a\nADD --chown=1 src/ /s\nRUN b\n', 'src/', 1],
  ['another path is not the change', 'FROM x\nCOPY deps.txt /d\nCOPY src/ /s\n', 'src/', 1]
])('%s', (_, dockerfile, prefix, expected) => {
  expect(untouchedSteps(dockerfile, '', prefix)).toBe(expected);
});
