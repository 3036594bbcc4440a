/** A raw input that does not validate: the message names the input and what is expected, never a secret. */
export class InputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InputError';
  }
}
