package dbinstance

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// ClusterTests matches the names of the top-level tests that start a
// cluster (StartGalera, StartPGPair, StartPatroni). They run in the cluster
// stage, a go test run of their own after the suite:
//
//	SQLDLM_TEST_CLUSTERS=1 go test -race -timeout 40m -run '^Test(Galera|Failover|Patroni|PGPair)' github.com/sqldlm/sqldlm/...
//
// so that the suite itself stays within its time. README.md and .ci/run
// give that command; TestClusterStageCommand checks that they still do.
const ClusterTests = `^Test(Galera|Failover|Patroni|PGPair)`

// ClustersEnv turns the cluster stage on.
const ClustersEnv = "SQLDLM_TEST_CLUSTERS"

var clusterTests = regexp.MustCompile(ClusterTests)

// clusterStage is the first step of every cluster starter. A test whose
// name ClusterTests does not match fails, in every stage: the cluster stage
// would never run it. Without SQLDLM_TEST_CLUSTERS=1 the test is skipped.
func clusterStage(t testing.TB) {
	t.Helper()
	fail, skip := clusterStageVerdict(t.Name(), os.Getenv(ClustersEnv))
	if fail != "" {
		t.Fatal(fail)
	}
	if skip != "" {
		t.Skip(skip)
	}
}

// clusterStageVerdict says whether the test named name (with its subtests'
// names) may start a cluster with SQLDLM_TEST_CLUSTERS set to env.
func clusterStageVerdict(name, env string) (fail, skip string) {
	top, _, _ := strings.Cut(name, "/")
	if !clusterTests.MatchString(top) {
		return "dbinstance: " + top + " starts a cluster, but its name does not match " + ClusterTests +
			", so the cluster stage would never run it: rename it to match", ""
	}
	if env != "1" {
		return "", "dbinstance: starts a cluster: runs in the cluster stage (" + ClustersEnv + "=1 go test -run '" +
			ClusterTests + "' ...; .ci/run runs it after the suite)"
	}
	return "", ""
}
