package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ebitengine/purego"
)

// searchDirs lists the folders searched for the CUDA libraries, in order:
// $TUNE_CUDA_LIB_DIR (a list like PATH), $LD_LIBRARY_PATH, /usr/local/cuda*/lib64
// (newest name first), the distribution's library folders, and the
// nvidia/*/lib folders of pip-installed CUDA wheels (nvidia-cublas-cu12, ...)
// in system, user and virtualenv site-packages. getenv and glob are
// parameters so tests can fake a machine.
func searchDirs(getenv func(string) string, glob func(string) ([]string, error)) []string {
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if d == "" || seen[d] {
			return
		}
		seen[d] = true
		dirs = append(dirs, d)
	}
	globAdd := func(pattern string) {
		m, _ := glob(pattern)
		slices.Sort(m)
		slices.Reverse(m) // cuda-12.4 before cuda-11.8
		for _, d := range m {
			add(d)
		}
	}
	for _, v := range []string{"TUNE_CUDA_LIB_DIR", "LD_LIBRARY_PATH"} {
		for _, d := range filepath.SplitList(getenv(v)) {
			add(d)
		}
	}
	add("/usr/local/cuda/lib64")
	globAdd("/usr/local/cuda-*/lib64")
	add("/usr/lib/x86_64-linux-gnu")
	add("/usr/lib/aarch64-linux-gnu")
	add("/usr/lib64")
	add("/usr/local/nvidia/lib64") // NVIDIA container toolkit
	add("/usr/lib/wsl/lib")        // WSL2
	var sites []string
	if v := getenv("VIRTUAL_ENV"); v != "" {
		sites = append(sites, v+"/lib/python3*/site-packages")
	}
	if h := getenv("HOME"); h != "" {
		sites = append(sites, h+"/.local/lib/python3*/site-packages")
	}
	sites = append(sites, "/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages",
		"/usr/lib/python3/dist-packages", "/usr/lib/python3*/site-packages", "/opt/conda/lib/python3*/site-packages")
	for _, s := range sites {
		globAdd(s + "/nvidia/*/lib")
	}
	return dirs
}

// library is a dlopened shared object.
type library struct {
	path   string
	handle uintptr
}

// openLibrary tries each name in each search folder, then each bare name
// (the dynamic loader's own search: ld.so.cache). The error lists what was
// tried, so "no driver" and "driver in an odd place" are told apart.
func openLibrary(names []string) (*library, error) {
	return openLibraryIn(names, searchDirs(osGetenv, globFn))
}

// The environment and file system seen by the search; tests replace them.
var (
	osGetenv = os.Getenv
	globFn   = filepath.Glob
)

func openLibraryIn(names []string, dirs []string) (*library, error) {
	var errs []string
	for _, d := range dirs {
		for _, n := range names {
			p := filepath.Join(d, n)
			if _, err := os.Stat(p); err != nil {
				continue
			}
			h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err == nil {
				return &library{path: p, handle: h}, nil
			}
			errs = append(errs, fmt.Sprintf("%s: %v", p, err))
		}
	}
	for _, n := range names {
		h, err := purego.Dlopen(n, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			return &library{path: n, handle: h}, nil
		}
	}
	msg := fmt.Sprintf("%s not found in %s or the loader's path", strings.Join(names, ", "), strings.Join(dirs, ":"))
	if len(errs) > 0 {
		msg += " (" + strings.Join(errs, "; ") + ")"
	}
	return nil, errors.New(msg)
}

// bind resolves each symbol into its Go function pointer; a missing symbol
// is an error naming it (an old library).
func (l *library) bind(syms map[string]any) error {
	for name, fptr := range syms {
		addr, err := purego.Dlsym(l.handle, name)
		if err != nil || addr == 0 {
			return fmt.Errorf("%s: missing symbol %s (library too old?)", l.path, name)
		}
		purego.RegisterFunc(fptr, addr)
	}
	return nil
}
