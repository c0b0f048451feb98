package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/tunellm/tune/hub"
	"github.com/tunellm/tune/recipes"
)

// resolveModelArg turns a --model/--base/--adapter argument into a folder: an existing
// local path is returned unchanged; a Hub id "org/name[@rev]" that is not a local path
// is downloaded into the Hugging Face cache (or found there when HF_HUB_OFFLINE=1 or
// the Hub is out of reach) and becomes its snapshot folder. Anything else is returned
// unchanged for the command's own "not found" error.
func resolveModelArg(ctx context.Context, io *IOStreams, arg string) (string, error) {
	if !isHubArg(arg, ".gguf", ".safetensors", ".json") {
		return arg, nil
	}
	c, done := newHubClient(io, "downloading "+arg)
	s, err := c.ResolveModel(ctx, arg, hub.DownloadOptions{})
	done()
	if err != nil {
		return "", notLocalEither(err, arg)
	}
	return s.Dir, nil
}

// resolveModelArgs resolves each non-empty *arg in place (--model, --base, --adapter of
// one command), in order, stopping at the first error.
func resolveModelArgs(ctx context.Context, io *IOStreams, args ...*string) error {
	for _, a := range args {
		dir, err := resolveModelArg(ctx, io, *a)
		if err != nil {
			return err
		}
		*a = dir
	}
	return nil
}

// resolveDatasetArg is resolveModelArg for --data and the recipe's dataset.path: a Hub
// dataset id "org/name[@rev][:split]" becomes the path of that split's files in the
// cache (a file, or a glob such as .../data/train-*.parquet), downloading them first.
// The split defaults to train; a dataset whose file names say nothing of splits is
// taken whole. Parquet files are preferred, else JSONL, else Arrow.
func resolveDatasetArg(ctx context.Context, io *IOStreams, arg string) (string, error) {
	id, split := arg, ""
	if i := strings.LastIndexByte(arg, ':'); i > 0 && !strings.Contains(arg[i:], "/") {
		id, split = arg[:i], arg[i+1:]
	}
	if _, err := os.Lstat(arg); err == nil || !isHubArg(id, ".parquet", ".jsonl", ".json", ".arrow", ".txt", ".csv") {
		return arg, nil
	}
	if split == "" {
		split = "train"
	}
	c, done := newHubClient(io, "downloading "+id)
	s, err := c.ResolveDataset(ctx, id, hub.DownloadOptions{Split: split})
	done()
	if err != nil {
		return "", notLocalEither(err, arg)
	}
	return s.DataPath()
}

// isHubArg: not a local path, shaped like org/name[@rev], and not named like a file.
func isHubArg(arg string, fileExts ...string) bool {
	if arg == "" {
		return false
	}
	if _, err := os.Lstat(arg); err == nil {
		return false
	}
	if !hub.LooksLikeID(arg) {
		return false
	}
	id, _, _ := strings.Cut(arg, "@")
	for _, e := range fileExts {
		if strings.HasSuffix(strings.ToLower(id), e) {
			return false
		}
	}
	return true
}

// notLocalEither adds, to a "not found" from the Hub, that the argument was tried as a
// local path first (a mistyped folder reads as a Hub id).
func notLocalEither(err error, arg string) error {
	if errors.Is(err, hub.ErrNotFound) {
		return fmt.Errorf("%w; no local path %s either", err, arg)
	}
	return err
}

// newHubClient is a hub.Client configured from the environment (HF_ENDPOINT, HF_TOKEN,
// HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE), with warnings on stderr and a progress bar
// (bytes, throughput, ETA) when stderr is a terminal. Call done when the download ends.
func newHubClient(io *IOStreams, desc string) (c *hub.Client, done func()) {
	c = hub.NewFromEnv()
	c.UserAgent = "tune/" + versionString()
	c.Warn = func(msg string) { fmt.Fprintln(io.ErrOut, "warning:", msg) }
	var bar *progressbar.ProgressBar
	if io.ErrTTY {
		c.Progress = func(n, total int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(io.ErrOut),
					progressbar.OptionSetDescription(desc), progressbar.OptionShowBytes(true),
					progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true),
					progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
			}
			if bar.GetMax64() != total {
				bar.ChangeMax64(total)
			}
			bar.Set64(n)
		}
	}
	return c, func() {
		if bar != nil {
			bar.Finish()
		}
	}
}

// resolveRecipe downloads (or finds in the cache) the Hub ids a recipe names as
// model.path and dataset.path (recipes.Recipe records them in Model.ID and
// Dataset.ID when no such local path exists) and points the recipe at the
// local copies. r.Model.ID stays: adapters record it as their
// base_model_name_or_path, as PEFT does. Idempotent.
func resolveRecipe(ctx context.Context, io *IOStreams, r *recipes.Recipe) error {
	if r.Model.ID != "" && !exists(r.Model.Path) {
		dir, err := resolveModelArg(ctx, io, r.Model.ID)
		if err != nil {
			return fmt.Errorf("%s: model.path: %w", r.File, err)
		}
		r.Model.Path = dir
	}
	if r.Dataset.ID != "" && !exists(r.Dataset.Path) {
		path, err := resolveDatasetArg(ctx, io, r.Dataset.ID)
		if err != nil {
			return fmt.Errorf("%s: dataset.path: %w", r.File, err)
		}
		r.Dataset.Path = path
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
