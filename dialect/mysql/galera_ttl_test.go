//go:build linux

package mysql_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// TestAdviseTTL: a standalone server gets no warning, however short the
// TTL. (On a Galera node: TestGaleraCluster/AdviseTTL.)
func TestAdviseTTL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := mysql.Dialect().(dialect.TTLAdvisor)
	standalone := testdb.Open(t, testdb.MySQL)
	if w, err := d.AdviseTTL(ctx, standalone.DB, time.Second); err != nil || w != "" {
		t.Fatalf("standalone server: %q, %v; want no warning", w, err)
	}
}

// testAdviseTTLOnGalera: a Galera node (default evs.suspect_timeout, 5 s)
// gets a warning for a TTL under 12 s and none for the default 15 s.
func testAdviseTTLOnGalera(t *testing.T, node *sql.DB) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := mysql.Dialect().(dialect.TTLAdvisor)
	w, err := d.AdviseTTL(ctx, node, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"TTL 5s is too short", "evs.suspect_timeout (5s)", "at least 12s"} {
		if !strings.Contains(w, part) {
			t.Errorf("warning for TTL 5s on a Galera node: %q, want it to contain %q", w, part)
		}
	}
	if w, err := d.AdviseTTL(ctx, node, 15*time.Second); err != nil || w != "" {
		t.Errorf("TTL 15s on a Galera node: %q, %v; want no warning", w, err)
	}
}
