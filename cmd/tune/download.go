package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/hub"
)

// DownloadOptions are the inputs of `tune download`.
type DownloadOptions struct {
	IO       *IOStreams
	Ref      hub.Ref
	Include  []string
	Split    string
	JSON     bool
	Revision string // --revision, folded into Ref
}

func newCmdDownload(f *Factory, runF func(*DownloadOptions) error) *cobra.Command {
	opts := &DownloadOptions{IO: f.IO}
	var dataset bool
	cmd := &cobra.Command{
		Use:   "download ID[@REVISION]",
		Short: "Download a model or dataset from the Hugging Face Hub into its cache",
		Long: `Download fetches a Hub repository into the Hugging Face cache, in the layout
huggingface_hub uses ($HF_HUB_CACHE/models--org--name/snapshots/<commit>/...), so files
fetched by Python tools are reused and the other way round, and prints the snapshot
folder. Every --model, --base and --adapter flag and a recipe's base_model accept
the same ids and download on first use.

A model brings its config, generation config, tokenizer files, chat template,
README and safetensors weights (the shards its index names); never PyTorch pickles
(*.bin, *.pt, *.pth). A dataset (--dataset) brings its Parquet files (else its JSONL
or Arrow files), all splits unless --split names one (data/train-*.parquet, default/train/,
train.jsonl are the split "train"). --include globs (repeatable; '*' crosses folders)
replace that choice. --data and a recipe's dataset.path accept org/name[:split] too
(the train split by default).

Downloads are resumable (a partial file is continued with a Range request, also after
a dropped connection), run a few files at a time, and every file is checked against
the Hub's sha256 (LFS) or git blob id; a mismatch is fetched once more, then an error.

Environment: HF_ENDPOINT (default https://huggingface.co), HF_TOKEN (else the file
$HF_HOME/token) for gated and private repos, HF_HOME (default ~/.cache/huggingface),
HF_HUB_CACHE (default $HF_HOME/hub), HF_HUB_OFFLINE=1 to use the cache only.`,
		Example: `  tune download Qwen/Qwen3-8B
  tune download meta-llama/Llama-3.1-8B-Instruct@main --json
  tune download Qwen/Qwen3-8B-GGUF --include '*Q4_K_M.gguf'
  tune download --dataset HuggingFaceH4/ultrachat_200k --split train_sft
  tune download --dataset org/chats --include 'data/*.parquet'
  HF_HUB_OFFLINE=1 tune download Qwen/Qwen3-8B      # the cached snapshot, no network`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return flagErrorf("want one Hub id org/name[@revision], got %d arguments", len(args))
			}
			typ := hub.Model
			if dataset {
				typ = hub.Dataset
			}
			ref, err := hub.ParseRef(typ, args[0])
			if err != nil {
				return flagErrorf("%v", err)
			}
			if opts.Revision != "" {
				if ref.Revision != "main" && ref.Revision != opts.Revision {
					return flagErrorf("--revision %s and @%s in the id disagree", opts.Revision, ref.Revision)
				}
				if ref, err = hub.ParseRef(typ, ref.ID+"@"+opts.Revision); err != nil {
					return flagErrorf("--revision: %v", err)
				}
			}
			opts.Ref = ref
			for _, g := range opts.Include {
				if _, err := hub.CompileGlob(g); err != nil {
					return flagErrorf("--include: %v", err)
				}
			}
			if opts.Split != "" && !dataset {
				return flagErrorf("--split needs --dataset")
			}
			if runF != nil {
				return runF(opts)
			}
			return downloadRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Revision, "revision", "", "branch, tag or commit (default main; same as ID@REVISION)")
	fl.StringArrayVar(&opts.Include, "include", nil, "download only the files matching this glob (repeatable)")
	fl.BoolVar(&dataset, "dataset", false, "the id names a dataset repository")
	fl.StringVar(&opts.Split, "split", "", "with --dataset: only this split's files (train, test, ...)")
	fl.BoolVar(&opts.JSON, "json", false, "print the snapshot and its files as JSON")
	return cmd
}

func downloadRun(opts *DownloadOptions) error {
	c, done := newHubClient(opts.IO, "downloading "+opts.Ref.String())
	start := time.Now()
	// Ctrl-C stops the transfers; the partial files stay in the cache and the next run
	// resumes them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	s, err := c.Download(ctx, opts.Ref, hub.DownloadOptions{Include: opts.Include, Split: opts.Split})
	done()
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("download: %s: interrupted; run the same command again to resume", opts.Ref)
	}
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	if opts.JSON {
		files := s.Files
		if files == nil {
			files = []hub.SnapshotFile{}
		}
		return json.NewEncoder(opts.IO.Out).Encode(struct {
			Repo      string             `json:"repo"`
			Type      hub.RepoType       `json:"type"`
			Revision  string             `json:"revision"`
			Commit    string             `json:"commit"`
			Dir       string             `json:"dir"`
			Files     []hub.SnapshotFile `json:"files"`
			Bytes     int64              `json:"bytes"`
			Fetched   int64              `json:"downloaded_bytes"`
			FromCache bool               `json:"from_cache"`
			Seconds   float64            `json:"seconds"`
		}{s.Ref.ID, s.Ref.Type, s.Ref.Revision, s.Commit, s.Dir, files, s.Bytes, s.Fetched, s.FromCache, secs})
	}
	how := fmt.Sprintf("%.1f MB downloaded in %.1fs (%.0f MB/s)", float64(s.Fetched)/1e6, secs, float64(s.Fetched)/1e6/max(secs, 1e-9))
	switch {
	case s.FromCache:
		how = "from the cache, offline"
	case s.Fetched == 0:
		how = "all cached"
	}
	fmt.Fprintf(opts.IO.ErrOut, "%s (commit %.12s): %d files, %.1f MB, %s\n", s.Ref, s.Commit, len(s.Files), float64(s.Bytes)/1e6, how)
	fmt.Fprintln(opts.IO.Out, s.Dir)
	return nil
}
