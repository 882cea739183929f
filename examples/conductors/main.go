// Command conductors is Ironic's conductor story on sqldlm, end to end:
// three conductors join the group "conductors", spread 1,000 bare-metal
// nodes over themselves with the group's hash ring, and rebalance when one
// of them dies without a word: only the dead conductor's nodes move. It
// runs on a temporary SQLite database:
//
//	go run ./examples/conductors
package main

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
)

func main() {
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

// conductor is one conductor process: its own pool, client and partitioner.
type conductor struct {
	db *sql.DB
	c  *sqldlm.Client
	p  *sqldlm.Partitioner
}

func run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "conductors")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	dsn := "file:" + filepath.Join(dir, "ironic.db") + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)"
	open := func() (*sql.DB, error) { return sql.Open("sqlite", dsn) }
	db, err := open()
	if err != nil {
		return err
	}
	defer db.Close()
	if err := sqldlm.Migrate(ctx, db, sqlite.Dialect()); err != nil {
		return err
	}
	nodes := make([]string, 1000)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("node-%04d", i)
	}

	var conductors []*conductor
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("conductor-%d", i)
		pool, err := open()
		if err != nil {
			return err
		}
		defer pool.Close()
		c, err := sqldlm.New(pool, sqldlm.Config{Owner: id, TTL: 2 * time.Second, WatchInterval: 100 * time.Millisecond})
		if err != nil {
			return err
		}
		defer c.Close()
		p, err := c.Partition(ctx, "conductors", id, sqldlm.PartitionOptions{Meta: `{"conductor_group":"rack1"}`})
		if err != nil {
			return err
		}
		conductors = append(conductors, &conductor{db: pool, c: c, p: p})
	}
	before := settle(conductors, len(nodes), nodes)

	// conductor-3 dies: its database connections go away and it renews no
	// more. It learns it is out first (its membership's Done closes); the
	// others see it gone once its lease has expired, and take its nodes.
	dead := conductors[2]
	dead.db.Close()
	<-dead.p.Membership().Done()
	fmt.Printf("conductor-3 knows it is out: %v\n", dead.p.Membership().Err())
	after := settle(conductors[:2], len(nodes), nodes)

	moved := 0
	for i, c := range conductors[:2] {
		id := c.p.Membership().ID()
		kept := 0
		for _, n := range before[i] {
			if c.p.Owns(n) {
				kept++
			}
		}
		moved += len(after[i]) - kept
		fmt.Printf("%s kept all %d of its nodes: %v\n", id, len(before[i]), kept == len(before[i]))
	}
	fmt.Printf("nodes moved: %d, all of them conductor-3's (%d)\n", moved, len(before[2]))
	return nil
}

// settle waits until the conductors' views agree and their shares cover
// every node once, prints the shares and returns them.
func settle(conductors []*conductor, total int, nodes []string) [][]string {
	for {
		gens := map[int64]bool{}
		var shares [][]string
		n := 0
		for _, c := range conductors {
			for len(c.p.Changes()) > 0 {
				<-c.p.Changes()
			}
			gens[c.p.View().Generation] = true
			mine := c.p.Mine(nodes)
			shares = append(shares, mine)
			n += len(mine)
		}
		if len(gens) == 1 && n == total && len(conductors[0].p.View().Members) == len(conductors) {
			for i, c := range conductors {
				fmt.Printf("%s owns %d nodes\n", c.p.Membership().ID(), len(shares[i]))
			}
			return shares
		}
		time.Sleep(50 * time.Millisecond) // poll until the views agree
	}
}
