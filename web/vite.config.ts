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
