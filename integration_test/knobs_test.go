package integration_test

import (
	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testknobs"
)

// knobbedHooks is a Config.Hooks value that carries knobs to the one client
// created with it (see internal/testknobs), besides the hooks it embeds.
type knobbedHooks struct {
	sqldlm.Hooks
	knobs *testknobs.Knobs
}

func (h knobbedHooks) Knobs() *testknobs.Knobs { return h.knobs }

// withKnobs returns cfg with its Hooks (none: NopHooks) carrying k. Give
// each client a Knobs of its own: sqldlm.New fills in its LeaseOf.
func withKnobs(cfg sqldlm.Config, k *testknobs.Knobs) sqldlm.Config {
	h := cfg.Hooks
	if h == nil {
		h = sqldlm.NopHooks{}
	}
	cfg.Hooks = knobbedHooks{Hooks: h, knobs: k}
	return cfg
}
