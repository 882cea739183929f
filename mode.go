package sqldlm

import (
	"fmt"

	"github.com/sqldlm/sqldlm/dialect"
)

// Mode is the mode of a lock.
type Mode int

// Modes. A name can have one exclusive holder, or any number of shared
// holders, never both.
const (
	Shared    Mode = 1
	Exclusive Mode = 2
)

func (m Mode) String() string {
	switch m {
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

func (m Mode) stored() dialect.Mode {
	if m == Shared {
		return dialect.Shared
	}
	return dialect.Exclusive
}

func modeOf(m dialect.Mode) Mode {
	if m == dialect.Shared {
		return Shared
	}
	return Exclusive
}
