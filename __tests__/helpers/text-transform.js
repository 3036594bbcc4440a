// Jest transform mirroring esbuild's `text` loader: `import text from './x.proto'` gives the file's text.
module.exports = {
  process(sourceText) {
    return { code: `module.exports = ${JSON.stringify(sourceText)}; module.exports.default = module.exports;` };
  }
};
