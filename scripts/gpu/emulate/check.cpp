// check.cpp: runs the CUDA kernels of kernels/cuda/kernels.cu on the CPU
// (emu.h) over the PyTorch float64 cases written by scripts/gpu/torch_ref.py,
// with the launch shapes kernels/cuda/ops.go uses, and prints a table of
// errors. A check of the kernels' logic without a GPU:
//
//   /usr/bin/python3 scripts/gpu/torch_ref.py /tmp/torchref
//   g++ -std=c++20 -O2 -pthread -ffp-contract=off -o /tmp/emucheck scripts/gpu/emulate/check.cpp
//   /tmp/emucheck /tmp/torchref
//
// (scripts/gpu/emulate/run.sh does the three.) Exit status 1 when a check fails.
#define TUNE_EMULATE 1
#include "emu.h"
#include "../../../kernels/cuda/kernels.cu"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

static const unsigned rowThreads = 256, ewThreads = 256, attnWarps = 4;
static unsigned blocks(long long n, unsigned per) { return (unsigned)((n + per - 1) / per); }

template <class T>
static std::vector<T> readRaw(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "missing %s\n", p.c_str());
        std::exit(2);
    }
    std::vector<char> b((std::istreambuf_iterator<char>(f)), {});
    std::vector<T> v(b.size() / sizeof(T));
    std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
    return v;
}

// params parses the flat JSON object torch_ref.py writes.
static std::map<std::string, std::string> params(const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string s = ss.str(), key;
    std::map<std::string, std::string> m;
    size_t i = 0;
    while ((i = s.find('"', i)) != std::string::npos) {
        size_t j = s.find('"', i + 1);
        key = s.substr(i + 1, j - i - 1);
        size_t c = s.find(':', j);
        size_t k = c + 1;
        while (s[k] == ' ') k++;
        size_t e;
        if (s[k] == '"') {
            e = s.find('"', k + 1);
            m[key] = s.substr(k + 1, e - k - 1);
            e++;
        } else {
            e = s.find_first_of(",}", k);
            m[key] = s.substr(k, e - k);
        }
        i = e;
    }
    return m;
}

static int failures = 0;

template <class A, class B>
static void compare(const std::string& op, const std::string& name, const std::vector<A>& got, const std::vector<B>& want, double tol) {
    double maxAbs = 0, scale = 0;
    bool nan = got.size() != want.size();
    for (size_t i = 0; i < got.size() && i < want.size(); i++) {
        double g = got[i], w = want[i];
        if (std::isnan(g) || std::isinf(g)) {
            nan = true;
            continue;
        }
        maxAbs = std::max(maxAbs, std::fabs(g - w));
        scale = std::max(scale, std::fabs(w));
    }
    double rel = maxAbs / std::max(scale, 1e-30);
    bool ok = !nan && rel <= tol;
    if (!ok) failures++;
    std::printf("%-30s %-34s %12.3g %12.3g %10.1g %s\n", op.c_str(), name.c_str(), maxAbs, rel, tol, ok ? "ok" : (nan ? "FAIL (NaN/size)" : "FAIL"));
}

int main(int argc, char** argv) {
    if (argc != 2 && argc != 3) {
        std::fprintf(stderr, "usage: %s TORCHREF_DIR [CASE_SUBSTRING]\n", argv[0]);
        return 2;
    }
    std::vector<fs::path> cases;
    for (auto& e : fs::directory_iterator(argv[1]))
        if (fs::exists(e.path() / "params.json") && (argc < 3 || e.path().filename().string().find(argv[2]) != std::string::npos))
            cases.push_back(e.path());
    std::sort(cases.begin(), cases.end());
    std::printf("%-30s %-34s %12s %12s %10s\n", "emulated kernel vs torch", "case", "max abs err", "max rel err", "tolerance");
    for (auto& d : cases) {
        auto p = params(d / "params.json");
        auto I = [&](const char* k) { return p.count(k) ? std::stoi(p[k]) : 0; };
        auto F = [&](const char* k) { return std::stod(p[k]); };
        auto f = [&](const char* n) { return readRaw<float>(d / (std::string(n) + ".f32")); };
        auto ints = [&](const char* n) { return readRaw<int>(d / (std::string(n) + ".i32")); };
        std::string op = p["op"], name = d.filename().string();
        if (op == "rmsnorm") {
            int N = I("N"), C = I("C");
            float eps = (float)F("eps");
            auto x = f("x"), w = f("w"), dout = f("dout");
            std::vector<float> out(x.size()), din(x.size()), dw(C), rstd(N);
            emu_launch(N, rowThreads, [&] { rmsnorm_fwd(out.data(), x.data(), w.data(), eps, N, C); });
            compare("rmsnorm_fwd", name, out, f("out"), 1e-6);
            emu_launch(N, rowThreads, [&] { rmsnorm_bwd_din(din.data(), rstd.data(), dout.data(), x.data(), w.data(), eps, N, C); });
            emu_launch(blocks(C, ewThreads), ewThreads, [&] { rmsnorm_bwd_dw(dw.data(), rstd.data(), dout.data(), x.data(), N, C); });
            compare("rmsnorm_bwd din", name, din, f("din"), 1e-5);
            compare("rmsnorm_bwd dw", name, dw, f("dw"), 1e-5);
        } else if (op == "rope") {
            int T = I("T"), NH = I("NH"), HD = I("HD");
            auto x = f("x"), cs = f("cos"), sn = f("sin");
            auto y = x;
            unsigned bt = std::min(rowThreads, (unsigned)((HD / 2 + 31) / 32 * 32));
            emu_launch(T * NH, bt, [&] { rope(y.data(), cs.data(), sn.data(), T, NH, HD, 1); });
            compare("rope fwd", name, y, f("out"), 1e-6);
            emu_launch(T * NH, bt, [&] { rope(y.data(), cs.data(), sn.data(), T, NH, HD, -1); });
            compare("rope bwd (inverts fwd)", name, y, x, 1e-6);
        } else if (op == "attention") {
            int T = I("T"), NH = I("NH"), KVH = I("KVH"), HD = I("HD"), W = I("window");
            auto q = f("q"), k = f("k"), v = f("v"), dout = f("dout");
            auto seg = ints("segStart");
            float scale = (float)(1 / std::sqrt((double)HD));
            std::vector<float> out(q.size()), dq(q.size()), dk(k.size()), dv(v.size()), lse(T * NH), dsum(T * NH);
            emu_launch(blocks((long long)T * NH, attnWarps), attnWarps * 32,
                       [&] { attention_fwd(out.data(), q.data(), k.data(), v.data(), seg.data(), 0, T, NH, KVH, HD, W, scale); });
            compare("attention_fwd packed", name, out, f("out"), 1e-5);
            emu_launch(blocks((long long)T * NH, attnWarps), attnWarps * 32, [&] {
                attention_bwd_q(dq.data(), lse.data(), dsum.data(), dout.data(), q.data(), k.data(), v.data(), seg.data(), T, NH, KVH, HD, W, scale);
            });
            emu_launch(blocks((long long)T * KVH, attnWarps), attnWarps * 32, [&] {
                attention_bwd_kv(dk.data(), dv.data(), lse.data(), dsum.data(), dout.data(), q.data(), k.data(), v.data(), seg.data(), T, NH, KVH, HD, W, scale);
            });
            compare("attention_bwd dq", name, dq, f("dq"), 1e-5);
            compare("attention_bwd dk", name, dk, f("dk"), 1e-5);
            compare("attention_bwd dv", name, dv, f("dv"), 1e-5);
        } else if (op == "attention_cache") {
            int pos0 = I("pos0"), T = I("T"), NH = I("NH"), KVH = I("KVH"), HD = I("HD"), W = I("window");
            auto q = f("q"), k = f("k"), v = f("v");
            float scale = (float)(1 / std::sqrt((double)HD));
            std::vector<float> out(q.size());
            emu_launch(blocks((long long)T * NH, attnWarps), attnWarps * 32,
                       [&] { attention_fwd(out.data(), q.data(), k.data(), v.data(), nullptr, pos0, T, NH, KVH, HD, W, scale); });
            compare("attention_fwd cache", name, out, f("out"), 1e-5);
        } else if (op == "swiglu") {
            long long n = I("N");
            auto g = f("gate"), u = f("up"), dout = f("dout");
            std::vector<float> out(n), dg(n), du(n);
            emu_launch(blocks(n, ewThreads), ewThreads, [&] { swiglu_fwd(out.data(), g.data(), u.data(), n); });
            compare("swiglu_fwd", name, out, f("out"), 1e-6);
            emu_launch(blocks(n, ewThreads), ewThreads, [&] { swiglu_bwd(dg.data(), du.data(), dout.data(), g.data(), u.data(), n); });
            compare("swiglu_bwd dgate", name, dg, f("dgate"), 1e-6);
            compare("swiglu_bwd dup", name, du, f("dup"), 1e-6);
        } else if (op == "nll") {
            int N = I("N"), V = I("V");
            float dloss = (float)F("dloss");
            auto x = f("logits");
            auto tg = ints("targets");
            std::vector<double> nll(N);
            emu_launch(N, rowThreads, [&] { nll_fwd(nll.data(), x.data(), tg.data(), N, V); });
            compare("nll_fwd", name, nll, f("nll"), 1e-6);
            auto d = x;  // in place, as LogSoftmaxNLLBackward allows
            emu_launch(N, rowThreads, [&] { nll_bwd(d.data(), d.data(), tg.data(), dloss, N, V); });
            compare("nll_bwd (in place)", name, d, f("dlogits"), 1e-6);
        } else if (op == "softmax") {
            int N = I("N"), C = I("C");
            auto x = f("x");
            emu_launch(N, rowThreads, [&] { softmax_fwd(x.data(), x.data(), N, C); });
            compare("softmax_fwd (in place)", name, x, f("out"), 1e-6);
        } else if (op == "matmul") {
            continue;  // cuBLAS: not emulated
        } else {
            std::printf("unknown op %s in %s\n", op.c_str(), name.c_str());
            failures++;
        }
    }
    // Kernels without a torch case: checked against direct definitions.
    {
        int T = 9, C = 70, V = 5;
        std::vector<float> tab(V * C), out(T * C), dtab(V * C, 0.5f), dout(T * C);
        std::vector<int> tok = {0, 4, 4, 1, 3, 0, 2, 4, 1};
        for (size_t i = 0; i < tab.size(); i++) tab[i] = std::sin(0.37 * i);
        for (size_t i = 0; i < dout.size(); i++) dout[i] = std::cos(0.11 * i);
        emu_launch(T, rowThreads, [&] { embedding_fwd(out.data(), tok.data(), tab.data(), T, C); });
        std::vector<float> want(T * C), wantd(V * C, 0.5f);
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) want[t * C + c] = tab[tok[t] * C + c], wantd[tok[t] * C + c] += dout[t * C + c];
        compare("embedding_fwd", "T=9 C=70", out, want, 0);
        emu_launch(blocks(C, ewThreads), ewThreads, [&] { embedding_bwd(dtab.data(), dout.data(), tok.data(), T, C); });
        compare("embedding_bwd", "T=9 C=70", dtab, wantd, 0);

        long long n = 1000;
        std::vector<float> x(n), y(n);
        std::vector<unsigned short> h(n);
        for (long long i = 0; i < n; i++) x[i] = std::ldexp(std::sin(1.3 * i), (int)(i % 40) - 20);
        emu_launch(blocks(n, ewThreads), ewThreads, [&] { f32_to_bf16(h.data(), x.data(), n); });
        emu_launch(blocks(n, ewThreads), ewThreads, [&] { bf16_to_f32(y.data(), h.data(), n); });
        compare("bf16 round trip", "N=1000", y, x, 1.0 / 256);
        int Tb = 6, OC = 35;
        std::vector<float> o(Tb * OC, 1.0f), bias(OC), db(OC, 0.25f), wo(Tb * OC), wdb(OC, 0.25f);
        for (int i = 0; i < OC; i++) bias[i] = i * 0.5f;
        for (int t = 0; t < Tb; t++)
            for (int i = 0; i < OC; i++) wo[t * OC + i] = 1.0f + bias[i], wdb[i] += 1.0f + bias[i];
        emu_launch(blocks(Tb * OC, ewThreads), ewThreads, [&] { bias_add(o.data(), bias.data(), Tb, OC); });
        compare("bias_add", "T=6 OC=35", o, wo, 0);
        emu_launch(blocks(OC, ewThreads), ewThreads, [&] { bias_bwd(db.data(), o.data(), Tb, OC); });
        compare("bias_bwd", "T=6 OC=35", db, wdb, 1e-7);
    }
    std::printf("%s: %d failing checks\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
