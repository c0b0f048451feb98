package recipes

import (
	"github.com/tunellm/tune/data"
)

// DataConfig is the recipe's dataset part as data.Prepare takes it.
func (r *Recipe) DataConfig() data.Config {
	addEOS := r.Dataset.AddEOS
	return data.Config{
		Path:         r.Dataset.Path,
		Format:       r.Dataset.Format,
		Columns:      r.Dataset.Columns,
		SystemPrompt: r.Dataset.SystemPrompt,
		AddEOS:       &addEOS,
		TrainOn:      r.Dataset.TrainOn,
		RoleMap:      r.Dataset.RoleMap,
		MaxSeqLen:    r.Train.MaxSeqLen,
		Packing:      r.Train.Packing,
		Seed:         r.Train.Seed,
		ValFraction:  r.Dataset.Validation.Fraction,
		ValPath:      r.Dataset.Validation.Path,
		SkipBadRows:  r.Dataset.SkipBadRows,
		CacheDir:     r.Dataset.CacheDir,
		ChatTemplate: r.Dataset.ChatTemplate,
		TokenizerDir: r.Model.Path,
	}
}
