package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sqldlm/sqldlm/reaper"
)

const reapSynopsis = `--dsn URL [--every DURATION] [flags]

Deletes leases that expired (or were broken) with their holds and waiters,
lock rows idle for longer than --idle-after, and audit rows older than the
audit retention, then prints what it freed.
With --every it repeats until interrupted. Clients run this by themselves
unless they set Config.ReapInterval to sqldlm.ReapDisabled; waiters never
depend on it (they take over expired holders themselves).`

// reapJSON is one pass of `sqldlm reap --output json` (one object per line).
type reapJSON struct {
	At        time.Time `json:"at"`
	Leases    int       `json:"leases"`
	Holds     int       `json:"holds"`
	Waiters   int       `json:"waiters"`
	IdleLocks int       `json:"idle_locks"`
	AuditRows int       `json:"audit_rows"`
	Freed     []string  `json:"freed"`
}

func runReap(ctx context.Context, args []string, s streams) error {
	stdout, stderr := s.out, s.err
	fs := newFlagSet("reap", reapSynopsis, stderr)
	dsnURL := dsnFlag(fs)
	every := durationFlag(fs, "every", 0, "repeat at this interval until interrupted (0: one pass)")
	idleAfter := durationFlag(fs, "idle-after", reaper.IdleAfterDefault, "delete lock rows with no holder or waiter idle for this long")
	batch := fs.Int("batch", reaper.BatchSizeDefault, "leases deleted per statement")
	output := outputFlag(fs)
	if err := parseCommand(fs, args, dsnURL, output); err != nil {
		return err
	}
	if *every < 0 || *idleAfter < 0 || *batch <= 0 {
		return usagef("--every and --idle-after must not be negative, --batch must be positive")
	}
	db, d, err := openMigrated(ctx, *dsnURL)
	if err != nil {
		return err
	}
	defer db.Close()
	r := reaper.New(db, d, reaper.Config{BatchSize: *batch, IdleAfter: *idleAfter})
	for {
		res, err := r.RunOnce(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) && *every > 0 {
				return nil
			}
			return fmt.Errorf("reap: %w", err)
		}
		if *output == "json" {
			freed := res.Freed
			if freed == nil {
				freed = []string{}
			}
			if err := json.NewEncoder(stdout).Encode(reapJSON{time.Now().UTC(), res.Leases, res.Holds, res.Waiters, res.IdleLocks, res.AuditRows, freed}); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(stdout, "%s reaped %d dead lease(s), %d hold(s), %d waiter(s), %d idle lock row(s), %d old audit row(s)",
				time.Now().UTC().Format(time.RFC3339), res.Leases, res.Holds, res.Waiters, res.IdleLocks, res.AuditRows)
			if len(res.Freed) > 0 {
				fmt.Fprintf(stdout, "; freed %q", res.Freed)
			}
			fmt.Fprintln(stdout)
		}
		if *every == 0 {
			return nil
		}
		t := time.NewTimer(*every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
