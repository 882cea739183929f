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
// demonstration): this builds the test binary with -tags sqldlm_mutant and
// runs TestJepsen for 20s with pauses of 1-2 TTLs (one at a time, 0.3-1s
// apart) as the only fault, once per bug (SQLDLM_MUTANT) in a subtest:
//
//   - FenceAndDeadline: Fence checks nothing in the database and the client
//     trusts its lease until TTL + 1s. The linearizability, journal and
//     holder-knows-first checkers must each report a violation (in one
//     run, or in a second one with another seed).
//   - ElectionShared: Campaign takes the election's lock in shared mode
//     (issue 16), so that campaigners are elected together. The election
//     checker must see two leaders at once. Half of the workers' turns
//     campaign, for 10s.
//   - SemaphoreExtraSlot: a semaphore picks among one slot more than its
//     limit (issue 16). Every slot is still an exclusive lock that the
//     database grants correctly, so only the semaphore checker, which
//     counts the permits held at each commit, can see it. Half of the
//     workers' turns take a permit, so that more than the limit want one
//     at once, for 10s.
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

	for _, c := range []struct {
		name, bugs string
		env        []string // more of the run's environment
		want       []string // checkers that must each see a violation
	}{
		{"FenceAndDeadline", "fence-unchecked,late-deadline", nil, []string{"linearizable", "journal", "holder"}},
		{"ElectionShared", "election-shared", []string{jepsenMixEnv + "=0.5,0.1", "SQLDLM_JEPSEN_TIME=10s"}, []string{"elections"}},
		{"SemaphoreExtraSlot", "semaphore-extra-slot", []string{jepsenMixEnv + "=0.1,0.5", "SQLDLM_JEPSEN_TIME=10s"}, []string{"semaphores"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// A run shows a bug only if the schedule let it act (a pause
			// caught a holder others wait for; three acquirers wanted a
			// permit at once); a second run (another seed) covers a
			// schedule that did not.
			seen := map[string]int{}
			for attempt := 1; attempt <= 2; attempt++ {
				summary := runMutant(t, bin, kind, c.bugs, filepath.Join(dir, c.name, strconv.Itoa(attempt)), c.env...)
				t.Logf("mutant %s on %s, run %d: violations per checker %v", c.bugs, kind, attempt, summary)
				for k, n := range summary {
					seen[k] += n
				}
				if !slices.ContainsFunc(c.want, func(k string) bool { return seen[k] == 0 }) {
					break
				}
			}
			for _, checker := range c.want {
				require.Positive(t, seen[checker], "checker %q saw no violation in the mutant", checker)
			}
		})
	}
}

// runMutant runs the mutant's TestJepsen with bugs (SQLDLM_MUTANT) on kind
// for 20s with pauses only (env may change that) and returns its
// violations per checker.
func runMutant(t *testing.T, bin, kind, bugs, dir string, env ...string) map[string]int {
	t.Helper()
	run := exec.Command(bin, "-test.run", "^TestJepsen$/^"+kind+"$", "-test.v", "-test.timeout", "5m")
	run.Env = append(os.Environ(), "SQLDLM_ALLOW_MUTANT=1", "SQLDLM_MUTANT="+bugs,
		"SQLDLM_JEPSEN_TIME=20s", "SQLDLM_JEPSEN_FAULTS=pause", "SQLDLM_JEPSEN_SERVER=shared",
		// Every pause outlasts the TTL, and they come often.
		"SQLDLM_JEPSEN_HOLD=1,2", "SQLDLM_JEPSEN_GAP=0.3,1",
		"SQLDLM_JEPSEN_OUT="+dir)
	run.Env = append(run.Env, env...) // the last of a name counts
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
