package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/migrations"
)

const demoSynopsis = `[flags]

Runs on an SQLite file in a temporary folder, removed afterwards: applies the
schema, connects a client and reads the database clock.`

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", demoSynopsis, stderr)
	keep := fs.Bool("keep", false, "keep the temporary folder and print its path")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sqldlm-demo-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(stdout, "keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	path := filepath.Join(dir, "locks.db")
	db, d, err := openDSN(ctx, "sqlite://"+filepath.ToSlash(path))
	if err != nil {
		return err
	}
	defer db.Close()
	fmt.Fprintf(stdout, "database: SQLite file %s\n", path)

	if _, err := sqldlm.New(db, sqldlm.Config{}); err != nil {
		fmt.Fprintf(stdout, "before migrating, sqldlm.New says: %v\n", err)
	}
	results, err := migrations.Up(ctx, db, d)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, r := range results {
		fmt.Fprintf(stdout, "migrated: %s\n", r)
	}
	c, err := sqldlm.New(db, sqldlm.Config{Owner: "demo", TTL: 2 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()
	now, err := d.Now(ctx, db)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "client %q connected (dialect %s, lease TTL %s); database clock reads %s\n",
		c.Owner(), c.Dialect().Name(), c.TTL(), now.Format(time.RFC3339Nano))
	fmt.Fprintln(stdout, "demo finished: schema applied and verified")
	return nil
}
