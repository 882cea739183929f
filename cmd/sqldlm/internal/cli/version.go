package cli

import (
	"fmt"
	"io"
	"runtime/debug"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
	"github.com/sqldlm/sqldlm/migrations"
)

// printVersion writes the command's version, the library's it was built
// with, and the schema version each dialect's migrations reach.
func printVersion(w io.Writer) {
	cmd, lib := "(unknown)", "(unknown)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		cmd = bi.Main.Version
		for _, d := range bi.Deps {
			if d.Path == "github.com/sqldlm/sqldlm" {
				lib = d.Version
				if d.Replace != nil && d.Replace.Version != "" {
					lib = d.Replace.Version
				}
			}
		}
		if bi.Main.Path == "github.com/sqldlm/sqldlm" {
			lib = bi.Main.Version
		}
		fmt.Fprintf(w, "sqldlm %s (library %s, %s)\n", cmd, lib, bi.GoVersion)
	} else {
		fmt.Fprintf(w, "sqldlm %s\n", cmd)
	}
	for _, d := range []dialect.Dialect{postgres.Dialect(), mysql.Dialect(), sqlite.Dialect()} {
		if v, err := migrations.Latest(d); err == nil {
			fmt.Fprintf(w, "schema version %d for %s\n", v, d.Name())
		}
	}
}
