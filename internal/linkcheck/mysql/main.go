// Command mysql is a service that uses sqldlm on one database only: the
// linkcheck test lists the modules it links.
package main

import (
	"database/sql"
	"log"

	_ "github.com/sqldlm/sqldlm/dialect/mysql" // registers the "mysql" driver too

	"github.com/sqldlm/sqldlm"
)

func main() {
	db, err := sql.Open("mysql", "app@tcp(localhost)/app")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sqldlm.New(db, sqldlm.Config{}); err != nil {
		log.Fatal(err)
	}
}
