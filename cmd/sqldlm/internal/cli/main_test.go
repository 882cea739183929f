package cli

import (
	"context"
	"os"
	"testing"

	"github.com/sqldlm/sqldlm/cmd/sqldlm/internal/bench"
)

// TestMain lets the test binary act as the sqldlm command when the demo
// starts it as a worker process, or the benchmark as a child.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "demo-worker" || os.Args[1] == bench.ChildCommand) {
		os.Exit(Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
