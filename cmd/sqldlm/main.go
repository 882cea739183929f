// Command sqldlm operates sqldlm, the distributed lock manager that lives in
// an application's own PostgreSQL, MySQL/MariaDB or SQLite database.
//
// Run "sqldlm help" for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sqldlm/sqldlm/cmd/sqldlm/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
