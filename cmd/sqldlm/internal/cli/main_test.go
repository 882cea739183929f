package cli

import (
	"context"
	"os"
	"testing"
)

// TestMain lets the test binary act as the sqldlm command when the demo
// starts it as a worker process.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "demo-worker" {
		os.Exit(Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
