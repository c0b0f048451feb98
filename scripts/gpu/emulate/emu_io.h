// emu_io.h: the cases-file reader and output writer shared by the emulator
// check programs (devpass_check, dora_check, attn_tc_check): a cases file
// starts with a 4-byte tag, then little-endian values; outputs are raw.
#pragma once
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

struct reader {
    std::vector<unsigned char> b;
    size_t at = 0;
    template <class T>
    std::vector<T> get(size_t n) {
        if (at + n * sizeof(T) > b.size()) throw std::runtime_error("short cases file");
        std::vector<T> v(n);
        if (n) std::memcpy(v.data(), &b[at], n * sizeof(T));
        at += n * sizeof(T);
        return v;
    }
    template <class T>
    T one() { return get<T>(1)[0]; }
};

// open_cases reads the cases file at path and checks its 4-byte tag.
inline reader open_cases(const char* path, const char* tag) {
    std::ifstream in(path, std::ios::binary);
    reader r{std::vector<unsigned char>(std::istreambuf_iterator<char>(in), {})};
    auto t = r.get<char>(4);
    if (std::memcmp(t.data(), tag, 4) != 0) throw std::runtime_error(std::string("not a cases file of tag ") + tag);
    return r;
}

template <class T>
static void put(std::ofstream& o, const std::vector<T>& v) {
    o.write((const char*)v.data(), v.size() * sizeof(T));
}
