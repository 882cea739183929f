package cli

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
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
	timeout := durationFlag(fs, "timeout", 5*time.Minute, "give up after this long (waiting for another migrator included)")
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
	db, err := openDSN(ctx, *dsnURL, action == "up")
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
// the reaper), or through a sqldlm.Admin (openAdmin). Only commands that
// create sqldlm's tables (migrate up, bench, demo) create an SQLite file
// that does not exist.
func openDSN(ctx context.Context, raw string, create bool) (*sql.DB, error) {
	if _, err := dsn.Parse(raw); err != nil {
		return nil, &usageError{err.Error()}
	}
	open := dsn.OpenExisting
	if create {
		open = dsn.Open
	}
	db, _, err := open(ctx, raw)
	return db, err
}

// openMigrated is openDSN for commands that use sqldlm's tables: a
// database without them, or with them at another version than this
// sqldlm's, gets an error saying where it looked and what to run.
func openMigrated(ctx context.Context, raw string) (*sql.DB, dialect.Dialect, error) {
	db, err := openDSN(ctx, raw, false)
	if err != nil {
		return nil, nil, err
	}
	d, err := sqldlm.DetectDialect(db)
	if err == nil {
		err = checkMigrated(ctx, db, d, raw)
	}
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, d, nil
}

// checkMigrated returns nil when db's schema is at the version this sqldlm
// uses, and otherwise an error naming the database (and PostgreSQL schema)
// it looked in.
func checkMigrated(ctx context.Context, db *sql.DB, d dialect.Dialect, raw string) error {
	have, err := migrations.Current(ctx, db, d)
	if err != nil && !errors.Is(err, migrations.ErrNotMigrated) {
		return fmt.Errorf("read the schema version: %w", err)
	}
	want, lerr := migrations.Latest(d)
	if lerr != nil {
		return lerr
	}
	if err == nil && have == want {
		return nil
	}
	where, werr := schemaPlace(ctx, db, d, raw)
	if werr != nil {
		return werr
	}
	up := "run `sqldlm migrate up` with the same --dsn"
	switch {
	case err != nil:
		return fmt.Errorf("not migrated: sqldlm's tables are not in %s: %s", where, up)
	case have < want:
		return fmt.Errorf("%s is at sqldlm schema version %d and this sqldlm needs %d: %s", where, have, want, up)
	default:
		return fmt.Errorf("%s is at sqldlm schema version %d, newer than the %d this sqldlm knows: use a newer sqldlm", where, have, want)
	}
}

// schemaPlace names where db's sqldlm tables are looked for: the
// PostgreSQL database and schema, the MySQL database, the SQLite file. A
// PostgreSQL search_path that names no existing schema is an error of its
// own.
func schemaPlace(ctx context.Context, db *sql.DB, d dialect.Dialect, raw string) (string, error) {
	switch d.Name() {
	case "postgres":
		var database, searchPath string
		var schema sql.NullString
		if err := db.QueryRowContext(ctx, `SELECT current_database(), current_schema(), current_setting('search_path')`).
			Scan(&database, &schema, &searchPath); err != nil {
			return "", fmt.Errorf("find the schema in use: %w", err)
		}
		if !schema.Valid {
			return "", fmt.Errorf("the search_path %q names no schema that exists in PostgreSQL database %q: "+
				"create the schema (CREATE SCHEMA), or fix search_path in the DSN", searchPath, database)
		}
		return fmt.Sprintf("PostgreSQL database %q, schema %q", database, schema.String), nil
	case "mysql":
		var database sql.NullString
		if err := db.QueryRowContext(ctx, `SELECT DATABASE()`).Scan(&database); err != nil {
			return "", fmt.Errorf("find the database in use: %w", err)
		}
		return fmt.Sprintf("MySQL database %q", database.String), nil
	default:
		where := d.Name() + " database"
		if p, err := dsn.Parse(raw); err == nil {
			where = fmt.Sprintf("%s file %s", d.Name(), p.Host)
		}
		return where, nil
	}
}
