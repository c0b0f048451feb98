// Package gguf reads and writes GGUF files, the single-file model format of
// llama.cpp (ggml), version 3, little endian.
//
// Layout (ggml/docs/gguf.md, gguf-py gguf_writer.py):
//
//	magic "GGUF" | version u32 | tensor count u64 | kv count u64
//	kv*:     key string | value type u32 | value
//	info*:   name string | n_dims u32 | dims u64[n_dims] (ggml order) | ggml type u32 | offset u64
//	padding to the alignment (general.alignment, default 32)
//	data:    each tensor at its offset (relative to the data start), padded to the alignment
//
// A string is a u64 byte length followed by UTF-8 bytes; an array is an item
// type u32, a u64 count and the items. Shapes in this package's API are in
// numpy (row-major, slowest first) order; the file stores them reversed.
//
// It is a leaf: standard library only. It knows nothing about model
// architectures or tensor names (that is quantize.ExportGGUF) and does not
// quantize (the quant formats live in package quantize); its Type table only
// gives the block geometry needed to size and validate tensor data.
package gguf
