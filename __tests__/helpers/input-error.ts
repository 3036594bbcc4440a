// The InputError a function throws (validation tests assert its exact message); fails the test when it throws none
// or throws something else.
import { InputError } from '../../src/core/settings';

export function errorOf(fn: () => unknown): InputError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(InputError);
    return err as InputError;
  }
  throw new Error('expected an InputError, got none');
}
