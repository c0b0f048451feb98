// Package safetensors reads and writes Hugging Face safetensors files and
// sharded model folders (model.safetensors.index.json).
//
// The reader maps files read-only and hands out zero-copy views of tensor
// bytes; it validates headers as strictly as the reference Rust crate
// (huggingface/safetensors, safetensors/src/tensor.rs): tensors must tile the
// data section exactly, with no overlap, gap or trailing bytes. The writer
// streams tensors one at a time through a buffer, so memory stays bounded, and
// publishes each file by rename after fsync.
//
// It is not a tensor library: beyond F32/F16/BF16 to float32 conversion it
// does not interpret data, reshape, slice or cast. Data is little-endian as
// the format requires; the conversion fast paths reinterpret bytes in place
// only on little-endian hosts (amd64, arm64) and fall back to byte decoding
// elsewhere.
package safetensors
