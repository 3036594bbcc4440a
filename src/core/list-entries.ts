// The entries of a list input that may hold multi-line values (build-args, labels, secrets, secret-files, ssh), read
// the way docker/build-push-action reads them, so a workflow moves over unchanged. That action reads these inputs
// with @docker/actions-toolkit's Util.getInputList(name, { ignoreComma: true }), which is csv-parse (7.x) with
// { columns: false, relaxQuotes: true, relaxColumnCount: true, skipEmptyLines: true } and each record's fields joined
// again with ',' (docker/actions-toolkit src/util.ts; docker/build-push-action src/context.ts). So: one entry per line;
// an entry that starts with a double quote runs to the matching closing quote, across lines, with "" for a quote
// inside it; a quote elsewhere is an ordinary character; commas are kept. One deliberate difference: csv-parse takes
// the first line break it meets (\r\n, \n or \r) as the only record delimiter, so after a first CRLF line a bare \n
// no longer ends an entry and two lines silently become one value; here every line break ends an unquoted entry.
// This is that parser's behaviour for those options, written out (about 60 lines) instead of bundling csv-parse (30 KB minified) into dist/runner.js, which
// reads these inputs before anything else loads and is 14 KB today (issue 10: V8 compiles every byte it loads).
// __tests__/unit/list-entries.test.ts holds it to csv-parse 7.0.3's output, case by case.

export interface ListEntry {
  value: string;
  line: number; // 1-based line of the input where the entry starts: for error messages, which never show the value
}

/** An entry opened a double quote that the input never closes. `entry` is the 1-based entry number. */
export class UnclosedQuoteError extends Error {
  constructor(
    readonly entry: number,
    readonly line: number
  ) {
    super(`entry ${entry} (line ${line}) opens a double quote that is never closed`);
    this.name = 'UnclosedQuoteError';
  }
}

/**
 * Splits `text` into entries: one per line, or a double-quoted entry across lines (see the file comment). With
 * `trim` (every input but secrets, as in build-push-action) each entry loses its surrounding whitespace; entries
 * empty after that are dropped (build-push-action would pass them on as empty arguments). Throws
 * UnclosedQuoteError when a quote is never closed.
 */
export function parseListEntries(text: string, trim = true): ListEntry[] {
  const out: ListEntry[] = [];
  const delimiterAt = (i: number): number => (text.startsWith('\r\n', i) ? 2 : text[i] === '\n' || text[i] === '\r' ? 1 : 0);
  const lineAt = (offset: number): number => (text.slice(0, offset).match(/\r\n|\n|\r/g)?.length ?? 0) + 1;

  let fields: string[] = [];
  let field = '';
  let quoting = false;
  let wasQuoting = false; // the current field was quoted: an empty quoted field still makes a record
  let start = 0; // offset where the current record starts
  const endField = () => {
    fields.push(field);
    field = '';
    wasQuoting = false;
  };
  const endRecord = () => {
    const raw = fields.join(',');
    const value = trim ? raw.trim() : raw;
    if (value) out.push({ value, line: lineAt(start) });
    fields = [];
  };

  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (quoting) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 2;
        continue;
      }
      if (c === '"') {
        quoting = false;
        wasQuoting = true;
        i++;
        if (i >= text.length || text[i] === ',' || delimiterAt(i)) continue;
        field = `"${field}"`; // relaxQuotes: text after the closing quote makes the whole field literal
        continue;
      }
      field += c;
      i++;
      continue;
    }
    if (c === '"' && field.length === 0) {
      quoting = true;
      i++;
      continue;
    }
    const rl = delimiterAt(i);
    if (rl) {
      if (wasQuoting || fields.length || field.length) {
        endField();
        endRecord();
      }
      i += rl;
      start = i;
      continue;
    }
    if (c === ',') endField();
    else field += c;
    i++;
  }
  if (quoting) throw new UnclosedQuoteError(out.length + 1, lineAt(start));
  if (wasQuoting || fields.length || field.length) {
    endField();
    endRecord();
  }
  return out;
}
