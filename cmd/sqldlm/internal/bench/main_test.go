package bench

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them. Run
// with SQLDLM_BENCH_FAKE_PEER set, the test binary is a fake peer instead
// (see fakePeer).
func TestMain(m *testing.M) {
	if os.Getenv(fakePeerEnv) != "" {
		os.Exit(fakePeer())
	}
	goleak.VerifyTestMain(m,
		// database/sql's connection opener lives as long as a pool; pools
		// are closed by t.Cleanup, which can run after this check starts.
		goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
	)
}
