// Command nodialect opens a database with pgx's driver but imports no
// sqldlm dialect: it prints the error sqldlm.DetectDialect returns, which
// the linkcheck test expects to name the import to add.
package main

import (
	"database/sql"
	"fmt"
	"log"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/sqldlm/sqldlm"
)

func main() {
	db, err := sql.Open("pgx", "postgres://localhost/app")
	if err != nil {
		log.Fatal(err)
	}
	d, err := sqldlm.DetectDialect(db)
	fmt.Println(d, err)
}
