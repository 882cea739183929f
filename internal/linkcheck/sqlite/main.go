// Command sqlite is a service that uses sqldlm on one database only: the
// linkcheck test lists the modules it links.
package main

import (
	"database/sql"
	"log"

	_ "modernc.org/sqlite"

	_ "github.com/sqldlm/sqldlm/dialect/sqlite"

	"github.com/sqldlm/sqldlm"
)

func main() {
	db, err := sql.Open("sqlite", "locks.db")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sqldlm.New(db, sqldlm.Config{}); err != nil {
		log.Fatal(err)
	}
}
