//go:build sqldlm_mutant

package sqldlm

import "os"

// A deliberately broken library, built only with -tags sqldlm_mutant by the
// randomized fault test's self-check (see nomutant.go): Fence checks
// nothing in the database, and the client trusts its lease for a second
// longer than the database keeps it.
const (
	mutantFenceUnchecked = true
	mutantLateDeadline   = true
)

func init() {
	if os.Getenv("SQLDLM_ALLOW_MUTANT") != "1" {
		panic("sqldlm: built with the sqldlm_mutant tag, which breaks fencing and lease expiry on purpose (for tests only); set SQLDLM_ALLOW_MUTANT=1 to run it")
	}
}
