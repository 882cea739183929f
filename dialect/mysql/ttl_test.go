package mysql

import (
	"testing"
	"time"
)

func TestProviderDuration(t *testing.T) {
	const options = "base_host = 127.0.0.1; evs.inactive_timeout = PT15S; evs.suspect_timeout = PT5S; gcache.size = 128M"
	for _, tc := range []struct {
		options, option string
		want            time.Duration
		ok              bool
	}{
		{options, "evs.suspect_timeout", 5 * time.Second, true},
		{options, "evs.inactive_timeout", 15 * time.Second, true},
		{"evs.suspect_timeout = PT1.5S", "evs.suspect_timeout", 1500 * time.Millisecond, true},
		{"evs.suspect_timeout = PT1M30S", "evs.suspect_timeout", 90 * time.Second, true},
		{options, "gcache.size", 0, false},          // not a duration
		{options, "evs.keepalive_period", 0, false}, // absent
		{"evs.suspect_timeout = PT", "evs.suspect_timeout", 0, false},
	} {
		got, ok := providerDuration(tc.options, tc.option)
		if got != tc.want || ok != tc.ok {
			t.Errorf("providerDuration(%q, %q) = %v, %v; want %v, %v", tc.options, tc.option, got, ok, tc.want, tc.ok)
		}
	}
	if got := MinGaleraTTL(5 * time.Second); got != 12*time.Second {
		t.Errorf("MinGaleraTTL(5s) = %v, want 12s (the report's rule for Galera's defaults)", got)
	}
}
