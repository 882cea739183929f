package dbinstance

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

func TestClusterStageVerdict(t *testing.T) {
	for _, c := range []struct {
		name, env  string
		fail, skip bool
	}{
		{"TestGaleraCluster/Locker", "1", false, false},
		{"TestGaleraCluster/Locker", "", false, true},
		{"TestFailoverP1AsyncLostGrant", "0", false, true},
		{"TestPatroniFailover", "1", false, false},
		{"TestPGPair", "1", false, false},
		// Not matched: it would never run in the cluster stage.
		{"TestJepsenGalera", "1", true, false},
		{"TestJepsenGalera", "", true, false},
		{"TestLockThroughGalera/x", "1", true, false},
	} {
		fail, skip := clusterStageVerdict(c.name, c.env)
		if (fail != "") != c.fail || (skip != "") != c.skip {
			t.Errorf("clusterStageVerdict(%q, %q) = fail %q, skip %q; want fail %v, skip %v", c.name, c.env, fail, skip, c.fail, c.skip)
		}
	}
}

// TestCIRunsREADMECommands checks that .ci/run runs README's test command
// (stage 1) and then the cluster stage's command that README gives, with
// ClusterTests as its -run pattern.
func TestCIRunsREADMECommands(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	// README: the second command of its first sh block is the suite's.
	var suite string
	blocks := strings.SplitN(string(readme), "```sh\n", 2)
	if len(blocks) == 2 {
		lines := strings.Split(blocks[1], "\n")
		if len(lines) > 1 {
			suite, _, _ = strings.Cut(lines[1], "#")
			suite = strings.TrimSpace(suite)
		}
	}
	if !strings.HasPrefix(suite, "go test ") {
		t.Fatalf("README.md: the second line of the first sh block is %q, not the test command", suite)
	}
	var ran []string
	sc := bufio.NewScanner(strings.NewReader(string(ci)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "go test ") || strings.HasPrefix(line, ClustersEnv+"=1 go test ") {
			// The exit status is kept, and the output copied for the
			// failure digest: neither changes what runs.
			line = strings.TrimSpace(strings.TrimSuffix(line, "|| rc=$?"))
			line = strings.TrimSpace(strings.TrimSuffix(line, `2>&1 | tee -a "$out"`))
			ran = append(ran, line)
		}
	}
	cluster := ClustersEnv + "=1 go test -race -timeout 40m -run '" + ClusterTests + "' github.com/sqldlm/sqldlm/..."
	if len(ran) != 2 || ran[0] != suite || ran[1] != cluster {
		t.Fatalf(".ci/run runs %q; want README's test command %q, then the cluster stage %q", ran, suite, cluster)
	}
	if !strings.Contains(string(readme), cluster) {
		t.Fatalf("README.md does not give the cluster stage's command %q", cluster)
	}
}
