// Command postgres is a service that uses sqldlm on one database only: the
// linkcheck test lists the modules it links.
package main

import (
	"database/sql"
	"log"

	_ "github.com/sqldlm/sqldlm/dialect/postgres" // registers the "pgx" driver too

	"github.com/sqldlm/sqldlm"
)

func main() {
	db, err := sql.Open("pgx", "postgres://localhost/app")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sqldlm.New(db, sqldlm.Config{}); err != nil {
		log.Fatal(err)
	}
}
