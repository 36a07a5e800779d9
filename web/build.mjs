// Bundles the viewer into one classic script (global `SpaceportViewer`) that a page can load by URL or
// inline, including from file://. Output: spaceport/viewer/static/ (git-ignored, built by scripts/setup.sh).
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const outfile = fileURLToPath(new URL('../spaceport/viewer/static/spaceport-viewer.js', import.meta.url));

await build({
    entryPoints: [fileURLToPath(new URL('src/index.js', import.meta.url))],
    bundle: true,
    format: 'iife',
    globalName: 'SpaceportViewer',
    target: ['chrome110', 'firefox115', 'safari16'],
    // minified in the build output only (the engine is ~2 MB less this way; the sources stay readable)
    minify: true,
    legalComments: 'eof',
    outfile,
    logLevel: 'warning'
});
console.log(`built ${outfile}`);
