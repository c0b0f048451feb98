// Shared helpers for the llama.cpp side of tune's benchmarks and oracles.
// llama.cpp comes from node-llama-cpp's prebuilt CPU binaries: no compiler,
// no GPU, no download at run time (build: "never").
import {getLlama} from "node-llama-cpp";
import fs from "node:fs";

export async function loadLlama() {
    return getLlama({gpu: false, build: "never", logLevel: "error", progressLogs: false, skipDownload: true});
}

// llamaCppVersion names the llama.cpp the prebuilt binaries were built from.
export function llamaCppVersion(llama) {
    const pkg = JSON.parse(fs.readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url)));
    const rel = llama.llamaCppRelease ?? {};
    return `node-llama-cpp ${pkg.version}, ${rel.repo ?? "llama.cpp"} ${rel.release ?? "?"}`;
}

export function die(msg) {
    console.error(msg);
    process.exit(2);
}
