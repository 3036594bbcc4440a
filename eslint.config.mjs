// ESLint: the recommended presets of ESLint and typescript-eslint over the TypeScript and the Node scripts.
// Formatting is Prettier's (.prettierrc.json); eslint-config-prettier turns off the rules that would fight it.
//
// Syntactic rules only: the type-aware preset (recommendedTypeChecked) takes about 33 s on 2 cores here against
// about 8 s without it, and most of what it adds (no-unsafe-* on parsed JSON in the tests) is a piece of work of its
// own.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', '.tools/', 'coverage/', '.dist-build-*/', '__tests__/fixtures/'] },
  { linterOptions: { reportUnusedDisableDirectives: 'error' } },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // The house names what it drops on purpose with a leading underscore (`const { d: _d, ...pub } = priv`,
      // `(_aud) => JWT`); a name taken out of an object by a rest sibling is used by being left out.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', ignoreRestSiblings: true }
      ]
    }
  },
  {
    // Plain JavaScript: Node scripts and configs. CommonJS where Jest or dependency-cruiser loads them, where
    // require() is the module system rather than a TypeScript import written the old way.
    files: ['**/*.js', '**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', globals: globals.node },
    rules: { '@typescript-eslint/no-require-imports': 'off' }
  },
  { files: ['**/*.mjs'], languageOptions: { globals: globals.node } },
  prettier
);
