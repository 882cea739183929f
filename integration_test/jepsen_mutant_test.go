//go:build linux

package integration_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// The checkers of the randomized fault test can see the bugs they are
// meant to catch (RELIABILITY-PLAN §8.5, item 6; Jepsen's lock-set
// demonstration): this builds the test binary with -tags sqldlm_mutant,
// in which Fence checks nothing in the database and the client trusts its
// lease until TTL + 1s, runs TestJepsen for 20s with pauses of 1-2 TTLs
// (one at a time, 0.3-1s apart) as the only fault, and requires the
// linearizability, journal and holder-knows-first checkers each to report
// a violation (in one run, or in a second one with another seed).
func TestJepsenMutant(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a mutant for about a minute; it runs without -short")
	}
	kind := testdb.Postgres
	if os.Getenv("SQLDLM_TEST_POSTGRES_DSN") == "" && os.Getenv("SQLDLM_TEST_MYSQL_DSN") != "" {
		kind = testdb.MySQL
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "mutant.test")
	// go test puts its own GOROOT/bin first in the test's PATH.
	goTool, err := exec.LookPath("go")
	require.NoError(t, err, "the go command builds the mutant")
	build := exec.Command(goTool, "test", "-c", "-tags", "sqldlm_mutant", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "building the mutant: %s", out)

	// A run shows a bug only if a pause catches a holder that others wait
	// for; a second run (another seed) covers a schedule that did not.
	seen := map[string]int{}
	want := []string{"linearizable", "journal", "holder"}
	for attempt := 1; attempt <= 2; attempt++ {
		summary := runMutant(t, bin, kind, filepath.Join(dir, strconv.Itoa(attempt)))
		t.Logf("mutant on %s, run %d: violations per checker %v", kind, attempt, summary)
		for k, n := range summary {
			seen[k] += n
		}
		if !slices.ContainsFunc(want, func(c string) bool { return seen[c] == 0 }) {
			break
		}
	}
	for _, checker := range want {
		require.Positive(t, seen[checker], "checker %q saw no violation in the mutant", checker)
	}
}

// runMutant runs the mutant's TestJepsen on kind for 20s with pauses only
// and returns its violations per checker.
func runMutant(t *testing.T, bin, kind, dir string) map[string]int {
	t.Helper()
	run := exec.Command(bin, "-test.run", "^TestJepsen$/^"+kind+"$", "-test.v", "-test.timeout", "5m")
	run.Env = append(os.Environ(), "SQLDLM_ALLOW_MUTANT=1", "SQLDLM_JEPSEN_TIME=20s", "SQLDLM_JEPSEN_FAULTS=pause", "SQLDLM_JEPSEN_SERVER=shared",
		// Every pause outlasts the TTL, and they come often.
		"SQLDLM_JEPSEN_HOLD=1,2", "SQLDLM_JEPSEN_GAP=0.3,1",
		"SQLDLM_JEPSEN_OUT="+dir)
	out, err := run.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "jepsen_test.go") {
			t.Log(strings.TrimSpace(line))
		}
	}
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("the mutant's run was skipped:\n%s", out)
	}
	require.NoError(t, err, "the mutant's run: %s", out)
	data, err := os.ReadFile(filepath.Join(dir, "summary-"+kind+".json"))
	require.NoError(t, err, "the mutant's verdicts")
	var summary map[string]int
	require.NoError(t, json.Unmarshal(data, &summary))
	return summary
}
