// Package mmap maps model files read-only (safetensors checkpoints, GGUF
// files), so weights are views of the page cache and never copied; where
// mapping is not available the file is read into memory instead.
package mmap
