/// <reference types="vitest/config" />
// Build of the pacskit workstation. The output goes into the Python package (src/pacskit/web_assets,
// gitignored, shipped as package data) and is served by the workstation add-in under /ui/.
import { defineConfig } from "vite";
import { fileURLToPath } from "node:url";

const outDir = fileURLToPath(new URL("../src/pacskit/web_assets", import.meta.url));

export default defineConfig({
  base: "/ui/",
  build: {
    outDir,
    emptyOutDir: true,
    target: "es2022",
    chunkSizeWarningLimit: 4096,
    // the app (index.html) and the standalone viewer page (viewer.html?study=..., web/src/viewer)
    rollupOptions: {
      input: {
        main: fileURLToPath(new URL("index.html", import.meta.url)),
        viewer: fileURLToPath(new URL("viewer.html", import.meta.url)),
      },
    },
  },
  // the image loader's worker and WASM codecs are found by URL relative to its own modules: keep it out
  // of the dev pre-bundle (dicom-parser is CommonJS and must be pre-bundled)
  optimizeDeps: {
    exclude: ["@cornerstonejs/dicom-image-loader"],
    include: ["dicom-parser"],
  },
  // Cornerstone's image loader decodes in web workers (ES modules) with WASM codecs.
  worker: { format: "es" },
  server: {
    // `npm run dev` against a running `pacskit serve --web` (PACSKIT_URL, default the standard port).
    proxy: {
      "/api": process.env.PACSKIT_URL ?? "http://127.0.0.1:8042",
      "/dicom-web": process.env.PACSKIT_URL ?? "http://127.0.0.1:8042",
    },
  },
  test: {
    environment: "node", // DOM tests say `@vitest-environment jsdom` in their first line
    include: ["src/**/*.test.ts"],
  },
});
