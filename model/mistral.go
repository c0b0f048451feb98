package model

import "fmt"

// Mistral (MistralConfig, modeling_mistral.py): no biases; every layer uses
// sliding_window when it is non-null. A config.json without the key gets the
// class default 4096, as transformers does.
func init() {
	families["mistral"] = family{
		defaultEps: 1e-6, defaultTheta: 10000,
		window: func(raw *rawConfig, layers int) ([]int, error) {
			w := 4096
			if raw.SlidingWindow != nil {
				w = *raw.SlidingWindow
			}
			if raw.SlidingWindow == nil && raw.hasKey("sliding_window") {
				w = 0 // explicit null
			}
			if w < 0 {
				return nil, fmt.Errorf("config.json: sliding_window = %d, want >= 0 or null", w)
			}
			ws := make([]int, layers)
			for i := range ws {
				ws[i] = w
			}
			return ws, nil
		},
	}
}
