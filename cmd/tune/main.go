// Command tune fine-tunes, compresses and evaluates open LLMs from Hugging Face model folders.
package main

import (
	"fmt"
	"os"

	_ "github.com/tunellm/tune/kernels/cpu" // the CPU backend registers itself
)

func main() {
	if err := newRootCmd(defaultFactory()).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tune:", err)
		os.Exit(exitCode(err))
	}
}
