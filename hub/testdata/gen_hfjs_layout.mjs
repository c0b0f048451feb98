// Downloads the fake Hub's layout repos with huggingface.js (npm @huggingface/hub 2.17.5,
// whose snapshotDownload writes huggingface_hub's cache layout), so that the tree it
// leaves can be compared with the one tune leaves. Run by `go test ./hub -run
// TestCacheLayoutMatchesHuggingFaceJS -hfjs DIR`, where DIR holds node_modules/@huggingface/hub
// (npm install @huggingface/hub@2.17.5); the test passes: ENDPOINT CACHEDIR.
import { snapshotDownload } from "@huggingface/hub";

const [hubUrl, cacheDir] = process.argv.slice(-2);
await snapshotDownload({ repo: "tune-test/layout", revision: "main", hubUrl, cacheDir });
await snapshotDownload({ repo: { type: "dataset", name: "tune-test/layout-data" }, revision: "main", hubUrl, cacheDir });
