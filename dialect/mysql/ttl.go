package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

var _ dialect.TTLAdvisor = mysqlDialect{}

// galeraSuspectDefault is Galera's default evs.suspect_timeout.
const galeraSuspectDefault = 5 * time.Second

// galeraDetectExtra is how much longer than evs.suspect_timeout commits
// stalled when a node of a 3-node cluster was killed (about 6 s with the
// default 5 s, measured on loopback).
const galeraDetectExtra = time.Second

// MinGaleraTTL returns the shortest TTL that survives the commit stall of a
// node's failure in a Galera cluster whose evs.suspect_timeout is suspect.
//
// While a node is suspected, every commit in the cluster waits, renewals
// included. A renewal is sent at most TTL/3 after the previous one and must
// be answered before the lease's local deadline at 0.9 TTL, so the stall
// must be shorter than (0.9 − 1/3) TTL, about TTL/1.8. The minimum is twice
// the stall, with a margin: 12 s with Galera's defaults.
func MinGaleraTTL(suspect time.Duration) time.Duration {
	return 2 * (suspect + galeraDetectExtra)
}

// AdviseTTL warns when the server is a Galera node (wsrep_on) and ttl is
// shorter than MinGaleraTTL of its evs.suspect_timeout.
func (d mysqlDialect) AdviseTTL(ctx context.Context, db *sql.DB, ttl time.Duration) (string, error) {
	if on, err := d.wsrepOn(ctx, db); err != nil || !on {
		return "", err
	}
	var name, options string
	err := db.QueryRowContext(ctx, `SHOW VARIABLES LIKE 'wsrep_provider_options'`).Scan(&name, &options)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("read wsrep_provider_options: %w", d.ClassifyError(err))
	}
	suspect, ok := providerDuration(options, "evs.suspect_timeout")
	if !ok {
		suspect = galeraSuspectDefault
	}
	if least := MinGaleraTTL(suspect); ttl < least {
		return fmt.Sprintf("TTL %v is too short for this Galera cluster: a failed node stalls every commit for about "+
			"evs.suspect_timeout (%v) + %v, renewals included, and leases of less than %v are then lost; "+
			"set Config.TTL to at least %v or lower evs.suspect_timeout", ttl, suspect, galeraDetectExtra, least, least), nil
	}
	return "", nil
}

// isoDuration matches the ISO 8601 durations Galera prints for its
// timeouts (PT5S, PT1.5S, PT1M30S).
var isoDuration = regexp.MustCompile(`^PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$`)

// providerDuration returns option's value in a wsrep_provider_options
// string ("a = 1; evs.suspect_timeout = PT5S; ...").
func providerDuration(options, option string) (time.Duration, bool) {
	for _, kv := range strings.Split(options, ";") {
		k, v, found := strings.Cut(kv, "=")
		if !found || strings.TrimSpace(k) != option {
			continue
		}
		m := isoDuration.FindStringSubmatch(strings.TrimSpace(v))
		if m == nil || (m[1] == "" && m[2] == "" && m[3] == "") {
			return 0, false
		}
		var d time.Duration
		for i, unit := range []time.Duration{time.Hour, time.Minute, time.Second} {
			if m[i+1] == "" {
				continue
			}
			f, err := strconv.ParseFloat(m[i+1], 64)
			if err != nil {
				return 0, false
			}
			d += time.Duration(f * float64(unit))
		}
		return d, true
	}
	return 0, false
}
