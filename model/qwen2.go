package model

import "fmt"

// Qwen2 (Qwen2Config, modeling_qwen2.py): q, k, v always carry a bias, o does
// not. sliding_window only applies when use_sliding_window is true, and then to
// layers >= max_window_layers (or as layer_types says): real Qwen2.5 configs
// carry a sliding_window that transformers ignores.
func init() {
	families["qwen2"] = family{
		defaultEps: 1e-6, defaultTheta: 10000,
		qkvBiasAlways: true,
		window:        qwenWindows,
	}
}

func qwenWindows(raw *rawConfig, layers int) ([]int, error) {
	ws := make([]int, layers)
	if !raw.UseSlidingWindow {
		return ws, nil
	}
	w := 4096
	if raw.SlidingWindow != nil {
		w = *raw.SlidingWindow
	} else if raw.hasKey("sliding_window") {
		return ws, nil // null window: full attention everywhere
	}
	if w <= 0 {
		return nil, fmt.Errorf("config.json: sliding_window = %d with use_sliding_window true, want > 0", w)
	}
	if raw.LayerTypes != nil {
		if len(raw.LayerTypes) != layers {
			return nil, fmt.Errorf("config.json: layer_types has %d entries, num_hidden_layers = %d", len(raw.LayerTypes), layers)
		}
		for i, t := range raw.LayerTypes {
			switch t {
			case "sliding_attention":
				ws[i] = w
			case "full_attention":
			default:
				return nil, fmt.Errorf("config.json: layer_types[%d] = %q (supported: full_attention, sliding_attention)", i, t)
			}
		}
		return ws, nil
	}
	maxWindow := 28
	if raw.MaxWindowLayers != nil {
		maxWindow = *raw.MaxWindowLayers
	}
	for i := range ws {
		if i >= maxWindow {
			ws[i] = w
		}
	}
	return ws, nil
}
