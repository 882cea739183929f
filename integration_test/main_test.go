// Package integration_test checks sqldlm's invariants across processes and
// under faults: holders killed or paused by signals, several processes
// contending, a holder cut off from the database by a proxy. The test binary
// re-executes itself as the child processes.
package integration_test

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childRoleEnv); role != "" {
		os.Exit(childMain(role))
	}
	os.Exit(m.Run())
}
