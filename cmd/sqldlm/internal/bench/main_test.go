package bench

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// database/sql's connection opener lives as long as a pool; pools
		// are closed by t.Cleanup, which can run after this check starts.
		goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
	)
}
