package main

import (
	"github.com/tunellm/tune/lora"
	"github.com/tunellm/tune/model"
)

// loadModel loads a model folder and, when adapterDir is set, attaches that PEFT
// adapter unmerged (as PeftModel.from_pretrained does): what --adapter means on
// every command that runs a model.
func loadModel(modelDir, adapterDir string) (*model.Model, error) {
	m, err := model.Load(modelDir, model.LoadOptions{})
	if err != nil {
		return nil, err
	}
	if adapterDir != "" {
		a, err := lora.Load(adapterDir, m.Config)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.SetAdapter(a)
	}
	return m, nil
}
