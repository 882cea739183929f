package cli

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/migrations"
)

const migrateSynopsis = `up|down|status --dsn URL [flags]

  up      apply every pending migration
  down    roll back migrations: one step, or down to --to VERSION (needs --yes:
          it drops sqldlm's tables and with them every lock)
  status  list the migrations and whether each is applied

The migrations are recorded in sqldlm_schema_version, never in the
application's goose_db_version. Several processes may run "up" at once.`

func runMigrate(ctx context.Context, args []string, s streams) error {
	stdout, stderr := s.out, s.err
	fs := newFlagSet("migrate", migrateSynopsis, stderr)
	dsnURL := dsnFlag(fs)
	to := fs.Int64("to", -1, "with down: roll back to this `version` (0 removes everything); default one step")
	yes := fs.Bool("yes", false, "with down: do not refuse (rolling back drops tables and their locks)")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long (waiting for another migrator included)")
	output := outputFlag(fs)
	action, rest := "", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, rest = args[0], args[1:]
	}
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	switch action {
	case "up", "down", "status":
	case "":
		return usagef("missing action: use up, down or status")
	default:
		return usagef("unknown action %q: use up, down or status", action)
	}
	if err := requireDSN(*dsnURL); err != nil {
		return err
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	if action == "down" && !*yes {
		return usagef("down drops sqldlm's tables and every lock in them: add --yes if you mean it")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	db, err := openDSN(ctx, *dsnURL)
	if err != nil {
		return err
	}
	defer db.Close()
	d, err := sqldlm.DetectDialect(db)
	if err != nil {
		return err
	}
	version := func() (int64, error) { return migrations.Current(ctx, db, d) }

	switch action {
	case "up":
		results, err := migrations.Up(ctx, db, d)
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		return reportApplied(stdout, version, "applied", results)
	case "down":
		target := *to
		if target < 0 {
			current, err := migrations.Current(ctx, db, d)
			if err != nil {
				return fmt.Errorf("read schema version: %w", err)
			}
			target = max(current-1, 0)
		}
		results, err := migrations.DownTo(ctx, db, d, target)
		if err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
		return reportApplied(stdout, version, "rolled back", results)
	default:
		statuses, err := migrations.Status(ctx, db, d)
		if err != nil {
			return fmt.Errorf("migrate status: %w", err)
		}
		if *output == "json" {
			type migrationJSON struct {
				Version   int64      `json:"version"`
				File      string     `json:"file"`
				State     string     `json:"state"`
				AppliedAt *time.Time `json:"applied_at"`
			}
			out := struct {
				Migrations []migrationJSON `json:"migrations"`
			}{Migrations: []migrationJSON{}}
			for _, st := range statuses {
				m := migrationJSON{Version: st.Source.Version, File: st.Source.Path, State: string(st.State)}
				if !st.AppliedAt.IsZero() {
					at := st.AppliedAt.UTC()
					m.AppliedAt = &at
				}
				out.Migrations = append(out.Migrations, m)
			}
			return json.NewEncoder(stdout).Encode(out)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tMIGRATION\tSTATE\tAPPLIED AT")
		for _, s := range statuses {
			applied := "-"
			if !s.AppliedAt.IsZero() {
				applied = s.AppliedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Source.Version, s.Source.Path, s.State, applied)
		}
		return tw.Flush()
	}
}

type migrationResult interface {
	String() string
}

func reportApplied[R migrationResult](w io.Writer, version func() (int64, error), verb string, results []R) error {
	for _, r := range results {
		fmt.Fprintln(w, r.String())
	}
	v, err := version()
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if len(results) == 0 {
		fmt.Fprintf(w, "nothing %s: the schema is at version %d\n", verb, v)
		return nil
	}
	fmt.Fprintf(w, "%s %d migration(s): the schema is at version %d\n", verb, len(results), v)
	return nil
}

// openDSN opens and pings the database a sqldlm DSN names. Commands that
// need its dialect get it with sqldlm.DetectDialect (the migrations and
// the reaper), or through a sqldlm.Admin (openAdmin).
func openDSN(ctx context.Context, raw string) (*sql.DB, error) {
	if _, err := dsn.Parse(raw); err != nil {
		return nil, &usageError{err.Error()}
	}
	db, _, err := dsn.Open(ctx, raw)
	return db, err
}
